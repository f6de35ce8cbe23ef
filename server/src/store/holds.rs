//! Seats held for grants a device may still hold offline (L15).
//!
//! A key is never over-allocated counting the grants devices hold offline: when a device
//! loses a seat while it may still hold an unexpired grant on it — revoked, removed or
//! reclaimed while offline, or moved to another key before it confirmed storing the new
//! grant — the seat stays counted as a *hold* until that grant expires. It returns at once
//! when the device confirms it dropped (S8) or replaced the grant, or when an administrator
//! frees it explicitly (recorded in the notification log by the caller).
//!
//! A hold counts in `licence_keys.seats_used` exactly like a seat row, so every conditional
//! take (`seats_used + seats_leased_out < seats`) already counts it.

use std::collections::HashMap;

use super::backend::Tx;
use super::seats::release_seat;
use super::{Store, StoreError};

/// How long a recorded check result may go without being rewritten (`check::record`); seats
/// from before `grant_until` was recorded bound their last grant by the last recorded check
/// plus the grant lifetime plus this.
const RECORD_SLACK_SECS: i64 = 60;

/// How a seat a device lost was given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveBack {
    /// No grant on it can still be valid: free now.
    Released,
    /// Held until this time (unix seconds) unless the device confirms earlier.
    Held(i64),
}

/// Seats held on one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeldSeats {
    /// How many.
    pub count: i64,
    /// When the first of them returns at the latest (unix seconds).
    pub next_return: i64,
}

