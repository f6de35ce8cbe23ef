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
            let why = refuse::explain(&e);
            if why.contains("link certificate") {
                // A server dialling with a link certificate no relation pins (H1).
                warn!(error = %why, "server link refused");
            } else {
                tracing::debug!(error = %why, "handshake failed");
            }
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
            if let Some(peer) = authenticate_agent(&node, &conn).await {
                sessions::driver::serve_direct(node, conn, peer).await
            }
        }
        Some(a) if a == alpn::GATEWAY => {
            if let Some(dev) = authenticate(&node, &conn, "gateway").await {
                uplink::serve(node, conn, dev, crate::gateways::Direction::DialIn).await
            }
        }
        // D2: update blocks for agents without a gateway.
        Some(a) if a == alpn::FILES => {
            if let Some(_dev) = authenticate(&node, &conn, "agent").await {
                crate::files::serve_connection(node, conn).await
            }
        }
        Some(a) if a == alpn::PEER => crate::peers::accept(node, conn).await,
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

/// Who holds a certificate, as the registry knows it.
pub enum Identified {
    /// A registered device that may connect.
    Active(DeviceRow),
    /// A registered device an administrator revoked (S8).
    Revoked(DeviceRow),
    /// A device whose record was removed while it may still hold grants (S8, L15).
    Removed,
    /// Nobody this server knows.
    Unknown,
}

/// Looks a certificate fingerprint (hex) up in the registry.
pub async fn identify(node: &Node, fp: &str) -> Result<Identified, Refused> {
    let found = node
        .store()
        .device_by_cert(fp)
        .await
        .map_err(|e| e.to_refusal("device registry lookup failed"))?;
    identify_found(node, fp, found).await
}

/// [`identify`] after the registry lookup by fingerprint was made (a relayed session looks
/// the certificate the gateway announced up while the inner handshake runs).
pub async fn identify_found(
    node: &Node,
    fp: &str,
    mut found: Option<DeviceRow>,
) -> Result<Identified, Refused> {
    let store = node.store();
    let lookup = |e: crate::store::StoreError| e.to_refusal("device registry lookup failed");
    // S9: the first connection with a renewed certificate makes it the current one; from
    // then on the old one is refused.
    if found.is_none() && store.is_next_cert(fp).await.map_err(lookup)? {
        found = store.promote_cert(fp).await.map_err(lookup)?;
        if let Some(d) = &found {
            tracing::info!(device = %d.id, "device connected with its renewed certificate; the old one is retired");
        }
    }
    Ok(match found {
        Some(d) if d.revoked_at.is_some() => Identified::Revoked(d),
        Some(d) => Identified::Active(d),
        None => match store.removed_with_holds(fp).await {
            Ok(true) => Identified::Removed,
            Ok(false) => Identified::Unknown,
            Err(e) => return Err(e.to_refusal("device registry lookup failed")),
        },
    })
}

/// The refusal a revoked device is told (S8).
pub fn revoked(device_id: &str) -> Refused {
    Refused::new(
        RefusalCode::Revoked,
        format!("device {device_id} was revoked by an administrator"),
    )
}

/// The refusal a removed device is told (S8).
pub fn removed() -> Refused {
    Refused::new(
        RefusalCode::Removed,
        "this device was removed by an administrator; enroll again with a new token if that was a mistake",
    )
}

/// The refusal for a certificate the registry does not know.
pub fn not_registered() -> Refused {
    Refused::new(
        RefusalCode::Unauthenticated,
        "this certificate is not registered (device removed or re-enrolled elsewhere); enroll again with a new token",
    )
}

/// As [`authenticate`] for agents, whose sessions also carry the end of a revoked or removed
/// device (S8): such a device is not cut off at the connection but told on its session
/// stream, where it confirms it dropped its grants (L15).
pub async fn authenticate_agent(
    node: &Node,
    conn: &quinn::Connection,
) -> Option<sessions::driver::Peer> {
    use sessions::driver::Peer;
    let refused = |r: Refused| {
        node.sessions().refused_connection(r.code());
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
    match identify(node, &fp).await {
        Err(r) => refused(r),
        Ok(Identified::Active(d)) if d.role == "agent" => {
            tracing::Span::current().record("device", d.id.as_str());
            Some(Peer::Device(Box::new(d)))
        }
        Ok(Identified::Active(d)) => refused(Refused::new(
            RefusalCode::WrongRole,
            format!("device {} is a {}, not an agent", d.id, d.role),
        )),
        Ok(Identified::Revoked(d)) => {
            node.sessions().refused_session(RefusalCode::Revoked);
            Some(Peer::Refused {
                refusal: revoked(&d.id),
                device_id: d.id,
                cert_sha256: fp,
            })
        }
        Ok(Identified::Removed) => {
            node.sessions().refused_session(RefusalCode::Removed);
            Some(Peer::Refused {
                device_id: String::new(),
                cert_sha256: fp,
                refusal: removed(),
            })
        }
        Ok(Identified::Unknown) => refused(not_registered()),
    }
}

/// Maps the connection's certificate to a registered device of the expected role; closes the
/// connection with a readable refusal otherwise.
pub async fn authenticate(node: &Node, conn: &quinn::Connection, role: &str) -> Option<DeviceRow> {
    let refused = |r: Refused| {
        node.sessions().refused_connection(r.code());
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
    match identify(node, &fp).await {
        Err(r) => refused(r),
        Ok(Identified::Unknown | Identified::Removed) => refused(not_registered()),
        Ok(Identified::Revoked(d)) => refused(revoked(&d.id)),
        Ok(Identified::Active(d)) if d.role != role => refused(Refused::new(
            RefusalCode::WrongRole,
            format!("device {} is a {}, not a {role}", d.id, d.role),
        )),
        Ok(Identified::Active(d)) => {
            tracing::Span::current().record("device", d.id.as_str());
            Some(d)
        }
    }
}
