//! `push_fanout_bytes` (D4): uplink bytes of one broadcast push to every agent behind one
//! gateway, at growing numbers of agents. SPEC §8: WAN bytes per broadcast push independent of
//! the number of agents — the figure is the bytes at the largest size against the smallest.

use super::*;
use crate::agents::{enroll_agents, start_agents, wait_all_checked};
use outpost_proto::pb::admin::{Empty, GatewayLinkInfo};

async fn uplink(server: &Server) -> anyhow::Result<GatewayLinkInfo> {
    match server.admin(Op::ServerStatus(Empty {})).await {
        R::ServerStatus(s) => s
            .gateways
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no gateway uplink")),
        other => anyhow::bail!("status: {other:?}"),
    }
}

/// (bytes down, bytes up) of one broadcast to `n` agents behind one gateway.
async fn one_size(n: usize) -> anyhow::Result<(u64, u64)> {
    let auth = Authority::new();
    let server = Server::start(&auth, |c| {
        c.store.durability = Durability::Normal;
        c.timing.session_setup_timeout = Duration::from_secs(120);
    })
    .await;
    let gw = outpost_tests::Gateway::start(&server, |o, _| o.no_status_file = true).await;
    let token = server.token("agent", n as u32).await;
    let root = tempfile::tempdir()?;
    let dirs = enroll_agents(root.path(), server.addr(), &token, n, "f").await?;
    let endpoints = bench::client_endpoints(8);
    let (_go, hold) = tokio::sync::watch::channel(true);
    let agents = start_agents(&dirs, gw.addr(), &endpoints, &hold)?;
    wait_all_checked(&agents).await;
    // Three broadcasts; the median (a keep-alive may fall into one of them).
    let mut samples = vec![];
    for i in 0..3 {
        let before = uplink(&server).await?;
        let r = server
            .admin(Op::Push(PushRequest {
                all: true,
                kind: "message".into(),
                message: format!("bench {i}"),
                wait_ms: 60_000,
                ..Default::default()
            }))
            .await;
        let R::Push(p) = r else {
            anyhow::bail!("push failed: {r:?}")
        };
        let acked = p.outcomes.iter().filter(|o| o.state == "acked").count();
        anyhow::ensure!(
            acked == n,
            "{acked} of {n} broadcast deliveries acknowledged"
        );
        let after = uplink(&server).await?;
        samples.push((
            after.bytes_down - before.bytes_down,
            after.bytes_up - before.bytes_up,
        ));
    }
    samples.sort();
    for a in agents {
        a.shutdown().await;
    }
    Ok(samples[1])
}

/// Bytes per broadcast at each size.
pub(crate) async fn push_fanout_bytes(sizes: &[usize]) -> anyhow::Result<ScenarioResult> {
    let mut per = vec![];
    for &n in sizes {
        per.push((n, one_size(n).await?));
    }
    let (_, (small, _)) = per[0];
    let (_, (large, _)) = *per.last().expect("sizes");
    let mut r = ScenarioResult::new(
        "push_fanout_bytes",
        large as f64,
        "bytes down the uplink per broadcast",
        Some(small as f64),
        1.5,
        "ratio<=",
    );
    for (n, (down, up)) in per {
        r = r
            .with(&format!("down_bytes_{n}_agents"), down)
            .with(&format!("up_bytes_{n}_agents"), up);
    }
    Ok(r.with(
        "via",
        "one gateway; signed broadcast once up the uplink, fanned out there; acknowledgements aggregated (up)",
    ))
}
