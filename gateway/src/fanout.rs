//! Broadcast fan-out (D4): a signed push for many agents arrives once on the uplink's control
//! stream; the gateway hands it to every agent connected to it, each on a stream of its own
//! connection, and reports who acknowledged in a few messages (batches). The gateway does not verify or
//! change the broadcast — agents verify the server's signature — it only carries it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use outpost_net::stream;
use outpost_proto::pb::v1::{BroadcastAcks, BroadcastBody, SignedBroadcast, envelope::Msg};
use prost::Message;
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::node::Node;

/// Agents handed a broadcast at once.
const CONCURRENCY: usize = 4096;

/// How long one agent gets to answer.
const AGENT_TIMEOUT: Duration = Duration::from_secs(3);

/// Largest answer read from an agent.
const MAX_ANSWER: usize = 4096;

/// The agents connected now, by connection id, with the device id their certificate names.
#[derive(Debug, Default)]
pub struct Agents {
    conns: Mutex<HashMap<usize, (quinn::Connection, String)>>,
}

/// Broadcast counters.
#[derive(Debug, Default)]
pub struct FanoutStats {
    /// Broadcasts received from the server.
    pub broadcasts: AtomicU64,
    /// Deliveries acknowledged by agents.
    pub acked: AtomicU64,
    /// Deliveries refused by agents (not for them, expired, bad signature).
    pub declined: AtomicU64,
    /// Deliveries that failed or were not answered in time.
    pub failed: AtomicU64,
    /// Broadcasts dropped because too many fan-outs were running (the server then sends the
    /// push in each agent's session).
    pub dropped_busy: AtomicU64,
    /// Broadcasts being fanned out now (at most `MAX_FANOUTS` of the uplink).
    pub running: AtomicU64,
}

impl Agents {
    /// Records an agent connection (an enrolled device's).
    pub fn add(&self, conn: &quinn::Connection, device_id: String) {
        self.conns
            .lock()
            .expect("agents lock")
            .insert(conn.stable_id(), (conn.clone(), device_id));
    }

    /// Forgets a connection.
    pub fn remove(&self, conn: &quinn::Connection) {
        self.conns
            .lock()
            .expect("agents lock")
            .remove(&conn.stable_id());
    }

    fn snapshot(&self) -> Vec<(quinn::Connection, String)> {
        self.conns
            .lock()
            .expect("agents lock")
            .values()
            .cloned()
            .collect()
    }
}

enum Answer {
    Acked,
    Declined,
    Failed,
}

/// Acknowledgements go up when this many have gathered …
const ACKS_PER_REPORT: usize = 512;

/// … or this long after the first of a batch arrived (a push's latency grows by at most this),
/// and at the end.
const REPORT_AFTER: Duration = Duration::from_millis(10);

/// Hands a broadcast to every connected agent; their acknowledgements go up through `up` in
/// batches (a few messages however many agents, without holding the early ones until the
/// slowest agent answered).
pub async fn deliver(node: &Node, mut b: SignedBroadcast, up: mpsc::Sender<BroadcastAcks>) {
    let stats = node.office().fanout();
    stats.broadcasts.fetch_add(1, Ordering::Relaxed);
    // Read only to name the push in the report; the agents check the signature.
    let push_id = BroadcastBody::decode(b.body.as_slice())
        .ok()
        .and_then(|body| body.push)
        .map(|p| p.id)
        .unwrap_or_default();
    if node.office().tampers() {
        // A compromised gateway's attempt: the push's text changed in flight.
        if let Some(last) = b.body.last_mut() {
            *last ^= 0x20;
        }
    }
    let agents = node.office().agents().snapshot();
    let n = agents.len();
    let frame = Msg::SignedBroadcast(b);
    let mut answers = futures_util::stream::iter(agents)
        .map(|(conn, device)| {
            let frame = frame.clone();
            let push_id = push_id.clone();
            async move {
                let a = tokio::time::timeout(AGENT_TIMEOUT, one(&conn, frame, &push_id))
                    .await
                    .unwrap_or(Answer::Failed);
                (device, a)
            }
        })
        .buffer_unordered(CONCURRENCY);
    let empty = || BroadcastAcks {
        push_id: push_id.clone(),
        ..Default::default()
    };
    let mut batch = empty();
    let mut deadline: Option<tokio::time::Instant> = None;
    let (mut acked, mut declined, mut failed) = (0usize, 0u32, 0u32);
    loop {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, answers.next()).await {
                Ok(x) => x,
                Err(_) => {
                    let _ = up.send(std::mem::replace(&mut batch, empty())).await;
                    deadline = None;
                    continue;
                }
            },
            None => answers.next().await,
        };
        let Some((device, a)) = next else { break };
        match a {
            Answer::Acked => {
                acked += 1;
                batch.device_ids.push(device);
            }
            Answer::Declined => {
                declined += 1;
                batch.declined += 1;
            }
            Answer::Failed => {
                failed += 1;
                batch.failed += 1;
            }
        }
        deadline.get_or_insert_with(|| tokio::time::Instant::now() + REPORT_AFTER);
        if batch.device_ids.len() >= ACKS_PER_REPORT {
            let _ = up.send(std::mem::replace(&mut batch, empty())).await;
            deadline = None;
        }
    }
    if deadline.is_some() {
        let _ = up.send(batch).await;
    }
    stats.acked.fetch_add(acked as u64, Ordering::Relaxed);
    stats.declined.fetch_add(declined.into(), Ordering::Relaxed);
    stats.failed.fetch_add(failed.into(), Ordering::Relaxed);
    info!(push = %push_id, agents = n, acked, declined, failed, "broadcast fanned out");
}

async fn one(conn: &quinn::Connection, frame: Msg, push_id: &str) -> Answer {
    let Ok((mut send, mut recv)) = conn.open_bi().await else {
        return Answer::Failed;
    };
    if stream::write_one_frame(&mut send, frame).await.is_err() {
        return Answer::Failed;
    }
    let _ = send.finish();
    match stream::read_one_frame(&mut recv, MAX_ANSWER).await {
        Ok(Msg::PushAck(a)) if a.id == push_id => Answer::Acked,
        Ok(Msg::Refusal(r)) => {
            debug!(reason = %r.message, "an agent did not take a broadcast");
            Answer::Declined
        }
        _ => Answer::Failed,
    }
}
