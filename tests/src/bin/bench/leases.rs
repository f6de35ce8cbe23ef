//! `leases`: one primary server process with N secondary servers on permanent relations and a
//! short auto-renewal period (H6): the primary's CPU and RSS per secondary, renewals per
//! second, and seats neither lost nor counted twice. The secondaries are real servers
//! (`outpost_server::start`), many per child process.

use super::*;
use crate::child::spawn_child;
use outpost_server::store::ServerRow;

/// Secondaries per child process (each holds a store and a UDP socket).
const SECONDARIES_PER_PROCESS: usize = 50;

/// Auto-renewal period of the scenario: every secondary renews half-way, so the primary
/// serves `n / (PERIOD / 2)` renewals per second.
const PERIOD: Duration = Duration::from_secs(10);

fn relation(name: &str, kind: &str, fp: &[u8; 32], address: &str) -> ServerRow {
    ServerRow {
        name: name.into(),
        kind: kind.into(),
        cert_sha256: outpost_server::store::fp_hex(fp),
        address: address.into(),
        dials: i64::from(!address.is_empty()),
        connection: "permanent".into(),
        interval_secs: 0,
        sends: i64::from(kind == "secondary"),
        receives: i64::from(kind == "primary"),
        added_at: outpost_net::unix_now(),
        last_contact: 0,
    }
}

async fn init(data: &Path, auth: &Authority, listen: &str) -> anyhow::Result<[u8; 32]> {
    let mut cfg = outpost_tests::test_server_config();
    cfg.listen = listen.parse()?;
    cfg.store.durability = Durability::Normal;
    cfg.hierarchy.lease_period = PERIOD;
    outpost_server::DataDir::new(data)
        .init(&outpost_server::InitOptions {
            authority_public_key: auth.public_text.clone(),
            base: Some(cfg),
            ..Default::default()
        })
        .await?;
    Ok(
        outpost_server::certs::Link::load_or_create(
            &outpost_server::DataDir::new(data),
            "outpost",
        )?
        .sha256,
    )
}

