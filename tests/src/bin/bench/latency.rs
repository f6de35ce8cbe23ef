//! `connect_latency`: one agent's connect through its gateway until licensed and synced,
//! sequentially, against bare quinn direct connect + one request in the same run.

use super::*;
use crate::agents::enroll_agents;

/// connect_latency: `n` sequential connects of one agent through a gateway, each timed until
/// the session is established, the licence check answered and the first sync done.
///
/// The figure is the reconnect of a running agent (network change, gateway restart: the
/// common case), which may resume its inner TLS session with a kept ticket. Fresh starts of
/// the agent (no ticket: two full handshakes) are measured too and reported beside it. The
/// first connect takes the seat (fsynced, P3) and is reported apart; the rest are devices that
/// hold their seat.
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

    // Fresh starts: a new agent (identity loaded, no ticket) per connect, timed from its
    // release.
    let mut fresh = vec![];
    let mut running: Option<outpost_agent::AgentHandle> = None;
    for i in 0..n + 1 {
        // One agent per data directory at a time: the previous one stops first.
        if let Some(prev) = running.take() {
            prev.shutdown().await;
        }
        let (go, hold) = tokio::sync::watch::channel(false);
        let agent = agents::start_agents(&dirs, gw.addr(), &endpoints, &hold)?.remove(0);
        let t = Instant::now();
        go.send_replace(true);
        let st = agent
            .wait_for(|s| {
                s.state == "connected" && s.last_sync > 0 && s.licence.state == "licensed"
            })
            .await;
        fresh.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(st.licence.state == "licensed", "connect {i}: not licensed");
        running = Some(agent);
    }
    // Reconnects: the last agent stays up and is told to reconnect.
    let agent = running.expect("at least one start");
    reconnects(agent, n, fresh, &pki).await
}

async fn reconnects(
    agent: outpost_agent::AgentHandle,
    n: usize,
    mut fresh: Vec<f64>,
    pki: &bench::BarePki,
) -> anyhow::Result<ScenarioResult> {
    use outpost_agent::AgentEvent;
    let mut events = agent.events();
    let mut ours = vec![];
    for i in 0..n {
        let sessions = agent.status().borrow().sessions;
        let t = Instant::now();
        agent.reconnect();
        // Until this new session has synced.
        loop {
            match events.recv().await {
                Ok(AgentEvent::Synced { .. }) if agent.status().borrow().sessions > sessions => {
                    break;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    anyhow::bail!("reconnect {i}: the agent stopped")
                }
                _ => {}
            }
        }
        ours.push(t.elapsed().as_secs_f64() * 1000.0);
        let st = agent.status().borrow().clone();
        anyhow::ensure!(
            st.state == "connected" && st.licence.state == "licensed",
            "reconnect {i}: {} / {}",
            st.state,
            st.licence.state
        );
    }
    agent.shutdown().await;
    let first = fresh.remove(0);
    fresh.sort_by(|a, b| a.total_cmp(b));
    ours.sort_by(|a, b| a.total_cmp(b));
    let bare = bench::bare_connect_latency(pki, n).await;
    let p50 = bench::percentile(&ours, 0.5);
    let bare_p50 = bench::percentile(&bare, 0.5);
    let fresh_p50 = bench::percentile(&fresh, 0.5);
    Ok(
        ScenarioResult::new("connect_latency", p50, "ms p50", Some(bare_p50), 2.0, "ratio<=")
            .with("connects", n as u64)
            .with("p99_ms", bench::percentile(&ours, 0.99))
            .with("bare_p99_ms", bench::percentile(&bare, 0.99))
            .with("speed_ratio", bare_p50 / p50)
            .with("fresh_start_p50_ms", fresh_p50)
            .with("fresh_start_p99_ms", bench::percentile(&fresh, 0.99))
            .with("fresh_start_ratio", fresh_p50 / bare_p50)
            .with("first_connect_ms", first)
            .with(
                "via",
                "reconnect of a running agent: agent -> gateway (mTLS) -> inner TLS to the server (resumed), hello + first sync, licence check",
            ),
    )
}
