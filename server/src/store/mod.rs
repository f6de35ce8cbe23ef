//! The server's store (P1, P2, P3): every table behind one handle, the database behind the
//! seam in [`backend`] (the embedded SQLite file by default), schema migrated at open.
//!
//! Writes go through the write pool in order; reads use the read pool. Every seat change is a
//! conditional UPDATE inside a transaction, never read-modify-write in memory. Durability: a
//! call returns only after its transaction committed. With `durability = "full"` (default) a
//! commit survives power loss; with `"normal"` it survives a crash of the process (kill -9)
//! but the last commits may be lost on power loss.
//!
//! The store also owns the **licence epoch**: a counter that every write path which can alter
//! a device's licence (keys, assignments, seats freed, devices moved or revoked) moves after
//! its commit. Live sessions watch it and re-check (L9). Callers never move it by hand.

pub mod accounts;
pub mod backend;
mod check;
pub mod console;
mod devices;
pub mod discovery;
mod dmz;
mod enroll;
mod events;
mod groups;
mod holds;
pub mod inherit;
pub mod instances;
mod keys;
mod leases;
pub mod migrate;
mod notices;
pub mod policies;
mod pushes;
mod relay;
mod reports;
mod seats;
mod servers;
pub mod tasks;
mod tokens;
pub mod updates;
pub mod wake;
mod writer;

use std::sync::{Arc, Mutex};

use outpost_proto::error::{RefusalCode, Refused};
use tokio::sync::{mpsc, watch};

pub use backend::Backend;
pub use check::{CheckOutcome, GrantKey, Licensed, Policy};
pub use devices::{CertSummary, DeviceRow};
pub use enroll::{EnrollOutcome, IssuedCert, NewDevice};
pub use events::StoredEvent;
pub use groups::normalize_group;
pub use holds::{GaveBack, HeldSeats};
pub use keys::KeyRow;
pub use leases::{HandedOver, LeaseInfo, Refreshed};
pub use notices::Notice;
pub use pushes::QueuedPush;
pub use servers::ServerRow;
pub use tokens::{TokenRow, TokenSpec};

use backend::Pool;

/// Errors of store operations, sorted by fault: `Database`, `Migrate` and `Closed` are this
/// side's (never shown to a peer in detail); the others are the caller's and carry a sentence
/// for the admin or device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The store is closing (server shutting down).
    #[error("the store is closed (server shutting down)")]
    Closed,
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with stored data.
    #[error("{0}")]
    Conflict(String),
    /// The request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The device was revoked.
    #[error("{0}")]
    Revoked(String),
    /// An enrollment token was refused.
    #[error("{1}")]
    Token(RefusalCode, String),
}

impl StoreError {
    /// Whether the fault is this side's (database, migration, shutdown) rather than the
    /// request's.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            StoreError::Database(_) | StoreError::Migrate(_) | StoreError::Closed
        )
    }

    /// Whether the database could not be reached (PostgreSQL restarting, the network to it
    /// down, the pool starved): a transient fault, answered with a retry-after rather than an
    /// incident (P2).
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::Protocol(_) => true,
                // SQLSTATE class 08 (connection exception), 57P01–57P03 (shutting down,
                // crash shutdown, cannot connect now).
                sqlx::Error::Database(d) => d.code().is_some_and(|c| {
                    c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03")
                }),
                _ => false,
            },
            _ => false,
        }
    }

    /// The refusal to send a peer. Internal faults are logged with an incident id and only
    /// the id goes out; the caller's faults go out as their sentence.
    pub fn to_refusal(&self, context: &str) -> Refused {
        match self {
            StoreError::Closed => Refused::new(
                RefusalCode::ShuttingDown,
                "the server is shutting down; come back later",
            ),
            StoreError::Database(_) if self.is_unavailable() => {
                tracing::warn!(error = %self, "{context}: the database is unreachable; the peer is told to come back later");
                Refused::new(
                    RefusalCode::UpstreamUnavailable,
                    "the server cannot reach its database right now; come back later",
                )
                .with_retry_after(outpost_net::jittered(RETRY_UNAVAILABLE, RETRY_UNAVAILABLE))
            }
            StoreError::Database(_) | StoreError::Migrate(_) => {
                crate::error::incident(context, self)
            }
            StoreError::NotFound(m) => Refused::new(RefusalCode::NotFound, m.clone()),
            StoreError::Conflict(m) => Refused::new(RefusalCode::Conflict, m.clone()),
            StoreError::Invalid(m) => Refused::new(RefusalCode::InvalidArgument, m.clone()),
            StoreError::Revoked(m) => Refused::new(RefusalCode::Revoked, m.clone()),
            StoreError::Token(c, m) => Refused::new(*c, m.clone()),
        }
    }
}

/// How long a peer is told to wait (plus as much jitter) when the database is unreachable.
const RETRY_UNAVAILABLE: std::time::Duration = std::time::Duration::from_secs(3);

/// Commit durability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync on every commit: survives power loss.
    Full,
    /// fsync at checkpoints: survives a process crash.
    Normal,
}

