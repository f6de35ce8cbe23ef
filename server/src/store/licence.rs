//! The licence check at connect (S3, L6), executed in one write transaction: read the
//! candidate keys, let `outpost_proto::licence::plan_seat` decide, apply the decision with
//! conditional updates, record the result with the device. Seat counts can never exceed a key's
//! seats: the take is `UPDATE … WHERE seats_used + seats_leased_out < seats`, and the table's
//! CHECK constraint backs it up.

use outpost_proto::licence::{Candidate, SeatDecision, plan_seat};
use sqlx::{Sqlite, Transaction};
use tokio::sync::{mpsc, oneshot};

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

/// One row of the check's read: the device, and one candidate key (assigned to it, to one of
/// its groups, or holding its seat) with whether the device holds a seat on it.
struct CheckRow {
    group_path: String,
    revoked_at: Option<i64>,
    /// The device's recorded result, to skip rewriting an unchanged one.
    recorded: (String, Option<String>, String, i64, String),
    object: Option<String>,
    held: i64,
    key: Option<KeyRow>,
}

impl<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> for CheckRow {
    fn from_row(row: &'r sqlx::sqlite::SqliteRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        let id: Option<String> = row.try_get("id")?;
        Ok(CheckRow {
            group_path: row.try_get("group_path")?,
            revoked_at: row.try_get("revoked_at")?,
            recorded: (
                row.try_get("licence_state")?,
                row.try_get("licence_key")?,
                row.try_get("licence_reason")?,
                row.try_get("last_check_at")?,
                row.try_get("path")?,
            ),
            object: row.try_get("object")?,
            held: row.try_get::<Option<i64>, _>("held")?.unwrap_or(0),
            key: match id {
                Some(_) => Some(KeyRow::from_row(row)?),
                None => None,
            },
        })
    }
}

fn nearness(object: &str, device_object: &str, chain: &[String]) -> Option<usize> {
    if object == device_object {
        return Some(0);
    }
    let g = object.strip_prefix("group:")?;
    chain.iter().position(|c| c == g).map(|i| i + 1)
}

/// A licence check waiting for the batch writer.
pub(crate) struct CheckJob {
    device_id: String,
    path: Option<String>,
    now: i64,
    grant_ttl: i64,
    reply: oneshot::Sender<Result<CheckOutcome, StoreError>>,
}

/// How fresh an unchanged recorded check result may be before it is rewritten.
const RECHECK_RECORD_SECS: i64 = 60;

/// Most checks committed in one transaction.
const MAX_BATCH: usize = 256;

/// Runs licence checks in batches: every check waiting when the writer is free goes into one
/// transaction with one commit (group commit), so a storm of connects costs one fsync per
/// batch instead of one per device. A check that fails (revoked, unknown device) fails alone;
/// a database error fails the batch, whose checks are then retried one by one.
pub(crate) async fn check_writer(pool: sqlx::SqlitePool, mut jobs: mpsc::Receiver<CheckJob>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        match run_batch(&pool, &batch).await {
            Ok(results) => {
                for (job, r) in batch.drain(..).zip(results) {
                    let _ = job.reply.send(r);
                }
            }
            Err(_) if batch.len() > 1 => {
                for job in batch.drain(..) {
                    let r = match run_batch(&pool, std::slice::from_ref(&job)).await {
                        Ok(mut v) => v.remove(0),
                        Err(e) => Err(e),
                    };
                    let _ = job.reply.send(r);
                }
            }
            Err(e) => {
                let job = batch.remove(0);
                let _ = job.reply.send(Err(e));
            }
        }
    }
}

async fn run_batch(
    pool: &sqlx::SqlitePool,
    jobs: &[CheckJob],
) -> Result<Vec<Result<CheckOutcome, StoreError>>, StoreError> {
    let mut tx = pool.begin().await?;
    let mut out = Vec::with_capacity(jobs.len());
    for j in jobs {
        out.push(
            match check_in_tx(&mut tx, &j.device_id, j.path.as_deref(), j.now, j.grant_ttl).await {
                Ok(o) => Ok(o),
                Err(e @ (StoreError::Sqlx(_) | StoreError::Migrate(_))) => return Err(e),
                Err(e) => Err(e),
            },
        );
    }
    tx.commit().await?;
    Ok(out)
}

