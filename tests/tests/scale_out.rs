//! Scale-out on PostgreSQL (P2): the two schemas kept in step, and several server instances on
//! one database sharing one seat count. Needs the test cluster (`.ci/pg-cluster start`,
//! `OUTPOST_TEST_PG`); CI sets `OUTPOST_REQUIRE_PG=1`, so there a missing cluster fails.

use std::collections::BTreeMap;

use std::time::Duration;

use outpost_proto::pb::admin::{
    DeviceRef, PushRequest, TokenCreate, admin_request::Op, admin_response::Result as R,
};
use outpost_server::config::ServerConfig;
use outpost_server::store::{Durability, Store};
use outpost_tests::hierarchy::{ServerProc, import};
use outpost_tests::licensing::{AV_FW, DAY, issue};
use outpost_tests::{Agent, Authority, init_logs, pg, test_agent_config, until};
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
}

/// Two server instances on one PostgreSQL database, agents split over them, twice as many as
/// a key has seats, all at once: exactly S licensed across both, seats consistent. Then what
/// is done through one instance reaches sessions held by the other: a push, a revocation, a
/// new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2_two_instances_share_seats_revocations_pushes_and_key_changes() {
    init_logs();
    let Some(base) =
        pg::required("p2_two_instances_share_seats_revocations_pushes_and_key_changes")
    else {
        return;
    };
    const S: usize = 15;
    let auth = Authority::new();
    let url = pg::fresh_database(&base);
    // A sync interval far longer than the test: what reaches sessions on the other instance
    // does so through the wake-ups, not a periodic sync.
    let on_pg = |c: &mut ServerConfig| {
        c.store.url = url.clone();
        c.timing.sync_interval = Duration::from_secs(600);
    };
    let a = ServerProc::start(&auth, "instance-a", on_pg).await;
    let b = a.another_instance("instance-b");
    import(
        &a,
        &issue(&auth, "K-SHARED", S as u32, 30 * DAY, AV_FW, false, None),
    )
    .await;
    // The token made through A is good on B: one database.
    let R::TokenCreated(t) = b
        .admin(Op::TokenCreate(TokenCreate {
            role: "agent".into(),
            uses: 2 * S as u32,
            ttl_secs: 3600,
            ..Default::default()
        }))
        .await
    else {
        panic!("token")
    };
    let mut agents = vec![];
    for i in 0..2 * S {
        let to = if i % 2 == 0 { a.addr } else { b.addr };
        agents.push(
            Agent::enroll(
                test_agent_config(vec![], Some(to), &format!("p2-{i}")),
                &t.token,
            )
            .await,
        );
    }
    for x in agents.iter_mut() {
        x.boot();
    }
    for x in &agents {
        x.wait_checked().await;
    }
    let licensed = || {
        agents
            .iter()
            .filter(|x| x.h().status().borrow().licence.state == "licensed")
            .count()
    };
    until("every agent checked", || async {
        agents
            .iter()
            .all(|x| !x.h().status().borrow().licence.state.is_empty())
    })
    .await;
    assert_eq!(
        licensed(),
        S,
        "exactly {S} of {} licensed across both instances",
        2 * S
    );
    let per = |port| {
        agents
            .iter()
            .enumerate()
            .filter(|(i, x)| {
                (if i % 2 == 0 { a.addr } else { b.addr }) == port
                    && x.h().status().borrow().licence.state == "licensed"
            })
            .count()
    };
    let (on_a, on_b) = (per(a.addr), per(b.addr));
    assert!(
        on_a > 0 && on_b > 0,
        "both instances licensed devices: {on_a} / {on_b}"
    );
    assert_eq!(on_a + on_b, S);
    for s in [&a, &b] {
        let k = s.key("K-SHARED").await.unwrap();
        assert_eq!(k.seats_used as usize, S, "{}: {k:?}", s.name);
    }
    let store = Store::open_configured(
        std::path::Path::new("/nonexistent"),
        &url,
        Durability::Normal,
    )
    .await
    .unwrap();
    assert!(store.audit_seats().await.unwrap().is_empty());
    store.close().await;

    // A push queued through A for an agent connected to B reaches it once, from the mailbox,
    // delivered by B; its acknowledgement empties the mailbox.
    let target = agents
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, x)| x)
        .nth(1)
        .expect("a second agent on B");
    let before = target.h().status().borrow().pushes_received;
    let started = std::time::Instant::now();
    let r = a
        .admin(Op::Push(PushRequest {
            device_id: target.h().device_id().into(),
            kind: "message".into(),
            message: "through A".into(),
            wait_ms: 1,
            ..Default::default()
        }))
        .await;
    let R::Push(p) = r else { panic!("{r:?}") };
    assert_eq!(
        p.outcomes[0].state, "queued",
        "not connected to A: into the mailbox"
    );
    let st = outpost_tests::within(
        "the push reaches the agent on B",
        target.h().wait_for(|s| s.pushes_received > before),
    )
    .await;
    let pushed_in = started.elapsed();
    assert_eq!(st.last_push, "message: through A");
    let store = Store::open_configured(
        std::path::Path::new("/nonexistent"),
        &url,
        Durability::Normal,
    )
    .await
    .unwrap();
    until("the acknowledged push left the mailbox", || async {
        store
            .pending_pushes(target.h().device_id(), outpost_net::unix_now())
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    store.close().await;
    assert_eq!(
        target.h().status().borrow().pushes_received,
        before + 1,
        "once"
    );

    // A device revoked through instance A loses its session on B within 2 s.
    let on_b_agent = agents
        .iter()
        .enumerate()
        .find(|(i, x)| i % 2 == 1 && x.h().status().borrow().licence.state == "licensed")
        .map(|(_, x)| x)
        .expect("a licensed agent on B");
    let started = std::time::Instant::now();
    a.admin(Op::DeviceRevoke(DeviceRef {
        device_id: on_b_agent.h().device_id().to_owned(),
        ..Default::default()
    }))
    .await;
    let st = outpost_tests::within(
        "the agent on B is told it is revoked",
        on_b_agent.h().wait_for(|s| s.licence.state == "unlicensed"),
    )
    .await;
    let revoked_in = started.elapsed();
    assert_eq!(st.licence.reason, "revoked");
    assert!(
        revoked_in < Duration::from_secs(2),
        "revoked on B {revoked_in:?} after A committed"
    );

    // A key imported through B licenses the unlicensed agents held by A within seconds: A's
    // sessions re-check when B's change wakes it (their sync interval is far longer).
    let started = std::time::Instant::now();
    import(
        &b,
        &issue(&auth, "K-MORE", S as u32, 30 * DAY, AV_FW, false, None),
    )
    .await;
    until("every agent but the revoked one licensed", || async {
        agents
            .iter()
            .filter(|x| x.h().status().borrow().licence.state == "licensed")
            .count()
            == 2 * S - 1
    })
    .await;
    let rechecked_in = started.elapsed();
    eprintln!(
        "p2: {S} of {} licensed, {on_a} through instance A and {on_b} through B; push through \
         A reached B's agent in {pushed_in:?}; revoked on B {revoked_in:?} after A; a key \
         imported through B licensed A's waiting agents in {rechecked_in:?}",
        2 * S
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

/// PostgreSQL restarted under a running instance (every connection cut): the server does not
/// crash, nothing committed is lost, and it serves again by itself — admin requests, licence
/// checks, and the wake-ups (its listener reconnects).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2_postgres_restarted_under_a_running_instance_it_recovers_by_itself() {
    init_logs();
    if pg::required("p2_postgres_restarted").is_none() {
        return;
    }
    let cluster = pg::OwnCluster::start();
    let url = pg::fresh_database(&cluster.url);
    let auth = Authority::new();
    let mut s = ServerProc::start(&auth, "instance", |c| {
        c.store.url = url.clone();
        c.timing.sync_interval = Duration::from_secs(600);
    })
    .await;
    import(
        &s,
        &issue(&auth, "K-BEFORE", 2, 30 * DAY, AV_FW, false, None),
    )
    .await;
    let agents = outpost_tests::hierarchy::agents(&s, 4).await;
    until("2 of 4 agents licensed", || async {
        outpost_tests::hierarchy::licensed(&agents, "K-BEFORE") == 2
    })
    .await;

    cluster.restart();
    // The admin request is retried by the harness until the server answers again; the key it
    // imports reaches the waiting agents through the licence epoch.
    let started = std::time::Instant::now();
    import(
        &s,
        &issue(&auth, "K-AFTER", 2, 30 * DAY, AV_FW, false, None),
    )
    .await;
    until(
        "the 2 waiting agents licensed on the key imported after the restart",
        || async { outpost_tests::hierarchy::licensed(&agents, "K-AFTER") == 2 },
    )
    .await;
    let back = started.elapsed();
    assert!(
        s.running(),
        "the server process survived the database restart"
    );
    let k = s.key("K-BEFORE").await.unwrap();
    assert_eq!(k.seats_used, 2, "committed seats survived: {k:?}");
    eprintln!(
        "p2: after a PostgreSQL restart the server served a new key to waiting agents in {back:?}"
    );
    s.kill();
}

/// A storm of 2 × S agents over two instances, one instance SIGKILLed mid-storm and restarted:
/// exactly S licensed in the end (counting grants the agents hold), and the seat audit clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2_instance_killed_mid_storm_still_exactly_s_licensed() {
    init_logs();
    let Some(base) = pg::required("p2_instance_killed_mid_storm") else {
        return;
    };
    const S: usize = 20;
    let auth = Authority::new();
    let url = pg::fresh_database(&base);
    let a = ServerProc::start(&auth, "storm-a", |c| c.store.url = url.clone()).await;
    let mut b = a.another_instance("storm-b");
    import(
        &a,
        &issue(&auth, "K-STORM", S as u32, 30 * DAY, AV_FW, false, None),
    )
    .await;
    let R::TokenCreated(t) = a
        .admin(Op::TokenCreate(TokenCreate {
            role: "agent".into(),
            uses: 2 * S as u32,
            ttl_secs: 3600,
            ..Default::default()
        }))
        .await
    else {
        panic!("token")
    };
    let mut agents = vec![];
    for i in 0..2 * S {
        let to = if i % 2 == 0 { a.addr } else { b.addr };
        agents.push(
            Agent::enroll(
                test_agent_config(vec![], Some(to), &format!("ks-{i}")),
                &t.token,
            )
            .await,
        );
    }
    let count = |agents: &[Agent]| {
        let now = outpost_net::unix_now();
        agents
            .iter()
            .filter(|x| {
                let s = x.h().status().borrow().clone();
                s.licence.state == "licensed" && s.licence.expires_at > now
            })
            .count()
    };
    for x in agents.iter_mut() {
        x.boot();
    }
    // Kill B while the storm is under way.
    until("the storm under way", || async { count(&agents) >= 2 }).await;
    b.kill();
    let at_kill = count(&agents);
    b.spawn();
    until("exactly S licensed once B is back", || async {
        count(&agents) == S
            && agents
                .iter()
                .all(|x| !x.h().status().borrow().licence.state.is_empty())
    })
    .await;
    // Held for a while: nothing more is handed out.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(count(&agents) <= S, "over-allocated: {}", count(&agents));
    }
    let store = Store::open_configured(
        std::path::Path::new("/nonexistent"),
        &url,
        Durability::Normal,
    )
    .await
    .unwrap();
    assert!(store.audit_seats().await.unwrap().is_empty());
    store.close().await;
    let k = a.key("K-STORM").await.unwrap();
    assert_eq!(k.seats_used as usize, S, "{k:?}");
    eprintln!(
        "p2 storm: {} agents, B killed with {at_kill} licensed, {S} licensed after",
        2 * S
    );
}
