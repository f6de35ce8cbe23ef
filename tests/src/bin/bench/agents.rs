//! Scenarios with agents through a gateway: `connect_storm`, `push_fanout`, `idle_memory`.

use super::*;
use crate::child::spawn_child;
pub(crate) use outpost_tests::fleet::{enroll_agents, start_agents, wait_all_checked};

/// connect_storm: N agents connect through one gateway at once, each licence-checked and
/// synced. push_fanout: the server then pushes to all of them.
pub(crate) async fn connect_storm_and_push(
    n: usize,
    push: bool,
) -> anyhow::Result<(ScenarioResult, Option<ScenarioResult>)> {
    let pki = bench::BarePki::generate();
    let auth = Authority::new();
    let durability = match std::env::var("OUTPOST_BENCH_DURABILITY").as_deref() {
        Ok("normal") => Durability::Normal,
        _ => Durability::Full,
    };
    let server = Server::start(&auth, |c| {
        c.store.durability = durability;
        c.timing.session_setup_timeout = Duration::from_secs(120);
    })
    .await;
    server
        .import_key(
            &auth.key("K-BENCH", n as u32, Duration::from_secs(86_400)),
            true,
        )
        .await?;
    let gw = outpost_tests::Gateway::start(&server, |o, _| o.no_status_file = true).await;
    let token = server.token("agent", n as u32).await;
    let root = tempfile::tempdir()?;
    let dirs = enroll_agents(root.path(), server.addr(), &token, n, "s").await?;

    let endpoints = bench::client_endpoints(8);
    if std::env::var_os("OUTPOST_BENCH_PAUSE").is_some() {
        // Lets a profiler attach to the storm alone.
        eprintln!("storm starts in 3s (pid {})", std::process::id());
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    // Agents start (load identities, build TLS configs) first, then connect all at once.
    let (go, hold) = tokio::sync::watch::channel(false);
    let t = Instant::now();
    let agents = start_agents(&dirs, gw.addr(), &endpoints, &hold)?;
    let startup = t.elapsed();
    let cpu0 = bench::cpu_time(std::process::id());
    let started = Instant::now();
    go.send_replace(true);
    wait_all_checked(&agents).await;
    let storm = started.elapsed();
    let rate = n as f64 / storm.as_secs_f64();
    let cpu = bench::cpu_time(std::process::id()).saturating_sub(cpu0);
    let licensed = agents
        .iter()
        .filter(|a| a.status().borrow().licence.state == "licensed")
        .count();
    anyhow::ensure!(licensed == n, "only {licensed} of {n} agents licensed");
    // Bare quinn at the storm's concurrency and at its best (SPEC §8): the ratio is taken
    // against the faster, so a baseline starved by releasing everything at once flatters
    // nothing.
    let sweep = bench::bare_connect_storm_sweep(&pki, n, 8).await;
    let same = sweep.last().expect("sweep includes n").1;
    let (best_c, best) = sweep
        .iter()
        .copied()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("sweep");
    let storm = ScenarioResult::new(
        "connect_storm",
        rate,
        "agents/s",
        Some(best),
        0.5,
        "ratio>=",
    )
    .with("agents", n as u64)
    .with("bare_best_concurrency", best_c as u64)
    .with("bare_at_storm_concurrency", same)
    .with("ratio_at_storm_concurrency", rate / same)
    .with(
        "bare_sweep",
        serde_json::Value::Object(
            sweep
                .iter()
                .map(|(c, r)| (c.to_string(), serde_json::json!(r)))
                .collect(),
        ),
    )
    .with("agent_startup_ms", startup.as_millis() as u64)
    .with("cpu_s", cpu.as_secs_f64())
    .with("wall_s", storm.as_secs_f64())
    .with(
        "via",
        "one gateway, inner TLS, licence check + sync, grant fsynced",
    );

    let push_row = if push {
        let r = server
            .admin(Op::Push(PushRequest {
                all: true,
                kind: "message".into(),
                message: "bench".into(),
                wait_ms: 60_000,
                ..Default::default()
            }))
            .await;
        let R::Push(p) = r else {
            anyhow::bail!("push failed: {r:?}")
        };
        let acked: Vec<f64> = p
            .outcomes
            .iter()
            .filter(|o| o.state == "acked")
            .map(|o| o.latency_us as f64 / 1000.0)
            .collect();
        anyhow::ensure!(
            acked.len() == n,
            "{} of {n} pushes acknowledged",
            acked.len()
        );
        let mut lat = acked;
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let bare = bench::bare_push_fanout(&pki, n, 8).await;
        Some(
            ScenarioResult::new(
                "push_fanout",
                bench::percentile(&lat, 0.99),
                "ms p99",
                Some(bench::percentile(&bare, 0.99)),
                2.0,
                "ratio<=",
            )
            .with("p50_ms", bench::percentile(&lat, 0.5))
            .with("bare_p50_ms", bench::percentile(&bare, 0.5))
            .with("agents", n as u64),
        )
    } else {
        None
    };
    for a in agents {
        a.shutdown().await;
    }
    Ok((storm, push_row))
}

/// connect_storm over two server instances on one PostgreSQL database (P2): `n` agents through
/// two gateways, one attached to each instance, at once; each licence-checked (the seats are
/// shared through the database) and synced. Both instances and gateways run in this process,
/// so the figure shows what sharing the database costs, not what a second machine adds. The
/// baseline is the same bare-quinn sweep as `connect_storm`.
pub(crate) async fn connect_storm_two_instances(
    base: &str,
    n: usize,
) -> anyhow::Result<ScenarioResult> {
    let pki = bench::BarePki::generate();
    let auth = Authority::new();
    let url = outpost_tests::pg::fresh_database(base);
    let a = Server::start(&auth, |c| {
        c.store.url = url.clone();
        c.timing.session_setup_timeout = Duration::from_secs(120);
    })
    .await;
    let b = a.another_instance().await;
    a.import_key(
        &auth.key("K-BENCH", n as u32, Duration::from_secs(86_400)),
        true,
    )
    .await?;
    let gw_a = outpost_tests::Gateway::start(&a, |o, _| o.no_status_file = true).await;
    let gw_b = outpost_tests::Gateway::start(&b, |o, _| o.no_status_file = true).await;
    let token = a.token("agent", n as u32).await;
    let root = tempfile::tempdir()?;
    let dirs = enroll_agents(root.path(), a.addr(), &token, n, "i").await?;
    let endpoints = bench::client_endpoints(8);
    let (go, hold) = tokio::sync::watch::channel(false);
    let (half_a, half_b) = dirs.split_at(n / 2);
    let mut agents = start_agents(half_a, gw_a.addr(), &endpoints, &hold)?;
    agents.extend(start_agents(half_b, gw_b.addr(), &endpoints, &hold)?);
    let started = Instant::now();
    go.send_replace(true);
    wait_all_checked(&agents).await;
    let storm = started.elapsed();
    let rate = n as f64 / storm.as_secs_f64();
    let licensed = agents
        .iter()
        .filter(|x| x.status().borrow().licence.state == "licensed")
        .count();
    anyhow::ensure!(licensed == n, "only {licensed} of {n} agents licensed");
    let (used, total) = {
        let k = a.key_info("K-BENCH").await;
        (k.seats_used, k.seats_total)
    };
    anyhow::ensure!(
        used == n as u32 && total == n as u32,
        "seats {used} of {total}"
    );
    for x in agents {
        x.shutdown().await;
    }
    let sweep = bench::bare_connect_storm_sweep(&pki, n, 8).await;
    let (best_c, best) = sweep
        .iter()
        .copied()
        .max_by(|x, y| x.1.total_cmp(&y.1))
        .expect("sweep");
    Ok(ScenarioResult::new(
        "connect_storm_2i",
        rate,
        "agents/s",
        Some(best),
        0.5,
        "ratio>=",
    )
    .with("agents", n as u64)
    .with("instances", 2)
    .with("bare_best_concurrency", best_c as u64)
    .with("wall_s", storm.as_secs_f64())
    .with(
        "via",
        "two gateways, one per instance, one PostgreSQL database; instances in one process",
    ))
}

/// idle_memory: RSS of the gateway process per idle connected agent, against a bare quinn
/// server process holding the same number of connections with default settings.
pub(crate) async fn idle_memory(n: usize) -> anyhow::Result<ScenarioResult> {
    let auth = Authority::new();
    let server = Server::start(&auth, |c| {
        c.store.durability = Durability::Normal;
        c.timing.session_setup_timeout = Duration::from_secs(120);
    })
    .await;
    server
        .import_key(
            &auth.key("K-IDLE", n as u32, Duration::from_secs(86_400)),
            true,
        )
        .await?;
    let root = tempfile::tempdir()?;
    // The gateway runs in its own process so its RSS is its own.
    let gw_dir = root.path().join("gateway");
    let tok = outpost_proto::token::Token::parse(&server.token("gateway", 1).await)?;
    let inv =
        outpost_net::identity::inventory(Some("bench-gw"), Some("bench-gw"), &gw_dir, "bench");
    outpost_net::identity::enroll(
        &gw_dir,
        outpost_net::identity::EnrollVia::Server(server.addr()),
        &tok,
        outpost_proto::pb::v1::Role::Gateway,
        inv,
    )
    .await?;
    // OUTPOST_BENCH_WRAP_GATEWAY="heaptrack -o FILE" runs the gateway under a heap profiler.
    let gw = crate::child::spawn_wrapped(
        &[
            "child-gateway",
            gw_dir.to_str().unwrap(),
            &server.addr().to_string(),
        ],
        std::env::var("OUTPOST_BENCH_WRAP_GATEWAY").ok().as_deref(),
    )?;
    let gw_pid = gw.child.id();
    let gw_addr: std::net::SocketAddr = gw.addr.parse()?;
    let token = server.token("agent", n as u32).await;
    let dirs = enroll_agents(root.path(), server.addr(), &token, n, "i").await?;
    let before = bench::rss_kib(gw_pid);
    let endpoints = bench::client_endpoints(16);
    let (_go, hold) = tokio::sync::watch::channel(true);
    let agents = start_agents(&dirs, gw_addr, &endpoints, &hold)?;
    wait_all_checked(&agents).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // settle: idle means idle
    let after = bench::rss_kib(gw_pid);
    let per_agent = after.saturating_sub(before) as f64 / n as f64;
    for a in agents {
        a.shutdown().await;
    }
    drop(gw);

    // Bare quinn server process holding n idle connections.
    let pki = bench::BarePki::generate();
    pki.save(root.path());
    let bare = spawn_child(&["child-bare", root.path().to_str().unwrap()])?;
    let bare_pid = bare.child.id();
    let addr: std::net::SocketAddr = bare.addr.parse()?;
    let bare_before = bench::rss_kib(bare_pid);
    let cfg = pki.client_config(Some(Duration::from_secs(10)));
    let eps = bench::client_endpoints(16);
    let mut conns = vec![];
    for i in 0..n {
        conns.push(
            eps[i % eps.len()]
                .connect_with(cfg.clone(), addr, outpost_proto::pki::SERVER_NAME)?
                .await?,
        );
    }
    // One stream round trip each, so both sides are past the handshake, like the agents.
    for c in &conns {
        let (mut s, mut r) = c.open_bi().await?;
        s.write_all(b"hello").await?;
        s.finish()?;
        r.read_to_end(1024).await?;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let bare_after = bench::rss_kib(bare_pid);
    let bare_per = bare_after.saturating_sub(bare_before) as f64 / n as f64;
    drop(conns);
    drop(bare);
    Ok(ScenarioResult::new(
        "idle_memory",
        per_agent,
        "KiB/agent",
        Some(bare_per),
        20.0,
        "value<=",
    )
    .with("agents", n as u64)
    .with("gateway_rss_before_kib", before)
    .with("gateway_rss_after_kib", after))
}
