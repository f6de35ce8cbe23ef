//! Automatic licence renewal (L11, L12, L13).
//!
//! Steps, any of which may end the procedure: ask the licence authority for renewals of the
//! keys this server owns (imported by hand or obtained by renewal; keys received from a
//! neighbour are not renewed here) → download, verify, add to the repository (no key file is
//! written: L13) → distribute to the objects of the old key and remove the old key.
//!
//! "The old key is removed once no subordinate uses it": devices that held it move to the
//! renewal key at their next check (connected agents at their next sync, the licence epoch
//! moves), so for devices the old key goes right after distribution. Neighbour servers holding
//! leases of it get leases of the renewal beside them (`store::leases::renew`); the old key
//! stays until each of them confirmed the new lease — an offline one when it reconnects.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use outpost_net::{endpoint, refuse, stream};
use outpost_proto::alpn;
use outpost_proto::lease::LeaseGrant;
use outpost_proto::licence::renewal::{Assessment, assess, objects_to_add};
use outpost_proto::licence::verify_key_file;
use outpost_proto::pb::admin::RenewalReport;
use outpost_proto::pb::v1::{RenewalFile, RenewalQuery, envelope::Msg};
use outpost_proto::pki::{self, Trust};
use tracing::{info, warn};

use super::Licensing;
use crate::store::StoreError;

/// Why the renewal procedure stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenewalError {
    /// `server.toml` does not say where the authority is, or says it wrongly.
    #[error("{0}")]
    NotConfigured(String),
    /// The authority could not be reached or broke off.
    #[error("cannot reach the licence authority at {addr}: {why}")]
    Unreachable {
        /// Where.
        addr: String,
        /// Why.
        why: String,
    },
    /// The authority refused the query.
    #[error("the licence authority refused: {0}")]
    Refused(outpost_proto::error::Refused),
    /// A key this server holds no longer verifies (the authority key changed?).
    #[error("stored key {0} no longer verifies against the licence authority key")]
    StoredKeyInvalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Asks the authority for renewal files of the keys this server owns.
async fn fetch(
    licensing: &Licensing,
    owned: &[(String, Vec<u8>)],
) -> Result<Vec<RenewalFile>, RenewalError> {
    let cfg = licensing.settings();
    if cfg.authority.is_empty() {
        return Err(RenewalError::NotConfigured(
            "no licence authority configured: set licensing.authority and licensing.authority_tls_sha256 in server.toml".into(),
        ));
    }
    let pin: [u8; 32] = hex::decode(&cfg.authority_tls_sha256)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| {
            RenewalError::NotConfigured(
                "licensing.authority_tls_sha256 is not 64 hex digits".into(),
            )
        })?;
    let unreachable = |why: String| RenewalError::Unreachable {
        addr: cfg.authority.clone(),
        why,
    };
    let addr = endpoint::resolve(&cfg.authority)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let tls = pki::client_config(None, &Trust::PinnedLeaf(pin), &[alpn::AUTHORITY])
        .map_err(|e| unreachable(e.to_string()))?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
        .map_err(|e| unreachable(e.to_string()))?;
    let mut c = quinn::ClientConfig::new(Arc::new(quic));
    c.transport_config(outpost_net::transport::client(
        Duration::from_secs(10),
        Duration::from_secs(30),
    ));
    let ep = endpoint::client_endpoint(addr).map_err(|e| unreachable(e.to_string()))?;
    let connecting = ep
        .connect_with(c, addr, "outpost-authority")
        .map_err(|e| unreachable(refuse::explain_connect(&e)))?;
    let conn = match tokio::time::timeout(Duration::from_secs(15), connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(unreachable(refuse::explain(&e))),
        Err(_) => return Err(unreachable("it does not answer".into())),
    };
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| unreachable(refuse::explain(&e)))?;
    let mut f = stream::framed(stream::bi(send, recv), 16 << 20);
    f.send(Msg::RenewalQuery(RenewalQuery {
        key_files: owned.iter().map(|(_, file)| file.clone()).collect(),
    }))
    .await
    .map_err(|e| unreachable(e.to_string()))?;
    let reply = tokio::time::timeout(Duration::from_secs(30), f.next())
        .await
        .map_err(|_| unreachable("no answer within 30s".into()))?;
    conn.close(quinn::VarInt::from_u32(0), b"done");
    match reply {
        Some(Ok(Msg::RenewalOffer(o))) => Ok(o.files),
        Some(Ok(Msg::Refusal(r))) => Err(RenewalError::Refused(outpost_proto::error::Refused(r))),
        Some(Ok(other)) => Err(unreachable(format!(
            "unexpected {} instead of an offer",
            outpost_proto::session::msg_name(&other)
        ))),
        Some(Err(e)) => Err(unreachable(e.to_string())),
        None => Err(unreachable("it closed the stream without an answer".into())),
    }
}

fn report(key_id: &str, outcome: &str, renewal: &str, detail: impl Into<String>) -> RenewalReport {
    RenewalReport {
        key_id: key_id.to_owned(),
        outcome: outcome.to_owned(),
        renewal_key: renewal.to_owned(),
        detail: detail.into(),
    }
}

/// What one run of the procedure did.
#[derive(Debug, Default)]
pub struct Renewed {
    /// One report per key and renewal.
    pub reports: Vec<RenewalReport>,
    /// Leases of renewal keys given to neighbours in place of leases of the old keys (L11
    /// outcome 3 across the tree): the caller sends them on the server links.
    pub grants: Vec<(String, LeaseGrant)>,
}

