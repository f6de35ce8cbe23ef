//! Moving an embedded store into PostgreSQL (P2): `outpost-server migrate-store --to URL`.
//!
//! Both sides are migrated to the same schema version first (the test
//! `p2_sqlite_and_postgres_schemas_match` keeps the two schemas in step); then every table is
//! copied row by row, parents before children, inside one PostgreSQL transaction, and the row
//! counts are compared before the commit. A target that already holds data is refused, so a
//! second run, or a run against a live deployment's database, changes nothing.

use sqlx::Row as _;

use super::backend::{self, Pool, Tx};
use super::{Durability, StoreError};

/// Tables in an order that satisfies their foreign keys. A table missing here fails the copy
/// (a new migration must say where its table goes).
const ORDER: &[&str] = &[
    "groups",
    "policies",
    "tasks",
    "task_results",
    "inherited_policy",
    "upstream_updates",
    "update_revisions",
    "update_blocks",
    "update_counter",
    "discovered_hosts",
    "devices",
    "tokens",
    "licence_keys",
    "key_assignments",
    "seats",
    "seat_holds",
    "kept_keys",
    "key_state",
    "events",
    "pushes",
    "notifications",
    "dmz_gateways",
    "servers",
    "leases_given",
    "leases_received",
    "usage_reports",
    "console_audit",
    "console_accounts",
];

/// Tables of live state that are not copied: which instance holds which connection (the server
/// being moved is stopped, so it holds none), and console login links and sessions (signing in
/// again after a move is the safe default).
const LIVE: &[&str] = &["instances", "held", "console_logins", "console_sessions"];

/// One table copied: its name and rows.
pub type Copied = Vec<(String, i64)>;

enum Val {
    Int(Option<i64>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
}

/// Copies the embedded store at `path` into the empty PostgreSQL database at `url`. Returns the
/// rows copied per table.
pub async fn sqlite_to_postgres(path: &std::path::Path, url: &str) -> Result<Copied, StoreError> {
    if !path.exists() {
        return Err(StoreError::NotFound(format!(
            "no embedded store at {}",
            path.display()
        )));
    }
    let src = backend::open_sqlite(path, Durability::Full).await?;
    let dst = backend::open_postgres(url).await?;
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT name FROM sqlite_master WHERE type = 'table'
         AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%' ORDER BY name",
    )
    .fetch_all(&src.read)
    .await?;
    for (t,) in &tables {
        if !ORDER.contains(&t.as_str()) && !LIVE.contains(&t.as_str()) {
            return Err(StoreError::Invalid(format!(
                "table {t} has no place in the copy order; this build cannot migrate it"
            )));
        }
    }
    let mut tx = dst.write.begin().await?;
    for t in ORDER {
        // The initial migration creates the root group; anything else means the target is used.
        let sql = format!("SELECT COUNT(*) FROM {t}");
        let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *tx)
            .await?;
        if n > i64::from(*t == "groups") {
            return Err(StoreError::Conflict(format!(
                "the PostgreSQL database is not empty (table {t} holds {n} row(s)); migrate into \
                 a new, empty database"
            )));
        }
    }
    let mut copied = vec![];
    for t in ORDER {
        let n = copy_table(&src.read, &mut tx, t).await?;
        let sql = format!("SELECT COUNT(*) FROM {t}");
        let (there,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_one(&mut *tx)
            .await?;
        let (here,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_one(&src.read)
            .await?;
        if here != there {
            return Err(StoreError::Conflict(format!(
                "table {t}: {here} row(s) in the embedded store but {there} in PostgreSQL after \
                 the copy; nothing was committed"
            )));
        }
        copied.push(((*t).to_owned(), n));
    }
    tx.commit().await?;
    src.write.close().await;
    src.read.close().await;
    dst.write.close().await;
    dst.read.close().await;
    Ok(copied)
}

/// Copies one table's rows; returns how many were inserted.
async fn copy_table(src: &Pool, tx: &mut Tx<'_>, table: &str) -> Result<i64, StoreError> {
    let cols: Vec<(String, String)> =
        sqlx::query_as("SELECT name, type FROM pragma_table_info($1) ORDER BY cid")
            .bind(table)
            .fetch_all(src)
            .await?;
    let names: Vec<&str> = cols.iter().map(|(n, _)| n.as_str()).collect();
    // Parents first within the group tree; insertion order elsewhere.
    let order = if table == "groups" {
        "length(path)"
    } else {
        "rowid"
    };
    let select = format!(
        "SELECT {} FROM {table} ORDER BY {order}",
        names
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let insert = format!(
        "INSERT INTO {table} ({}) VALUES ({}){}",
        names
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", "),
        (1..=names.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", "),
        if table == "groups" {
            " ON CONFLICT (path) DO NOTHING"
        } else {
            ""
        }
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(select))
        .fetch_all(src)
        .await?;
    let mut n = 0;
    for row in &rows {
        let mut vals = Vec::with_capacity(cols.len());
        for (i, (name, ty)) in cols.iter().enumerate() {
            let bad =
                |e: sqlx::Error| StoreError::Invalid(format!("table {table}, column {name}: {e}"));
            vals.push(match ty.to_ascii_uppercase().as_str() {
                "INTEGER" | "BIGINT" => Val::Int(row.try_get(i).map_err(bad)?),
                "BLOB" => Val::Bytes(row.try_get(i).map_err(bad)?),
                _ => Val::Text(row.try_get(i).map_err(bad)?),
            });
        }
        let mut q = sqlx::query(sqlx::AssertSqlSafe(insert.clone()));
        for v in vals {
            q = match v {
                Val::Int(x) => q.bind(x),
                Val::Text(x) => q.bind(x),
                Val::Bytes(x) => q.bind(x),
            };
        }
        n += q.execute(&mut **tx).await?.rows_affected() as i64;
    }
    Ok(n)
}