/// The store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    write: Pool,
    read: Pool,
    backend: Backend,
    /// Licence checks go through the batch writer (group commit, see `writer`).
    checks: mpsc::Sender<writer::CheckJob>,
    /// Acknowledged pushes to delete (batched, see `pushes::ack_writer`).
    acks: mpsc::Sender<(String, String)>,
    /// Stored notifications waiting for delivery (L14).
    notices: notices::NoticeQueue,
    notices_rx: Arc<Mutex<Option<mpsc::Receiver<Notice>>>>,
    /// The licence epoch (see the module comment).
    epoch: Arc<watch::Sender<u64>>,
    /// On a shared PostgreSQL database: waking the other instances (P2).
    waker: Option<wake::Waker>,
    /// This process's instance id (P2: random per start; see `instances`).
    instance: Arc<str>,
    /// Which connections this instance holds, to the held writer.
    held: instances::HeldQueue,
    /// Commit time of the licence-check writer's transactions (metrics, O7).
    commit_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl Store {
    /// Commit time of the licence-check writer's transactions (O7).
    pub fn commit_seconds(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.commit_seconds.clone()
    }

    /// Opens (creating if needed) the embedded database at `path` and applies migrations.
    pub async fn open(path: &std::path::Path, durability: Durability) -> Result<Store, StoreError> {
        Store::with_pools(backend::open_sqlite(path, durability).await?, None)
    }

    /// Opens the store `server.toml` names: the PostgreSQL database at `url` when it is a
    /// `postgres://` URL (P2), else the embedded file at `path` (P1).
    pub async fn open_configured(
        path: &std::path::Path,
        url: &str,
        durability: Durability,
    ) -> Result<Store, StoreError> {
        if backend::is_postgres(url) {
            Store::with_pools(backend::open_postgres(url).await?, Some(url))
        } else {
            Store::open(path, durability).await
        }
    }

    fn with_pools(pools: backend::Pools, url: Option<&str>) -> Result<Store, StoreError> {
        let epoch = Arc::new(watch::Sender::new(0));
        let instance: Arc<str> = format!("{:016x}", rand::random::<u64>()).into();
        let waker =
            url.map(|u| wake::Waker::start(u, &instance, pools.write.clone(), epoch.clone()));
        let held = instances::HeldQueue::start(pools.write.clone(), instance.to_string());
        let (notices, notices_rx) = notices::NoticeQueue::new(1024);
        let (checks, jobs) = mpsc::channel(4096);
        let commit_seconds = prometheus_client::metrics::histogram::Histogram::new(
            outpost_net::metrics::seconds_buckets(),
        );
        tokio::spawn(writer::check_writer(
            pools.write.clone(),
            jobs,
            notices.clone(),
            commit_seconds.clone(),
        ));
        let (acks, ack_rx) = mpsc::channel(4096);
        tokio::spawn(pushes::ack_writer(pools.write.clone(), ack_rx));
        Ok(Store {
            write: pools.write,
            read: pools.read,
            backend: pools.backend,
            checks,
            acks,
            commit_seconds,
            notices,
            notices_rx: Arc::new(Mutex::new(Some(notices_rx))),
            epoch,
            waker,
            instance,
            held,
        })
    }

    /// The database behind this store.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Announcements of the other instances on a shared database (P2); `None` on the embedded
    /// store.
    pub fn remote_events(&self) -> Option<tokio::sync::broadcast::Receiver<wake::Remote>> {
        self.waker.as_ref().map(|w| w.subscribe())
    }

    /// Tells the other instances on a shared database that a device was revoked or removed, so
    /// that the one holding its session ends it. Nothing on the embedded store.
    pub async fn announce_gone(&self, device: &str, removed: bool) {
        if let Some(w) = &self.waker {
            w.gone(device, removed).await;
        }
    }

    /// Tells the other instances on a shared database that devices of `group` and below must
    /// sync now (their policy changed). Nothing on the embedded store.
    pub async fn announce_sync(&self, group: &str) {
        if let Some(w) = &self.waker {
            w.sync(group).await;
        }
    }

    /// Tells the other instances on a shared database that a push for `device` is in its
    /// mailbox (it was not connected here). Nothing on the embedded store.
    pub async fn announce_push(&self, device: &str, push_id: &str) {
        if let Some(w) = &self.waker {
            w.pushed(device, push_id).await;
        }
    }

    /// Closes both pools (waits for running queries).
    pub async fn close(&self) {
        if let Some(w) = &self.waker {
            w.stop();
        }
        self.write.close().await;
        self.read.close().await;
    }

    /// Watches the licence epoch.
    pub fn licence_epoch(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    /// Moves the licence epoch; called by write paths after a commit that can alter licences.
    fn licence_changed(&self) {
        self.epoch.send_modify(|e| *e += 1);
        if let Some(w) = &self.waker {
            w.licence_changed();
        }
    }

    /// Whether the database already holds a deployment (any device): `init` refuses to write a
    /// second one into a shared PostgreSQL database.
    pub async fn holds_a_deployment(&self) -> Result<bool, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM devices")
            .fetch_one(&self.read)
            .await?;
        Ok(n > 0)
    }

    /// Checks the seat invariants: every key's `seats_used` equals its seat rows plus the
    /// seats held for offline grants (L15), and no key is over-allocated. Returns a
    /// description of each violation (empty = consistent).
    pub async fn audit_seats(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT k.id, k.seats, k.seats_used, k.seats_leased_out,
                    (SELECT COUNT(*) FROM seats s WHERE s.key_id = k.id)
                    + (SELECT COUNT(*) FROM seat_holds h WHERE h.key_id = k.id)
             FROM licence_keys k",
        )
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, seats, used, leased, rows)| {
                (used != rows || used + leased > seats).then(|| {
                    format!(
                        "key {id}: seats {seats}, used {used}, leased {leased}, seat and hold rows {rows}"
                    )
                })
            })
            .collect())
    }
}

/// Hex of a certificate fingerprint, as stored.
pub fn fp_hex(fp: &[u8]) -> String {
    hex::encode(fp)
}
