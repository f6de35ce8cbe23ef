//! The server's licence clock: key expiry notifications (L14), reclaiming seats of inactive
//! devices (L9), and the scheduled repository-update task that checks for renewals when
//! "update licence keys" is enabled (L11).

use std::sync::Arc;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::node::Shared;

/// Runs until shutdown.
pub async fn run(shared: Arc<Shared>) {
    let cfg = &shared.config.licensing;
    let mut tick = tokio::time::interval(cfg.check_interval);
    let mut last_update = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.shutdown.cancelled() => return,
        }
        if let Err(e) = once(&shared, &mut last_update).await {
            warn!(error = %e, "licence clock");
        }
    }
}

async fn once(shared: &Shared, last_update: &mut Instant) -> anyhow::Result<()> {
    let cfg = &shared.config.licensing;
    let now = outpost_net::unix_now();
    expiry_notices(shared, now).await?;
    promote_expired(shared, now).await?;
    if !cfg.reclaim_after.is_zero() {
        reclaim(shared, now - cfg.reclaim_after.as_secs() as i64, now).await?;
    }
    if cfg.update_licence_keys
        && !cfg.authority.is_empty()
        && last_update.elapsed() >= cfg.repository_update_interval
    {
        *last_update = Instant::now();
        let reports = crate::renewal::run(shared).await?;
        info!(
            checked = reports.len(),
            "repository update: licence keys checked for renewal"
        );
    }
    Ok(())
}

/// Notifies "expiring soon" and "expired" once per key.
pub async fn expiry_notices(shared: &Shared, now: i64) -> anyhow::Result<()> {
    let soon = shared.config.licensing.expiring_soon.as_secs() as i64;
    for k in shared.store.keys().await? {
        let when = outpost_proto::licence::key::format_time(k.expires_at);
        if now >= k.expires_at {
            if shared.store.mark_key_notified(&k.id, "expired").await? {
                shared
                    .store
                    .notify(
                        "key-expired",
                        Some(&k.id),
                        &format!("key {} expired at {when}", k.id),
                        serde_json::json!({ "expires_at": k.expires_at }),
                    )
                    .await?;
                shared.licence_changed();
            }
        } else if k.expires_at - now <= soon
            && shared.store.mark_key_notified(&k.id, "expiring").await?
        {
            shared
                .store
                .notify(
                    "key-expiring-soon",
                    Some(&k.id),
                    &format!("key {} expires at {when}", k.id),
                    serde_json::json!({ "expires_at": k.expires_at, "seats_used": k.seats_used }),
                )
                .await?;
            // Devices may now get a reserve (L5, L8).
            shared.licence_changed();
        }
    }
    Ok(())
}

/// Switches devices whose active key expired to their reserve key (L5) on the server, the
/// same moment their agents do it offline from their reserve grant.
pub async fn promote_expired(shared: &Shared, now: i64) -> anyhow::Result<()> {
    let changed = shared.store.promote_expired(now).await?;
    for (device, old, new) in &changed {
        match new {
            Some(new) => info!(%device, expired = %old, active = %new, "reserve key now active"),
            None => info!(%device, expired = %old, "key expired; no reserve"),
        }
    }
    if !changed.is_empty() {
        shared.licence_changed();
    }
    Ok(())
}

/// Frees the seats of agents inactive since `cutoff` (L9).
pub async fn reclaim(shared: &Shared, cutoff: i64, now: i64) -> anyhow::Result<usize> {
    let online = shared.registry.online();
    let freed = shared.store.reclaim_inactive(cutoff, now, &online).await?;
    if !freed.is_empty() {
        shared
            .store
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
        shared.licence_changed();
    }
    Ok(freed.len())
}
