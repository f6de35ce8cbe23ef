//! `seat_checks`: licence checks at the server store.

use super::*;

/// One key of `seats` seats and 2 x `seats` agent devices in `store`; returns the devices.
async fn populate(store: &Store, seats: u32) -> anyhow::Result<Vec<String>> {
    let auth = Authority::new();
    let key = auth.key("K-SEATS", seats, Duration::from_secs(86_400));
    store
        .insert_keys(
            &[("K-SEATS.key".into(), key)],
            false,
            true,
            "imported",
            outpost_net::unix_now(),
        )
        .await?;
    let devices: Vec<String> = (0..2 * seats).map(|i| format!("a-{i:012x}")).collect();
    for d in &devices {
        store.insert_local_device(d, "agent", d, 0).await?;
    }
    Ok(devices)
}

/// Two rounds of one licence check per device, 256 checks at a time spread over `stores`
/// (one store per server instance on a shared database); after each round exactly `seats`
/// licensed, the key's counts full and the seat audit clean. Returns checks per second.
async fn check_rounds(stores: &[Store], devices: &[String], seats: u32) -> anyhow::Result<f64> {
    const POLICY: outpost_server::store::Policy = outpost_server::store::Policy {
        grant_ttl: 86_400,
        expiring_soon: 14 * 86_400,
    };
    let started = Instant::now();
    let mut checks = 0usize;
    for _round in 0..2 {
        let mut set = tokio::task::JoinSet::new();
        for (i, chunk) in devices.chunks(devices.len().div_ceil(256)).enumerate() {
            let store = stores[i % stores.len()].clone();
            let chunk = chunk.to_vec();
            set.spawn(async move {
                let mut licensed = 0;
                for d in chunk {
                    if let outpost_server::store::CheckOutcome::Licensed(_) = store
                        .check_licence(&d, outpost_net::unix_now(), &POLICY)
                        .await
                        .unwrap()
                    {
                        licensed += 1;
                    }
                }
                licensed
            });
        }
        let mut licensed = 0;
        while let Some(r) = set.join_next().await {
            licensed += r?;
        }
        checks += devices.len();
        anyhow::ensure!(
            licensed == seats as usize,
            "{licensed} licensed with {seats} seats: over- or under-allocation"
        );
        let (total, used, _) = stores[0].seat_counts("K-SEATS").await?;
        anyhow::ensure!(used == total, "seats used {used} of {total}");
        anyhow::ensure!(
            stores[0].audit_seats().await?.is_empty(),
            "seat audit failed"
        );
    }
    Ok(checks as f64 / started.elapsed().as_secs_f64())
}

/// seat_checks: licence checks per second on the embedded store with S seats and 2 x S
/// devices; over-allocation is checked after every round.
pub(crate) async fn seat_checks(seats: u32) -> anyhow::Result<ScenarioResult> {
    let mut rates = vec![];
    for durability in [Durability::Full, Durability::Normal] {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("bench.db"), durability).await?;
        let devices = populate(&store, seats).await?;
        rates.push(check_rounds(std::slice::from_ref(&store), &devices, seats).await?);
        store.close().await;
    }
    let bare = |d| {
        let dir = tempfile::tempdir();
        async move {
            let dir = dir?;
            let mut best = (0.0, 0);
            for c in [256, 1] {
                let pool = bare_sqlite(&dir.path().join(format!("bare-{c}.db")), d).await?;
                let r = bare_loop(&pool, seats, c).await?;
                if r > best.0 {
                    best = (r, c as u64);
                }
            }
            anyhow::Ok(best)
        }
    };
    let bare_full = bare(Durability::Full).await?;
    let bare_normal = bare(Durability::Normal).await?;
    Ok(ScenarioResult::new(
        "seat_checks",
        rates[0],
        "checks/s",
        Some(bare_full.0),
        10_000.0,
        "value>=",
    )
    .with(
        "baseline",
        "bare conditional-UPDATE loop, same SQLite settings, same run",
    )
    .with("bare_concurrency", bare_full.1)
    .with("bare_checks_per_s_durability_normal", bare_normal.0)
    .with("seats", seats as u64)
    .with("devices", 2 * seats as u64)
    .with("durability", "full (default)")
    .with("checks_per_s_durability_normal", rates[1])
    .with("over_allocation", 0))
}