/// Gives back a device's seat on a key (L15): released at once when no grant issued on it can
/// still be valid at `now`, else turned into a hold until the grant expires. `grant_ttl`
/// bounds grants issued before their expiry was recorded. `None` when the device held no seat
/// on the key.
pub(crate) async fn give_back(
    tx: &mut Tx<'_>,
    key_id: &str,
    device_id: &str,
    now: i64,
    reason: &str,
    grant_ttl: i64,
) -> Result<Option<GaveBack>, StoreError> {
    let row: Option<(i64, String, String, i64, i64)> = sqlx::query_as(
        "SELECT s.grant_until, s.slot, d.cert_sha256, d.last_check_at, k.expires_at
         FROM seats s JOIN devices d ON d.id = s.device_id JOIN licence_keys k ON k.id = s.key_id
         WHERE s.key_id = $1 AND s.device_id = $2",
    )
    .bind(key_id)
    .bind(device_id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((grant_until, slot, cert, last_check, key_expires)) = row else {
        return Ok(None);
    };
    let until = if grant_until > 0 {
        grant_until
    } else {
        last_check
            .saturating_add(grant_ttl)
            .saturating_add(RECORD_SLACK_SECS)
    }
    .min(key_expires);
    if until <= now {
        release_seat(tx, key_id, device_id).await?;
        return Ok(Some(GaveBack::Released));
    }
    sqlx::query("DELETE FROM seats WHERE key_id = $1 AND device_id = $2")
        .bind(key_id)
        .bind(device_id)
        .execute(&mut **tx)
        .await?;
    // An older hold of the same device on the same key merges into this one: one grant at
    // most can be valid per key and device, so one count.
    let older: Option<(i64,)> =
        sqlx::query_as("SELECT until FROM seat_holds WHERE key_id = $1 AND device_id = $2")
            .bind(key_id)
            .bind(device_id)
            .fetch_optional(&mut **tx)
            .await?;
    let until = match older {
        Some((old,)) => {
            sqlx::query("DELETE FROM seat_holds WHERE key_id = $1 AND device_id = $2")
                .bind(key_id)
                .bind(device_id)
                .execute(&mut **tx)
                .await?;
            sqlx::query("UPDATE licence_keys SET seats_used = seats_used - 1 WHERE id = $1")
                .bind(key_id)
                .execute(&mut **tx)
                .await?;
            until.max(old)
        }
        None => until,
    };
    sqlx::query(
        "INSERT INTO seat_holds (key_id, device_id, cert_sha256, slot, until, reason, since_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(key_id)
    .bind(device_id)
    .bind(cert)
    .bind(slot)
    .bind(until)
    .bind(reason)
    .bind(outpost_net::unix_now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(Some(GaveBack::Held(until)))
}

/// Gives back every seat a device holds; returns (key, how).
pub(crate) async fn give_back_all(
    tx: &mut Tx<'_>,
    device_id: &str,
    now: i64,
    reason: &str,
    grant_ttl: i64,
) -> Result<Vec<(String, GaveBack)>, StoreError> {
    let keys: Vec<(String,)> = sqlx::query_as("SELECT key_id FROM seats WHERE device_id = $1")
        .bind(device_id)
        .fetch_all(&mut **tx)
        .await?;
    let mut out = vec![];
    for (key,) in keys {
        if let Some(how) = give_back(tx, &key, device_id, now, reason, grant_ttl).await? {
            out.push((key, how));
        }
    }
    Ok(out)
}

/// Turns the device's hold on a key back into its seat (it takes the key again): the count
/// does not change. Returns whether there was one.
pub(crate) async fn reclaim_hold(
    tx: &mut Tx<'_>,
    key_id: &str,
    device_id: &str,
) -> Result<bool, StoreError> {
    let r = sqlx::query("DELETE FROM seat_holds WHERE key_id = $1 AND device_id = $2")
        .bind(key_id)
        .bind(device_id)
        .execute(&mut **tx)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Ends holds (the rows given) and gives their seats back to their keys.
async fn end_holds(tx: &mut Tx<'_>, holds: &[(String, String)]) -> Result<(), StoreError> {
    for (key, device) in holds {
        let r = sqlx::query("DELETE FROM seat_holds WHERE key_id = $1 AND device_id = $2")
            .bind(key)
            .bind(device)
            .execute(&mut **tx)
            .await?;
        if r.rows_affected() == 1 {
            sqlx::query("UPDATE licence_keys SET seats_used = seats_used - 1 WHERE id = $1")
                .bind(key)
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

impl Store {
    /// A device (known by id, or only by its certificate once removed) confirmed it dropped
    /// every grant (S8): its holds end. Returns the keys whose seats returned.
    pub async fn grants_dropped(
        &self,
        device_id: &str,
        cert_sha256: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.write.begin().await?;
        let holds: Vec<(String, String)> = sqlx::query_as(
            "SELECT key_id, device_id FROM seat_holds WHERE device_id = $1 OR cert_sha256 = $2",
        )
        .bind(device_id)
        .bind(cert_sha256)
        .fetch_all(&mut *tx)
        .await?;
        end_holds(&mut tx, &holds).await?;
        tx.commit().await?;
        if !holds.is_empty() {
            self.licence_changed();
        }
        Ok(holds.into_iter().map(|(k, _)| k).collect())
    }

    /// A device confirmed it stored the licence status checked at `checked_at_ms` (unix ms):
    /// holds for grants that status replaced end (L15).
    pub async fn grants_replaced(
        &self,
        device_id: &str,
        checked_at_ms: i64,
    ) -> Result<usize, StoreError> {
        let holds: Vec<(String, String)> = sqlx::query_as(
            "SELECT key_id, device_id FROM seat_holds
             WHERE device_id = $1 AND reason = 'superseded' AND since_ms <= $2",
        )
        .bind(device_id)
        .bind(checked_at_ms)
        .fetch_all(&self.read)
        .await?;
        if holds.is_empty() {
            return Ok(0);
        }
        let mut tx = self.write.begin().await?;
        end_holds(&mut tx, &holds).await?;
        tx.commit().await?;
        self.licence_changed();
        Ok(holds.len())
    }

    /// Ends the holds whose grants have expired by `now`. Returns (device, key) pairs.
    pub async fn expire_holds(&self, now: i64) -> Result<Vec<(String, String)>, StoreError> {
        let mut tx = self.write.begin().await?;
        let holds: Vec<(String, String)> =
            sqlx::query_as("SELECT key_id, device_id FROM seat_holds WHERE until <= $1")
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
        end_holds(&mut tx, &holds).await?;
        tx.commit().await?;
        if !holds.is_empty() {
            self.licence_changed();
        }
        Ok(holds.into_iter().map(|(k, d)| (d, k)).collect())
    }

    /// Seats held for offline grants, per key.
    pub async fn held_seats(&self) -> Result<HashMap<String, HeldSeats>, StoreError> {
        let rows: Vec<(String, i64, i64)> =
            sqlx::query_as("SELECT key_id, COUNT(*), MIN(until) FROM seat_holds GROUP BY key_id")
                .fetch_all(&self.read)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(k, count, next_return)| (k, HeldSeats { count, next_return }))
            .collect())
    }

    /// Whether a certificate belongs to a device that was removed while its grants may still
    /// be valid (it is told "removed", S8).
    pub async fn removed_with_holds(&self, cert_sha256: &str) -> Result<bool, StoreError> {
        let n: (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM seat_holds WHERE cert_sha256 = $1 AND reason = 'removed'",
        )
        .bind(cert_sha256)
        .fetch_one(&self.read)
        .await?;
        Ok(n.0 > 0)
    }
}
