//! Scale-out storage on PostgreSQL (P2): the two schemas kept in step, and `migrate-store`
//! moving an embedded store into PostgreSQL. Needs the test cluster (`.ci/pg-cluster start`,
//! `OUTPOST_TEST_PG`); CI sets `OUTPOST_REQUIRE_PG=1`, so there a missing cluster fails.

use std::collections::BTreeMap;

use outpost_proto::pb::admin::{admin_request::Op, admin_response::Result as R};
use outpost_server::config::ServerConfig;
use outpost_server::store::{Durability, Store};
use outpost_tests::hierarchy::{ServerProc, import};
use outpost_tests::licensing::{AV_FW, DAY, issue};
use outpost_tests::{Authority, init_logs, pg, until};
use sqlx::Connection;

/// Column (type, nullable, primary-key position) per table, plus the CHECK and FOREIGN KEY
/// counts and the index names: what both schemas must agree on.
type Schema = BTreeMap<String, Vec<String>>;

fn kind(t: &str) -> &'static str {
    match t.to_ascii_lowercase().as_str() {
        "integer" | "bigint" => "int",
        "text" => "text",
        "blob" | "bytea" => "bytes",
        other => panic!("unexpected column type {other}"),
    }
}

async fn sqlite_schema(path: &std::path::Path) -> Schema {
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let cols: Vec<(String, String, String, i64, i64)> = sqlx::query_as(
        "SELECT m.name, p.name, p.type, p.\"notnull\", p.pk FROM sqlite_master m
         JOIN pragma_table_info(m.name) p
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name NOT LIKE '_sqlx%'",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let mut s = Schema::new();
    for (t, c, ty, notnull, pk) in cols {
        s.entry(t).or_default().push(format!(
            "{c} {} {} pk{pk}",
            kind(&ty),
            if notnull == 1 || pk > 0 {
                "not-null"
            } else {
                "null"
            }
        ));
    }
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
         AND name NOT LIKE '_sqlx%'",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    for (t, sql) in tables {
        let checks = sql.matches("CHECK (").count();
        let (fks,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM pragma_foreign_key_list($1)")
            .bind(&t)
            .fetch_one(&mut db)
            .await
            .unwrap();
        s.entry(t)
            .or_default()
            .push(format!("checks {checks} fks {fks}"));
    }
    let idx: Vec<(String, String)> = sqlx::query_as(
        "SELECT tbl_name, name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    for (t, i) in idx {
        s.entry(t).or_default().push(format!("index {i}"));
    }
    for v in s.values_mut() {
        v.sort();
    }
    s
}

async fn postgres_schema(url: &str) -> Schema {
    let mut db = sqlx::PgConnection::connect(url).await.unwrap();
    let cols: Vec<(String, String, String, String, i32)> = sqlx::query_as(
        "SELECT c.table_name::text, c.column_name::text, c.data_type::text, c.is_nullable::text,
                COALESCE((SELECT k.ordinal_position::int FROM information_schema.table_constraints t
                          JOIN information_schema.key_column_usage k
                            ON k.constraint_name = t.constraint_name AND k.table_name = t.table_name
                          WHERE t.table_name = c.table_name AND t.constraint_type = 'PRIMARY KEY'
                            AND k.column_name = c.column_name), 0)
         FROM information_schema.columns c
         WHERE c.table_schema = 'public' AND c.table_name NOT LIKE '_sqlx%'",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let mut s = Schema::new();
    for (t, c, ty, nullable, pk) in cols {
        s.entry(t).or_default().push(format!(
            "{c} {} {} pk{pk}",
            kind(&ty),
            if nullable == "NO" { "not-null" } else { "null" }
        ));
    }
    let cons: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT r.relname::text,
                COUNT(*) FILTER (WHERE c.contype = 'c'), COUNT(*) FILTER (WHERE c.contype = 'f')
         FROM pg_class r JOIN pg_namespace n ON n.oid = r.relnamespace
         LEFT JOIN pg_constraint c ON c.conrelid = r.oid
         WHERE n.nspname = 'public' AND r.relkind = 'r' AND r.relname NOT LIKE '_sqlx%'
         GROUP BY r.relname",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    for (t, checks, fks) in cons {
        s.entry(t)
            .or_default()
            .push(format!("checks {checks} fks {fks}"));
    }
    let idx: Vec<(String, String)> = sqlx::query_as(
        "SELECT i.tablename::text, i.indexname::text FROM pg_indexes i
         WHERE i.schemaname = 'public' AND i.tablename NOT LIKE '_sqlx%'
           AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    for (t, i) in idx {
        s.entry(t).or_default().push(format!("index {i}"));
    }
    for v in s.values_mut() {
        v.sort();
    }
    s
}

/// The migrations of both backends produce the same tables, columns (type, nullability,
/// primary key), CHECK and FOREIGN KEY constraints and indexes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2_sqlite_and_postgres_schemas_match() {
    init_logs();
    let Some(base) = pg::required("p2_sqlite_and_postgres_schemas_match") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("outpost.db");
    let lite = Store::open(&file, Durability::Normal).await.unwrap();
    lite.close().await;
    let url = pg::fresh_database(&base);
    let pgs = Store::open_configured(&file, &url, Durability::Normal)
        .await
        .unwrap();
    assert_eq!(pgs.backend(), outpost_server::store::Backend::Postgres);
    pgs.close().await;
    let (a, b) = (sqlite_schema(&file).await, postgres_schema(&url).await);
    assert!(a.len() >= 17, "tables read: {:?}", a.keys());
    for t in a.keys().chain(b.keys()) {
        assert_eq!(
            a.get(t),
            b.get(t),
            "table {t}: SQLite (left) and PostgreSQL (right) differ"
        );
    }
    // A database a newer release migrated further is refused by name, as on SQLite (P1).
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (9999, 'from a newer release', true, '\\x00', 0)",
    )
    .execute(&mut db)
    .await
    .unwrap();
    db.close().await.unwrap();
    let e = Store::open_configured(&file, &url, Durability::Normal)
        .await
        .expect_err("a newer schema refused")
        .to_string();
    assert!(
        e.contains("the PostgreSQL database has schema version 9999, newer than this"),
        "{e}"
    );
}

