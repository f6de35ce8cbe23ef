//! The gateway's persistent uplink to the server (T3, T4, T5, T6).
//!
//! Two ways to get the connection, one way to use it:
//! - **dial** (default, T3): the gateway dials the server from inside the office; on loss it
//!   re-dials after a jittered exponential backoff that resets only after the link has been
//!   healthy for a while, and obeys a retry-after from the server.
//! - **listen** (DMZ, T4): the gateway listens and the server dials it; the newest connection
//!   from the server replaces an older one.
//!
//! Either way the gateway then opens the control stream, says hello, reports periodically and
//! relays agent streams over the connection. Keep-alives below the NAT's UDP mapping timeout
//! and path migration after a NAT rebinding are quinn's: the connection survives a changed
//! public address or port without a reconnect (T5).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::{SinkExt, StreamExt};
use outpost_net::{endpoint, refuse, stream, transport};
use outpost_proto::backoff::{Backoff, BackoffConfig};
use outpost_proto::error::{RefusalCode, Refused};
use outpost_proto::pb::v1::{GatewayReport, Role, envelope::Msg};
use outpost_proto::{alpn, pki, session};
use tokio::time::Instant;
use tracing::{Instrument, info, info_span, warn};

use crate::config::UplinkMode;
use crate::node::{Shared, UplinkState};

/// Runs until shutdown.
pub async fn run(shared: Arc<Shared>) {
    match shared.config.uplink.mode {
        UplinkMode::Dial => run_dial(shared).await,
        UplinkMode::Listen => run_listen(shared).await,
    }
}

fn set_down(shared: &Shared, why: String, retry_at_ms: i64) {
    shared.uplink.send_replace(UplinkState {
        conn: None,
        since: 0,
        last_error: why,
        retry_at_ms,
    });
    shared.status_changed.notify_one();
}

async fn run_dial(shared: Arc<Shared>) {
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
        let ended = async {
            match dial(&shared).await {
                Err(e) => Some(e),
                Ok((ep, conn)) => {
                    let r = serve(&shared, conn, &mut backoff).await;
                    ep.close(quinn::VarInt::from_u32(0), b"");
                    r
                }
            }
        }
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
        set_down(
            &shared,
            why,
            outpost_net::unix_now_ms() + delay.as_millis() as i64,
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

/// Dials the server. A fresh socket per attempt: after an outage the old NAT mapping is gone
/// anyway.
async fn dial(shared: &Shared) -> anyhow::Result<(quinn::Endpoint, quinn::Connection)> {
    let addr = endpoint::resolve(&shared.config.server).await?;
    *shared.server_addr.lock().expect("server addr lock") = addr.to_string();
    let ep = endpoint::client_endpoint(addr)?;
    let connecting = ep
        .connect_with(shared.uplink_client.clone(), addr, pki::SERVER_NAME)
        .map_err(|e| anyhow::anyhow!("{}", refuse::explain_connect(&e)))?;
    let conn = tokio::select! {
        c = connecting => c.map_err(|e| match refuse::refusal_of(&e) {
            Some(r) => anyhow::Error::from(r),
            None => anyhow::anyhow!("cannot reach the server at {addr}: {}", refuse::explain(&e)),
        })?,
        _ = shared.shutdown.cancelled() => anyhow::bail!("shutting down"),
    };
    Ok((ep, conn))
}

/// Serves the DMZ listener: the server dials in; the newest connection wins.
async fn run_listen(shared: Arc<Shared>) {
    let cfg = &shared.config;
    let server_cfg = match listen_config(&shared) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %format!("{e:#}"), "cannot build the uplink listener");
            set_down(&shared, format!("{e:#}"), 0);
            return;
        }
    };
    let ep = match endpoint::endpoint(cfg.uplink.listen, &cfg.socket, Some(server_cfg)) {
        Ok(e) => e,
        Err(e) => {
            let why = format!(
                "cannot listen for the server on udp {}: {e}",
                cfg.uplink.listen
            );
            warn!("{why}");
            set_down(&shared, why, 0);
            return;
        }
    };
    info!(listen = %ep.local_addr().map(|a| a.to_string()).unwrap_or_default(), "waiting for the server to dial in (DMZ mode)");
    *shared.uplink_listen.lock().expect("uplink listen lock") = ep.local_addr().ok();
    let mut current: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let incoming = tokio::select! {
            i = ep.accept() => match i { Some(i) => i, None => break },
            _ = shared.shutdown.cancelled() => break,
        };
        let conn = match incoming.await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %refuse::explain(&e), "server connection failed");
                continue;
            }
        };
        // Only the server may hold this gateway's uplink: its certificate (verified against the
        // CA during the handshake) must carry the server's name.
        let is_server =
            endpoint::peer_leaf(&conn).is_some_and(|c| pki::has_dns_name(&c, pki::SERVER_NAME));
        if !is_server {
            refuse::close(
                &conn,
                &Refused::new(
                    RefusalCode::WrongRole,
                    "only the server may connect to a gateway's uplink port",
                ),
            );
            continue;
        }
        if let Some(old) = current.take() {
            old.abort();
        }
        let sh = shared.clone();
        current = Some(tokio::spawn(
            async move {
                let mut backoff = Backoff::new(BackoffConfig::default());
                let ended = serve(&sh, conn, &mut backoff).await;
                if !sh.shutdown.is_cancelled() {
                    let why = ended
                        .map(|e| format!("{e:#}"))
                        .unwrap_or_else(|| "closed".into());
                    warn!(reason = %why, "uplink down; waiting for the server to dial in again");
                    set_down(&sh, why, 0);
                }
            }
            .instrument(info_span!("uplink", mode = "listen")),
        ));
    }
    if let Some(t) = current {
        t.abort();
    }
    ep.close(quinn::VarInt::from_u32(0), b"gateway shutting down");
}

fn listen_config(shared: &Shared) -> anyhow::Result<quinn::ServerConfig> {
    let id = &shared.identity;
    let tls = pki::server_config(
        &id.identity,
        &id.ca,
        &[alpn::GATEWAY],
        pki::ClientAuth::Required,
    )?;
    let mut c = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls))?,
    ));
    let u = &shared.config.uplink;
    c.transport_config(transport::uplink(u.keep_alive, u.idle_timeout));
    Ok(c)
}

/// Uses an established uplink until it ends. Returns why it ended (None: clean shutdown).
async fn serve(
    shared: &Shared,
    conn: quinn::Connection,
    backoff: &mut Backoff,
) -> Option<anyhow::Error> {
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

    let closed = |e: quinn::ConnectionError| match refuse::refusal_of(&e) {
        Some(r) => anyhow::Error::from(r),
        None => anyhow::anyhow!("{}", refuse::explain(&e)),
    };
    let mut report = tokio::time::interval(shared.config.uplink.report_interval);
    loop {
        tokio::select! {
            e = conn.closed() => break Some(closed(e)),
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
                // A failed send shows up as `closed()` on the next turn.
                let _ = ctl.send(Msg::GatewayReport(r)).await;
                shared.status_changed.notify_one();
            }
            m = ctl.next() => match m {
                Some(Ok(Msg::GatewayDirective(d))) => info!(?d, "directive from the server"),
                Some(Ok(Msg::Refusal(r))) => break Some(Refused(r).into()),
                Some(Ok(_)) => {}
                Some(Err(e)) => break Some(e.into()),
                None => break Some(closed(conn.closed().await)),
            },
            _ = shared.shutdown.cancelled() => {
                conn.close(quinn::VarInt::from_u32(0), b"gateway shutting down");
                break None;
            }
        }
    }
}
