//! Seat SQL (L5, L6, L9): the only statements that change seat counts. A seat is taken by a
//! conditional `UPDATE … WHERE seats_used + seats_leased_out < seats` and given back in the
//! same transaction as the row that records it, so counts never drift and are never exceeded
//! (the table's CHECK constraint backs it up). Also the two sweeps that free seats without a
//! connect: reclaiming inactive devices (L9) and promoting reserves when a key expires (L5).

use std::collections::BTreeSet;

use super::backend::Tx;
use super::{Store, StoreError};

/// Which seat a device holds on a key, as stored.
pub(crate) fn slot_name(slot: outpost_proto::licence::Slot) -> &'static str {
    match slot {
        outpost_proto::licence::Slot::Active => "active",
        outpost_proto::licence::Slot::Reserve => "reserve",
    }
}

/// Releases one seat of a device on a key (no-op if it holds none). Returns whether it held one.
pub(crate) async fn release_seat(
    tx: &mut Tx<'_>,
    key_id: &str,
    device_id: &str,
) -> Result<bool, StoreError> {
    let r = sqlx::query("DELETE FROM seats WHERE key_id = $1 AND device_id = $2")
        .bind(key_id)
        .bind(device_id)
        .execute(&mut **tx)
        .await?;
    if r.rows_affected() == 1 {
        sqlx::query("UPDATE licence_keys SET seats_used = seats_used - 1 WHERE id = $1")
            .bind(key_id)
            .execute(&mut **tx)
            .await?;
        return Ok(true);
    }
    Ok(false)
}

/// Releases every seat a device holds; returns the keys.
pub(crate) async fn release_all_seats(
    tx: &mut Tx<'_>,
    device_id: &str,
) -> Result<Vec<String>, StoreError> {
    let held: Vec<(String,)> = sqlx::query_as("SELECT key_id FROM seats WHERE device_id = $1")
        .bind(device_id)
        .fetch_all(&mut **tx)
        .await?;
    for (key_id,) in &held {
        release_seat(tx, key_id, device_id).await?;
    }
    Ok(held.into_iter().map(|(k,)| k).collect())
}

/// Takes a seat if one is free (the only way a seat count grows). A device that still holds
/// a grant on the key (a hold, L15) takes its held seat back instead: the count does not move.
pub(crate) async fn take_seat(
    tx: &mut Tx<'_>,
    key_id: &str,
    device_id: &str,
    slot: &str,
    now: i64,
) -> Result<bool, StoreError> {
    if super::holds::reclaim_hold(tx, key_id, device_id).await? {
        insert_seat(tx, key_id, device_id, slot, now).await?;
        return Ok(true);
    }
    let took = sqlx::query(
        "UPDATE licence_keys SET seats_used = seats_used + 1
         WHERE id = $1 AND seats_used + seats_leased_out < seats",
    )
    .bind(key_id)
    .execute(&mut **tx)
    .await?;
    if took.rows_affected() != 1 {
        return Ok(false);
    }
    insert_seat(tx, key_id, device_id, slot, now).await?;
    Ok(true)
}

