//! `uplinks`: gateway uplinks held by one server with keep-alives.

use super::*;
use crate::child::spawn_child;

/// SPEC §8: gateway uplinks one server holds in the default full run.
const UPLINKS_TARGET: f64 = 10_000.0;

/// uplinks: N gateway uplinks held by one server process with keep-alives running; the
/// server's RSS and CPU per uplink over an idle window.
pub(crate) async fn uplinks_held(n: usize, window_secs: u64) -> anyhow::Result<ScenarioResult> {
    let auth = Authority::new();
    let root = tempfile::tempdir()?;
    let data = root.path().join("server");
    let mut cfg = outpost_tests::test_server_config();
    cfg.store.durability = Durability::Normal;
    outpost_server::DataDir::new(&data)
        .init(&outpost_server::InitOptions {
            authority_public_key: auth.public_text.clone(),
            base: Some(cfg),
            ..Default::default()
        })
        .await?;
    let srv = spawn_child(&["child-server", data.to_str().unwrap()])?;
    let pid = srv.child.id();
    let addr: std::net::SocketAddr = srv.addr.parse()?;
    let admin = outpost_admin::AdminClient::from_bundle(&data.join("admin"), None).await?;
    let R::TokenCreated(t) = admin
        .request(Op::TokenCreate(outpost_proto::pb::admin::TokenCreate {
            role: "gateway".into(),
            uses: n as u32,
            ttl_secs: 3600,
            ..Default::default()
        }))
        .await?
    else {
        anyhow::bail!("token")
    };
    let token = outpost_proto::token::Token::parse(&t.token)?;
    let mut set = tokio::task::JoinSet::new();
    let mut dirs = vec![];
    for i in 0..n {
        let d = root.path().join(format!("g{i:05}"));
        dirs.push(d.clone());
        let token = token.clone();
        set.spawn(async move {
            let inv =
                outpost_net::identity::inventory(Some("gw"), Some(&format!("gw-{i}")), &d, "bench");
            outpost_net::identity::enroll(
                &d,
                outpost_net::identity::EnrollVia::Server(addr),
                &token,
                outpost_proto::pb::v1::Role::Gateway,
                inv,
            )
            .await
        });
        if set.len() >= 32 {
            set.join_next().await.expect("task")??;
        }
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let rss_before = bench::rss_kib(pid);
    // The simulated gateways run in child processes of at most GATEWAYS_PER_PROCESS each: a
    // gateway holds two UDP sockets, and one process may not have enough descriptors for
    // 10,000 of them (20,000 here).
    const GATEWAYS_PER_PROCESS: usize = 3000;
    let mut procs = vec![];
    let mut lists = vec![];
    for (i, chunk) in dirs.chunks(GATEWAYS_PER_PROCESS).enumerate() {
        let list = root.path().join(format!("gateways-{i}.list"));
        let text: Vec<String> = chunk.iter().map(|d| d.display().to_string()).collect();
        std::fs::write(&list, text.join("\n"))?;
        procs.push(spawn_child(&[
            "child-gateways",
            list.to_str().unwrap(),
            &addr.to_string(),
        ])?);
        lists.push(list);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = bench::rss_kib(pid);
    let cpu0 = bench::cpu_time(pid);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(window_secs)).await;
    let cpu = bench::cpu_time(pid).saturating_sub(cpu0);
    let wall = t0.elapsed();
    let R::ServerStatus(st) = admin.request(Op::ServerStatus(Default::default())).await? else {
        anyhow::bail!("status")
    };
    // Closing their stdin makes the children report how many held throughout.
    let held = child::collect_held(&mut procs, &lists).await?;
    drop(procs);
    drop(srv);
    let per_uplink_kib = rss_after.saturating_sub(rss_before) as f64 / n as f64;
    let cpu_pct = cpu.as_secs_f64() / wall.as_secs_f64() * 100.0;
    Ok(
        // The target is SPEC §8's 10,000 whatever was attempted: a smaller run cannot pass.
        ScenarioResult::new(
            "uplinks",
            held as f64,
            "uplinks",
            None,
            UPLINKS_TARGET,
            "value>=",
        )
        .with("requested", n as u64)
        .with("server_reports_connected", st.gateways_connected)
        .with("server_rss_kib_per_uplink", per_uplink_kib)
        .with("server_cpu_percent_idle", cpu_pct)
        .with(
            "server_cpu_us_per_uplink_per_s",
            cpu.as_secs_f64() * 1e6 / wall.as_secs_f64() / n as f64,
        )
        .with("window_s", window_secs),
    )
}
