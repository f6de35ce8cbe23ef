//! Many agents at once through one gateway, sharing a few client endpoints (the benchmark and
//! the fan-out tests).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::test_agent_config;

/// Enrolls `n` agents (32 at a time) with the server; returns their data directories.
pub async fn enroll_agents(
    root: &Path,
    server: std::net::SocketAddr,
    token: &str,
    n: usize,
    prefix: &str,
) -> anyhow::Result<Vec<PathBuf>> {
    let token = outpost_proto::token::Token::parse(token)?;
    let mut dirs = vec![];
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let data = root.join(format!("{prefix}{i:05}"));
        dirs.push(data.clone());
        let token = token.clone();
        let machine = format!("{prefix}{i}");
        set.spawn(async move {
            let cfg = test_agent_config(vec![], Some(server), &machine);
            outpost_agent::enroll(&data, &cfg, &token).await
        });
        if set.len() >= 32 {
            set.join_next().await.expect("task")??;
        }
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(dirs)
}

/// Starts enrolled agents through `gateway`, spread over `endpoints`, each holding its first
/// connection until `hold` turns true.
pub fn start_agents(
    dirs: &[PathBuf],
    gateway: std::net::SocketAddr,
    endpoints: &[quinn::Endpoint],
    hold: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<outpost_agent::AgentHandle>> {
    dirs.iter()
        .enumerate()
        .map(|(i, d)| {
            let mut cfg = test_agent_config(vec![gateway.to_string()], None, &format!("a{i}"));
            // Thousands of handshakes at once queue up on a small machine: an agent that gave
            // up after the tests' 2 s would abandon a half-done handshake and start another,
            // and the gateway would hold both (churn without progress). Be as patient as a
            // deployed agent would be in a mass restart.
            cfg.connect.dial_timeout = Duration::from_secs(60);
            cfg.connect.idle_timeout = Duration::from_secs(120);
            outpost_agent::start(
                d,
                outpost_agent::StartOptions {
                    endpoint: Some(endpoints[i % endpoints.len()].clone()),
                    config: Some(cfg),
                    no_status_file: true,
                    hold: Some(hold.clone()),
                    ..Default::default()
                },
            )
            .map_err(anyhow::Error::from)
        })
        .collect()
}

/// Waits until every agent is connected and synced.
pub async fn wait_all_checked(agents: &[outpost_agent::AgentHandle]) {
    for a in agents {
        a.wait_for(|s| s.state == "connected" && s.last_sync > 0)
            .await;
    }
}