/// leases: N secondaries each given one seat by one primary.
pub(crate) async fn leases_held(n: usize, window_secs: u64) -> anyhow::Result<ScenarioResult> {
    let auth = Authority::new();
    let root = tempfile::tempdir()?;
    let primary = root.path().join("primary");
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    let primary_fp = init(&primary, &auth, &port.to_string()).await?;
    // Relations written straight into each store before start (what `server add-secondary` /
    // `set-primary` write), so setting up 500 does not take 1,000 admin round trips.
    let primary_store = Store::open(&primary.join("outpost.db"), Durability::Normal).await?;
    let mut dirs = vec![];
    for i in 0..n {
        let d = root.path().join(format!("s{i:04}"));
        let fp = init(&d, &auth, "127.0.0.1:0").await?;
        primary_store
            .add_server(&relation(&format!("s{i:04}"), "secondary", &fp, ""))
            .await?;
        let s = Store::open(&d.join("outpost.db"), Durability::Normal).await?;
        s.add_server(&relation("hq", "primary", &primary_fp, &port.to_string()))
            .await?;
        s.close().await;
        dirs.push(d);
    }
    primary_store.close().await;
    let srv = spawn_child(&["child-server", primary.to_str().unwrap()])?;
    let pid = srv.child.id();
    let admin = outpost_admin::AdminClient::from_bundle(&primary.join("admin"), None).await?;
    let key = outpost_tests::licensing::issue(
        &auth,
        "K-LEASES",
        n as u32 + 10,
        30 * 86_400,
        outpost_tests::licensing::AV_FW,
        false,
        None,
    );
    admin
        .request(Op::KeyImport(outpost_proto::pb::admin::KeyImport {
            file_name: "K-LEASES.key".into(),
            content: key.file.clone(),
            ..Default::default()
        }))
        .await?;
    let end = outpost_net::unix_now() + 20 * 86_400;
    for i in 0..n {
        admin
            .request(Op::LeaseGive(outpost_proto::pb::admin::LeaseGive {
                server: format!("s{i:04}"),
                key_id: "K-LEASES".into(),
                seats: 1,
                end_at: end,
                period_secs: 0,
            }))
            .await?;
    }
    let rss_before = bench::rss_kib(pid);
    let mut procs = vec![];
    let mut lists = vec![];
    for (i, chunk) in dirs.chunks(SECONDARIES_PER_PROCESS).enumerate() {
        let list = root.path().join(format!("secondaries-{i}.list"));
        let text: Vec<String> = chunk.iter().map(|d| d.display().to_string()).collect();
        std::fs::write(&list, text.join("\n"))?;
        procs.push(spawn_child(&["child-secondaries", list.to_str().unwrap()])?);
        lists.push(list);
    }
    let seqs = async || -> anyhow::Result<u64> {
        let R::Leases(l) = admin.request(Op::LeaseList(Default::default())).await? else {
            anyhow::bail!("lease list")
        };
        Ok(l.leases.iter().map(|l| l.seq).sum())
    };
    let rss_after = bench::rss_kib(pid);
    let seq0 = seqs().await?;
    let cpu0 = bench::cpu_time(pid);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(window_secs)).await;
    let cpu = bench::cpu_time(pid).saturating_sub(cpu0);
    let wall = t0.elapsed();
    let renewals = seqs().await?.saturating_sub(seq0);
    let R::Keys(k) = admin.request(Op::KeyList(Default::default())).await? else {
        anyhow::bail!("key list")
    };
    let k = k
        .keys
        .into_iter()
        .find(|k| k.key_id == "K-LEASES")
        .context("key")?;
    // Closing their stdin makes the children report how many held throughout.
    let held = child::collect_held(&mut procs, &lists).await?;
    drop(procs);
    drop(srv);
    let exact = k.seats_leased_out as usize == n && k.seats_used == 0;
    Ok(ScenarioResult::new(
        "leases",
        held as f64,
        "secondaries",
        None,
        n as f64,
        "value>=",
    )
    .with("secondaries", n as u64)
    .with("period_s", PERIOD.as_secs())
    .with("renewals_per_s", renewals as f64 / wall.as_secs_f64())
    .with("seats_leased_out", k.seats_leased_out)
    .with("seats_exact", exact)
    .with(
        "primary_rss_kib_per_secondary",
        rss_after.saturating_sub(rss_before) as f64 / n as f64,
    )
    .with(
        "primary_cpu_percent",
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0,
    )
    .with(
        "primary_cpu_us_per_secondary_per_s",
        cpu.as_secs_f64() * 1e6 / wall.as_secs_f64() / n as f64,
    )
    .with("window_s", window_secs))
}

/// In a child process: runs the secondaries listed, waits until each holds its seat, then
/// samples until stdin closes; writes how many held it at every sample.
pub(crate) async fn run_secondaries(list: &Path) -> anyhow::Result<()> {
    let mut servers = vec![];
    for d in std::fs::read_to_string(list)?.lines() {
        servers.push(outpost_server::start(outpost_server::DataDir::new(d)).await?);
    }
    let seats = async |s: &outpost_server::ServerHandle| -> u32 {
        s.store()
            .keys()
            .await
            .ok()
            .and_then(|k| k.into_iter().find(|k| k.id == "K-LEASES"))
            .map(|k| k.seats as u32)
            .unwrap_or(0)
    };
    loop {
        let mut all = true;
        for s in &servers {
            all &= seats(s).await == 1;
        }
        if all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("READY {}", servers.len());
    let mut lost = vec![false; servers.len()];
    let stdin = child::wait_stdin_closed();
    tokio::pin!(stdin);
    loop {
        tokio::select! {
            _ = &mut stdin => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        for (i, s) in servers.iter().enumerate() {
            if seats(s).await != 1 {
                lost[i] = true;
            }
        }
    }
    let held = lost.iter().filter(|l| !**l).count();
    std::fs::write(list.with_extension("held"), held.to_string())?;
    for s in servers {
        s.shutdown().await;
    }
    Ok(())
}