/// The admin's view of a server: (device id, licence state, licence key) per device, and
/// (key, seats, used) per key.
async fn view(s: &ServerProc) -> (Vec<(String, String, String)>, Vec<(String, u32, u32)>) {
    let R::Devices(d) = s
        .admin(Op::DeviceList(
            outpost_proto::pb::admin::DeviceList::default(),
        ))
        .await
    else {
        panic!("device list")
    };
    let mut devices: Vec<_> = d
        .devices
        .into_iter()
        .map(|d| (d.device_id, d.licence_state, d.licence_key))
        .collect();
    devices.sort();
    let R::Keys(k) = s
        .admin(Op::KeyList(outpost_proto::pb::admin::Empty {}))
        .await
    else {
        panic!("key list")
    };
    let mut keys: Vec<_> = k
        .keys
        .into_iter()
        .map(|k| (k.key_id, k.seats_total, k.seats_used))
        .collect();
    keys.sort();
    (devices, keys)
}

/// `migrate-store` moves a populated embedded store into PostgreSQL: the same devices, keys and
/// counts afterwards, the agents licensed again on the same seats; a second run into the now
/// used database is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2_migrate_store_moves_an_embedded_store_with_the_same_devices_keys_and_counts() {
    init_logs();
    let Some(base) = pg::required("p2_migrate_store") else {
        return;
    };
    let auth = Authority::new();
    let mut s = ServerProc::start(&auth, "embedded", |c| c.store.url = String::new()).await;
    import(&s, &issue(&auth, "K-MOVE", 3, 30 * DAY, AV_FW, false, None)).await;
    let agents = outpost_tests::hierarchy::agents(&s, 5).await;
    until("3 of 5 agents licensed, 2 told why not", || async {
        outpost_tests::hierarchy::licensed(&agents, "K-MOVE") == 3
            && agents
                .iter()
                .filter(|a| a.h().status().borrow().licence.state == "unlicensed")
                .count()
                == 2
    })
    .await;
    // The server has recorded every agent's result (the record of an unchanged unlicensed
    // result may land just after the agent heard it).
    until("every agent's result recorded", || async {
        view(&s)
            .await
            .0
            .iter()
            .filter(|(id, state, _)| id.starts_with("a-") && state != "unknown")
            .count()
            == 5
    })
    .await;
    let before = view(&s).await;
    s.kill();
    drop(agents);
    let url = pg::fresh_database(&base);
    let data = s.data.to_string_lossy().into_owned();
    let (ok, out, err) = outpost_tests::run_bin(
        "outpost-server",
        &["migrate-store", "--data-dir", &data, "--to", &url],
    )
    .expect("run migrate-store");
    assert!(ok, "migrate-store failed: {err}");
    assert!(
        out.contains("licence_keys") && out.contains("copied and verified"),
        "{out}"
    );
    s.spawn();
    let after = view(&s).await;
    assert_eq!(before, after, "devices and keys after the move");
    assert_eq!(after.1, vec![("K-MOVE".to_owned(), 3, 3)]);
    // The server runs on PostgreSQL now: its server.toml says so, and a second migration into
    // that database is refused.
    let toml = std::fs::read_to_string(s.data.join("server.toml")).unwrap();
    assert!(toml.contains(&url), "server.toml points at the database");
    s.kill();
    let mut cfg = ServerConfig::load(&s.data.join("server.toml")).unwrap();
    cfg.store.url = String::new();
    std::fs::write(s.data.join("server.toml"), cfg.to_commented_toml()).unwrap();
    let (ok, _, err) = outpost_tests::run_bin(
        "outpost-server",
        &["migrate-store", "--data-dir", &data, "--to", &url],
    )
    .unwrap();
    assert!(!ok && err.contains("not empty"), "{err}");
}
