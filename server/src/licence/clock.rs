//! The server's licence clock: key expiry notifications (L14), reclaiming seats of inactive
//! devices (L9), and the scheduled repository-update task that checks for renewals when
//! "update licence keys" is enabled (L11).

use std::sync::Arc;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::node::Node;
use crate::store::StoreError;

/// Runs until shutdown.
pub async fn run(node: Arc<Node>) {
    let cfg = node.licensing().settings();
    let mut tick = tokio::time::interval(cfg.check_interval);
    let mut last_update = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = node.runtime().cancelled() => return,
        }
        if let Err(e) = once(&node, &mut last_update).await {
            warn!(error = %e, "licence clock");
        }
    }
}

async fn once(node: &Node, last_update: &mut Instant) -> Result<(), StoreError> {
    let cfg = node.licensing().settings();
    let now = outpost_net::unix_now();
    expiry_notices(node, now).await?;
    promote_expired(node, now).await?;
    let returned = node.store().expire_holds(now).await?;
    if !returned.is_empty() {
        info!(
            seats = returned.len(),
            "seats held for offline grants returned: the grants expired"
        );
    }
    if !cfg.reclaim_after.is_zero() {
        reclaim(node, now - cfg.reclaim_after.as_secs() as i64, now).await?;
    }
    if cfg.update_licence_keys
        && !cfg.authority.is_empty()
        && last_update.elapsed() >= cfg.repository_update_interval
    {
        *last_update = Instant::now();
        match super::renewal::run(node.licensing()).await {
            Ok(done) => {
                node.peers().deliver_all(node, &done.grants).await;
                info!(
                    checked = done.reports.len(),
                    "repository update: licence keys checked for renewal"
                )
            }
            Err(e) => warn!(error = %e, "repository update: renewal check failed"),
        }
    }
    Ok(())
}

/// Notifies "expiring soon" and "expired" once per key. Marking a key moves the licence
/// epoch (devices may now get a reserve, L5, L8).
pub async fn expiry_notices(node: &Node, now: i64) -> Result<(), StoreError> {
    let store = node.store();
    let soon = node.licensing().settings().expiring_soon.as_secs() as i64;
    for k in store.keys().await? {
        let when = outpost_proto::licence::key::format_time(k.expires_at);
        if now >= k.expires_at {
            if store.mark_key_notified(&k.id, "expired").await? {
                store
                    .notify(
                        "key-expired",
                        Some(&k.id),
                        &format!("key {} expired at {when}", k.id),
                        serde_json::json!({ "expires_at": k.expires_at }),
                    )
                    .await?;
            }
        } else if k.expires_at - now <= soon && store.mark_key_notified(&k.id, "expiring").await? {
            store
                .notify(
                    "key-expiring-soon",
                    Some(&k.id),
                    &format!("key {} expires at {when}", k.id),
                    serde_json::json!({ "expires_at": k.expires_at, "seats_used": k.seats_used }),
                )
                .await?;
        }
    }
    Ok(())
}

/// Switches devices whose active key expired to their reserve key (L5) on the server, the
/// same moment their agents do it offline from their reserve grant.
pub async fn promote_expired(node: &Node, now: i64) -> Result<(), StoreError> {
    let changed = node.store().promote_expired(now).await?;
    for (device, old, new) in &changed {
        match new {
            Some(new) => info!(%device, expired = %old, active = %new, "reserve key now active"),
            None => info!(%device, expired = %old, "key expired; no reserve"),
        }
    }
    Ok(())
}

/// Frees the seats of agents inactive since `cutoff` (L9); agents online now keep theirs.
pub async fn reclaim(node: &Node, cutoff: i64, now: i64) -> Result<usize, StoreError> {
    let online = node.sessions().registry().online();
    let store = node.store();
    let ttl = node.licensing().grant_ttl();
    let freed = store.reclaim_inactive(cutoff, now, &online, ttl).await?;
    if !freed.is_empty() {
        store
            .notify(
                "seats-reclaimed",
                None,
                &format!(
                    "{} seat(s) of devices inactive since {} freed",
                    freed.len(),
                    outpost_proto::licence::key::format_time(cutoff)
                ),
                serde_json::json!({ "freed": freed }),
            )
            .await?;
    }
    Ok(freed.len())
}
