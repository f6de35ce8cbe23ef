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
//! Two backends: the embedded SQLite file (P1, the default) and PostgreSQL (P2, `store.url =
//! "postgres://…"`), whose migrations (`migrations/postgres`) are kept in step with SQLite's by
//! a test comparing the two schemas. On PostgreSQL several connections write at once (and
//! several server instances may share the database): the store's seat arithmetic is conditional
//! updates inside transactions, so that is safe.
//!
//! Portability rules the queries follow: aggregates over integers are cast back
//! (`CAST(SUM(x) AS BIGINT)`: PostgreSQL's SUM of BIGINT is NUMERIC, which the `Any` driver
//! cannot read), and truth values are selected as integers (`CASE WHEN … THEN 1 ELSE 0 END`),
//! never as bare comparisons or `EXISTS`, which are booleans on PostgreSQL.

use std::path::Path;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::{Connection, Executor};

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
    /// A PostgreSQL database, possibly shared by several server instances (P2).
    Postgres,
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
    migrate(
        &sqlx::migrate!("./migrations/sqlite"),
        &write,
        "the embedded store",
    )
    .await?;
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

/// Brings the schema up to this release's (P1: automatic, on every start). A database already
/// migrated past what this release knows — a newer release ran on it, or, with several
/// instances on one database (P2), another instance was upgraded first — is refused with a
/// sentence saying so, before anything is written.
async fn migrate(
    migrator: &sqlx::migrate::Migrator,
    pool: &Pool,
    what: &str,
) -> Result<(), StoreError> {
    use sqlx::migrate::MigrateError;
    let known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    match migrator.run(pool).await {
        Ok(()) => Ok(()),
        Err(MigrateError::VersionMissing(v)) => Err(StoreError::Invalid(format!(
            "{what} has schema version {v}, newer than this outpost-server knows (up to {known}): \
             a newer release has run on it. Run that release (or newer) here too; going back \
             needs the backup taken before the upgrade"
        ))),
        Err(MigrateError::VersionMismatch(v)) => Err(StoreError::Invalid(format!(
            "{what} has schema version {v} applied with different content than this release's \
             (edited by hand, or written by a development build): restore it from a backup"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Connections per pool on PostgreSQL.
const PG_CONNECTIONS: u32 = 8;
/// How long a query waits for a connection before the store reports the database unavailable
/// (and the peer is told to come back later): short enough to answer within a client's
/// session-setup time-out while PostgreSQL is down or restarting.
const PG_ACQUIRE: Duration = Duration::from_secs(3);

/// Opens the PostgreSQL database at `url` (`postgres://user:password@host:port/database`, or
/// `?host=/socket/dir`) and migrates it.
pub async fn open_postgres(url: &str) -> Result<Pools, StoreError> {
    sqlx::any::install_default_drivers();
    // One connection first, to say clearly when the database cannot be reached (the pool would
    // only time out). The URL is not repeated: it may hold a password.
    let unreachable = |why: String| {
        StoreError::Invalid(format!(
            "cannot connect to the PostgreSQL database in store.url: {why}"
        ))
    };
    match tokio::time::timeout(Duration::from_secs(10), sqlx::AnyConnection::connect(url)).await {
        Ok(Ok(c)) => {
            let _ = sqlx::Connection::close(c).await;
        }
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Err(_) => return Err(unreachable("no answer within 10 s".into())),
    }
    let write = AnyPoolOptions::new()
        .max_connections(PG_CONNECTIONS)
        .acquire_timeout(PG_ACQUIRE)
        .connect(url)
        .await?;
    // Instances starting together on an empty database migrate one after the other (sqlx takes
    // an advisory lock for it).
    migrate(
        &sqlx::migrate!("./migrations/postgres"),
        &write,
        "the PostgreSQL database",
    )
    .await?;
    let read = AnyPoolOptions::new()
        .max_connections(PG_CONNECTIONS)
        .acquire_timeout(PG_ACQUIRE)
        .connect(url)
        .await?;
    Ok(Pools {
        write,
        read,
        backend: Backend::Postgres,
    })
}

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
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
