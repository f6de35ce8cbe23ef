//! The database seam: which database the store runs on, and the only place that knows.
//!
//! Every query in the store is written once, in SQL that runs on SQLite and PostgreSQL alike
//! (`$1` placeholders, `ON CONFLICT`, no `AUTOINCREMENT`, integers read as `i64` — `BIGINT` on
//! PostgreSQL, `INTEGER` on SQLite, both 64-bit — and binary columns read as `Vec<u8>`, `BLOB`
//! or `BYTEA`). It runs through sqlx's `Any` driver, so the rest of the store sees one pool
//! type ([`Pool`]), one transaction type ([`Tx`]) and one row type ([`Row`]) whatever the
//! backend. What differs per backend lives here: how to connect, the pragmas, the migrations
//! directory, and how many writers may run at once.
//!
//! Only the embedded SQLite backend exists so far (P1). A PostgreSQL backend (P2) is another
//! arm of [`Backend`]: its connect options, its migrations directory kept in step with
//! SQLite's, and a write pool wider than one connection.

use std::path::Path;
use std::time::Duration;

use sqlx::Executor;
use sqlx::any::AnyPoolOptions;

use super::{Durability, StoreError};

/// The database type every query is written against.
pub type Db = sqlx::Any;
/// A connection pool.
pub type Pool = sqlx::AnyPool;
/// An open transaction.
pub type Tx<'a> = sqlx::Transaction<'a, Db>;
/// A result row.
pub type Row = sqlx::any::AnyRow;

/// Which database the store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default: one file in the data directory.
    Sqlite,
}

/// The pools of an open store.
#[derive(Debug, Clone)]
pub struct Pools {
    /// Every transaction that changes data. On SQLite one connection, so writers queue here
    /// in order instead of failing with SQLITE_BUSY.
    pub write: Pool,
    /// Reads. On SQLite several read-only connections beside the writer (WAL).
    pub read: Pool,
    /// The backend behind both.
    pub backend: Backend,
}

/// Percent-encodes the characters a SQLite URL path may not hold literally.
fn sqlite_url(path: &Path, mode: &str) -> String {
    let mut out = String::from("sqlite://");
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3F"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out.push_str("?mode=");
    out.push_str(mode);
    out
}

/// Opens the embedded SQLite store at `path` (created if missing) and migrates it.
pub async fn open_sqlite(path: &Path, durability: Durability) -> Result<Pools, StoreError> {
    sqlx::any::install_default_drivers();
    let synchronous = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    // Per connection: wait for a lock instead of failing, commit durability, foreign keys.
    let pragmas = format!(
        "PRAGMA busy_timeout = 30000; PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = ON;"
    );
    let write_pragmas = format!("PRAGMA journal_mode = WAL; {pragmas}");
    let write = AnyPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(300))
        .after_connect(move |conn, _| {
            let p = write_pragmas.clone();
            Box::pin(async move {
                conn.execute(sqlx::AssertSqlSafe(p)).await?;
                Ok(())
            })
        })
        .connect(&sqlite_url(path, "rwc"))
        .await?;
    sqlx::migrate!("./migrations/sqlite").run(&write).await?;
    let read = AnyPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(60))
        .after_connect(move |conn, _| {
            let p = pragmas.clone();
            Box::pin(async move {
                conn.execute(sqlx::AssertSqlSafe(p)).await?;
                Ok(())
            })
        })
        .connect(&sqlite_url(path, "ro"))
        .await?;
    Ok(Pools {
        write,
        read,
        backend: Backend::Sqlite,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_url_escapes_what_a_url_cannot_hold() {
        assert_eq!(
            sqlite_url(Path::new("/var/lib/o p/a?b#c%d.db"), "ro"),
            "sqlite:///var/lib/o p/a%3Fb%23c%25d.db?mode=ro"
        );
    }
}
