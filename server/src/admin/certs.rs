//! `cert rotate-server`, `ca roll-over`, `ca finish-roll-over` and the certificate part of
//! `status` (S9).

use outpost_proto::error::RefusalCode;
use outpost_proto::licence::key::format_time;
use outpost_proto::pb::admin::{AdminResponse, CaFinish, CaInfo, CertStatus};
use tracing::{info, warn};

use super::{done, error};
use crate::certs::CertError;
use crate::node::Node;
use crate::store::StoreError;

fn refused(e: CertError) -> AdminResponse {
    let code = match e {
        CertError::AlreadyRolling(_) | CertError::NotRolling | CertError::DevicesOnOldCa { .. } => {
            RefusalCode::Conflict
        }
        _ => {
            let r = crate::error::incident("certificate operation failed", &e);
            return error(r.code(), r.0.message);
        }
    };
    error(code, e.to_string())
}

pub(super) async fn rotate_server(node: &Node) -> Result<AdminResponse, StoreError> {
    Ok(match node.enrollment().certs().rotate_server().await {
        Ok(until) => {
            info!(expires = %format_time(until), "server certificate rotated by an administrator");
            done(format!(
                "server certificate rotated: new connections get the new one (valid until {}); \
                 connections open now keep theirs",
                format_time(until)
            ))
        }
        Err(e) => refused(e),
    })
}

pub(super) async fn roll_over(node: &Node, admin: &str) -> Result<AdminResponse, StoreError> {
    let certs = node.enrollment().certs();
    let name = match certs.roll_over().await {
        Ok(n) => n,
        Err(e) => return Ok(refused(e)),
    };
    info!(ca = %name, "CA roll-over started by an administrator");
    renew_local_admin(node, admin).await?;
    // Agents learn the new CA set at their next sync: ask the connected ones now.
    node.sessions().registry().nudge_all();
    Ok(done(format!(
        "CA roll-over started: new CA {name} is trusted beside the old one and issues every \
         certificate from now on. Devices get both CAs at their next sync and renew their \
         certificates under the new one; `status` counts those still on the old CA. Then run \
         `ca finish-roll-over`."
    )))
}

pub(super) async fn finish(
    node: &Node,
    admin: &str,
    req: CaFinish,
) -> Result<AdminResponse, StoreError> {
    let certs = node.enrollment().certs();
    let issuing = certs.current().issuer().sha256.clone();
    let summary = node.store().cert_summary(&issuing).await?;
    let name = match certs.finish_roll_over(&summary, req.force).await {
        Ok(n) => n,
        Err(e) => return Ok(refused(e)),
    };
    if summary.on_other_ca > 0 {
        warn!(devices = summary.on_other_ca, first = ?summary.first_on_other_ca, "CA roll-over finished with --force: these devices need new tokens");
    }
    info!(ca = %name, "CA roll-over finished by an administrator");
    renew_local_admin(node, admin).await?;
    node.sessions().registry().nudge_all();
    Ok(done(format!(
        "CA roll-over finished: only CA {name} is trusted now, and the server certificate is \
         issued by it{}",
        if summary.on_other_ca > 0 {
            format!(
                "; {} device(s) still on the old CA cannot connect any more and need new tokens",
                summary.on_other_ca
            )
        } else {
            String::new()
        }
    )))
}

/// Re-issues the local admin bundle under the issuing CA with the current CA list, and
/// records its certificate as the admin's next one (the admin's next connection uses it).
async fn renew_local_admin(node: &Node, admin: &str) -> Result<(), StoreError> {
    let Some(dev) = node.store().device(admin).await? else {
        return Ok(());
    };
    if !node.data().admin().join("cert.pem").exists() {
        return Ok(());
    }
    let server = node.config().client_address();
    match node
        .enrollment()
        .certs()
        .renew_admin_bundle(&dev.id, &server)
    {
        Ok(issued) => node.store().set_next_cert(&dev.id, &issued).await,
        Err(e) => {
            warn!(error = %e, "the local admin bundle could not be renewed");
            Ok(())
        }
    }
}

pub(super) async fn status(node: &Node) -> Result<CertStatus, StoreError> {
    let st = node.enrollment().certs().current();
    let summary = node.store().cert_summary(&st.issuer().sha256).await?;
    Ok(CertStatus {
        server_expires_at: st.server_expires_at,
        cas: st
            .cas
            .iter()
            .enumerate()
            .map(|(i, c)| CaInfo {
                name: c.name.clone(),
                sha256: c.sha256.clone(),
                expires_at: c.expires_at,
                issuing: i == 0,
            })
            .collect(),
        rolling_over: st.rolling(),
        devices_on_other_ca: summary.on_other_ca,
        soonest_device_expiry: summary.soonest_expiry,
    })
}
