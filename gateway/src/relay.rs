//! The office side: agents connect here and every stream they open is relayed, as opaque
//! bytes, onto a new stream of the uplink (S1). The gateway adds one `RelayOpen` frame naming
//! the agent's certificate and address, then splices; it holds no key that could read or
//! forge the agent's inner TLS session.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use outpost_net::{endpoint, refuse, splice, stream};
use outpost_proto::alpn;
use outpost_proto::error::{RefusalCode, Refused};
use outpost_proto::pb::v1::{RelayKind, RelayOpen, envelope::Msg};
use outpost_proto::pki;
use quinn::VarInt;
use tracing::{Instrument, debug, info_span};

use crate::node::Node;
use crate::office::StreamKind;

/// Accepts agent connections until shutdown.
pub async fn accept_loop(node: Arc<Node>, ep: quinn::Endpoint) {
    loop {
        let incoming = tokio::select! {
            i = ep.accept() => match i { Some(i) => i, None => return },
            _ = node.runtime().cancelled() => return,
        };
        let span =
            info_span!("agent_conn", peer = %incoming.remote_address(), id = tracing::field::Empty);
        node.runtime()
            .spawn(serve_agent(node.clone(), incoming).instrument(span));
    }
}

/// Counts an agent connection for as long as it lives (and lists it for broadcasts, D4).
struct Connected<'a>(&'a Node, quinn::Connection);
impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.office().agents().remove(&self.1);
        self.0
            .office()
            .stats()
            .agents_connected
            .fetch_sub(1, Ordering::Relaxed);
        self.0.status_changed();
    }
}

async fn serve_agent(node: Arc<Node>, incoming: quinn::Incoming) {
    let conn = match incoming.accept() {
        Ok(c) => match c.await {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %refuse::explain(&e), "agent handshake failed");
                return;
            }
        },
        Err(_) => return,
    };
    tracing::Span::current().record("id", conn.stable_id());
    let Some(_slot) = node.office().admit_agent() else {
        let base = node.config().timing.retry_after;
        refuse::close(
            &conn,
            &Refused::new(RefusalCode::Overloaded, "gateway is at its agent limit")
                .with_retry_after(outpost_net::jittered(base, base)),
        );
        return;
    };
    let proto = endpoint::alpn(&conn);
    // D2: update files from the cache, for devices with a certificate only.
    if proto.as_deref() == Some(alpn::FILES) {
        if endpoint::peer_leaf(&conn).is_none() {
            refuse::close(
                &conn,
                &Refused::new(
                    RefusalCode::Unauthenticated,
                    "a client certificate is required: enroll this device first",
                ),
            );
            return;
        }
        crate::cache::serve::connection(node.clone(), conn).await;
        return;
    }
    let enroll = proto.as_deref() == Some(alpn::ENROLL);
    // Only the fingerprint is kept for the connection's life, not the certificate.
    let fp = match (endpoint::peer_leaf(&conn), enroll) {
        (Some(l), _) => {
            // D4: broadcasts go to the device the certificate names.
            if let Ok(device) = pki::common_name(&l) {
                node.office().agents().add(&conn, device);
            }
            pki::fingerprint(&l).to_vec()
        }
        (None, true) => vec![],
        (None, false) => {
            refuse::close(
                &conn,
                &Refused::new(
                    RefusalCode::Unauthenticated,
                    "a client certificate is required: enroll this device first",
                ),
            );
            return;
        }
    };
    node.office()
        .stats()
        .agents_connected
        .fetch_add(1, Ordering::Relaxed);
    node.status_changed();
    let _connected = Connected(&node, conn.clone());
    let agent_addr = conn.remote_address().to_string();
    loop {
        let (send, recv) = tokio::select! {
            s = conn.accept_bi() => match s { Ok(s) => s, Err(_) => return },
            _ = node.runtime().cancelled() => {
                refuse::close(&conn, &Refused::new(RefusalCode::ShuttingDown, "gateway is restarting"));
                return;
            }
        };
        let kind = if enroll {
            RelayKind::Enroll
        } else {
            RelayKind::Session
        };
        let open = RelayOpen {
            kind: kind as i32,
            agent_cert_sha256: fp.clone(),
            agent_addr: agent_addr.clone(),
        };
        node.runtime()
            .spawn(relay(node.clone(), send, recv, open).in_current_span());
    }
}

fn refuse_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream, code: RefusalCode) {
    let c = VarInt::from_u32(code.close_code());
    let _ = send.reset(c);
    let _ = recv.stop(c);
}

/// Counts a relayed session for as long as it lives.
struct Active<'a>(&'a Node);
impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0
            .office()
            .stats()
            .sessions_active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

async fn relay(node: Arc<Node>, send: quinn::SendStream, recv: quinn::RecvStream, open: RelayOpen) {
    let kind = if open.kind == RelayKind::Enroll as i32 {
        StreamKind::Enrollment
    } else {
        StreamKind::Session
    };
    let office = node.office();
    let Some(_slot) = office.admit_stream(kind) else {
        refuse_stream(send, recv, RefusalCode::Overloaded);
        return;
    };
    let Some(uplink) = node.uplink().conn() else {
        office.refused_no_uplink();
        refuse_stream(send, recv, RefusalCode::UpstreamUnavailable);
        return;
    };
    let wait = node.config().timing.relay_open_timeout;
    let opened = tokio::time::timeout(wait, uplink.open_bi()).await;
    let Ok(Ok((mut up_send, up_recv))) = opened else {
        office.refused_no_uplink();
        refuse_stream(send, recv, RefusalCode::UpstreamUnavailable);
        return;
    };
    if stream::write_one_frame(&mut up_send, Msg::RelayOpen(open))
        .await
        .is_err()
    {
        refuse_stream(send, recv, RefusalCode::UpstreamUnavailable);
        return;
    }
    office
        .stats()
        .sessions_active
        .fetch_add(1, Ordering::Relaxed);
    office
        .stats()
        .sessions_total
        .fetch_add(1, Ordering::Relaxed);
    let _active = Active(&node);
    splice::splice(
        (send, recv),
        (up_send, up_recv),
        office.bytes().clone(),
        office.tap().cloned(),
    )
    .await;
    debug!("relayed stream ended");
}
