//! `seat_checks`: licence checks at the server store.

use super::*;

/// seat_checks: licence checks per second on the embedded store with S seats and 2 x S
/// devices; over-allocation is checked after every round.
pub(crate) async fn seat_checks(seats: u32) -> anyhow::Result<ScenarioResult> {
    let mut rates = vec![];
    for durability in [Durability::Full, Durability::Normal] {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("bench.db"), durability).await?;
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
        let started = Instant::now();
        let mut checks = 0usize;
        for _round in 0..2 {
            const POLICY: outpost_server::store::Policy = outpost_server::store::Policy {
                grant_ttl: 86_400,
                expiring_soon: 14 * 86_400,
            };
            let store = Arc::new(store.clone());
            let mut set = tokio::task::JoinSet::new();
            for chunk in devices.chunks(devices.len().div_ceil(256)) {
                let store = store.clone();
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
            let (total, used, _) = store.seat_counts("K-SEATS").await?;
            anyhow::ensure!(used == total, "seats used {used} of {total}");
            anyhow::ensure!(store.audit_seats().await?.is_empty(), "seat audit failed");
        }
        rates.push(checks as f64 / started.elapsed().as_secs_f64());
        store.close().await;
    }
    let bare_full = bare_seat_checks(seats, Durability::Full).await?;
    let bare_normal = bare_seat_checks(seats, Durability::Normal).await?;
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

/// The same-run baseline of `seat_checks`: a bare conditional-UPDATE loop on an SQLite file
/// with the store's settings (WAL, the same `synchronous`, one writer connection), each check
/// one transaction — take a seat if one is free, record it with the device — over the same
/// seats and devices. Run at the store's concurrency (256 tasks) and at 1 (no queueing); the
/// faster is returned with its concurrency, in checks per second. Asserts no over-allocation.
async fn bare_seat_checks(seats: u32, durability: Durability) -> anyhow::Result<(f64, u64)> {
    use sqlx::sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
    };
    let mut best = (0.0, 0);
    for concurrency in [256usize, 1] {
        let dir = tempfile::tempdir()?;
        let opts = SqliteConnectOptions::new()
            .filename(dir.path().join("bare.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match durability {
                Durability::Full => SqliteSynchronous::Full,
                Durability::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await?;
        sqlx::raw_sql(
            "CREATE TABLE keys (id TEXT PRIMARY KEY, seats INTEGER NOT NULL,
                 used INTEGER NOT NULL CHECK (used <= seats));
             CREATE TABLE devices (id TEXT PRIMARY KEY, key_id TEXT);",
        )
        .execute(&pool)
        .await?;
        sqlx::query("INSERT INTO keys VALUES ('K', $1, 0)")
            .bind(seats as i64)
            .execute(&pool)
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
                    let took = sqlx::query(
                        "UPDATE keys SET used = used + 1 WHERE id = 'K' AND used < seats",
                    )
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
        pool.close().await;
        if rate > best.0 {
            best = (rate, concurrency as u64);
        }
    }
    Ok(best)
}
