//! Automatic licence renewal (L11, L12, L13).
//!
//! Steps, any of which may end the procedure: ask the licence authority for renewals of the
//! keys this server owns (imported by hand or obtained by renewal; keys received from a
//! neighbour are not renewed here) → download, verify, add to the repository (no key file is
//! written: L13) → distribute to the objects of the old key and remove the old key.
//!
//! Interpretation (spec L11/L12): "the old key is removed once no subordinate uses it" —
//! there are no subordinate servers yet, so the old key is removed right after distribution;
//! devices that held it move to the renewal key at their next check (connected agents at their
//! next sync, the licence epoch moves).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use outpost_net::{endpoint, refuse, stream};
use outpost_proto::alpn;
use outpost_proto::licence::renewal::{Assessment, assess, objects_to_add};
use outpost_proto::licence::verify_key_file;
use outpost_proto::pb::admin::RenewalReport;
use outpost_proto::pb::v1::{RenewalFile, RenewalQuery, envelope::Msg};
use outpost_proto::pki::{self, Trust};
use tracing::{info, warn};

use crate::node::Shared;

/// Asks the authority for renewal files of the keys this server owns.
async fn fetch(shared: &Shared, owned: &[(String, Vec<u8>)]) -> anyhow::Result<Vec<RenewalFile>> {
    let cfg = &shared.config.licensing;
    anyhow::ensure!(
        !cfg.authority.is_empty(),
        "no licence authority configured: set licensing.authority and licensing.authority_tls_sha256 in server.toml"
    );
    let pin: [u8; 32] = hex::decode(&cfg.authority_tls_sha256)
        .ok()
        .and_then(|v| v.try_into().ok())
        .context("licensing.authority_tls_sha256 is not 64 hex digits")?;
    let addr = endpoint::resolve(&cfg.authority).await?;
    let tls = pki::client_config(None, &Trust::PinnedLeaf(pin), &[alpn::AUTHORITY])?;
    let mut c = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))?,
    ));
    c.transport_config(outpost_net::transport::client(
        Duration::from_secs(10),
        Duration::from_secs(30),
    ));
    let ep = endpoint::client_endpoint(addr)?;
    let conn = tokio::time::timeout(
        Duration::from_secs(15),
        ep.connect_with(c, addr, "outpost-authority")?,
    )
    .await
    .context("the licence authority does not answer")?
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the licence authority at {addr}: {}",
            refuse::explain(&e)
        )
    })?;
    let (send, recv) = conn.open_bi().await?;
    let mut f = stream::framed(stream::bi(send, recv), 16 << 20);
    f.send(Msg::RenewalQuery(RenewalQuery {
        key_files: owned.iter().map(|(_, file)| file.clone()).collect(),
    }))
    .await?;
    let reply = tokio::time::timeout(Duration::from_secs(30), f.next())
        .await
        .context("no answer from the licence authority")?;
    conn.close(quinn::VarInt::from_u32(0), b"done");
    match reply {
        Some(Ok(Msg::RenewalOffer(o))) => Ok(o.files),
        Some(Ok(Msg::Refusal(r))) => Err(outpost_proto::error::Refused(r).into()),
        other => anyhow::bail!("unexpected answer from the licence authority: {other:?}"),
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

/// Runs the renewal procedure once: when an admin asks, or from the repository-update task.
pub async fn run(shared: &Shared) -> anyhow::Result<Vec<RenewalReport>> {
    let store = &shared.store;
    let owned = store.owned_keys().await?;
    if owned.is_empty() {
        return Ok(vec![]);
    }
    let offers = fetch(shared, &owned).await?;
    let mut reports = vec![];
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
        let old = verify_key_file(old_file, &shared.authority_public)
            .context("stored key no longer verifies")?;
        for offer in mine {
            reports.push(apply(shared, &old, offer).await?);
        }
    }
    // Sessions re-check their licence only when keys were added, moved or removed.
    if reports
        .iter()
        .any(|r| r.outcome != "none" && r.outcome != "refused")
    {
        shared.licence_changed();
    }
    Ok(reports)
}

async fn apply(
    shared: &Shared,
    old: &outpost_proto::licence::LicenceKey,
    offer: &RenewalFile,
) -> anyhow::Result<RenewalReport> {
    let store = &shared.store;
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
        anyhow::Ok(report(old_id, "refused", renewal, msg))
    };
    let new = match verify_key_file(&offer.content, &shared.authority_public) {
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
        store.assign_key(&new_id, o).await?;
    }
    store.remove_key(old_id).await?;
    let (outcome, msg) = if already {
        (
            "distributed",
            if add.is_empty() {
                format!(
                    "key {new_id} (added by hand) was already on every object of key {old_id}; key {old_id} removed"
                )
            } else {
                format!(
                    "key {new_id} (added by hand) given to {} more object(s) of key {old_id}; key {old_id} removed",
                    add.len()
                )
            },
        )
    } else {
        (
            "renewed",
            format!(
                "key {old_id} renewed automatically by key {new_id}; given to {} object(s), key {old_id} removed",
                add.len()
            ),
        )
    };
    store
        .notify(
            "key-renewed",
            Some(&new_id),
            &msg,
            serde_json::json!({ "old": old_id, "new": new_id, "objects_added": add, "added_by_hand": already }),
        )
        .await?;
    info!("{msg}");
    Ok(report(old_id, outcome, &new_id, msg))
}
