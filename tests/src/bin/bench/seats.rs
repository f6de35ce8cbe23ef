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
    Ok(ScenarioResult::new(
        "seat_checks",
        rates[0],
        "checks/s",
        None,
        10_000.0,
        "value>=",
    )
    .with("seats", seats as u64)
    .with("devices", 2 * seats as u64)
    .with("durability", "full (default)")
    .with("checks_per_s_durability_normal", rates[1])
    .with("over_allocation", 0))
}
