//! The licence check at connect (S3, L5, L6, L8, L10), executed in one write transaction per
//! batch: read the candidate keys, let `outpost_proto::licence::plan_seat` decide, apply the
//! decision with conditional updates, record the result with the device, and notify usage
//! thresholds. Seat counts can never exceed a key's seats: every take is
//! `UPDATE … WHERE seats_used + seats_leased_out < seats`, and the table's CHECK constraint backs
//! it up.

use std::collections::BTreeSet;

use outpost_proto::licence::usage::{self, Level};
use outpost_proto::licence::{Candidate, SeatDecision, Slot, Source, plan_seat};
use sqlx::{Sqlite, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::notices::Notice;
use super::{KeyRow, Store, StoreError, group_chain};

/// How the server licenses: grant lifetime and the "expiring soon" window.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Longest grant lifetime, seconds (L7).
    pub grant_ttl: i64,
    /// An active key expiring within this many seconds gets a reserve (L5, L8).
    pub expiring_soon: i64,
}

/// What a grant is signed from.
#[derive(Debug, Clone)]
pub struct GrantKey {
    /// Key id.
    pub key_id: String,
    /// Licensee.
    pub licensee: String,
    /// Product.
    pub product: String,
    /// Components.
    pub components: Vec<String>,
    /// commercial | demo.
    pub kind: String,
    /// Key expiry.
    pub key_expires_at: i64,
    /// Grant validity start.
    pub valid_from: i64,
    /// Grant expiry (never after the key's).
    pub expires_at: i64,
}

impl GrantKey {
    fn from_row(k: &KeyRow, valid_from: i64, expires_at: i64) -> GrantKey {
        GrantKey {
            key_id: k.id.clone(),
            licensee: k.licensee.clone(),
            product: k.product.clone(),
            components: k.component_list(),
            kind: k.kind.clone(),
            key_expires_at: k.expires_at,
            valid_from,
            expires_at: expires_at.min(k.expires_at),
        }
    }
}

/// The grants of a licensed device.
#[derive(Debug, Clone)]
pub struct Licensed {
    /// The active grant.
    pub active: GrantKey,
    /// The reserve grant, when the active key expires soon (L5).
    pub reserve: Option<GrantKey>,
    /// The active key is an auto-distributed key no longer in the repository (L8).
    pub kept: bool,
}

/// Result of a licence check.
#[derive(Debug, Clone)]
pub enum CheckOutcome {
    /// Licensed; seats committed.
    Licensed(Box<Licensed>),
    /// Unlicensed, with the reason.
    Unlicensed(String),
}

