//! Gateway uplinks on the server (T3, S1).
//!
//! The first stream a gateway opens is its control stream (hello, then periodic reports). Every
//! further stream relays one agent: a `RelayOpen` frame in the clear of the uplink's own TLS,
//! then the agent's inner TLS 1.3 session, which only the server can terminate. The agent's
//! certificate inside that inner session is what identifies it — the gateway can neither read
//! the session nor act as the agent.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use outpost_net::stream;
use outpost_proto::error::{RefusalCode, Refused};
use outpost_proto::pb::v1::{RelayKind, RelayOpen, Role, envelope::Msg};
use outpost_proto::session::msg_name;
use outpost_proto::{pki, version};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::node::{GatewayLink, Shared};
use crate::session::{INNER_HANDSHAKE_TIMEOUT, refuse_stream};
use crate::store::{DeviceRow, fp_hex};

/// Serves a gateway's uplink connection until it closes. `direction` says who dialed.
pub async fn serve(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    gateway: DeviceRow,
    direction: &'static str,
) {
    let credit = Arc::new(outpost_net::transport::raise_for_uplink(
        &conn,
        shared.config.limits.max_sessions_per_gateway,
    ));
    let control_guard = credit.opened();
    let now = outpost_net::unix_now();
    let _ = shared
        .store
        .touch(
            &gateway.id,
            &format!("uplink from {}", conn.remote_address()),
            now,
        )
        .await;
    // Control stream first.
    let control = tokio::select! {
        s = conn.accept_bi() => s,
        _ = shared.shutdown.cancelled() => return,
    };
    let Ok((send, recv)) = control else { return };
    let mut ctl = stream::framed(stream::bi(send, recv), shared.config.limits.max_frame);
    match tokio::time::timeout(crate::node::setup_timeout(&shared), ctl.next()).await {
        Ok(Some(Ok(Msg::Hello(h)))) => {
            if h.role != Role::Gateway as i32 {
                let r = Refused::new(
                    RefusalCode::WrongRole,
                    "uplink hello must claim the gateway role",
                );
                let _ = ctl.send(Msg::Refusal(r.0.clone())).await;
                outpost_net::refuse::close(&conn, &r);
                return;
            }
            match version::negotiate(version::supported(), h.min_version, h.max_version) {
                Ok(v) => {
                    let ack = outpost_proto::pb::v1::HelloAck {
                        version: v,
                        capabilities: vec![],
                        software: format!("outpost-server {}", outpost_proto::SOFTWARE_VERSION),
                        server_time_ms: outpost_net::unix_now_ms(),
                        device_id: gateway.id.clone(),
                    };
                    if ctl.send(Msg::HelloAck(ack)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let r = Refused::new(RefusalCode::UnsupportedVersion, e.to_string());
                    let _ = ctl.send(Msg::Refusal(r.0.clone())).await;
                    outpost_net::refuse::close(&conn, &r);
                    return;
                }
            }
        }
        other => {
            let got = match &other {
                Ok(Some(Ok(m))) => msg_name(m).to_owned(),
                Ok(Some(Err(e))) => e.to_string(),
                _ => "nothing".to_owned(),
            };
            let r = Refused::new(
                RefusalCode::UnexpectedMessage,
                format!("expected Hello on the control stream, got {got}"),
            );
            outpost_net::refuse::close(&conn, &r);
            return;
        }
    }
    info!(gateway = %gateway.id, remote = %conn.remote_address(), "gateway uplink up");
    shared.gateways.lock().expect("gateways lock").insert(
        gateway.id.clone(),
        GatewayLink {
            connection: conn.clone(),
            since: outpost_net::unix_now(),
            direction,
            report: Default::default(),
        },
    );

    let control_task = {
        let shared = shared.clone();
        let gw = gateway.id.clone();
        async move {
            while let Some(Ok(msg)) = ctl.next().await {
                if let Msg::GatewayReport(r) = msg
                    && let Some(l) = shared.gateways.lock().expect("gateways lock").get_mut(&gw)
                {
                    l.report = r;
                }
            }
        }
    };
    let streams = async {
        loop {
            let (send, recv) = tokio::select! {
                s = conn.accept_bi() => match s {
                    Ok(s) => s,
                    Err(e) => {
                        info!(reason = %outpost_net::refuse::explain(&e), "gateway uplink closed");
                        return;
                    }
                },
                _ = shared.shutdown.cancelled() => return,
            };
            let shared2 = shared.clone();
            let gw = gateway.id.clone();
            let guard = credit.opened();
            shared.tasks.spawn(
                async move {
                    relayed(shared2, gw, send, recv).await;
                    drop(guard);
                }
                .in_current_span(),
            );
        }
    };
    tokio::select! {
        _ = control_task => {}
        _ = streams => {}
    }
    drop(control_guard);
    let mut gws = shared.gateways.lock().expect("gateways lock");
    if gws
        .get(&gateway.id)
        .is_some_and(|l| l.connection.stable_id() == conn.stable_id())
    {
        gws.remove(&gateway.id);
    }
}

async fn relayed(
    shared: Arc<Shared>,
    gateway: String,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let open = match stream::read_one_frame(&mut recv, shared.config.limits.max_frame).await {
        Ok(Msg::RelayOpen(o)) => o,
        Ok(other) => {
            warn!(
                got = msg_name(&other),
                "relayed stream did not start with RelayOpen"
            );
            return;
        }
        Err(e) => {
            debug!(error = %e, "relayed stream ended before RelayOpen");
            return;
        }
    };
    let span = info_span!("relay", gateway = %gateway, agent_addr = %open.agent_addr);
    serve_relayed(shared, gateway, open, send, recv)
        .instrument(span)
        .await
}

async fn serve_relayed(
    shared: Arc<Shared>,
    gateway: String,
    open: RelayOpen,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let io = stream::bi(send, recv);
    match RelayKind::try_from(open.kind) {
        Ok(RelayKind::Enroll) => {
            let tls = match tokio::time::timeout(
                INNER_HANDSHAKE_TIMEOUT,
                shared.inner_enroll_tls.accept(io),
            )
            .await
            {
                Ok(Ok(t)) => t,
                _ => return,
            };
            crate::enroll::serve_stream(shared, tls).await;
        }
        Ok(RelayKind::Session) => {
            let tls = match tokio::time::timeout(
                INNER_HANDSHAKE_TIMEOUT,
                shared.inner_session_tls.accept(io),
            )
            .await
            {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    warn!(error = %e, "inner TLS handshake of a relayed session failed");
                    return;
                }
                Err(_) => return,
            };
            let leaf = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.clone().into_owned());
            let max_frame = shared.config.limits.max_frame;
            let Some(leaf) = leaf else { return };
            let fp = pki::fingerprint(&leaf);
            // The gateway saw the same certificate on its own hop; a mismatch means it spliced
            // someone else's session onto this stream.
            if !open.agent_cert_sha256.is_empty() && open.agent_cert_sha256 != fp {
                let r = Refused::new(
                    RefusalCode::Forbidden,
                    "relayed session does not match the agent the gateway announced",
                );
                refuse_stream(tls, max_frame, &r).await;
                return;
            }
            let device = match shared.store.device_by_cert(&fp_hex(&fp)).await {
                Ok(Some(d)) if d.revoked_at.is_some() => {
                    let r = Refused::new(
                        RefusalCode::Revoked,
                        format!("device {} was revoked by an administrator", d.id),
                    );
                    refuse_stream(tls, max_frame, &r).await;
                    return;
                }
                Ok(Some(d)) if d.role == "agent" => d,
                Ok(_) => {
                    let r = Refused::new(
                        RefusalCode::Unauthenticated,
                        "this certificate is not registered as an agent; enroll again with a new token",
                    );
                    refuse_stream(tls, max_frame, &r).await;
                    return;
                }
                Err(e) => {
                    let r =
                        Refused::new(RefusalCode::Internal, format!("registry unavailable: {e}"));
                    refuse_stream(tls, max_frame, &r).await;
                    return;
                }
            };
            crate::session::run(shared, device, format!("via {gateway}"), tls).await;
        }
        _ => {
            let r = Refused::new(RefusalCode::InvalidArgument, "unknown relay kind");
            refuse_stream(io, shared.config.limits.max_frame, &r).await;
        }
    }
}
