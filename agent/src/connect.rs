//! Path selection and reconnects (T6, T8): the connect loop tries the gateways in order, then
//! the server directly; each attempt dials, opens the session stream (inner TLS through a
//! gateway, S1) and hands it to [`crate::session`]. Backoff with full jitter between rounds;
//! a refusal that retrying cannot fix waits the longest backoff.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use outpost_net::{endpoint, refuse, stream};
use outpost_proto::backoff::{Backoff, BackoffConfig};
use outpost_proto::error::{Fault, RefusalCode, Refused};
use outpost_proto::pki;
use rustls_pki_types::ServerName;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::node::{AgentEvent, Shared};
use crate::session::run_session;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    Gateway,
    Server,
}

/// How one attempt on one path ended.
pub(crate) enum Attempt {
    /// Could not reach a usable session on this path; try the next.
    Unreachable(String),
    /// The session ended because a path preferred to it answers again (T8): start over from
    /// the first path at once.
    MovedBack(String),
    /// The session was ended on request ([`crate::AgentHandle::reconnect`]): connect again at
    /// once from the first path.
    Reconnect,
    /// A session ran (or the server refused it); do not try other paths now.
    Ended {
        reason: String,
        retry_after: Option<Duration>,
        established: bool,
    },
}

/// The paths in order of preference: the gateways (the server's list, else the configured
/// ones), then the server instances directly (the server's list, then the configured
/// addresses not in it), starting at this device's place among them (P2: agents spread over
/// equal instances).
pub(crate) fn targets(shared: &Shared) -> Vec<(Via, String)> {
    let learned = shared
        .server_gateways
        .lock()
        .expect("gateways lock")
        .clone();
    let gws = if learned.gateways.is_empty() {
        shared.config.gateways.clone()
    } else {
        learned.gateways
    };
    let mut servers = learned.servers;
    for s in shared.config.server.iter() {
        if !servers.contains(s) {
            servers.push(s.clone());
        }
    }
    let servers = outpost_net::config::Addresses(servers).spread_for(&shared.device_id);
    let mut v: Vec<(Via, String)> = gws.into_iter().map(|g| (Via::Gateway, g)).collect();
    v.extend(servers.into_iter().map(|s| (Via::Server, s)));
    v
}

