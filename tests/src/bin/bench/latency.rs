//! `connect_latency`: one agent's connect through its gateway until licensed and synced,
//! sequentially, against bare quinn direct connect + one request in the same run.

use super::*;
use crate::agents::enroll_agents;

/// connect_latency: `n` sequential connects of one agent through a gateway (agent started held,
/// released, timed until the session is established, the licence check answered and the first
/// sync done; then stopped). The first connect takes the seat; the rest are reconnects of a
/// device that holds it — the common case (reboots, network changes, gateway restarts).
pub(crate) async fn connect_latency(n: usize) -> anyhow::Result<ScenarioResult> {
    let pki = bench::BarePki::generate();
    let auth = Authority::new();
    let server = Server::start(&auth, |c| c.store.durability = Durability::Full).await;
    server
        .import_key(&auth.key("K-LAT", 10, Duration::from_secs(86_400)), true)
        .await?;
    let gw = outpost_tests::Gateway::start(&server, |o, _| o.no_status_file = true).await;
    let token = server.token("agent", 1).await;
    let root = tempfile::tempdir()?;
    let dirs = enroll_agents(root.path(), server.addr(), &token, 1, "l").await?;
    let endpoints = bench::client_endpoints(1);
    let mut samples = vec![];
    for i in 0..n + 1 {
        let (go, hold) = tokio::sync::watch::channel(false);
        let agent = agents::start_agents(&dirs, gw.addr(), &endpoints, &hold)?.remove(0);
        let t = Instant::now();
        go.send_replace(true);
        let st = agent
            .wait_for(|s| {
                s.state == "connected" && s.last_sync > 0 && s.licence.state == "licensed"
            })
            .await;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        anyhow::ensure!(st.licence.state == "licensed", "connect {i}: not licensed");
        agent.shutdown().await;
        samples.push(ms);
    }
    // The first connect takes a new seat (fsynced before the answer, P3): reported apart.
    let first = samples.remove(0);
    let mut ours = samples;
    ours.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let bare = bench::bare_connect_latency(&pki, n).await;
    let p50 = bench::percentile(&ours, 0.5);
    let bare_p50 = bench::percentile(&bare, 0.5);
    Ok(ScenarioResult::new(
        "connect_latency",
        p50,
        "ms p50",
        Some(bare_p50),
        2.0,
        "ratio<=",
    )
    .with("connects", n as u64)
    .with("p99_ms", bench::percentile(&ours, 0.99))
    .with("bare_p99_ms", bench::percentile(&bare, 0.99))
    .with("first_connect_ms", first)
    .with("speed_ratio", bare_p50 / p50)
    .with(
        "via",
        "agent -> gateway (mTLS) -> inner TLS to the server, hello, licence check, first sync",
    ))
}