/// Runs the renewal procedure once: when an admin asks, or from the repository-update task.
pub async fn run(licensing: &Licensing) -> Result<Renewed, RenewalError> {
    let store = licensing.store();
    let owned = store.owned_keys().await?;
    let mut done = Renewed::default();
    if owned.is_empty() {
        return Ok(done);
    }
    let offers = fetch(licensing, &owned).await?;
    let reports = &mut done.reports;
    for (old_id, old_file) in &owned {
        let mine: Vec<&RenewalFile> = offers.iter().filter(|o| &o.renews == old_id).collect();
        if mine.is_empty() {
            // Outcome 1: nothing happens.
            reports.push(report(
                old_id,
                "none",
                "",
                "no renewal held by the licence authority",
            ));
            continue;
        }
        let old = verify_key_file(old_file, licensing.authority_public())
            .map_err(|_| RenewalError::StoredKeyInvalid(old_id.clone()))?;
        for offer in mine {
            reports.push(apply(licensing, &old, offer, &mut done.grants).await?);
        }
    }
    // The store moved the licence epoch for every key added, assigned or removed.
    Ok(done)
}

async fn apply(
    licensing: &Licensing,
    old: &outpost_proto::licence::LicenceKey,
    offer: &RenewalFile,
    grants: &mut Vec<(String, LeaseGrant)>,
) -> Result<RenewalReport, StoreError> {
    let store = licensing.store();
    let old_id = &old.body.key_id;
    let refused = async |renewal: &str, msg: String| {
        warn!("{msg}");
        store
            .notify(
                "renewal-refused",
                Some(old_id),
                &msg,
                serde_json::json!({ "file": offer.file_name }),
            )
            .await?;
        Ok::<_, StoreError>(report(old_id, "refused", renewal, msg))
    };
    let new = match verify_key_file(&offer.content, licensing.authority_public()) {
        Ok(k) if k.body.renews.as_deref() == Some(old_id) => k,
        Ok(k) => {
            let msg = format!(
                "renewal {} does not say it renews {old_id}; not stored",
                k.body.key_id
            );
            return refused(&k.body.key_id, msg).await;
        }
        Err(e) => {
            let msg = format!(
                "renewal file {} for key {old_id} refused: {e}; nothing was stored",
                offer.file_name
            );
            return refused("", msg).await;
        }
    };
    let new_id = new.body.key_id.clone();
    let already = store.key(&new_id).await?.is_some();
    if !already {
        // Added to the repository from the download: no key file is written (L13).
        let auto = store
            .key(old_id)
            .await?
            .is_some_and(|k| k.auto_distribute != 0);
        store
            .insert_keys(
                &[(offer.file_name.clone(), new.clone())],
                auto,
                false,
                "renewal",
                outpost_net::unix_now(),
            )
            .await?;
        info!(old = %old_id, new = %new_id, "renewal key added to the repository");
    }
    if !already && let Assessment::CannotRenewAutomatically(reason) = assess(&old.body, &new.body) {
        // Outcome 2: added, not distributed; the admin is told why.
        store
            .notify(
                "key-cannot-renew",
                Some(old_id),
                &format!("key {old_id}: {reason}"),
                serde_json::json!({ "renewal": new_id, "reason": reason }),
            )
            .await?;
        return Ok(report(old_id, "not-distributed", &new_id, reason));
    }
    // Outcome 3, or L12 (renewal added by hand): give the new key to every object of the old
    // key that lacks it; objects that got it by hand keep it. Then the old key goes.
    let old_objects = store.key_objects(old_id).await?;
    let new_objects = store.key_objects(&new_id).await?;
    let add = objects_to_add(&old_objects, &new_objects);
    for o in &add {
        store.assign_object(&new_id, o).await?;
    }
    // Neighbours holding leases of the old key get leases of the new one beside them; the old
    // key goes once none holds it (at once when none does).
    let handed = store
        .hand_over_leases(old_id, &new_id, outpost_net::unix_now())
        .await?;
    for (server, why) in &handed.refused {
        let msg = format!("key {new_id} not handed to {server}: {why}");
        warn!("{msg}");
        store
            .notify(
                "key-cannot-renew",
                Some(&new_id),
                &msg,
                serde_json::json!({ "old": old_id, "new": new_id, "server": server }),
            )
            .await?;
    }
    let kept = if handed.removed {
        format!("key {old_id} removed")
    } else {
        format!(
            "key {old_id} kept until the neighbours holding leases of it move to {new_id} \
             ({} lease(s) handed over)",
            handed.grants.len()
        )
    };
    grants.extend(handed.grants);
    let (outcome, msg) = if already {
        (
            "distributed",
            if add.is_empty() {
                format!(
                    "key {new_id} (added by hand) was already on every object of key {old_id}; {kept}"
                )
            } else {
                format!(
                    "key {new_id} (added by hand) given to {} more object(s) of key {old_id}; {kept}",
                    add.len()
                )
            },
        )
    } else {
        (
            "renewed",
            format!(
                "key {old_id} renewed automatically by key {new_id}; given to {} object(s); {kept}",
                add.len()
            ),
        )
    };
    store
        .notify(
            "key-renewed",
            Some(&new_id),
            &msg,
            serde_json::json!({
                "old": old_id,
                "new": new_id,
                "objects_added": add.iter().map(|o| o.stored()).collect::<Vec<_>>(),
                "added_by_hand": already,
            }),
        )
        .await?;
    info!("{msg}");
    Ok(report(old_id, outcome, &new_id, msg))
}
