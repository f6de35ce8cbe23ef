//! `outpost-bench`: Outpost's performance figures as ratios against bare quinn measured in the
//! same run (SPEC §8). Writes a table and `target/bench/results.json`.
//!
//! ```sh
//! cargo run --release -p outpost-tests --bin outpost-bench            # full run
//! cargo run --release -p outpost-tests --bin outpost-bench -- --quick # smoke test (CI)
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use outpost_proto::pb::admin::{PushRequest, admin_request::Op, admin_response::Result as R};
use outpost_server::store::{Durability, Store};
use outpost_tests::bench::{self, ScenarioResult};
use outpost_tests::{Authority, Server, test_agent_config, test_gateway_config};
use tokio::io::AsyncBufReadExt;

#[derive(Parser)]
#[command(
    name = "outpost-bench",
    about = "Outpost benchmarks with a bare-quinn baseline in the same run"
)]
struct Cli {
    /// Small sizes, for a smoke test.
    #[arg(long)]
    quick: bool,
    /// Only these scenarios (comma-separated): connect_storm, push_fanout, idle_memory, seat_checks, uplinks.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Agents for connect_storm and push_fanout.
    #[arg(long)]
    agents: Option<usize>,
    /// Idle agents for idle_memory.
    #[arg(long)]
    idle_agents: Option<usize>,
    /// Seats for seat_checks (2 x seats devices check).
    #[arg(long)]
    seats: Option<u32>,
    /// Gateway uplinks for uplinks.
    #[arg(long)]
    uplinks: Option<usize>,
    /// Results file.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(subcommand)]
    child: Option<ChildCmd>,
}

/// Child processes the benchmark measures from the outside.
#[derive(Subcommand)]
enum ChildCmd {
    /// Run a gateway on an enrolled data directory.
    #[command(hide = true, name = "child-gateway")]
    Gateway { data: PathBuf, server: String },
    /// Run many gateways (data directories listed one per line in a file); when stdin closes,
    /// write how many held their first uplink throughout to `<list>.held`.
    #[command(hide = true, name = "child-gateways")]
    Gateways { list: PathBuf, server: String },
    /// Run a server on an initialised data directory.
    #[command(hide = true, name = "child-server")]
    Server { data: PathBuf },
    /// Run a bare quinn server with certificates from a directory.
    #[command(hide = true, name = "child-bare")]
    Bare { dir: PathBuf },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    outpost_net::logging::init(Some(
        &std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(child) = cli.child {
        return rt.block_on(run_child(child));
    }
    rt.block_on(run(cli))
}

async fn run_child(c: ChildCmd) -> anyhow::Result<()> {
    match c {
        ChildCmd::Gateway { data, server } => {
            let mut cfg = test_gateway_config(server.parse()?);
            cfg.uplink = Default::default();
            let gw = outpost_gateway::start(
                &data,
                outpost_gateway::StartOptions {
                    config: Some(cfg),
                    no_status_file: true,
                    ..Default::default()
                },
            )
            .await?;
            gw.wait_uplink().await;
            println!("READY {}", gw.addr());
            wait_stdin_closed().await;
            gw.shutdown().await;
        }
        ChildCmd::Gateways { list, server } => {
            let mut gws = vec![];
            for d in std::fs::read_to_string(&list)?.lines() {
                let mut cfg = test_gateway_config(server.parse()?);
                cfg.uplink = Default::default(); // default 15 s keep-alive
                gws.push(
                    outpost_gateway::start(
                        Path::new(d),
                        outpost_gateway::StartOptions {
                            config: Some(cfg),
                            no_status_file: true,
                            ..Default::default()
                        },
                    )
                    .await?,
                );
            }
            for g in &gws {
                g.wait_uplink().await;
            }
            println!("READY {}", gws.len());
            wait_stdin_closed().await;
            let held = gws
                .iter()
                .filter(|g| {
                    let st = g.status();
                    st.uplink == "up" && st.uplink_connects == 1
                })
                .count();
            std::fs::write(list.with_extension("held"), held.to_string())?;
            for g in gws {
                g.shutdown().await;
            }
        }
        ChildCmd::Server { data } => {
            let s = outpost_server::start(outpost_server::DataDir::new(&data)).await?;
            println!("READY {}", s.addr());
            wait_stdin_closed().await;
            s.shutdown().await;
        }
        ChildCmd::Bare { dir } => {
            let (ca, id) = bench::BarePki::load_server(&dir);
            let ep = bench::bare_server(&ca, &id, "127.0.0.1:0".parse()?);
            println!("READY {}", ep.local_addr()?);
            wait_stdin_closed().await;
        }
    }
    Ok(())
}

async fn wait_stdin_closed() {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(_)) = lines.next_line().await {}
}

/// A child process, killed when dropped.
struct Proc {
    child: Child,
    addr: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Closing stdin asks the child to shut down cleanly (profilers write their output at
        // exit); kill it if it does not within a few seconds.
        drop(self.child.stdin.take());
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_child(args: &[&str]) -> anyhow::Result<Proc> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    let addr = line
        .trim()
        .strip_prefix("READY ")
        .with_context(|| format!("child said {line:?}"))?
        .to_owned();
    Ok(Proc { child, addr })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let q = cli.quick;
    let agents = cli.agents.unwrap_or(if q { 200 } else { 2000 });
    let idle = cli.idle_agents.unwrap_or(if q { 300 } else { 10_000 });
    let seats = cli.seats.unwrap_or(if q { 500 } else { 5000 });
    let uplinks = cli.uplinks.unwrap_or(if q { 50 } else { 2000 });
    let want = |n: &str| cli.only.is_empty() || cli.only.iter().any(|o| o == n);
    let mut rows = vec![];
    println!(
        "outpost-bench ({} mode) on {}",
        if q { "quick" } else { "full" },
        bench::machine()
    );
    if want("connect_storm") || want("push_fanout") {
        let (storm, push) = connect_storm_and_push(agents, want("push_fanout")).await?;
        if want("connect_storm") {
            println!("{}", one(&storm));
            rows.push(storm);
        }
        if let Some(p) = push {
            println!("{}", one(&p));
            rows.push(p);
        }
    }
    if want("idle_memory") {
        let r = idle_memory(idle).await?;
        println!("{}", one(&r));
        rows.push(r);
    }
    if want("seat_checks") {
        let r = seat_checks(seats).await?;
        println!("{}", one(&r));
        rows.push(r);
    }
    if want("uplinks") {
        let r = uplinks_held(uplinks, if q { 5 } else { 20 }).await?;
        println!("{}", one(&r));
        rows.push(r);
    }
    let out = cli.out.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench/results.json")
    });
    let table = bench::write_results(&out, &rows, &bench::machine())?;
    println!("\n{table}\nresults written to {}", out.display());
    Ok(())
}

