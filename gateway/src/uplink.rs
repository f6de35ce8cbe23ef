//! The gateway's persistent uplink to the server (T3, T5, T6).
//!
//! One task owns the connection: dial, hello on the control stream, periodic reports, and on
//! loss a re-dial after a jittered exponential backoff that resets only after the link has
//! been healthy for a while; a retry-after from the server is obeyed. Keep-alives (below the
//! NAT's UDP mapping timeout) and path migration after a NAT rebinding are quinn's: the
//! connection survives a changed public address or port without a reconnect (T5).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::{SinkExt, StreamExt};
use outpost_net::{refuse, stream};
use outpost_proto::backoff::{Backoff, BackoffConfig};
use outpost_proto::error::Refused;
use outpost_proto::pb::v1::{GatewayReport, Role, envelope::Msg};
use outpost_proto::{pki, session};
use tokio::time::Instant;
use tracing::{Instrument, info, info_span, warn};

use crate::node::{Shared, UplinkState};

/// Runs until shutdown.
pub async fn run(shared: Arc<Shared>) {
    let c = &shared.config.uplink;
    let mut backoff = Backoff::new(BackoffConfig {
        initial: c.reconnect_initial,
        max: c.reconnect_max,
        healthy_after: c.healthy_after,
    });
    loop {
        if shared.shutdown.is_cancelled() {
            return;
        }
        let span = info_span!("uplink", server = %shared.config.server);
        let ended = connect_and_serve(&shared, &mut backoff)
            .instrument(span)
            .await;
        if shared.shutdown.is_cancelled() {
            return;
        }
        backoff.on_disconnected(Instant::now().into_std());
        if let Some(r) = ended.as_ref().and_then(|e| e.downcast_ref::<Refused>())
            && let Some(d) = r.retry_after()
        {
            backoff.on_retry_after(d);
        }
        let delay = backoff.next_delay(outpost_net::jitter_unit());
        let why = ended
            .map(|e| format!("{e:#}"))
            .unwrap_or_else(|| "closed".into());
        warn!(reason = %why, retry_in = ?delay, "uplink down");
        shared.uplink.send_replace(UplinkState {
            conn: None,
            since: 0,
            last_error: why,
            retry_at_ms: outpost_net::unix_now_ms() + delay.as_millis() as i64,
        });
        shared.status_changed.notify_one();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

/// One uplink lifetime. Returns why it ended (None for a clean shutdown).
async fn connect_and_serve(shared: &Arc<Shared>, backoff: &mut Backoff) -> Option<anyhow::Error> {
    let addr = match outpost_net::endpoint::resolve(&shared.config.server).await {
        Ok(a) => a,
        Err(e) => return Some(e),
    };
    *shared.server_addr.lock().expect("server addr lock") = addr.to_string();
    // A fresh socket per attempt: after a long outage the old NAT mapping is gone anyway.
    let ep = match outpost_net::endpoint::client_endpoint(addr) {
        Ok(e) => e,
        Err(e) => return Some(e.into()),
    };
    let connecting = match ep.connect_with(shared.uplink_client.clone(), addr, pki::SERVER_NAME) {
        Ok(c) => c,
        Err(e) => return Some(anyhow::anyhow!("{}", refuse::explain_connect(&e))),
    };
    let conn = tokio::select! {
        c = connecting => match c {
            Ok(c) => c,
            Err(e) => {
                return Some(match refuse::refusal_of(&e) {
                    Some(r) => r.into(),
                    None => anyhow::anyhow!("cannot reach the server at {addr}: {}", refuse::explain(&e)),
                });
            }
        },
        _ = shared.shutdown.cancelled() => return None,
    };
    let (send, recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return Some(anyhow::anyhow!("{}", refuse::explain(&e))),
    };
    let mut ctl = stream::framed(stream::bi(send, recv), 1 << 20);
    let hello = session::hello(
        Role::Gateway,
        &format!("outpost-gateway {}", outpost_proto::SOFTWARE_VERSION),
        &[],
    );
    if let Err(e) = ctl.send(Msg::Hello(hello)).await {
        return Some(e.into());
    }
    match tokio::time::timeout(std::time::Duration::from_secs(30), ctl.next()).await {
        Ok(Some(Ok(Msg::HelloAck(_)))) => {}
        Ok(Some(Ok(Msg::Refusal(r)))) => return Some(Refused(r).into()),
        other => {
            let why = conn
                .close_reason()
                .and_then(|e| refuse::refusal_of(&e).map(anyhow::Error::from))
                .unwrap_or_else(|| anyhow::anyhow!("no hello answer from the server ({other:?})"));
            return Some(why);
        }
    }
    backoff.on_connected(Instant::now().into_std());
    shared.stats.uplink_connects.fetch_add(1, Ordering::Relaxed);
    info!(remote = %conn.remote_address(), "uplink up");
    shared.uplink.send_replace(UplinkState {
        conn: Some(conn.clone()),
        since: outpost_net::unix_now(),
        last_error: String::new(),
        retry_at_ms: 0,
    });
    shared.status_changed.notify_one();

    let mut report = tokio::time::interval(shared.config.uplink.report_interval);
    let ended = loop {
        tokio::select! {
            e = conn.closed() => {
                break Some(match refuse::refusal_of(&e) {
                    Some(r) => r.into(),
                    None => anyhow::anyhow!("{}", refuse::explain(&e)),
                });
            }
            _ = report.tick() => {
                let s = shared.status();
                let r = GatewayReport {
                    agents_connected: s.agents_connected,
                    sessions_relayed: s.sessions_active,
                    sessions_refused: s.refused_no_uplink + s.refused_overload,
                    bytes_up: s.bytes_up,
                    bytes_down: s.bytes_down,
                    software: format!("outpost-gateway {}", outpost_proto::SOFTWARE_VERSION),
                };
                if ctl.send(Msg::GatewayReport(r)).await.is_err() {
                    // The connection error, if any, is picked up by `closed()` next turn.
                }
                shared.status_changed.notify_one();
            }
            m = ctl.next() => match m {
                Some(Ok(Msg::GatewayDirective(d))) => info!(?d, "directive from the server"),
                Some(Ok(Msg::Refusal(r))) => break Some(Refused(r).into()),
                Some(Ok(_)) => {}
                Some(Err(e)) => break Some(e.into()),
                None => {
                    let e = conn.closed().await;
                    break Some(match refuse::refusal_of(&e) {
                        Some(r) => r.into(),
                        None => anyhow::anyhow!("{}", refuse::explain(&e)),
                    });
                }
            },
            _ = shared.shutdown.cancelled() => {
                conn.close(quinn::VarInt::from_u32(0), b"gateway shutting down");
                break None;
            }
        }
    };
    ep.close(quinn::VarInt::from_u32(0), b"");
    ended
}
