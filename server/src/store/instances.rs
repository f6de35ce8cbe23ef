//! Which server instance holds which connection (P2).
//!
//! Every instance records itself in `instances` (a random id per process start, the address
//! clients dial it at, a heartbeat) and every live agent session and gateway uplink it holds
//! in `held`. Registrations and releases go through a bounded queue to one writer that commits
//! them in batches, off the connect path; a full queue drops the change and counts it, and the
//! periodic [`Store::reconcile_held`] rewrites this instance's rows from what it really holds,
//! so a drop (or a row left by a race between two instances) is corrected within a minute.
//! An instance that stops cleanly deletes its rows; one that was killed stops its heartbeat
//! and the others purge its rows after [`GONE_AFTER_SECS`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use super::backend::Pool;
use super::{Store, StoreError};

/// How often an instance writes its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// An instance whose heartbeat is older than this is gone: its connections are not held.
pub const GONE_AFTER_SECS: i64 = 20;

/// A change of what this instance holds.
#[derive(Debug)]
pub(crate) enum HeldChange {
    /// A device's session or uplink is now held here.
    Taken(String, i64),
    /// It ended here.
    Released(String),
}

/// The queue to the held writer, with its drop count.
#[derive(Debug, Clone)]
pub(crate) struct HeldQueue {
    tx: mpsc::Sender<HeldChange>,
    dropped: std::sync::Arc<AtomicU64>,
}

impl HeldQueue {
    pub(crate) fn start(pool: Pool, instance: String) -> HeldQueue {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(held_writer(pool, instance, rx));
        HeldQueue {
            tx,
            dropped: Default::default(),
        }
    }

    fn send(&self, c: HeldChange) {
        if self.tx.try_send(c).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A row of `instances`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRow {
    /// Random id of the process.
    pub id: String,
    /// The address clients dial it at.
    pub name: String,
    /// Started, unix seconds.
    pub started_at: i64,
    /// Last heartbeat, unix seconds.
    pub seen_at: i64,
    /// Connections it holds.
    pub held: i64,
}

/// Who holds a device's connection, when another instance does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The instance's name (the address clients dial it at).
    pub name: String,
    /// Whether it is this instance.
    pub here: bool,
}

async fn held_writer(pool: Pool, instance: String, mut rx: mpsc::Receiver<HeldChange>) {
    let mut batch = Vec::with_capacity(512);
    while rx.recv_many(&mut batch, 512).await > 0 {
        let r: Result<(), sqlx::Error> = async {
            let mut tx = pool.begin().await?;
            for c in &batch {
                match c {
                    HeldChange::Taken(device, since) => {
                        sqlx::query(
                            "INSERT INTO held (device_id, instance, since) VALUES ($1, $2, $3)
                             ON CONFLICT (device_id) DO UPDATE
                             SET instance = excluded.instance, since = excluded.since",
                        )
                        .bind(device)
                        .bind(&instance)
                        .bind(since)
                        .execute(&mut *tx)
                        .await?;
                    }
                    HeldChange::Released(device) => {
                        sqlx::query("DELETE FROM held WHERE device_id = $1 AND instance = $2")
                            .bind(device)
                            .bind(&instance)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
            }
            tx.commit().await
        }
        .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, changes = batch.len(), "which sessions this instance holds was not recorded; corrected at the next reconcile");
        }
        batch.clear();
    }
}

impl Store {
    /// This process's instance id (random per start).
    pub fn instance_id(&self) -> &str {
        &self.instance
    }

    /// Records this instance as running, reachable at `name`.
    pub async fn instance_started(&self, name: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO instances (id, name, started_at, seen_at) VALUES ($1, $2, $3, $3)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, seen_at = excluded.seen_at",
        )
        .bind(self.instance_id())
        .bind(name)
        .bind(now)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Writes the heartbeat and purges instances gone for [`GONE_AFTER_SECS`] with what they
    /// held. Returns how many instances were purged.
    pub async fn instance_heartbeat(&self, now: i64) -> Result<u64, StoreError> {
        let mut tx = self.write.begin().await?;
        sqlx::query("UPDATE instances SET seen_at = $2 WHERE id = $1")
            .bind(self.instance_id())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM held WHERE instance IN (SELECT id FROM instances WHERE seen_at < $1)",
        )
        .bind(now - GONE_AFTER_SECS)
        .execute(&mut *tx)
        .await?;
        let gone = sqlx::query("DELETE FROM instances WHERE seen_at < $1")
            .bind(now - GONE_AFTER_SECS)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(gone)
    }

    /// A clean stop: this instance and what it held are forgotten at once.
    pub async fn instance_stopped(&self) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        sqlx::query("DELETE FROM held WHERE instance = $1")
            .bind(self.instance_id())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM instances WHERE id = $1")
            .bind(self.instance_id())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A device's session or uplink is now held here (recorded in the background).
    pub fn held_here(&self, device: &str, now: i64) {
        self.held.send(HeldChange::Taken(device.to_owned(), now));
    }

    /// A device's session or uplink ended here (recorded in the background).
    pub fn released_here(&self, device: &str) {
        self.held.send(HeldChange::Released(device.to_owned()));
    }

    /// Changes to `held` dropped because the queue was full (corrected by the reconcile).
    pub fn held_dropped(&self) -> u64 {
        self.held.dropped.load(Ordering::Relaxed)
    }

    /// Makes this instance's `held` rows say exactly what it holds (`local`). Returns how many
    /// rows were wrong.
    pub async fn reconcile_held(&self, local: &[String], now: i64) -> Result<u64, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT device_id FROM held WHERE instance = $1")
            .bind(self.instance_id())
            .fetch_all(&self.read)
            .await?;
        let recorded: HashSet<&str> = rows.iter().map(|(d,)| d.as_str()).collect();
        let live: HashSet<&str> = local.iter().map(String::as_str).collect();
        let mut fixed = 0;
        let mut tx = self.write.begin().await?;
        for d in recorded.difference(&live) {
            fixed += sqlx::query("DELETE FROM held WHERE device_id = $1 AND instance = $2")
                .bind(d)
                .bind(self.instance_id())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        for d in live.difference(&recorded) {
            sqlx::query(
                "INSERT INTO held (device_id, instance, since) VALUES ($1, $2, $3)
                 ON CONFLICT (device_id) DO UPDATE SET instance = excluded.instance",
            )
            .bind(d)
            .bind(self.instance_id())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            fixed += 1;
        }
        tx.commit().await?;
        Ok(fixed)
    }

    /// The instance holding a device's connection, if one does and is alive.
    pub async fn holder(&self, device: &str, now: i64) -> Result<Option<Holder>, StoreError> {
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT i.id, i.name FROM held h JOIN instances i ON i.id = h.instance
             WHERE h.device_id = $1 AND i.seen_at >= $2",
        )
        .bind(device)
        .bind(now - GONE_AFTER_SECS)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|(id, name)| Holder {
            here: id == self.instance_id(),
            name,
        }))
    }

    /// Running instances (heartbeat within [`GONE_AFTER_SECS`]), oldest first, with how many
    /// connections each holds.
    pub async fn instances(&self, now: i64) -> Result<Vec<InstanceRow>, StoreError> {
        let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT i.id, i.name, i.started_at, i.seen_at,
                    (SELECT COUNT(*) FROM held h WHERE h.instance = i.id)
             FROM instances i WHERE i.seen_at >= $1 ORDER BY i.started_at, i.id",
        )
        .bind(now - GONE_AFTER_SECS)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, name, started_at, seen_at, held)| InstanceRow {
                id,
                name,
                started_at,
                seen_at,
                held,
            })
            .collect())
    }
}
