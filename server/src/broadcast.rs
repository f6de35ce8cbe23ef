//! Broadcast pushes on the server (D4): a push for many agents goes up each gateway's uplink
//! once, signed ([`outpost_proto::broadcast`]); the gateway fans it out to the agents connected
//! to it and answers with their acknowledgements in one message. Agents connected directly get
//! it in their session, offline ones from their mailbox at their next connect.
//!
//! A gateway's acknowledgements count only for devices whose live session here is relayed
//! through that gateway: a gateway cannot acknowledge for devices behind another one. (It could
//! claim an acknowledgement for one of its own agents that never got the push — as it could drop
//! any traffic; the push then waits in no mailbox. Agents' own acknowledgements are not signed.)

use std::sync::atomic::{AtomicU64, Ordering};

use outpost_proto::pb::v1::{BroadcastAcks, BroadcastBody, Push, envelope::Msg};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::debug;

use crate::node::Node;
use crate::sessions::registry::ByPath;

/// Counters of broadcasts, for status and tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Signed broadcasts handed to gateways' control streams.
    pub sent_to_gateways: AtomicU64,
    /// Acknowledgements taken from gateways' reports.
    pub acks: AtomicU64,
    /// Acknowledgements ignored: the device's session is not relayed by that gateway.
    pub acks_ignored: AtomicU64,
}

/// The devices a broadcast went to through gateways, each with its acknowledgement waiter;
/// the rest of `paths` (direct, offline, and the devices of gateways that could not take it)
/// is left for the caller.
pub(crate) fn fan_out(
    node: &Node,
    push: &Push,
    group: &str,
    expires_at_ms: i64,
    paths: &mut ByPath,
) -> (Vec<(String, oneshot::Receiver<Instant>)>, usize) {
    let signed = node.licensing().sign_broadcast(&BroadcastBody {
        push: Some(push.clone()),
        group: group.to_owned(),
        expires_at_ms,
    });
    let registry = node.sessions().registry();
    let mut waiting = vec![];
    let mut gateways = 0;
    for (gw, devices) in std::mem::take(&mut paths.via) {
        // Waiters first: an acknowledgement may come back before the loop ends.
        let rxs: Vec<_> = devices
            .iter()
            .map(|d| (d.clone(), registry.wait_ack(d, &push.id)))
            .collect();
        if node
            .gateways()
            .send(&gw, Msg::SignedBroadcast(signed.clone()))
        {
            gateways += 1;
            node.broadcasts()
                .sent_to_gateways
                .fetch_add(1, Ordering::Relaxed);
            waiting.extend(rxs);
        } else {
            for d in devices {
                registry.forget_ack(&d, &push.id);
                paths.direct.push(d);
            }
        }
    }
    (waiting, gateways)
}

/// A gateway's report of which of its agents acted on a broadcast.
pub(crate) async fn acked(node: &Node, gateway: &str, a: BroadcastAcks) {
    let registry = node.sessions().registry();
    let (mut taken, mut ignored) = (0u64, 0u64);
    for d in &a.device_ids {
        if registry.via(d).flatten().as_deref() == Some(gateway) {
            registry.acked(d, &a.push_id);
            node.store().push_acked(d, &a.push_id).await;
            taken += 1;
        } else {
            ignored += 1;
        }
    }
    node.broadcasts().acks.fetch_add(taken, Ordering::Relaxed);
    node.broadcasts()
        .acks_ignored
        .fetch_add(ignored, Ordering::Relaxed);
    debug!(push = %a.push_id, %gateway, acked = taken, ignored, declined = a.declined, failed = a.failed, "broadcast acknowledgements");
}
