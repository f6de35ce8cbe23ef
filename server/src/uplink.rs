//! Gateway uplinks on the server (T3, T4, S1).
//!
//! The first stream a gateway opens is its control stream, run by the control-stream machine
//! (`outpost_proto::control`, channel `Uplink`): hello, then periodic reports up and
//! directives down. Every further stream relays one agent: a `RelayOpen` frame in the clear of
//! the uplink's own TLS, then the agent's inner TLS 1.3 session, which only the server can
//! terminate. The agent's certificate inside that inner session is what identifies it — the
//! gateway can neither read the session nor act as the agent.

use std::sync::Arc;

use futures_util::StreamExt;
use outpost_net::stream;
use outpost_proto::control::{Acceptor, AcceptorEvent, Channel, ControlError};
use outpost_proto::error::{RefusalCode, Refused};
use outpost_proto::pb::v1::{RelayKind, RelayOpen, envelope::Msg};
use outpost_proto::pki;
use outpost_proto::session::msg_name;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::gateways::Direction;
use crate::node::Identified;
use crate::node::Node;
use crate::sessions::driver::{Peer, refuse_stream};
use crate::store::{DeviceRow, fp_hex};

/// Largest `RelayOpen` frame accepted (it names a certificate hash and an address).
const RELAY_OPEN_MAX: usize = 4096;

