//! The licence check at connect (S3, L6), executed in one write transaction: read the
//! candidate keys, let `outpost_proto::licence::plan_seat` decide, apply the decision with
//! conditional updates, record the result with the device. Seat counts can never exceed a key's
//! seats: the take is `UPDATE … WHERE seats_used + seats_leased_out < seats`, and the table's
//! CHECK constraint backs it up.

use outpost_proto::licence::{Candidate, SeatDecision, plan_seat};
use sqlx::{Sqlite, Transaction};

use super::{KeyRow, Store, StoreError, group_chain};

/// The key a device is licensed by, as needed for its grant.
#[derive(Debug, Clone)]
pub struct LicensedKey {
    /// The key.
    pub key: KeyRow,
    /// Grant issue time.
    pub issued_at: i64,
    /// Grant expiry (never after the key's).
    pub grant_expires_at: i64,
}

/// Result of a licence check.
#[derive(Debug, Clone)]
pub enum CheckOutcome {
    /// Licensed; a grant row was committed.
    Licensed(Box<LicensedKey>),
    /// Unlicensed, with the reason.
    Unlicensed(String),
}

/// Releases one seat of a device on a key (no-op if it holds none).
pub(crate) async fn release_seat(
    tx: &mut Transaction<'_, Sqlite>,
    key_id: &str,
    device_id: &str,
) -> Result<(), StoreError> {
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
    }
    Ok(())
}