async fn check_in_tx(
    tx: &mut Transaction<'_, Sqlite>,
    device_id: &str,
    path: Option<&str>,
    now: i64,
    grant_ttl: i64,
) -> Result<CheckOutcome, StoreError> {
    let device_object = format!("device:{device_id}");
    // A conditional take can only fail when another writer (another server instance on a
    // shared database, P2) took the last seat between our read and our update: re-plan.
    let mut attempts = 0;
    let mut recorded;
    let outcome = loop {
        attempts += 1;
        // Everything the decision needs in one statement: the device, the keys assigned to
        // it or to any group (filtered to its chain below), and the keys it holds seats on.
        let rows: Vec<CheckRow> = sqlx::query_as(
            "SELECT d.group_path, d.revoked_at, d.licence_state, d.licence_key, d.licence_reason,
                    d.last_check_at, d.path, c.object,
                    (SELECT COUNT(*) FROM seats s WHERE s.key_id = k.id AND s.device_id = d.id) AS held,
                    k.id, k.licensee, k.product, k.components, k.seats, k.seats_used,
                    k.seats_leased_out, k.valid_from, k.expires_at, k.kind, k.renews,
                    k.auto_distribute, k.origin, k.file_name, k.imported_at
             FROM devices d
             LEFT JOIN (SELECT object, key_id FROM key_assignments WHERE object = $2 OR object LIKE 'group:%'
                        UNION ALL
                        SELECT NULL, key_id FROM seats WHERE device_id = $1) c ON 1 = 1
             LEFT JOIN licence_keys k ON k.id = c.key_id
             WHERE d.id = $1",
        )
        .bind(device_id)
        .bind(&device_object)
        .fetch_all(&mut **tx)
        .await?;
        let Some(first) = rows.first() else {
            return Err(StoreError::NotFound(format!(
                "device {device_id} is not registered"
            )));
        };
        if first.revoked_at.is_some() {
            return Err(StoreError::Revoked(format!(
                "device {device_id} was revoked by an administrator"
            )));
        }
        let chain = group_chain(&first.group_path);
        recorded = Some(first.recorded.clone());
        let mut keys: Vec<(usize, KeyRow, bool)> = vec![];
        for r in rows {
            let Some(k) = r.key else { continue };
            // Seats held on keys that no longer apply rank last: they are only released.
            let rank = match &r.object {
                Some(o) => match nearness(o, &device_object, &chain) {
                    Some(n) => n,
                    None => continue,
                },
                None => usize::MAX,
            };
            keys.push((rank, k, r.held > 0));
        }
        // Nearest first; among keys on the same object the one valid longest first.
        keys.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then(b.1.expires_at.cmp(&a.1.expires_at))
                .then(a.1.id.cmp(&b.1.id))
        });
        // A key both assigned and held appears twice: keep its nearest rank.
        let mut seen = std::collections::HashSet::new();
        keys.retain(|(_, k, _)| seen.insert(k.id.clone()));
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
            release_seat(tx, k, device_id).await?;
        }
        let find = |id: &str| {
            keys.iter()
                .find(|(_, k, _)| k.id == id)
                .map(|(_, k, _)| k.clone())
        };
        match plan.decision {
            SeatDecision::Keep(id) => {
                break CheckOutcome::Licensed(Box::new(licensed(find(&id), now, grant_ttl)));
            }
            SeatDecision::Take(id) => {
                let took = sqlx::query(
                    "UPDATE licence_keys SET seats_used = seats_used + 1
                     WHERE id = $1 AND seats_used + seats_leased_out < seats",
                )
                .bind(&id)
                .execute(&mut **tx)
                .await?;
                if took.rows_affected() == 1 {
                    sqlx::query(
                        "INSERT INTO seats (key_id, device_id, taken_at) VALUES ($1, $2, $3)",
                    )
                    .bind(&id)
                    .bind(device_id)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                    let mut key = find(&id);
                    if let Some(k) = key.as_mut() {
                        k.seats_used += 1;
                    }
                    break CheckOutcome::Licensed(Box::new(licensed(key, now, grant_ttl)));
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
    // An unchanged result checked within the last minute is not rewritten: the record keeps
    // `last_check_at` to the minute, and a storm of reconnects costs no writes per device.
    if let Some((rs, rk, rr, at, rp)) = &recorded {
        let same = rs == state
            && rk.as_deref() == key
            && rr == reason
            && now - at < RECHECK_RECORD_SECS
            && path.is_none_or(|p| p == rp);
        if same {
            return Ok(outcome);
        }
    }
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
    .execute(&mut **tx)
    .await?;
    Ok(outcome)
}

fn licensed(key: Option<KeyRow>, now: i64, grant_ttl: i64) -> LicensedKey {
    let key = key.expect("planned key was read in this transaction");
    LicensedKey {
        grant_expires_at: now.saturating_add(grant_ttl).min(key.expires_at),
        issued_at: now,
        key,
    }
}

impl Store {
    /// Runs the licence check for a device (L6) and commits its result before returning (P3).
    /// `grant_ttl` bounds the grant's lifetime; the grant never outlives the key (L7).
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
        let (reply, rx) = oneshot::channel();
        let job = CheckJob {
            device_id: device_id.to_owned(),
            path: path.map(str::to_owned),
            now,
            grant_ttl,
            reply,
        };
        if self.checks.send(job).await.is_err() {
            return Err(StoreError::Sqlx(sqlx::Error::PoolClosed));
        }
        rx.await
            .unwrap_or(Err(StoreError::Sqlx(sqlx::Error::PoolClosed)))
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