async fn insert_seat(
    tx: &mut Tx<'_>,
    key_id: &str,
    device_id: &str,
    slot: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO seats (key_id, device_id, taken_at, slot) VALUES ($1, $2, $3, $4)")
        .bind(key_id)
        .bind(device_id)
        .bind(now)
        .bind(slot)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Records that a grant valid until `grant_expires` was issued on a seat (L15). Written only
/// when the recorded bound is exceeded, then with an hour to spare (at most hourly per
/// device), never beyond the key's expiry.
pub(crate) async fn record_grant(
    tx: &mut Tx<'_>,
    key_id: &str,
    device_id: &str,
    grant_expires: i64,
    recorded: i64,
    key_expires: i64,
) -> Result<(), StoreError> {
    const SLACK: i64 = 3600;
    if grant_expires <= recorded {
        return Ok(());
    }
    sqlx::query("UPDATE seats SET grant_until = $3 WHERE key_id = $1 AND device_id = $2")
        .bind(key_id)
        .bind(device_id)
        .bind(grant_expires.saturating_add(SLACK).min(key_expires))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Turns a held seat into the other slot (a reserve taking over, L5).
pub(crate) async fn set_slot(
    tx: &mut Tx<'_>,
    key_id: &str,
    device_id: &str,
    slot: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE seats SET slot = $3 WHERE key_id = $1 AND device_id = $2")
        .bind(key_id)
        .bind(device_id)
        .bind(slot)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl Store {
    /// Seat counts of a key: (seats, used, leased out).
    pub async fn seat_counts(&self, key_id: &str) -> Result<(i64, i64, i64), StoreError> {
        sqlx::query_as("SELECT seats, seats_used, seats_leased_out FROM licence_keys WHERE id = $1")
            .bind(key_id)
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no key {key_id}")))
    }

    /// Frees the seats of agents not seen since `cutoff` (L9), except those in `exclude`
    /// (online now). A seat whose grant may still be valid is held until it expires (L15).
    /// Returns (device, key) pairs.
    pub async fn reclaim_inactive(
        &self,
        cutoff: i64,
        now: i64,
        exclude: &[String],
        grant_ttl: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut tx = self.write.begin().await?;
        let mut stale: Vec<(String, String)> = sqlx::query_as(
            "SELECT s.device_id, s.key_id FROM seats s JOIN devices d ON d.id = s.device_id
             WHERE d.role = 'agent' AND d.last_seen < $1",
        )
        .bind(cutoff)
        .fetch_all(&mut *tx)
        .await?;
        stale.retain(|(d, _)| !exclude.contains(d));
        for (device, key) in &stale {
            super::holds::give_back(&mut tx, key, device, now, "reclaimed", grant_ttl).await?;
        }
        let devices: BTreeSet<&String> = stale.iter().map(|(d, _)| d).collect();
        for d in devices {
            sqlx::query(
                "UPDATE devices SET licence_state = 'unlicensed', licence_key = NULL, licence_reserve_key = NULL,
                        licence_reason = 'seat reclaimed: inactive since ' || $2, last_check_at = $3 WHERE id = $1",
            )
            .bind(d)
            .bind(outpost_proto::licence::key::format_time(cutoff))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        if !stale.is_empty() {
            self.licence_changed();
        }
        Ok(stale)
    }

    /// Moves devices off keys that have expired (L5), without waiting for their next
    /// connect: a device holding a reserve seat on a key valid now switches to it (the seat
    /// becomes its active seat); a device without one is recorded unlicensed. The expired
    /// seat is released either way. Returns (device, expired key, new key if promoted).
    ///
    /// Not the connect-time check: a device that is away must not be recorded as seen (that
    /// would hide it from reclaiming, L9) nor take new seats; its next connect does the rest.
    pub async fn promote_expired(
        &self,
        now: i64,
    ) -> Result<Vec<(String, String, Option<String>)>, StoreError> {
        let mut tx = self.write.begin().await?;
        /// (device, expired key, reserve key, reserve valid from, reserve expiry)
        type Row = (String, String, Option<String>, Option<i64>, Option<i64>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT d.id, d.licence_key, d.licence_reserve_key, r.valid_from, r.expires_at
             FROM devices d
             JOIN licence_keys k ON k.id = d.licence_key
             LEFT JOIN licence_keys r ON r.id = d.licence_reserve_key
             WHERE d.licence_state = 'licensed' AND k.expires_at <= $1",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut changed = vec![];
        for (device, old, reserve, r_from, r_until) in rows {
            release_seat(&mut tx, &old, &device).await?;
            let usable = matches!((r_from, r_until), (Some(f), Some(u)) if f <= now && now < u);
            let holds_reserve = match &reserve {
                Some(r) if usable => {
                    sqlx::query_scalar::<_, i64>(
                        "SELECT COUNT(*) FROM seats WHERE key_id = $1 AND device_id = $2 AND slot = 'reserve'",
                    )
                    .bind(r)
                    .bind(&device)
                    .fetch_one(&mut *tx)
                    .await?
                        == 1
                }
                _ => false,
            };
            if holds_reserve {
                let r = reserve.expect("checked above");
                set_slot(&mut tx, &r, &device, "active").await?;
                sqlx::query(
                    "UPDATE devices SET licence_key = $2, licence_reserve_key = NULL WHERE id = $1",
                )
                .bind(&device)
                .bind(&r)
                .execute(&mut *tx)
                .await?;
                changed.push((device, old, Some(r)));
            } else {
                if let Some(r) = &reserve {
                    // A reserve not valid yet may still be held offline: hold it (L15).
                    super::holds::give_back(&mut tx, r, &device, now, "superseded", 0).await?;
                }
                sqlx::query(
                    "UPDATE devices SET licence_state = 'unlicensed', licence_key = NULL,
                            licence_reserve_key = NULL, licence_reason = $2
                     WHERE id = $1",
                )
                .bind(&device)
                .bind(format!("key {old} expired and no reserve key took over"))
                .execute(&mut *tx)
                .await?;
                changed.push((device, old, None));
            }
        }
        tx.commit().await?;
        if !changed.is_empty() {
            self.licence_changed();
        }
        Ok(changed)
    }
}
