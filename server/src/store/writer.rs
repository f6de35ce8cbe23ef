//! The licence-check writer: group commit of licence checks (S3, P3, L10).
//!
//! Every check waiting when the writer is free goes into one transaction with one commit, so a
//! storm of connects costs one fsync per batch instead of one per device. Before the commit,
//! the usage thresholds (L10) of every key whose counts moved are re-evaluated in the same
//! transaction, so a notification is stored exactly when the counts that caused it are. A
//! check that fails (revoked, unknown device) fails alone; a database error fails the batch,
//! whose checks are then retried one by one.
//!
//! This batching is a SQLite optimisation (one writer at a time); the SQL is the backend's.

use std::collections::BTreeSet;

use outpost_proto::licence::usage::{self, Level};
use tokio::sync::{mpsc, oneshot};

use super::backend::{Pool, Tx};
use super::check::{CheckOutcome, Policy, check_in_tx};
use super::notices::{Notice, NoticeQueue};
use super::{Store, StoreError};

/// A licence check waiting for the batch writer.
pub(crate) struct CheckJob {
    device_id: String,
    path: Option<String>,
    now: i64,
    policy: Policy,
    reply: oneshot::Sender<Result<CheckOutcome, StoreError>>,
}

/// Most checks committed in one transaction.
const MAX_BATCH: usize = 256;

/// Runs licence checks in batches until every sender is gone.
pub(crate) async fn check_writer(
    pool: Pool,
    mut jobs: mpsc::Receiver<CheckJob>,
    notices: NoticeQueue,
    commit_seconds: prometheus_client::metrics::histogram::Histogram,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        match run_batch(&pool, &batch, &commit_seconds).await {
            Ok((results, sent)) => {
                for (job, r) in batch.drain(..).zip(results) {
                    let _ = job.reply.send(r);
                }
                sent.into_iter().for_each(|n| notices.deliver(n));
            }
            Err(_) if batch.len() > 1 => {
                for job in batch.drain(..) {
                    let r =
                        match run_batch(&pool, std::slice::from_ref(&job), &commit_seconds).await {
                            Ok((mut v, sent)) => {
                                sent.into_iter().for_each(|n| notices.deliver(n));
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

async fn run_batch(
    pool: &Pool,
    jobs: &[CheckJob],
    commit_seconds: &prometheus_client::metrics::histogram::Histogram,
) -> Result<BatchResult, StoreError> {
    let mut tx = pool.begin().await?;
    let mut out = Vec::with_capacity(jobs.len());
    let mut touched = BTreeSet::new();
    for j in jobs {
        let r = check_in_tx(
            &mut tx,
            &j.device_id,
            j.path.as_deref(),
            j.now,
            &j.policy,
            &mut touched,
        )
        .await;
        match r {
            Err(e) if e.is_internal() => return Err(e),
            r => out.push(r),
        }
    }
    let now_ms = jobs.first().map(|j| j.now * 1000).unwrap_or(0);
    let mut notices = vec![];
    for key in &touched {
        notices.extend(usage_notices(&mut tx, key, now_ms).await?);
    }
    let started = std::time::Instant::now();
    tx.commit().await?;
    commit_seconds.observe(started.elapsed().as_secs_f64());
    Ok((out, notices))
}

/// Notifies the usage thresholds a key crossed (L10); re-arms levels it fell below.
async fn usage_notices(
    tx: &mut Tx<'_>,
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
    let (seats, used, wanting) = (seats as u32, used as u32, wanting as u32);
    let current = usage::level(seats, used, wanting);
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
        let (kind, what) = usage::notice(level, key_id, seats, used, wanting);
        let details = serde_json::json!({ "seats": seats, "used": used, "refused": wanting, "level": level as i64 });
        out.push(super::notices::insert(tx, kind, Some(key_id), &what, details, now_ms).await?);
    }
    Ok(out)
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
            return Err(StoreError::Closed);
        }
        rx.await.unwrap_or(Err(StoreError::Closed))
    }
}