/// seat_checks on PostgreSQL (P2): one instance's store, then three instances' stores on one
/// database (each with its own connection pools and batch writer, as three server processes
/// have; in one process here, so QUIC is not part of the figure), each against a bare
/// conditional-UPDATE loop on the same PostgreSQL at its best concurrency. Two rows: one
/// instance against the bare loop (target ≥ 0.5), three instances against one (target > 1).
pub(crate) async fn seat_checks_pg(base: &str, seats: u32) -> anyhow::Result<Vec<ScenarioResult>> {
    let mut best = (0.0, 0);
    for c in [64usize, 16, 1] {
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(c as u32)
            .connect(&outpost_tests::pg::fresh_database(base))
            .await?;
        let r = bare_loop(&pool, seats, c).await?;
        pool.close().await;
        if r > best.0 {
            best = (r, c as u64);
        }
    }
    let mut rates = vec![];
    for instances in [1usize, 3] {
        let url = outpost_tests::pg::fresh_database(base);
        let nowhere = std::path::Path::new("/nonexistent");
        let mut stores = vec![];
        for _ in 0..instances {
            stores.push(Store::open_configured(nowhere, &url, Durability::Full).await?);
        }
        let devices = populate(&stores[0], seats).await?;
        rates.push(check_rounds(&stores, &devices, seats).await?);
        for s in stores {
            s.close().await;
        }
    }
    Ok(vec![
        ScenarioResult::new(
            "seat_checks_pg",
            rates[0],
            "checks/s",
            Some(best.0),
            0.5,
            "ratio>=",
        )
        .with(
            "baseline",
            "bare conditional-UPDATE loop on the same PostgreSQL, same run",
        )
        .with("bare_concurrency", best.1)
        .with("instances", 1)
        .with("seats", seats as u64)
        .with("devices", 2 * seats as u64)
        .with("over_allocation", 0),
        ScenarioResult::new(
            "seat_checks_pg3",
            rates[1],
            "checks/s",
            Some(rates[0]),
            1.0,
            "ratio>",
        )
        .with("baseline", "one instance on the same PostgreSQL, same run")
        .with("instances", 3)
        .with("bare_checks_per_s", best.0)
        .with("seats", seats as u64)
        .with("devices", 2 * seats as u64)
        .with("over_allocation", 0),
    ])
}

/// A bare SQLite pool with the store's settings (WAL, the same `synchronous`, one writer).
async fn bare_sqlite(path: &Path, durability: Durability) -> anyhow::Result<sqlx::AnyPool> {
    sqlx::any::install_default_drivers();
    let pragmas = format!(
        "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 30000; PRAGMA synchronous = {};",
        match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        }
    );
    Ok(sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .after_connect(move |conn, _| {
            let p = pragmas.clone();
            Box::pin(async move {
                sqlx::Executor::execute(conn, sqlx::AssertSqlSafe(p)).await?;
                Ok(())
            })
        })
        .connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await?)
}

/// The same-run baseline of `seat_checks`: a bare conditional-UPDATE loop, each check one
/// transaction — take a seat if one is free, record it with the device — over the same seats
/// and devices, `concurrency` checks at a time. Returns checks per second; asserts no
/// over-allocation.
async fn bare_loop(pool: &sqlx::AnyPool, seats: u32, concurrency: usize) -> anyhow::Result<f64> {
    sqlx::raw_sql(
        "CREATE TABLE keys (id TEXT PRIMARY KEY, seats BIGINT NOT NULL,
             used BIGINT NOT NULL CHECK (used <= seats));
         CREATE TABLE devices (id TEXT PRIMARY KEY, key_id TEXT);",
    )
    .execute(pool)
    .await?;
    sqlx::query("INSERT INTO keys VALUES ('K', $1, 0)")
        .bind(seats as i64)
        .execute(pool)
        .await?;
    let devices: Vec<String> = (0..2 * seats).map(|i| format!("a-{i:012x}")).collect();
    let mut tx = pool.begin().await?;
    for d in &devices {
        sqlx::query("INSERT INTO devices (id) VALUES ($1)")
            .bind(d)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for chunk in devices.chunks(devices.len().div_ceil(concurrency)) {
        let pool = pool.clone();
        let chunk = chunk.to_vec();
        set.spawn(async move {
            let mut licensed = 0usize;
            for d in chunk {
                let mut tx = pool.begin().await?;
                let took =
                    sqlx::query("UPDATE keys SET used = used + 1 WHERE id = 'K' AND used < seats")
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                        == 1;
                if took {
                    sqlx::query("UPDATE devices SET key_id = 'K' WHERE id = $1")
                        .bind(&d)
                        .execute(&mut *tx)
                        .await?;
                    licensed += 1;
                }
                tx.commit().await?;
            }
            Ok::<_, sqlx::Error>(licensed)
        });
    }
    let mut licensed = 0;
    while let Some(r) = set.join_next().await {
        licensed += r??;
    }
    let rate = devices.len() as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(
        licensed == seats as usize,
        "bare loop: {licensed} licensed with {seats} seats"
    );
    Ok(rate)
}
