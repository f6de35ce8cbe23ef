//! Renewals the server performs (S9): its own certificate and the local admin bundle's when
//! they are due, and a device's on request over its live session.

use std::sync::Arc;

use outpost_net::fsutil::read_string;
use outpost_proto::pki::{self, CertRole};

/// Renews the local admin bundle's certificate when it is due (the admin tool only makes
/// short connections, so it cannot renew over a session of its own). Copies of the bundle on
/// other machines are copied again after this (README "Admin commands").
/// Returns when to look again.
async fn renew_local_admin_if_due(node: &crate::node::Node, now: i64) -> Option<i64> {
    let path = node.data().admin().join("cert.pem");
    let text = read_string(&path).ok()?;
    let leaf = pki::certs_from_pem(&text, "admin/cert.pem")
        .ok()
        .and_then(|c| c.into_iter().next())?;
    let issuing = node
        .enrollment()
        .certs()
        .current()
        .issuer()
        .ca
        .cert_der()
        .clone();
    let due = pki::issued_by(&leaf, &issuing)
        .then(|| pki::renewal_due(&leaf).ok())
        .flatten()
        .unwrap_or(0);
    if now < due {
        return Some(due);
    }
    let id = pki::common_name(&leaf).ok()?;
    let server = node.config().client_address();
    match node.enrollment().certs().renew_admin_bundle(&id, &server) {
        Ok(issued) => match node.store().set_next_cert(&id, &issued).await {
            Ok(()) => tracing::info!(admin = %id, "local admin bundle renewed"),
            Err(e) => tracing::warn!(error = %e, "renewed admin certificate not recorded"),
        },
        Err(e) => tracing::warn!(error = %e, "the local admin bundle could not be renewed"),
    }
    // Looked at again within the minute (a renewal that failed is retried).
    Some(now + 60)
}

/// Renews the server's own certificate at two thirds of its lifetime (S9), and the local admin
/// bundle's, checking at least hourly so a clock change is noticed.
pub async fn renew_own(node: Arc<crate::node::Node>) {
    let certs = node.enrollment().certs();
    loop {
        let now = outpost_net::unix_now();
        let admin_due = renew_local_admin_if_due(&node, now).await;
        let wait = match pki::renewal_due(certs.current().server.leaf()) {
            Ok(due) if due <= now => {
                match certs.rotate_server().await {
                    Ok(until) => tracing::info!(
                        expires = %outpost_proto::licence::key::format_time(until),
                        "server certificate renewed"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "server certificate renewal failed; retrying in a minute")
                    }
                }
                60
            }
            Ok(due) => (due - now).clamp(1, 3_600),
            Err(_) => 3_600,
        };
        let wait = admin_due.map_or(wait, |d| wait.min((d - now).max(1)));
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(wait as u64)) => {}
            _ = node.runtime().cancelled() => return,
        }
    }
}

/// Issues a renewed certificate for a device's new key (S9) and records it as the device's
/// next certificate. `None` (logged) when the CSR is bad or the store refuses; the device
/// keeps its current certificate and asks again later.
pub async fn renew_device(
    node: &crate::node::Node,
    device: &crate::store::DeviceRow,
    csr: &[u8],
) -> Option<outpost_proto::pb::v1::CertRenewed> {
    let role = match device.role.as_str() {
        "gateway" => CertRole::Gateway,
        "admin" => CertRole::Admin,
        _ => CertRole::Agent,
    };
    let certs = node.enrollment().certs();
    let issued = match certs.issue_device(csr, role, &device.id, outpost_net::unix_now()) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(device = %device.id, error = %e, "certificate renewal refused: bad CSR");
            return None;
        }
    };
    if let Err(e) = node.store().set_next_cert(&device.id, &issued).await {
        tracing::warn!(device = %device.id, error = %e, "certificate renewal not recorded");
        return None;
    }
    tracing::info!(
        device = %device.id,
        expires = %outpost_proto::licence::key::format_time(issued.expires_at),
        "certificate renewed; the current one stays valid until the device uses the new one"
    );
    Some(outpost_proto::pb::v1::CertRenewed {
        certificate_der: issued.der,
        ca_der: certs
            .current()
            .trusted_der()
            .iter()
            .map(|c| c.to_vec())
            .collect(),
    })
}