/// Time to wait for a relayed session's inner TLS handshake.
const INNER_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves a gateway's uplink connection until it closes. `direction` says who dialled.
pub async fn serve(
    node: Arc<Node>,
    conn: quinn::Connection,
    gateway: DeviceRow,
    direction: Direction,
) {
    let credit = Arc::new(outpost_net::transport::raise_for_uplink(
        &conn,
        node.config().limits.max_sessions_per_gateway,
    ));
    let control_guard = credit.opened();
    let _ = node
        .store()
        .touch(
            &gateway.id,
            &direction.describe(conn.remote_address()),
            outpost_net::unix_now(),
        )
        .await;
    let control = tokio::select! {
        s = conn.accept_bi() => s,
        _ = node.runtime().cancelled() => return,
    };
    let Ok((send, recv)) = control else { return };
    let mut ctl = stream::framed(stream::bi(send, recv), node.config().limits.max_frame);
    let mut sm = Acceptor::new(
        Channel::Uplink,
        gateway.id.clone(),
        format!("outpost-server {}", outpost_proto::SOFTWARE_VERSION),
        Instant::now().into_std(),
        node.config().timing.session_setup_timeout,
    )
    .with_connection_id(conn.stable_id() as u64);
    if let Err(e) = hello(&mut sm, &mut ctl).await {
        // The refusal went out on the control stream; the close carries it too.
        if let Some(r) = e.to_refusal() {
            outpost_net::refuse::close(&conn, &r);
        }
        warn!(error = %e, "uplink refused");
        return;
    }
    info!(gateway = %gateway.id, remote = %conn.remote_address(), "gateway uplink up");
    let now = outpost_net::unix_now();
    let mut directives = node
        .gateways()
        .up(&gateway.id, conn.clone(), now, direction);
    node.store().held_here(&gateway.id, now);

    let mut trust_changes = node.enrollment().certs().trust_changes();
    let control_task = async {
        loop {
            let msg = tokio::select! {
                m = ctl.next() => match m { Some(Ok(m)) => m, _ => break },
                // D4: broadcasts for the gateway to fan out.
                Some(d) = directives.recv() => {
                    if sm.send(d).is_err() || stream::send_queued(&mut ctl, &mut sm).await.is_err() {
                        break;
                    }
                    continue;
                }
                // S9: a CA roll-over reaches connected gateways at once.
                Ok(()) = trust_changes.changed() => {
                    if sm.send(trust_directive(&node)).is_err()
                        || stream::send_queued(&mut ctl, &mut sm).await.is_err()
                    {
                        break;
                    }
                    continue;
                }
            };
            if sm.handle_message(msg, outpost_net::unix_now_ms()).is_err() {
                let _ = stream::send_queued(&mut ctl, &mut sm).await;
                break;
            }
            while let Some(ev) = sm.poll_event() {
                let AcceptorEvent::Message(m) = ev else {
                    continue;
                };
                match *m {
                    Msg::GatewayReport(r) => {
                        let current = node.enrollment().certs().current().trust_sha256;
                        if r.trust_sha256.as_slice() != current.as_slice() {
                            let _ = sm.send(trust_directive(&node));
                        }
                        // D2: a gateway behind on update revisions gets the newest manifest.
                        if let Some(d) =
                            crate::updates::gateway_directive(&node, r.cache_revision).await
                        {
                            let _ = sm.send(d);
                        }
                        node.gateways().report(&gateway.id, r);
                    }
                    Msg::BroadcastAcks(a) => crate::broadcast::acked(&node, &gateway.id, a).await,
                    // D3: what the gateway's scan of its office found.
                    Msg::DiscoveryReport(r) => {
                        if let Err(e) = node.store().record_discovery(&gateway.id, &r.hosts).await {
                            warn!(error = %e, "discovery report not stored; the gateway sends it again after its next scan");
                        }
                    }
                    Msg::CertRenewal(r) => {
                        if let Some(done) =
                            crate::certs::renew_device(&node, &gateway, &r.csr_der).await
                        {
                            let _ = sm.send(Msg::CertRenewed(done));
                        }
                    }
                    _ => {}
                }
            }
            if stream::send_queued(&mut ctl, &mut sm).await.is_err() {
                break;
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
                _ = node.runtime().cancelled() => return,
            };
            let n = node.clone();
            let gw = gateway.id.clone();
            let guard = credit.opened();
            node.runtime().spawn(
                async move {
                    relayed(n, gw, send, recv).await;
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
    if node.runtime().is_shutting_down() {
        // Said before the connection is dropped (a dropped connection closes with code 0 and
        // no reason, which the gateway could only show as "refused (unspecified)").
        outpost_net::refuse::close(
            &conn,
            &Refused::new(
                RefusalCode::ShuttingDown,
                "the server is shutting down; the gateway reconnects when it is back",
            ),
        );
    }
    drop(control_guard);
    if node.gateways().down(&gateway.id, &conn) {
        node.store().released_here(&gateway.id);
    }
}

/// A directive carrying the CAs to trust (S9).
fn trust_directive(node: &Node) -> Msg {
    let cas = node.enrollment().certs().current().trusted_der();
    Msg::GatewayDirective(outpost_proto::pb::v1::GatewayDirective {
        trust: Some(outpost_proto::pb::v1::TrustUpdate {
            ca_der: cas.iter().map(|c| c.to_vec()).collect(),
        }),
        ..Default::default()
    })
}

/// Runs the opening exchange of the control stream to its end (open or failed).
async fn hello<S>(sm: &mut Acceptor, ctl: &mut stream::Framed<S>) -> Result<(), ControlError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let deadline = sm.poll_timeout().map(Instant::from_std);
    let result = loop {
        let msg = tokio::select! {
            m = ctl.next() => m,
            _ = sleep_until(deadline) => {
                break sm.handle_timeout(Instant::now().into_std());
            }
        };
        let r = match msg {
            Some(Ok(m)) => sm.handle_message(m, outpost_net::unix_now_ms()),
            Some(Err(e)) => Err(sm.handle_broken(Some(e.to_string()))),
            None => Err(sm.handle_broken(None)),
        };
        if r.is_err() || sm.is_open() {
            break r;
        }
    };
    let _ = stream::send_queued(ctl, sm).await;
    result
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn relayed(
    node: Arc<Node>,
    gateway: String,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let open = match stream::read_one_frame(&mut recv, RELAY_OPEN_MAX).await {
        Ok(Msg::RelayOpen(o)) => o,
        Ok(other) => {
            node.sessions().bad_frame();
            warn!(
                got = msg_name(&other),
                "relayed stream did not start with RelayOpen"
            );
            return;
        }
        Err(e) => {
            if e.to_refusal().is_some() {
                node.sessions().bad_frame();
                warn!(error = %e, "relayed stream did not start with a valid RelayOpen");
            } else {
                debug!(error = %e, "relayed stream ended before RelayOpen");
            }
            return;
        }
    };
    let span = info_span!("relay", gateway = %gateway, agent_addr = %open.agent_addr);
    serve_relayed(node, gateway, open, send, recv)
        .instrument(span)
        .await
}

async fn serve_relayed(
    node: Arc<Node>,
    gateway: String,
    open: RelayOpen,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    // D2: the gateway's cache fetching update blocks.
    if open.kind == RelayKind::Files as i32 {
        crate::files::serve_stream(node, send, recv).await;
        return;
    }
    let io = stream::bi(send, recv);
    let max_frame = node.config().limits.max_frame;
    match RelayKind::try_from(open.kind) {
        Ok(RelayKind::Enroll) => {
            let accept = node.enrollment().enroll_tls().accept(io);
            let Ok(Ok(tls)) = tokio::time::timeout(INNER_HANDSHAKE_TIMEOUT, accept).await else {
                return;
            };
            crate::enroll::serve_stream(node, tls).await;
        }
        Ok(RelayKind::Session) => {
            let accept = node.enrollment().session_tls().accept(io);
            // The registry lookup of the certificate the gateway announced runs while the inner
            // handshake does (read-only; used only if the handshake shows the same one).
            let announced = fp_hex(&open.agent_cert_sha256);
            let lookup = async {
                if announced.is_empty() {
                    return None;
                }
                node.store().device_by_cert(&announced).await.ok()
            };
            let (tls, prefetched) = tokio::join!(
                tokio::time::timeout(INNER_HANDSHAKE_TIMEOUT, accept),
                lookup
            );
            let tls = match tls {
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
            let Some(leaf) = leaf else { return };
            let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            debug!(resumed, "inner TLS session up");
            node.sessions().relayed(resumed);
            // A resumed handshake verifies no certificate: refuse one that expired since the
            // ticket was issued, as a full handshake would have.
            if pki::validity(&leaf).is_ok_and(|(_, until)| until < outpost_net::unix_now()) {
                let r = Refused::new(
                    RefusalCode::Unauthenticated,
                    "this device's certificate has expired; enroll it again with a new token",
                );
                refuse_stream(tls, max_frame, &r).await;
                return;
            }
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
            let fp = fp_hex(&fp);
            let identified = match prefetched {
                Some(found) if announced == fp => {
                    crate::node::identify_found(&node, &fp, found).await
                }
                _ => crate::node::identify(&node, &fp).await,
            };
            let peer = match identified {
                Ok(Identified::Active(d)) if d.role == "agent" => Peer::Device(Box::new(d)),
                Ok(Identified::Revoked(d)) => Peer::Refused {
                    refusal: crate::node::revoked(&d.id),
                    device_id: d.id,
                    cert_sha256: fp,
                },
                Ok(Identified::Removed) => Peer::Refused {
                    device_id: String::new(),
                    cert_sha256: fp,
                    refusal: crate::node::removed(),
                },
                Ok(_) => {
                    let r = Refused::new(
                        RefusalCode::Unauthenticated,
                        "this certificate is not registered as an agent; enroll again with a new token",
                    );
                    refuse_stream(tls, max_frame, &r).await;
                    return;
                }
                Err(r) => {
                    refuse_stream(tls, max_frame, &r).await;
                    return;
                }
            };
            crate::sessions::driver::run(node, peer, format!("via {gateway}"), tls).await;
        }
        _ => {
            let r = Refused::new(RefusalCode::InvalidArgument, "unknown relay kind");
            refuse_stream(io, max_frame, &r).await;
        }
    }
}
