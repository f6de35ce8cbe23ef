//! Admin actions on keys, seats, renewal and the notification log (L1–L14).

use outpost_proto::error::RefusalCode;
use outpost_proto::pb::admin::{
    KeyAssign, KeyAutoDistribute, KeyFile, KeyImport, KeyImportResult, KeyInfo, KeyListResult,
    KeyRef, KeyUnassign, NotificationInfo, NotificationList, NotificationListResult, RenewalResult,
    admin_response::Result as R,
};
use tracing::info;

use super::{done, error, ok};
use crate::node::Node;
use crate::store::{HeldSeats, KeyRow, StoreError};
use outpost_proto::pb::admin::AdminResponse;

type Answer = Result<AdminResponse, StoreError>;

pub(super) async fn import(node: &Node, k: KeyImport) -> Answer {
    let ids = crate::licence::import::import(
        node.licensing(),
        &k.file_name,
        &k.content,
        k.auto_distribute,
        k.assign_everyone,
        k.activation_reserve,
    )
    .await?;
    info!(keys = ?ids, file = %k.file_name, "licence keys imported");
    let now = outpost_net::unix_now();
    let held = node.store().held_seats().await?;
    let mut out = vec![];
    for id in ids {
        if let Some(row) = node.store().key(&id).await? {
            out.push(key_info(node, row, now, &held).await?);
        }
    }
    Ok(ok(R::KeyImport(KeyImportResult { keys: out })))
}

pub(super) async fn list(node: &Node) -> Answer {
    let now = outpost_net::unix_now();
    let held = node.store().held_seats().await?;
    let mut out = vec![];
    for row in node.store().keys().await? {
        out.push(key_info(node, row, now, &held).await?);
    }
    Ok(ok(R::Keys(KeyListResult { keys: out })))
}

pub(super) async fn assign(node: &Node, a: KeyAssign) -> Answer {
    let obj = node.store().assign_key(&a.key_id, &a.object).await?;
    info!(key = %a.key_id, object = %obj, "key assigned");
    if let outpost_proto::licence::Object::Server(s) = &obj {
        node.peers().demand_changed();
        return Ok(done(format!(
            "key {} assigned to {obj}: {s} gets a lease of it sized to what its devices need, \
             as seats are free here (`lease list` shows it)",
            a.key_id
        )));
    }
    Ok(done(format!("key {} assigned to {obj}", a.key_id)))
}

pub(super) async fn unassign(node: &Node, a: KeyUnassign) -> Answer {
    let obj = node.store().unassign_key(&a.key_id, &a.object).await?;
    info!(key = %a.key_id, object = %obj, "key unassigned");
    if matches!(obj, outpost_proto::licence::Object::Server(_)) {
        // Its lease ends: revoked now, the seats back when the current period ends.
        node.peers().demand_changed();
    }
    Ok(done(format!(
        "key {} no longer assigned to {obj}",
        a.key_id
    )))
}

pub(super) async fn remove(node: &Node, k: KeyRef) -> Answer {
    node.store().remove_key(&k.key_id).await?;
    info!(key = %k.key_id, "key removed from the repository (its file stays in the data directory)");
    Ok(done(format!(
        "key {} removed; its file stays in {}",
        k.key_id,
        node.licensing().keys_dir().display()
    )))
}

pub(super) async fn export(node: &Node, k: KeyRef) -> Answer {
    let (file_name, content) = node.store().key_file(&k.key_id).await?;
    Ok(ok(R::KeyFile(KeyFile {
        key_id: k.key_id,
        file_name,
        content,
    })))
}

pub(super) async fn auto_distribute(node: &Node, k: KeyAutoDistribute) -> Answer {
    node.store().set_auto_distribute(&k.key_id, k.on).await?;
    node.peers().demand_changed();
    Ok(done(format!(
        "key {} is {} distributed automatically",
        k.key_id,
        if k.on { "now" } else { "no longer" }
    )))
}

pub(super) async fn renew(node: &Node) -> Answer {
    use crate::licence::renewal::RenewalError;
    match crate::licence::renewal::run(node.licensing()).await {
        Ok(done) => {
            node.peers().deliver_all(node, &done.grants).await;
            Ok(ok(R::Renewals(RenewalResult {
                reports: done.reports,
            })))
        }
        Err(RenewalError::Store(e)) => Err(e),
        Err(e @ RenewalError::NotConfigured(_)) => {
            Ok(error(RefusalCode::InvalidArgument, e.to_string()))
        }
        Err(e @ RenewalError::StoredKeyInvalid(_)) => {
            Ok(error(RefusalCode::Conflict, e.to_string()))
        }
        Err(e) => Ok(error(RefusalCode::UpstreamUnavailable, e.to_string())),
    }
}

pub(super) async fn reclaim(node: &Node) -> Answer {
    let after = node.licensing().settings().reclaim_after;
    if after.is_zero() {
        return Ok(error(
            RefusalCode::InvalidArgument,
            "licensing.reclaim_after is 0s: reclaiming is off",
        ));
    }
    let now = outpost_net::unix_now();
    let n = crate::licence::clock::reclaim(node, now - after.as_secs() as i64, now).await?;
    Ok(done(format!(
        "{n} seat(s) of devices inactive for {} freed",
        humantime::format_duration(after)
    )))
}

pub(super) async fn notifications(node: &Node, n: NotificationList) -> Answer {
    let kind = (!n.kind.is_empty()).then_some(n.kind.as_str());
    let limit = if n.limit == 0 { 50 } else { n.limit.into() };
    let notifications = node
        .store()
        .notices(kind, limit)
        .await?
        .into_iter()
        .map(|n| NotificationInfo {
            id: n.id,
            at_ms: n.at_ms,
            kind: n.kind,
            key_id: n.key_id.unwrap_or_default(),
            message: n.message,
        })
        .collect();
    Ok(ok(R::Notifications(NotificationListResult {
        notifications,
    })))
}

async fn key_info(
    node: &Node,
    row: KeyRow,
    now: i64,
    held: &std::collections::HashMap<String, HeldSeats>,
) -> Result<KeyInfo, StoreError> {
    let h = held.get(&row.id).copied().unwrap_or_default();
    let objects = node
        .store()
        .key_objects(&row.id)
        .await?
        .iter()
        .map(ToString::to_string)
        .collect();
    Ok(KeyInfo {
        seats_free: row.free() as u32,
        key_id: row.id.clone(),
        licensee: row.licensee.clone(),
        product: row.product.clone(),
        components: row.component_list(),
        seats_total: row.seats as u32,
        seats_used: row.seats_used as u32,
        seats_leased_out: row.seats_leased_out as u32,
        valid_from: row.valid_from,
        expires_at: row.expires_at,
        kind: row.kind.clone(),
        renews: row.renews.clone().unwrap_or_default(),
        auto_distribute: row.auto_distribute != 0,
        objects,
        file_name: row.file_name.clone(),
        expired: now >= row.expires_at,
        seats_held_offline: h.count as u32,
        held_next_return: h.next_return,
    })
}