fn one(r: &ScenarioResult) -> String {
    format!(
        "  {:<14} {:.2} {} (bare quinn {}, ratio {}) {}",
        r.name,
        r.value,
        r.unit,
        bench::figure(r.baseline),
        bench::figure(r.ratio),
        serde_json::Value::Object(r.extra.clone())
    )
}

/// Enrolls `n` agents (32 at a time) with the server; returns their data directories.
async fn enroll_agents(
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

fn start_agents(
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
                },
            )
            .map_err(anyhow::Error::from)
        })
        .collect()
}

async fn wait_all_checked(agents: &[outpost_agent::AgentHandle]) {
    for a in agents {
        a.wait_for(|s| s.state == "connected" && s.last_sync > 0)
            .await;
    }
}

/// connect_storm: N agents connect through one gateway at once, each licence-checked and
/// synced. push_fanout: the server then pushes to all of them.
async fn connect_storm_and_push(
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
    let bare = bench::bare_connect_storm(&pki, n, 8).await;
    let storm = ScenarioResult::new(
        "connect_storm",
        rate,
        "agents/s",
        Some(bare),
        0.5,
        "ratio>=",
    )
    .with("agents", n as u64)
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

/// idle_memory: RSS of the gateway process per idle connected agent, against a bare quinn
/// server process holding the same number of connections with default settings.
async fn idle_memory(n: usize) -> anyhow::Result<ScenarioResult> {
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
    let gw = spawn_child(&[
        "child-gateway",
        gw_dir.to_str().unwrap(),
        &server.addr().to_string(),
    ])?;
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

/// seat_checks: licence checks per second on the embedded store with S seats and 2 x S
/// devices; over-allocation is checked after every round.
async fn seat_checks(seats: u32) -> anyhow::Result<ScenarioResult> {
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

/// uplinks: N gateway uplinks held by one server process with keep-alives running; the
/// server's RSS and CPU per uplink over an idle window.
async fn uplinks_held(n: usize, window_secs: u64) -> anyhow::Result<ScenarioResult> {
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
    // Closing their stdin makes the children report how many uplinks held throughout.
    for p in &mut procs {
        drop(p.child.stdin.take());
    }
    let mut held = 0usize;
    for l in &lists {
        let f = l.with_extension("held");
        let t0 = Instant::now();
        while !f.exists() && t0.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        held += std::fs::read_to_string(&f)
            .with_context(|| format!("{} not written", f.display()))?
            .trim()
            .parse::<usize>()?;
    }
    drop(procs);
    drop(srv);
    let per_uplink_kib = rss_after.saturating_sub(rss_before) as f64 / n as f64;
    let cpu_pct = cpu.as_secs_f64() / wall.as_secs_f64() * 100.0;
    Ok(
        ScenarioResult::new("uplinks", held as f64, "uplinks", None, n as f64, "value>=")
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