pub(crate) async fn connect_loop(shared: Arc<Shared>) {
    let c = &shared.config.connect;
    let mut backoff = Backoff::new(BackoffConfig {
        initial: c.reconnect_initial,
        max: c.reconnect_max,
        healthy_after: c.healthy_after,
    });
    loop {
        if shared.shutdown.is_cancelled() {
            return;
        }
        shared.status.send_modify(|s| {
            s.state = "connecting".into();
            s.updated_at = outpost_net::unix_now();
        });
        let mut last = String::from("no gateway or server configured");
        let mut retry_after = None;
        let mut moved_back = false;
        let paths = targets(&shared);
        for (i, (via, target)) in paths.iter().enumerate() {
            if shared.shutdown.is_cancelled() {
                return;
            }
            let started = Instant::now();
            // Server instances are equals: on one of them only a gateway is worth returning to.
            let preferred: Vec<(Via, String)> = paths[..i]
                .iter()
                .filter(|(v, _)| *via == Via::Gateway || *v == Via::Gateway)
                .cloned()
                .collect();
            match attempt(&shared, *via, target, &preferred).await {
                Attempt::Unreachable(e) => {
                    debug!(%target, error = %e, "path unusable, trying the next");
                    last = e;
                }
                Attempt::Reconnect => {
                    info!("reconnecting on request");
                    backoff.on_connected(started.into_std());
                    moved_back = true;
                    break;
                }
                Attempt::MovedBack(why) => {
                    info!(reason = %why, "back to a preferred path");
                    backoff.on_connected(started.into_std());
                    moved_back = true;
                    break;
                }
                Attempt::Ended {
                    reason,
                    retry_after: ra,
                    established,
                } => {
                    if established {
                        backoff.on_connected(started.into_std());
                    }
                    last = reason;
                    retry_after = ra;
                    break;
                }
            }
        }
        if shared.shutdown.is_cancelled() {
            return;
        }
        if moved_back {
            continue;
        }
        backoff.on_disconnected(Instant::now().into_std());
        if let Some(d) = retry_after {
            backoff.on_retry_after(d);
        }
        let delay = backoff.next_delay(outpost_net::jitter_unit());
        // S9: an expired certificate explains every failure; say so with the fix (the server
        // stays the judge: with a wrong local clock the next attempt may still succeed).
        let mut state = "offline";
        if let Some(why) = crate::certs::expired(&shared, outpost_net::unix_now()) {
            warn!(error = %last, "{why}");
            last = why;
            state = "certificate-expired";
        }
        info!(reason = %last, retry_in = ?delay, "offline");
        shared.status.send_modify(|s| {
            s.state = state.into();
            s.path.clear();
            s.last_error = last.clone();
            s.updated_at = outpost_net::unix_now();
        });
        let _ = shared
            .events
            .send(AgentEvent::Disconnected { reason: last });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

fn is_not_allowed(r: &Refused) -> bool {
    matches!(
        r.code().fault(),
        Fault::NotAllowed | Fault::PeerIncompatible
    )
}

/// A refusal that retrying soon cannot fix (revoked, unknown certificate, incompatible): come
/// back only after the longest backoff, so a fleet of such agents stays quiet.
pub(crate) fn refused_attempt(shared: &Shared, r: &Refused, established: bool) -> Attempt {
    let retry_after = if is_not_allowed(r) {
        let max = shared.config.connect.reconnect_max;
        Some(max.mul_f64(0.5 + outpost_net::jitter_unit() / 2.0))
    } else {
        r.retry_after()
    };
    Attempt::Ended {
        reason: r.to_string(),
        retry_after,
        established,
    }
}

/// A dialled connection on one path.
pub(crate) struct Dialled {
    pub(crate) ep: quinn::Endpoint,
    pub(crate) conn: quinn::Connection,
    /// "gateway <addr>" or "server <addr> (direct)".
    pub(crate) label: String,
}

/// Dials one path (QUIC + mutual TLS with the gateway or the server).
pub(crate) async fn dial(shared: &Arc<Shared>, via: Via, target: &str) -> Result<Dialled, Attempt> {
    let addr: SocketAddr = endpoint::resolve(target)
        .await
        .map_err(|e| Attempt::Unreachable(e.to_string()))?;
    let (client, name, label) = match via {
        Via::Gateway => (
            shared.tls().relay_client.clone(),
            pki::GATEWAY_NAME,
            format!("gateway {addr}"),
        ),
        Via::Server => (
            shared.tls().direct_client.clone(),
            pki::SERVER_NAME,
            format!("server {addr} (direct)"),
        ),
    };
    let ep = match &shared.endpoint {
        Some(e) => e.clone(),
        None => endpoint::client_endpoint(addr).map_err(|e| Attempt::Unreachable(e.to_string()))?,
    };
    let connecting = ep
        .connect_with(client, addr, name)
        .map_err(|e| Attempt::Unreachable(refuse::explain_connect(&e)))?;
    let wait = shared.config.connect.dial_timeout;
    let conn = tokio::select! {
        r = tokio::time::timeout(wait, connecting) => match r {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(match refuse::refusal_of(&e) {
                    Some(r) if is_not_allowed(&r) => refused_attempt(shared, &r, false),
                    _ => Attempt::Unreachable(format!("{label}: {}", refuse::explain(&e))),
                });
            }
            Err(_) => return Err(Attempt::Unreachable(format!("{label}: no answer within {wait:?}"))),
        },
        _ = shared.shutdown.cancelled() => return Err(Attempt::Unreachable("shutting down".into())),
    };
    Ok(Dialled { ep, conn, label })
}

/// Closes a dialled connection; lets the close go out when the socket is ours alone.
pub(crate) async fn hang_up(shared: &Shared, d: Dialled, why: &'static [u8]) {
    d.conn.close(quinn::VarInt::from_u32(0), why);
    if shared.endpoint.is_none() {
        let _ = tokio::time::timeout(Duration::from_millis(200), d.ep.wait_idle()).await;
    }
}

async fn attempt(
    shared: &Arc<Shared>,
    via: Via,
    target: &str,
    preferred: &[(Via, String)],
) -> Attempt {
    let d = match dial(shared, via, target).await {
        Ok(d) => d,
        Err(a) => return a,
    };
    *shared.path_now.lock().expect("path lock") = Some((via, d.conn.remote_address()));
    shared.update_wake.notify_one();
    let result = on_connection(shared, via, &d.conn, &d.label, preferred).await;
    *shared.path_now.lock().expect("path lock") = None;
    hang_up(shared, d, b"session over").await;
    result
}
async fn on_connection(
    shared: &Arc<Shared>,
    via: Via,
    conn: &quinn::Connection,
    label: &str,
    preferred: &[(Via, String)],
) -> Attempt {
    let closed_reason = |e: &quinn::ConnectionError| match refuse::refusal_of(e) {
        Some(r) => refused_attempt(shared, &r, false),
        None => Attempt::Unreachable(format!("{label}: {}", refuse::explain(e))),
    };
    let (send, recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return closed_reason(&e),
    };
    match via {
        Via::Server => run_session(shared, stream::bi(send, recv), label, conn, preferred).await,
        Via::Gateway => {
            let sni = ServerName::try_from(pki::SERVER_NAME).expect("static name");
            let tls = tokio::time::timeout(
                shared
                    .config
                    .connect
                    .dial_timeout
                    .max(Duration::from_secs(5)),
                shared
                    .tls()
                    .inner_tls
                    .clone()
                    .connect(sni, stream::bi(send, recv)),
            )
            .await;
            match tls {
                Ok(Ok(t)) => {
                    // D4: broadcasts the gateway fans out arrive on this connection.
                    let fan = crate::broadcast::serve(shared.clone(), conn.clone());
                    tokio::select! {
                        r = run_session(shared, t, label, conn, preferred) => r,
                        () = async { fan.await; std::future::pending().await } => unreachable!(),
                    }
                }
                Ok(Err(e)) => {
                    if let Some(e) = conn.close_reason() {
                        return closed_reason(&e);
                    }
                    let why = match stream_reset_code(&e) {
                        Some(c) if c == RefusalCode::UpstreamUnavailable.close_code() as u64 => {
                            "the gateway has no uplink to the server right now".to_owned()
                        }
                        Some(c) if c == RefusalCode::Overloaded.close_code() as u64 => {
                            "the gateway is at its session limit".to_owned()
                        }
                        _ => format!("inner TLS with the server through the gateway failed: {e}"),
                    };
                    Attempt::Unreachable(format!("{label}: {why}"))
                }
                Err(_) => Attempt::Unreachable(format!(
                    "{label}: no TLS answer from the server through the gateway"
                )),
            }
        }
    }
}

/// The QUIC reset code inside an I/O error from a stream, if it is one.
fn stream_reset_code(e: &std::io::Error) -> Option<u64> {
    let inner = e.get_ref()?;
    match inner.downcast_ref::<quinn::ReadError>() {
        Some(quinn::ReadError::Reset(c)) => Some(c.into_inner()),
        _ => match inner.downcast_ref::<quinn::WriteError>() {
            Some(quinn::WriteError::Stopped(c)) => Some(c.into_inner()),
            _ => None,
        },
    }
}