/// Releases every seat a device holds.
pub(crate) async fn release_all_seats(
    tx: &mut Transaction<'_, Sqlite>,
    device_id: &str,
) -> Result<(), StoreError> {
    let held: Vec<(String,)> = sqlx::query_as("SELECT key_id FROM seats WHERE device_id = $1")
        .bind(device_id)
        .fetch_all(&mut **tx)
        .await?;
    for (key_id,) in held {
        release_seat(tx, &key_id, device_id).await?;
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct AssignedKey {
    object: String,
    #[sqlx(flatten)]
    key: KeyRow,
}

fn nearness(object: &str, device_object: &str, chain: &[String]) -> Option<usize> {
    if object == device_object {
        return Some(0);
    }
    let g = object.strip_prefix("group:")?;
    chain.iter().position(|c| c == g).map(|i| i + 1)
}

impl Store {
    /// Runs the licence check for a device (L6) and commits its result. `grant_ttl` bounds the
    /// grant's lifetime; the grant never outlives the key (L7).
    pub async fn check_licence(
        &self,
        device_id: &str,
        now: i64,
        grant_ttl: i64,
    ) -> Result<CheckOutcome, StoreError> {
        self.check_licence_via(device_id, None, now, grant_ttl)
            .await
    }

    /// As [`Store::check_licence`], also recording how the device is connected (`path`).
    pub async fn check_licence_via(
        &self,
        device_id: &str,
        path: Option<&str>,
        now: i64,
        grant_ttl: i64,
    ) -> Result<CheckOutcome, StoreError> {
        let mut tx = self.write.begin().await?;
        let dev: Option<(String, Option<i64>)> =
            sqlx::query_as("SELECT group_path, revoked_at FROM devices WHERE id = $1")
                .bind(device_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((group, revoked)) = dev else {
            return Err(StoreError::NotFound(format!(
                "device {device_id} is not registered"
            )));
        };
        if revoked.is_some() {
            return Err(StoreError::Revoked(format!(
                "device {device_id} was revoked by an administrator"
            )));
        }
        let device_object = format!("device:{device_id}");
        let chain = group_chain(&group);
        // A conditional take can only fail when another writer (another server instance on a
        // shared database, P2) took the last seat between our read and our update: re-plan.
        let mut attempts = 0;
        let outcome = loop {
            attempts += 1;
            let rows: Vec<AssignedKey> = sqlx::query_as(
                "SELECT a.object, k.id, k.licensee, k.product, k.components, k.seats, k.seats_used,
                        k.seats_leased_out, k.valid_from, k.expires_at, k.kind, k.renews,
                        k.auto_distribute, k.origin, k.file_name, k.imported_at
                 FROM key_assignments a JOIN licence_keys k ON k.id = a.key_id
                 WHERE a.object = $1 OR a.object LIKE 'group:%'",
            )
            .bind(&device_object)
            .fetch_all(&mut *tx)
            .await?;
            let held: Vec<(String,)> =
                sqlx::query_as("SELECT key_id FROM seats WHERE device_id = $1")
                    .bind(device_id)
                    .fetch_all(&mut *tx)
                    .await?;
            let is_held = |id: &str| held.iter().any(|(h,)| h == id);
            let mut keys: Vec<(usize, KeyRow, bool)> = rows
                .into_iter()
                .filter_map(|r| {
                    let rank = nearness(&r.object, &device_object, &chain)?;
                    let h = is_held(&r.key.id);
                    Some((rank, r.key, h))
                })
                .collect();
            // Seats held on keys that no longer apply must be released: rank them last.
            for (k,) in &held {
                if !keys.iter().any(|(_, row, _)| row.id == *k)
                    && let Some(row) = sqlx::query_as::<_, KeyRow>(
                        "SELECT id, licensee, product, components, seats, seats_used, seats_leased_out,
                                valid_from, expires_at, kind, renews, auto_distribute, origin, file_name, imported_at
                         FROM licence_keys WHERE id = $1",
                    )
                    .bind(k)
                    .fetch_optional(&mut *tx)
                    .await?
                    {
                        keys.push((usize::MAX, row, true));
                    }
            }
            // Nearest first; among keys on the same object the one valid longest first.
            keys.sort_by(|a, b| {
                a.0.cmp(&b.0)
                    .then(b.1.expires_at.cmp(&a.1.expires_at))
                    .then(a.1.id.cmp(&b.1.id))
            });
            keys.dedup_by(|a, b| a.1.id == b.1.id);
            let candidates: Vec<Candidate> = keys
                .iter()
                .map(|(rank, k, held)| Candidate {
                    key_id: k.id.clone(),
                    seats_total: k.seats as u32,
                    seats_used: k.seats_used as u32,
                    seats_leased_out: k.seats_leased_out as u32,
                    valid_from: k.valid_from,
                    // A key that is no longer assigned is never a winner, only released.
                    expires_at: if *rank == usize::MAX {
                        i64::MIN
                    } else {
                        k.expires_at
                    },
                    held: *held,
                })
                .collect();
            let plan = plan_seat(&candidates, now);
            for k in &plan.release {
                release_seat(&mut tx, k, device_id).await?;
            }
            let find = |id: &str| {
                keys.iter()
                    .find(|(_, k, _)| k.id == id)
                    .map(|(_, k, _)| k.clone())
            };
            match plan.decision {
                SeatDecision::Keep(id) => {
                    break CheckOutcome::Licensed(Box::new(self.licensed(
                        find(&id),
                        now,
                        grant_ttl,
                    )));
                }
                SeatDecision::Take(id) => {
                    let took = sqlx::query(
                        "UPDATE licence_keys SET seats_used = seats_used + 1
                         WHERE id = $1 AND seats_used + seats_leased_out < seats",
                    )
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                    if took.rows_affected() == 1 {
                        sqlx::query(
                            "INSERT INTO seats (key_id, device_id, taken_at) VALUES ($1, $2, $3)",
                        )
                        .bind(&id)
                        .bind(device_id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                        let mut key = find(&id);
                        if let Some(k) = key.as_mut() {
                            k.seats_used += 1;
                        }
                        break CheckOutcome::Licensed(Box::new(self.licensed(key, now, grant_ttl)));
                    }
                    if attempts >= 5 {
                        break CheckOutcome::Unlicensed(format!(
                            "no free seat on key {id}: seats were taken concurrently, try again"
                        ));
                    }
                }
                SeatDecision::Unlicensed(reason) => break CheckOutcome::Unlicensed(reason),
            }
        };
        // The result is recorded with the device (S3); the grant itself is signed from it.
        let (state, key, reason) = match &outcome {
            CheckOutcome::Licensed(l) => ("licensed", Some(l.key.id.as_str()), ""),
            CheckOutcome::Unlicensed(r) => ("unlicensed", None, r.as_str()),
        };
        sqlx::query(
            "UPDATE devices SET licence_state = $2, licence_key = $3, licence_reason = $4,
                    last_check_at = $5, last_seen = $5, path = COALESCE($6, path)
             WHERE id = $1",
        )
        .bind(device_id)
        .bind(state)
        .bind(key)
        .bind(reason)
        .bind(now)
        .bind(path)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(outcome)
    }

    fn licensed(&self, key: Option<KeyRow>, now: i64, grant_ttl: i64) -> LicensedKey {
        let key = key.expect("planned key was read in this transaction");
        LicensedKey {
            grant_expires_at: now.saturating_add(grant_ttl).min(key.expires_at),
            issued_at: now,
            key,
        }
    }

    /// Seat counts of a key: (seats, used, leased out).
    pub async fn seat_counts(&self, key_id: &str) -> Result<(i64, i64, i64), StoreError> {
        sqlx::query_as("SELECT seats, seats_used, seats_leased_out FROM licence_keys WHERE id = $1")
            .bind(key_id)
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no key {key_id}")))
    }
}
