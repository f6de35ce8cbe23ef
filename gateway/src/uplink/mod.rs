//! The gateway's persistent uplink to the server (T3, T4, T5, T6).
//!
//! Two ways to get the connection, one way to use it:
//! - **dial** (default, T3): the gateway dials the server from inside the office; on loss it
//!   re-dials after a jittered exponential backoff that resets only after the link has been
//!   healthy for a while, and obeys a retry-after from the server.
//! - **listen** (DMZ, T4, [`listen`]): the gateway listens and the server dials it; the newest
//!   connection from the server replaces an older one.
//!
//! Either way the gateway then opens the control stream and runs the control-stream machine
//! (`outpost_proto::control`, channel `Uplink`): hello, periodic reports up, directives down.
//! Keep-alives below the NAT's UDP mapping timeout and path migration after a NAT rebinding
//! are quinn's: the connection survives a changed public address or port without a reconnect
//! (T5).

mod listen;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use outpost_net::{endpoint, refuse, stream};
use outpost_proto::backoff::{Backoff, BackoffConfig};
use outpost_proto::control::{Channel, ControlError, Opener, OpenerEvent};
use outpost_proto::error::Refused;
use outpost_proto::pb::v1::envelope::Msg;
use outpost_proto::pki;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument, info, info_span, warn};

use crate::config::UplinkMode;
use crate::node::Node;

/// The uplink as the rest of the gateway sees it.
#[derive(Debug, Clone, Default)]
pub struct UplinkState {
    /// The live connection, if up.
    pub conn: Option<quinn::Connection>,
    /// Unix seconds since when it is up.
    pub since: i64,
    /// Why it is down / the last failure.
    pub last_error: String,
    /// Next attempt, unix ms, while down.
    pub retry_at_ms: i64,
    /// The id the server knows the uplink by (its `admin status` shows the same).
    pub server_connection_id: u64,
}

/// The uplink handle: its state (written only by the uplink task), how to dial, counters.
#[derive(Debug)]
pub struct Uplink {
    state: watch::Sender<UplinkState>,
    /// Where a listen-mode gateway waits for the server (status, tests).
    listen_addr: Mutex<Option<SocketAddr>>,
    connects: AtomicU64,
}

impl Default for Uplink {
    fn default() -> Self {
        Uplink::new()
    }
}

impl Uplink {
    /// An uplink (it dials with the node's TLS configuration of the moment).
    pub fn new() -> Uplink {
        Uplink {
            state: watch::Sender::new(UplinkState::default()),
            listen_addr: Mutex::new(None),
            connects: AtomicU64::new(0),
        }
    }

    /// The live connection, if the uplink is up.
    pub fn conn(&self) -> Option<quinn::Connection> {
        self.state.borrow().conn.clone()
    }

    /// A snapshot of the state.
    pub fn state(&self) -> UplinkState {
        self.state.borrow().clone()
    }

    /// Watches the state.
    pub fn subscribe(&self) -> watch::Receiver<UplinkState> {
        self.state.subscribe()
    }

    /// Uplink connections established since start.
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Where a listen-mode gateway waits for the server.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        *self.listen_addr.lock().expect("listen addr lock")
    }

    fn set_up(&self, conn: quinn::Connection, server_connection_id: u64) {
        self.connects.fetch_add(1, Ordering::Relaxed);
        self.state.send_replace(UplinkState {
            conn: Some(conn),
            since: outpost_net::unix_now(),
            last_error: String::new(),
            retry_at_ms: 0,
            server_connection_id,
        });
    }

    fn set_down(&self, why: String, retry_at_ms: i64) {
        self.state.send_replace(UplinkState {
            conn: None,
            since: 0,
            last_error: why,
            retry_at_ms,
            server_connection_id: 0,
        });
    }
}

