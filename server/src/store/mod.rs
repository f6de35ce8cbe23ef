//! The server's store (P1, P2, P3): SQLite through sqlx, schema in `migrations/`, applied
//! automatically at open.
//!
//! SQLite allows one writer at a time, so the store keeps two pools: `write` with a single
//! connection (every transaction that changes data goes through it, in order, never failing
//! with SQLITE_BUSY) and `read` with several (WAL lets readers run beside the writer). On
//! PostgreSQL both would be the same pool; the SQL is written to run on both, and every seat
//! change is a conditional UPDATE inside a transaction, never read-modify-write in memory.
//!
//! Durability: a call returns only after its transaction committed. With
//! `synchronous = "full"` (default) a commit survives power loss; with `"normal"` it survives a
//! crash of the process (kill -9) but the last commits may be lost on power loss.

mod devices;
mod events;
mod keys;
mod licence;
mod notices;
mod pushes;
mod tokens;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub use devices::{DeviceRow, EnrollOutcome, NewDevice};
pub use events::StoredEvent;
pub use keys::{KeyRow, object_label, parse_object};
pub use licence::{CheckOutcome, GrantKey, Licensed, Policy};
pub use notices::Notice;
pub use pushes::QueuedPush;
pub use tokens::{TokenRow, TokenSpec};

/// Errors of store operations. `Sqlx` and `Migrate` are I/O faults; the others are the
/// caller's (bad request) and carry a message for the admin.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed.
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// A migration failed.
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
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
    Token(outpost_proto::error::RefusalCode, String),
}

impl StoreError {
    /// The refusal code to send for this error.
    pub fn code(&self) -> outpost_proto::error::RefusalCode {
        use outpost_proto::error::RefusalCode;
        match self {
            StoreError::Sqlx(_) | StoreError::Migrate(_) => RefusalCode::Internal,
            StoreError::NotFound(_) => RefusalCode::NotFound,
            StoreError::Conflict(_) => RefusalCode::Conflict,
            StoreError::Invalid(_) => RefusalCode::InvalidArgument,
            StoreError::Revoked(_) => RefusalCode::Revoked,
            StoreError::Token(c, _) => *c,
        }
    }
}

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
    write: SqlitePool,
    read: SqlitePool,
    /// Licence checks go through the batch writer (group commit, see `licence::check_writer`).
    checks: tokio::sync::mpsc::Sender<licence::CheckJob>,
    /// Acknowledged pushes to delete (batched, see `pushes::ack_writer`).
    acks: tokio::sync::mpsc::Sender<(String, String)>,
    /// Stored notifications waiting for delivery (L14).
    notices_tx: tokio::sync::mpsc::Sender<Notice>,
    notices_rx: std::sync::Arc<std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<Notice>>>>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies migrations.
    pub async fn open(path: &Path, durability: Durability) -> Result<Store, StoreError> {
        let sync = match durability {
            Durability::Full => SqliteSynchronous::Full,
            Durability::Normal => SqliteSynchronous::Normal,
        };
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sync)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(300))
            .connect_with(opts.clone())
            .await?;
        sqlx::migrate!("./migrations").run(&write).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(opts.read_only(true))
            .await?;
        let (notices_tx, notices_rx) = tokio::sync::mpsc::channel(1024);
        let (checks, jobs) = tokio::sync::mpsc::channel(4096);
        tokio::spawn(licence::check_writer(
            write.clone(),
            jobs,
            notices_tx.clone(),
        ));
        let (acks, ack_rx) = tokio::sync::mpsc::channel(4096);
        tokio::spawn(pushes::ack_writer(write.clone(), ack_rx));
        Ok(Store {
            write,
            read,
            checks,
            acks,
            notices_tx,
            notices_rx: std::sync::Arc::new(std::sync::Mutex::new(Some(notices_rx))),
        })
    }

    /// Closes both pools (waits for running queries).
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }

    /// Checks the seat invariants: every key's `seats_used` equals its seat rows, and no key
    /// is over-allocated. Returns a description of each violation (empty = consistent).
    pub async fn audit_seats(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT k.id, k.seats, k.seats_used, k.seats_leased_out,
                    (SELECT COUNT(*) FROM seats s WHERE s.key_id = k.id)
             FROM licence_keys k",
        )
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, seats, used, leased, rows)| {
                (used != rows || used + leased > seats).then(|| {
                    format!(
                        "key {id}: seats {seats}, used {used}, leased {leased}, seat rows {rows}"
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

/// Ancestors of a group path, nearest first, ending with "everyone".
pub fn group_chain(path: &str) -> Vec<String> {
    let mut out = vec![];
    let mut p = path;
    loop {
        out.push(p.to_owned());
        match p.rfind('/') {
            Some(i) => p = &p[..i],
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_chain_nearest_first() {
        assert_eq!(
            group_chain("everyone/berlin/floor2"),
            vec!["everyone/berlin/floor2", "everyone/berlin", "everyone"]
        );
        assert_eq!(group_chain("everyone"), vec!["everyone"]);
    }
}