/// Releases one seat of a device on a key (no-op if it holds none). Returns whether it held one.
pub(crate) async fn release_seat(
    tx: &mut Transaction<'_, Sqlite>,
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
    tx: &mut Transaction<'_, Sqlite>,
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

/// Takes a seat if one is free (the only way a seat count grows).
async fn take_seat(
    tx: &mut Transaction<'_, Sqlite>,
    key_id: &str,
    device_id: &str,
    slot: &str,
    now: i64,
) -> Result<bool, StoreError> {
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
    sqlx::query("INSERT INTO seats (key_id, device_id, taken_at, slot) VALUES ($1, $2, $3, $4)")
        .bind(key_id)
        .bind(device_id)
        .bind(now)
        .bind(slot)
        .execute(&mut **tx)
        .await?;
    Ok(true)
}

/// One row of the check's read: the device, and one candidate key (assigned to it or a group,
/// auto-distributed, or holding its seat) with the seat the device holds on it.
struct CheckRow {
    group_path: String,
    revoked_at: Option<i64>,
    /// The device's recorded result, to skip rewriting an unchanged one.
    recorded: Recorded,
    object: Option<String>,
    held: Option<String>,
    key: Option<KeyRow>,
}

#[derive(Clone, PartialEq)]
struct Recorded {
    state: String,
    key: Option<String>,
    reserve: Option<String>,
    wanted: Option<String>,
    reason: String,
    at: i64,
    path: String,
}

impl<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> for CheckRow {
    fn from_row(row: &'r sqlx::sqlite::SqliteRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        let id: Option<String> = row.try_get("id")?;
        Ok(CheckRow {
            group_path: row.try_get("group_path")?,
            revoked_at: row.try_get("revoked_at")?,
            recorded: Recorded {
                state: row.try_get("licence_state")?,
                key: row.try_get("licence_key")?,
                reserve: row.try_get("licence_reserve_key")?,
                wanted: row.try_get("licence_wanted_key")?,
                reason: row.try_get("licence_reason")?,
                at: row.try_get("last_check_at")?,
                path: row.try_get("path")?,
            },
            object: row.try_get("object")?,
            held: row.try_get("held")?,
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
    policy: Policy,
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
pub(crate) async fn check_writer(
    pool: sqlx::SqlitePool,
    mut jobs: mpsc::Receiver<CheckJob>,
    notices: mpsc::Sender<Notice>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        match run_batch(&pool, &batch).await {
            Ok((results, sent)) => {
                for (job, r) in batch.drain(..).zip(results) {
                    let _ = job.reply.send(r);
                }
                for n in sent {
                    let _ = notices.try_send(n);
                }
            }
            Err(_) if batch.len() > 1 => {
                for job in batch.drain(..) {
                    let r = match run_batch(&pool, std::slice::from_ref(&job)).await {
                        Ok((mut v, sent)) => {
                            for n in sent {
                                let _ = notices.try_send(n);
                            }
                            v.remove(0)
                        }
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

type BatchResult = (Vec<Result<CheckOutcome, StoreError>>, Vec<Notice>);

async fn run_batch(pool: &sqlx::SqlitePool, jobs: &[CheckJob]) -> Result<BatchResult, StoreError> {
    let mut tx = pool.begin().await?;
    let mut out = Vec::with_capacity(jobs.len());
    let mut touched = BTreeSet::new();
    for j in jobs {
        out.push(
            match check_in_tx(
                &mut tx,
                &j.device_id,
                j.path.as_deref(),
                j.now,
                &j.policy,
                &mut touched,
            )
            .await
            {
                Ok(o) => Ok(o),
                Err(e @ (StoreError::Sqlx(_) | StoreError::Migrate(_))) => return Err(e),
                Err(e) => Err(e),
            },
        );
    }
    let now_ms = jobs.first().map(|j| j.now * 1000).unwrap_or(0);
    let mut notices = vec![];
    for key in &touched {
        notices.extend(usage_notices(&mut tx, key, now_ms).await?);
    }
    tx.commit().await?;
    Ok((out, notices))
}

/// Notifies the usage thresholds a key crossed (L10); re-arms levels it fell below.
async fn usage_notices(
    tx: &mut Transaction<'_, Sqlite>,
    key_id: &str,
    now_ms: i64,
) -> Result<Vec<Notice>, StoreError> {
    let row: Option<(i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT k.seats, k.seats_used + k.seats_leased_out,
                (SELECT COUNT(*) FROM devices d WHERE d.licence_wanted_key = k.id AND d.revoked_at IS NULL),
                COALESCE((SELECT s.usage_level FROM key_state s WHERE s.key_id = k.id), 0)
         FROM licence_keys k WHERE k.id = $1",
    )
    .bind(key_id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((seats, used, wanting, prev)) = row else {
        return Ok(vec![]);
    };
    let current = usage::level(seats as u32, used as u32, wanting as u32);
    let previous = Level::from_percent(prev);
    if current == previous {
        return Ok(vec![]);
    }
    sqlx::query(
        "INSERT INTO key_state (key_id, usage_level) VALUES ($1, $2)
         ON CONFLICT (key_id) DO UPDATE SET usage_level = excluded.usage_level",
    )
    .bind(key_id)
    .bind(current as i64)
    .execute(&mut **tx)
    .await?;
    let mut out = vec![];
    for level in usage::crossings(previous, current) {
        let (kind, what) = match level {
            Level::Ninety => (
                "usage-90",
                format!("key {key_id}: 90 % of its seats are used ({used} of {seats})"),
            ),
            Level::Full => (
                "usage-100",
                format!("key {key_id}: every seat is used ({used} of {seats})"),
            ),
            _ => (
                "usage-110",
                format!(
                    "key {key_id}: devices wanting a seat reach 110 % ({used} used + {wanting} refused, {seats} seats)"
                ),
            ),
        };
        let details = serde_json::json!({ "seats": seats, "used": used, "refused": wanting, "level": level as i64 });
        out.push(super::notices::insert(tx, kind, Some(key_id), &what, details, now_ms).await?);
    }
    Ok(out)
}

#[allow(clippy::too_many_lines)]
async fn check_in_tx(
    tx: &mut Transaction<'_, Sqlite>,
    device_id: &str,
    path: Option<&str>,
    now: i64,
    policy: &Policy,
    touched: &mut BTreeSet<String>,
) -> Result<CheckOutcome, StoreError> {
    let device_object = format!("device:{device_id}");
    // A conditional take can only fail when another writer (another server instance on a
    // shared database, P2) took the last seat between our read and our update: re-plan.
    let mut attempts = 0;
    loop {
        attempts += 1;
        // Everything the decision needs in one statement: the device, the keys assigned to
        // it or to any group (filtered to its chain below), the auto-distributed keys, and
        // the keys it holds seats on.
        let rows: Vec<CheckRow> = sqlx::query_as(
            "SELECT d.group_path, d.revoked_at, d.licence_state, d.licence_key, d.licence_reserve_key,
                    d.licence_wanted_key, d.licence_reason, d.last_check_at, d.path, c.object,
                    (SELECT s.slot FROM seats s WHERE s.key_id = k.id AND s.device_id = d.id) AS held,
                    k.id, k.licensee, k.product, k.components, k.seats, k.seats_used,
                    k.seats_leased_out, k.valid_from, k.expires_at, k.kind, k.renews,
                    k.auto_distribute, k.origin, k.file_name, k.imported_at
             FROM devices d
             LEFT JOIN (SELECT object, key_id FROM key_assignments WHERE object = $2 OR object LIKE 'group:%'
                        UNION ALL
                        SELECT 'auto', id FROM licence_keys WHERE auto_distribute = 1
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
        let recorded = first.recorded.clone();
        // (source, rank, key, held slot)
        let mut keys: Vec<(Source, usize, KeyRow, Option<Slot>)> = vec![];
        for r in rows {
            let Some(k) = r.key else { continue };
            let held = match r.held.as_deref() {
                Some("reserve") => Some(Slot::Reserve),
                Some(_) => Some(Slot::Active),
                None => None,
            };
            let (source, rank) = match r.object.as_deref() {
                Some("auto") => (Source::Auto, 0),
                Some(o) => match nearness(o, &device_object, &chain) {
                    Some(n) => (Source::Assigned, n),
                    None => continue,
                },
                None => (Source::Stale, 0),
            };
            keys.push((source, rank, k, held));
        }
        let order = |s: Source| match s {
            Source::Assigned => 0,
            Source::Auto => 1,
            Source::Stale => 2,
        };
        // Assigned nearest first, then auto-distributed, then stale; within each the key valid
        // longest first. A key that appears several times keeps its best place.
        keys.sort_by(|a, b| {
            order(a.0)
                .cmp(&order(b.0))
                .then(a.1.cmp(&b.1))
                .then(b.2.expires_at.cmp(&a.2.expires_at))
                .then(a.2.id.cmp(&b.2.id))
        });
        let mut seen = std::collections::HashSet::new();
        keys.retain(|(_, _, k, _)| seen.insert(k.id.clone()));
        let candidates: Vec<Candidate> = keys
            .iter()
            .map(|(source, _, k, held)| Candidate {
                key_id: k.id.clone(),
                seats_total: k.seats as u32,
                seats_used: k.seats_used as u32,
                seats_leased_out: k.seats_leased_out as u32,
                valid_from: k.valid_from,
                expires_at: k.expires_at,
                held: *held,
                source: *source,
            })
            .collect();
        let plan = plan_seat(&candidates, now, policy.expiring_soon);
        let find = |id: &str| {
            keys.iter()
                .find(|(_, _, k, _)| k.id == id)
                .map(|(_, _, k, held)| (k.clone(), *held))
        };
        for k in &plan.release {
            if release_seat(tx, k, device_id).await? {
                touched.insert(k.clone());
            }
        }
        // Active seat.
        let mut raced = false;
        match &plan.decision {
            SeatDecision::Keep(k) => {
                if let Some((_, Some(Slot::Reserve))) = find(k) {
                    // The reserve takes over from an expired active key (L5).
                    set_slot(tx, k, device_id, "active").await?;
                }
            }
            SeatDecision::Take(k) => {
                if take_seat(tx, k, device_id, "active", now).await? {
                    touched.insert(k.clone());
                } else {
                    raced = true;
                }
            }
            SeatDecision::Unlicensed(_) => {}
        }
        match &plan.reserve {
            Some(SeatDecision::Keep(k)) => {
                if let Some((_, Some(Slot::Active))) = find(k) {
                    set_slot(tx, k, device_id, "reserve").await?;
                }
            }
            Some(SeatDecision::Take(k)) => {
                if take_seat(tx, k, device_id, "reserve", now).await? {
                    touched.insert(k.clone());
                } else {
                    raced = true;
                }
            }
            _ => {}
        }
        if raced && attempts < 5 {
            continue;
        }
        let active_key = plan.active_key().and_then(&find).map(|(k, _)| k);
        let reserve_key = plan.reserve_key().and_then(find).map(|(k, _)| k);
        let mut outcome = match (&plan.decision, active_key) {
            (SeatDecision::Unlicensed(reason), _) => CheckOutcome::Unlicensed(reason.clone()),
            (_, Some(a)) if !raced => {
                let active_grant =
                    GrantKey::from_row(&a, now, now.saturating_add(policy.grant_ttl));
                let reserve = reserve_key.filter(|_| !raced).map(|r| {
                    // Valid from when it may be used, long enough to cover the time after the
                    // active key expires.
                    let from = now.max(r.valid_from);
                    GrantKey::from_row(
                        &r,
                        from,
                        a.expires_at.max(now).saturating_add(policy.grant_ttl),
                    )
                });
                CheckOutcome::Licensed(Box::new(Licensed {
                    active: active_grant,
                    reserve,
                    kept: false,
                }))
            }
            _ => CheckOutcome::Unlicensed(
                "no free seat: seats were taken concurrently, try again".into(),
            ),
        };
        // L8: a device keeps an auto-distributed key it received after the key left the
        // repository.
        if matches!(outcome, CheckOutcome::Unlicensed(_))
            && let Some(kept) = kept_key(tx, device_id, now, policy).await?
        {
            outcome = CheckOutcome::Licensed(Box::new(Licensed {
                active: kept,
                reserve: None,
                kept: true,
            }));
        }
        let wanted = match &outcome {
            CheckOutcome::Unlicensed(_) => plan.wanted.clone(),
            _ => None,
        };
        if wanted != recorded.wanted {
            touched.extend(wanted.iter().cloned());
            touched.extend(recorded.wanted.iter().cloned());
        }
        record(tx, device_id, path, now, &outcome, wanted, &recorded).await?;
        return Ok(outcome);
    }
}

async fn set_slot(
    tx: &mut Transaction<'_, Sqlite>,
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

async fn kept_key(
    tx: &mut Transaction<'_, Sqlite>,
    device_id: &str,
    now: i64,
    policy: &Policy,
) -> Result<Option<GrantKey>, StoreError> {
    let row: Option<(String, String, String, String, String, i64)> = sqlx::query_as(
        "SELECT key_id, licensee, product, components, kind, expires_at FROM kept_keys
         WHERE device_id = $1 AND expires_at > $2",
    )
    .bind(device_id)
    .bind(now)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(
        |(key_id, licensee, product, components, kind, exp)| GrantKey {
            key_id,
            licensee,
            product,
            components: components
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect(),
            kind,
            key_expires_at: exp,
            valid_from: now,
            expires_at: now.saturating_add(policy.grant_ttl).min(exp),
        },
    ))
}

/// Records the result with the device (S3). An unchanged result checked within the last
/// minute is not rewritten: the record keeps `last_check_at` to the minute, and a storm of
/// reconnects costs no writes per device.
async fn record(
    tx: &mut Transaction<'_, Sqlite>,
    device_id: &str,
    path: Option<&str>,
    now: i64,
    outcome: &CheckOutcome,
    wanted: Option<String>,
    recorded: &Recorded,
) -> Result<(), StoreError> {
    let (state, key, reserve, reason) = match outcome {
        CheckOutcome::Licensed(l) => (
            "licensed",
            Some(l.active.key_id.clone()),
            l.reserve.as_ref().map(|r| r.key_id.clone()),
            String::new(),
        ),
        CheckOutcome::Unlicensed(r) => ("unlicensed", None, None, r.clone()),
    };
    let same = recorded.state == state
        && recorded.key == key
        && recorded.reserve == reserve
        && recorded.wanted == wanted
        && recorded.reason == reason
        && now - recorded.at < RECHECK_RECORD_SECS
        && path.is_none_or(|p| p == recorded.path);
    if same {
        return Ok(());
    }
    sqlx::query(
        "UPDATE devices SET licence_state = $2, licence_key = $3, licence_reason = $4,
                last_check_at = $5, last_seen = $5, path = COALESCE($6, path),
                licence_reserve_key = $7, licence_wanted_key = $8
         WHERE id = $1",
    )
    .bind(device_id)
    .bind(state)
    .bind(key)
    .bind(reason)
    .bind(now)
    .bind(path)
    .bind(reserve)
    .bind(wanted)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Runs the licence check for a device (L5, L6, L8) and commits its result before
    /// returning (P3).
    pub async fn check_licence(
        &self,
        device_id: &str,
        now: i64,
        policy: &Policy,
    ) -> Result<CheckOutcome, StoreError> {
        self.check_licence_via(device_id, None, now, policy).await
    }

    /// As [`Store::check_licence`], also recording how the device is connected (`path`).
    pub async fn check_licence_via(
        &self,
        device_id: &str,
        path: Option<&str>,
        now: i64,
        policy: &Policy,
    ) -> Result<CheckOutcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        let job = CheckJob {
            device_id: device_id.to_owned(),
            path: path.map(str::to_owned),
            now,
            policy: *policy,
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

    /// Frees the seats of agents not seen since `cutoff` (L9). Returns (device, key) pairs.
    pub async fn reclaim_inactive(
        &self,
        cutoff: i64,
        now: i64,
        exclude: &[String],
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
            release_seat(&mut tx, key, device).await?;
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
        Ok(stale)
    }
}

impl Store {
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
                    release_seat(&mut tx, r, &device).await?;
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
        Ok(changed)
    }
}