/// Why an uplink ended.
#[derive(Debug, thiserror::Error)]
enum Ended {
    /// The server refused (possibly with a retry-after).
    #[error("{0}")]
    Refused(Refused),
    /// The connection or the control stream failed.
    #[error("{0}")]
    Lost(String),
}

impl From<ControlError> for Ended {
    fn from(e: ControlError) -> Ended {
        match e {
            ControlError::Refused(r) => Ended::Refused(r),
            other => Ended::Lost(other.to_string()),
        }
    }
}

fn lost(e: &quinn::ConnectionError) -> Ended {
    match refuse::refusal_of(e) {
        Some(r) => Ended::Refused(r),
        None => Ended::Lost(refuse::explain(e)),
    }
}

/// Broadcasts fanned out at once; more are dropped (counted) and reach their agents in their
/// own sessions (the server's fallback).
pub const MAX_FANOUTS: usize = 8;

/// Runs until shutdown.
pub async fn run(node: std::sync::Arc<Node>) {
    match node.config().uplink.mode {
        UplinkMode::Dial => run_dial(&node).await,
        UplinkMode::Listen => listen::run(node).await,
    }
}

fn set_down(node: &Node, why: String, retry_at_ms: i64) {
    node.uplink().set_down(why, retry_at_ms);
    node.status_changed();
}

async fn run_dial(node: &Node) {
    let c = &node.config().uplink;
    let mut backoff = Backoff::new(BackoffConfig {
        initial: c.reconnect_initial,
        max: c.reconnect_max,
        healthy_after: c.healthy_after,
    });
    // P2: the deployment's instances, starting at this gateway's place; after losing one the
    // next round starts at the one after it, so a killed instance costs no dial time-out.
    let servers = node.config().server.spread_for(node.device_id());
    let mut next = 0;
    loop {
        if node.runtime().is_shutting_down() {
            return;
        }
        let mut ended = None;
        for i in 0..servers.len() {
            let at = (next + i) % servers.len();
            let server = &servers[at];
            let span = info_span!("uplink", %server);
            let r = async {
                match dial(node, server).await {
                    Err(e) => Err(e),
                    Ok((ep, conn)) => {
                        let r = serve(node, conn, &mut backoff).await;
                        ep.close(quinn::VarInt::from_u32(0), b"uplink ended; re-dialling");
                        Ok(r)
                    }
                }
            }
            .instrument(span)
            .await;
            match r {
                // Unreachable or refused before it was up: the next instance.
                Err(e) => {
                    if servers.len() > 1 {
                        warn!(%server, reason = %e, "server instance unusable; trying the next");
                    }
                    ended = Some(e);
                }
                // Up, then lost: a round starting at the next instance.
                Ok(r) => {
                    ended = r;
                    next = at + 1;
                    break;
                }
            }
            if node.runtime().is_shutting_down() {
                return;
            }
        }
        if node.runtime().is_shutting_down() {
            return;
        }
        backoff.on_disconnected(Instant::now().into_std());
        if let Some(Ended::Refused(r)) = &ended
            && let Some(d) = r.retry_after()
        {
            backoff.on_retry_after(d);
        }
        let delay = backoff.next_delay(outpost_net::jitter_unit());
        let why = ended
            .map(|e| e.to_string())
            .unwrap_or_else(|| "closed".into());
        warn!(reason = %why, retry_in = ?delay, "uplink down");
        set_down(
            node,
            why,
            outpost_net::unix_now_ms() + delay.as_millis() as i64,
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = node.runtime().cancelled() => return,
        }
    }
}

