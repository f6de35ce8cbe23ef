//! The accept loop: one task per incoming connection, each in a `conn` span carrying the
//! connection id, the peer address and (once known) the device id; dispatch by ALPN (T1);
//! mapping a certificate to a registered device of the right role.

use std::sync::Arc;

use outpost_net::{endpoint, refuse};
use outpost_proto::alpn;
use outpost_proto::error::{RefusalCode, Refused};
use outpost_proto::pki;
use tracing::{Instrument, info_span, warn};

use super::Node;
use crate::store::{DeviceRow, fp_hex};
use crate::{admin, enroll, sessions, uplink};

pub(super) async fn accept_loop(node: Arc<Node>, ep: quinn::Endpoint) {
    loop {
        let incoming = tokio::select! {
            i = ep.accept() => match i { Some(i) => i, None => break },
            _ = node.runtime().cancelled() => break,
        };
        let remote = incoming.remote_address();
        let span = info_span!("conn", peer = %remote, id = tracing::field::Empty, device = tracing::field::Empty);
        node.runtime()
            .spawn(handle_incoming(node.clone(), incoming).instrument(span));
    }
}

async fn handle_incoming(node: Arc<Node>, incoming: quinn::Incoming) {
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "incoming refused");
            return;
        }
    };
    let setup = node.config().timing.session_setup_timeout;
    let conn = match tokio::time::timeout(setup, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(error = %refuse::explain(&e), "handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("handshake timed out");
            return;
        }
    };
    tracing::Span::current().record("id", conn.stable_id());
    let proto = endpoint::alpn(&conn);
    match proto.as_deref() {
        Some(a) if a == alpn::ENROLL => enroll::serve_connection(node, conn).await,
        Some(a) if a == alpn::AGENT => {
            if let Some(dev) = authenticate(&node, &conn, "agent").await {
                sessions::driver::serve_direct(node, conn, dev).await
            }
        }
        Some(a) if a == alpn::GATEWAY => {
            if let Some(dev) = authenticate(&node, &conn, "gateway").await {
                uplink::serve(node, conn, dev, crate::gateways::Direction::DialIn).await
            }
        }
        Some(a) if a == alpn::ADMIN => {
            if let Some(dev) = authenticate(&node, &conn, "admin").await {
                admin::serve(node, conn, dev).await
            }
        }
        other => {
            // rustls only completes handshakes for the ALPNs we offer; keep the guard anyway.
            let r = Refused::new(
                RefusalCode::WrongRole,
                format!("unknown protocol {}", alpn::display(other)),
            );
            refuse::close(&conn, &r);
        }
    }
}

/// Maps the connection's certificate to a registered device of the expected role; closes the
/// connection with a readable refusal otherwise.
pub async fn authenticate(node: &Node, conn: &quinn::Connection, role: &str) -> Option<DeviceRow> {
    let refused = |r: Refused| {
        node.sessions().refused_connection();
        warn!(refusal = %r, "connection refused");
        refuse::close(conn, &r);
        None
    };
    let Some(leaf) = endpoint::peer_leaf(conn) else {
        return refused(Refused::new(
            RefusalCode::Unauthenticated,
            "a client certificate is required: enroll this device with a token first",
        ));
    };
    let fp = fp_hex(&pki::fingerprint(&leaf));
    let dev = match node.store().device_by_cert(&fp).await {
        Ok(d) => d,
        Err(e) => return refused(e.to_refusal("device registry lookup failed")),
    };
    match dev {
        None => refused(Refused::new(
            RefusalCode::Unauthenticated,
            "this certificate is not registered (device removed or re-enrolled elsewhere); enroll again with a new token",
        )),
        Some(d) if d.revoked_at.is_some() => refused(Refused::new(
            RefusalCode::Revoked,
            format!("device {} was revoked by an administrator", d.id),
        )),
        Some(d) if d.role != role => refused(Refused::new(
            RefusalCode::WrongRole,
            format!("device {} is a {}, not a {role}", d.id, d.role),
        )),
        Some(d) => {
            tracing::Span::current().record("device", d.id.as_str());
            Some(d)
        }
    }
}
