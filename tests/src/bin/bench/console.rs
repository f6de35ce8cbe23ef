//! `console_devices` (O8): the web console's device page over HTTPS with N devices in the
//! store (100,000 in the full run): the first page and a search, each the best of several
//! requests (target ≤ 300 ms; a figure, not a timed test). The devices are written straight
//! into the store's file (a fixture: enrolling 100,000 agents would measure enrollment).

use super::*;
use outpost_tests::console::{ConsoleClient, login_path};

async fn fixture(db: &Path, n: usize) -> anyhow::Result<()> {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await?;
    let now = outpost_net::unix_now();
    let mut tx = pool.begin().await?;
    for i in 0..n {
        let licensed = i % 10 != 0;
        sqlx::query(
            "INSERT INTO devices (id, role, cert_sha256, group_path, hostname, enrolled_at,
                                  last_seen, licence_state, licence_reason, path)
             VALUES ($1, 'agent', $2, 'everyone', $3, $4, $5, $6, $7, 'direct')",
        )
        .bind(format!("a-{i:012x}"))
        .bind(format!("{i:064x}"))
        .bind(format!("host-{i:06}"))
        .bind(now)
        .bind(now - (i as i64 % 86_400))
        .bind(if licensed { "licensed" } else { "unlicensed" })
        .bind(if licensed { "" } else { "no free seat" })
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    pool.close().await;
    Ok(())
}

async fn best(c: &mut ConsoleClient, path: &str, expect: &str) -> anyhow::Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        let a = c.get(path).await;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        anyhow::ensure!(
            a.status == 200 && a.body.contains(expect),
            "{path}: {}",
            a.status
        );
        best = best.min(ms);
    }
    Ok(best)
}

/// Runs the scenario with `n` devices.
pub async fn console_devices(n: usize) -> anyhow::Result<ScenarioResult> {
    let auth = Authority::new();
    let server = Server::start(&auth, |c| {
        c.console.listen = Some("127.0.0.1:0".parse().expect("literal"));
    })
    .await;
    fixture(&server.data.join("outpost.db"), n).await?;
    let mut c = ConsoleClient::new(&server);
    let login = login_path(&server).await;
    anyhow::ensure!(c.get(&login).await.status == 303, "sign-in failed");
    let total = format!("{} device(s)", n + 1);
    let first = best(&mut c, "/devices", &total).await?;
    let needle = format!("host-{:06}", n * 2 / 3);
    let search = best(&mut c, &format!("/devices?q={needle}"), "1 device(s)").await?;
    let filtered = best(&mut c, "/devices?filter=unlicensed&page=3", "device(s)").await?;
    Ok(ScenarioResult::new(
        "console_devices",
        first.max(search),
        "ms (slower of first page and search, best of 7)",
        None,
        300.0,
        "value<=",
    )
    .with("devices", n)
    .with("first_page_ms", first)
    .with("search_ms", search)
    .with("unlicensed_page3_ms", filtered))
}