/// Dials the server. A fresh socket per attempt: after an outage the old NAT mapping is gone
/// anyway.
async fn dial(node: &Node, server: &str) -> Result<(quinn::Endpoint, quinn::Connection), Ended> {
    let addr = endpoint::resolve(server)
        .await
        .map_err(|e| Ended::Lost(e.to_string()))?;
    let ep = endpoint::client_endpoint(addr).map_err(|e| Ended::Lost(e.to_string()))?;
    let connecting = ep
        .connect_with(node.tls().uplink_client.clone(), addr, pki::SERVER_NAME)
        .map_err(|e| Ended::Lost(refuse::explain_connect(&e)))?;
    // A dead instance answers nothing: give up on it after the hello time-out, not the idle
    // time-out, and try the next.
    let limit = node.config().timing.uplink_hello_timeout;
    let conn = tokio::select! {
        c = tokio::time::timeout(limit, connecting) => match c {
            Err(_) => return Err(Ended::Lost(format!("the server at {addr} did not answer within {limit:?}"))),
            Ok(c) => c.map_err(|e| match refuse::refusal_of(&e) {
                Some(r) => Ended::Refused(r),
                None => Ended::Lost(format!("cannot reach the server at {addr}: {}", refuse::explain(&e))),
            })?,
        },
        _ = node.runtime().cancelled() => return Err(Ended::Lost("shutting down".into())),
    };
    Ok((ep, conn))
}

/// Uses an established uplink until it ends. Returns why it ended (None: clean shutdown).
async fn serve(node: &Node, conn: quinn::Connection, backoff: &mut Backoff) -> Option<Ended> {
    let (send, recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return Some(lost(&e)),
    };
    let mut ctl = stream::framed(stream::bi(send, recv), 1 << 20);
    let mut sm = Opener::new(
        Channel::Uplink,
        &format!("outpost-gateway {}", outpost_proto::SOFTWARE_VERSION),
    );
    let server_connection_id = match open(node, &conn, &mut sm, &mut ctl).await {
        Ok(id) => id,
        Err(e) => return Some(e),
    };
    backoff.on_connected(Instant::now().into_std());
    info!(remote = %conn.remote_address(), "uplink up");
    node.uplink().set_up(conn.clone(), server_connection_id);
    node.status_changed();

    let mut report = tokio::time::interval(node.config().uplink.report_interval);
    // D3: every host known goes up first, then what each scan sees.
    let mut discovered = node.discovery().reports().lock().await;
    let full = node.discovery().full_report();
    if !full.hosts.is_empty() {
        let _ = sm.send(Msg::DiscoveryReport(full));
        let _ = stream::send_queued(&mut ctl, &mut sm).await;
    }
    let mut renewal = outpost_net::renewal::Renewal::default();
    // D4: broadcasts being fanned out; their acknowledgements go up in batches.
    let mut fanouts = futures_util::stream::FuturesUnordered::new();
    let (acks_tx, mut acks_rx) = tokio::sync::mpsc::channel(16);
    let running = |n: usize| {
        node.office()
            .fanout()
            .running
            .store(n as u64, Ordering::Relaxed)
    };
    let ended = loop {
        tokio::select! {
            e = conn.closed() => break Some(lost(&e)),
            Some(()) = fanouts.next(), if !fanouts.is_empty() => running(fanouts.len()),
            Some(r) = discovered.recv() => {
                let _ = sm.send(Msg::DiscoveryReport(r));
                let _ = stream::send_queued(&mut ctl, &mut sm).await;
            }
            Some(acks) = acks_rx.recv() => {
                let _ = sm.send(Msg::BroadcastAcks(acks));
                let _ = stream::send_queued(&mut ctl, &mut sm).await;
            }
            _ = report.tick() => {
                let r = node.report();
                // A failed send shows up as `closed()` on the next turn.
                let _ = sm.send(Msg::GatewayReport(r));
                // S9: renew over the uplink when the certificate is due (checked each report).
                let id = node.tls();
                if let Some(csr) = renewal.request_if_due(id.renewal_due, "gateway", outpost_net::unix_now()) {
                    let _ = sm.send(Msg::CertRenewal(outpost_proto::pb::v1::CertRenewal { csr_der: csr }));
                }
                let _ = stream::send_queued(&mut ctl, &mut sm).await;
                node.status_changed();
            }
            m = ctl.next() => match m {
                Some(Ok(msg)) => {
                    if let Err(e) = sm.handle_message(msg) {
                        let _ = stream::send_queued(&mut ctl, &mut sm).await;
                        break Some(e.into());
                    }
                    while let Some(OpenerEvent::Message(m)) = sm.poll_event() {
                        let id = node.tls();
                        let next = match *m {
                            Msg::SignedBroadcast(b) => {
                                if fanouts.len() < MAX_FANOUTS {
                                    fanouts.push(crate::fanout::deliver(node, b, acks_tx.clone()));
                                    running(fanouts.len());
                                } else {
                                    node.office().fanout().dropped_busy.fetch_add(1, Ordering::Relaxed);
                                }
                                None
                            }
                            Msg::GatewayDirective(d) => {
                                crate::cache::serve::on_directive(node, &d);
                                d.trust.and_then(|t| {
                                    outpost_net::renewal::with_trust(&id.identity, node.data(), t)
                                })
                            }
                            Msg::CertRenewed(r) => renewal.done(&id.identity, node.data(), r),
                            _ => None,
                        };
                        if let Some(next) = next {
                            crate::certs::swap(node, next);
                        }
                    }
                }
                // A stream that fails because the connection closed: the close says why.
                Some(Err(e)) => break Some(match conn.close_reason() {
                    Some(c) => lost(&c),
                    None => Ended::Lost(e.to_string()),
                }),
                None => break Some(lost(&conn.closed().await)),
            },
            _ = node.runtime().cancelled() => {
                conn.close(quinn::VarInt::from_u32(0), b"gateway shutting down");
                break None;
            }
        }
    };
    // Fan-outs not finished end with the uplink (the server sends those pushes in the agents'
    // own sessions).
    running(0);
    ended
}

/// Runs the opening exchange: hello out, the server's answer within the hello timeout.
/// Returns the id the server knows the connection by.
async fn open<S>(
    node: &Node,
    conn: &quinn::Connection,
    sm: &mut Opener,
    ctl: &mut stream::Framed<S>,
) -> Result<u64, Ended>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream::send_queued(ctl, sm)
        .await
        .map_err(|e| Ended::Lost(e.to_string()))?;
    let wait = node.config().timing.uplink_hello_timeout;
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    while !sm.is_open() {
        let m = tokio::select! {
            m = ctl.next() => m,
            _ = &mut deadline => {
                return Err(Ended::Lost(format!("no hello answer from the server within {wait:?}")));
            }
        };
        match m {
            Some(Ok(msg)) => {
                if let Err(e) = sm.handle_message(msg) {
                    let _ = stream::send_queued(ctl, sm).await;
                    return Err(e.into());
                }
            }
            // The stream ends when the server closes the connection with a refusal.
            _ => {
                return Err(match conn.close_reason() {
                    Some(e) => lost(&e),
                    None => Ended::Lost(
                        "the server ended the control stream without a hello answer".into(),
                    ),
                });
            }
        }
    }
    let mut id = 0;
    while let Some(ev) = sm.poll_event() {
        if let OpenerEvent::Established { connection_id, .. } = ev {
            id = connection_id;
        }
    }
    Ok(id)
}

/// Keeps the uplink of a listen-mode gateway (used by [`listen`]).
async fn serve_accepted(node: &Node, conn: quinn::Connection) {
    let mut backoff = Backoff::new(BackoffConfig::default());
    let ended = serve(node, conn, &mut backoff).await;
    if !node.runtime().is_shutting_down() {
        let why = ended
            .map(|e| e.to_string())
            .unwrap_or_else(|| "closed".into());
        warn!(reason = %why, "uplink down; waiting for the server to dial in again");
        set_down(node, why, 0);
    }
}

/// Counts a listen address for status.
fn set_listen_addr(node: &Node, addr: Option<SocketAddr>) {
    *node.uplink().listen_addr.lock().expect("listen addr lock") = addr;
}
