//! `outpost-sandbox`: a whole Outpost deployment on loopback in one command (O2) — a licence
//! authority, a server, one gateway and N agents behind it, a demo key with S seats — with a
//! live status view: on a terminal a table of agents redrawn in place, otherwise a line per
//! tick. With more agents than seats, the unlicensed ones show why.
//! Ctrl-C stops everything cleanly; the data lives in a temporary directory removed at exit.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::Parser;
use outpost_proto::pb::admin::{Empty, KeyImport, admin_request::Op, admin_response::Result as R};
use outpost_tests::{Agent, Authority, Gateway, Server, test_agent_config};

#[derive(Parser)]
#[command(
    name = "outpost-sandbox",
    about = "Run a server, a gateway and N agents on loopback with a demo key"
)]
struct Cli {
    /// Number of agents behind the gateway.
    #[arg(long, default_value_t = 5)]
    agents: usize,
    /// Seats on the demo key.
    #[arg(long, default_value_t = 3)]
    seats: u32,
    /// Exit once every agent has had its licence checked (for scripts and CI).
    #[arg(long)]
    until_ready: bool,
    /// Log filter for the components (default: warn).
    #[arg(long, default_value = "warn")]
    log_level: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(cli.agents > 0, "--agents must be at least 1");
    anyhow::ensure!(cli.seats > 0, "--seats must be at least 1");
    outpost_net::logging::init(Some(&cli.log_level));
    tokio::runtime::Runtime::new()?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let auth = Authority::new();
    // The licence authority's renewal service (L11), so `admin key renew` works here too.
    let authority =
        outpost_server::authority::serve(auth.dir.path(), "127.0.0.1:0".parse()?).await?;
    let server = Server::start(&auth, |c| {
        c.timing.sync_interval = Duration::from_secs(30);
        c.metrics.listen = Some(([127, 0, 0, 1], 0).into());
        c.console.listen = Some(([127, 0, 0, 1], 0).into());
        c.licensing.authority = authority.addr.to_string();
        c.licensing.authority_tls_sha256 = authority.tls_sha256.clone();
    })
    .await;
    let key = outpost_server::authority::issue(
        &auth.key,
        &outpost_server::authority::IssueSpec {
            key_id: "DEMO-1".into(),
            licensee: "Sandbox".into(),
            product: "Outpost Endpoint".into(),
            components: vec!["antivirus".into(), "firewall".into()],
            seats: cli.seats,
            valid_from: outpost_net::unix_now() - 1,
            expires_at: outpost_net::unix_now() + 30 * 86_400,
            demo: true,
            renews: None,
        },
    )?;
    server
        .try_admin(Op::KeyImport(KeyImport {
            file_name: "DEMO-1.key".into(),
            content: key.file.clone(),
            auto_distribute: false,
            assign_everyone: true,
            activation_reserve: false,
        }))
        .await?;
    let gw = Gateway::start(&server, |_, _| {}).await;
    // A demo update revision (D1, D2): agents fetch it through the gateway's cache.
    let updates = tempfile::tempdir()?;
    std::fs::create_dir_all(updates.path().join("antivirus"))?;
    std::fs::write(
        updates.path().join("readme.txt"),
        "Outpost sandbox demo update\n",
    )?;
    let bases: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(updates.path().join("antivirus/bases.bin"), bases)?;
    server
        .try_admin(Op::UpdateImport(outpost_proto::pb::admin::UpdateImport {
            dir: updates.path().display().to_string(),
        }))
        .await?;
    let token = server.token("agent", cli.agents as u32).await;
    println!("outpost sandbox");
    println!(
        "  server   {}   data {}",
        server.addr(),
        server.data.display()
    );
    println!("  gateway  {}", gw.addr());
    if let Ok(R::Done(d)) = server.try_admin(Op::ConsoleLogin(Empty {})).await {
        let link = d
            .message
            .split_whitespace()
            .last()
            .unwrap_or_default()
            .to_owned();
        println!("  console  {link}");
        println!(
            "           (one-time sign-in link; the certificate is the sandbox CA's: {}/ca.crt)",
            server.data.display()
        );
    }
    if let Some(m) = server.h().metrics_addr() {
        println!("  metrics  http://{m}/metrics (Prometheus; metrics.listen in server.toml)");
    }
    println!(
        "  demo key DEMO-1 with {} seat(s), assigned to everyone",
        cli.seats
    );
    println!(
        "  authority {} (renewal service on udp {})",
        auth.dir.path().display(),
        authority.addr
    );
    println!(
        "  try:     cargo run -p outpost-server -- admin --data-dir {} device list",
        server.data.display()
    );
    println!(
        "  (README \"Licence workflow\": D={} A={})",
        server.data.display(),
        auth.dir.path().display()
    );
    println!();

    let mut agents = Vec::with_capacity(cli.agents);
    for i in 0..cli.agents {
        let cfg = test_agent_config(
            vec![gw.addr().to_string()],
            Some(server.addr()),
            &format!("sandbox-{i:04}"),
        );
        agents.push(Agent::enroll(cfg, &token).await);
    }
    for a in agents.iter_mut() {
        a.boot();
    }

    // On a terminal the view is redrawn in place (a table of agents); otherwise a line per tick.
    let terminal = std::io::stdout().is_terminal();
    let mut drawn = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let (ready, line) = summary(&server, &gw, &agents).await;
                if terminal {
                    let view = table(&line, &agents);
                    // Up over the previous view, clear to the end of the screen, draw.
                    if drawn > 0 {
                        print!("\x1b[{drawn}A");
                    }
                    print!("\x1b[J{view}");
                    drawn = view.lines().count();
                    std::io::stdout().flush()?;
                } else {
                    print!("{line}");
                }
                if cli.until_ready && ready {
                    break;
                }
            }
            _ = &mut ctrl_c => {
                println!("stopping…");
                break;
            }
        }
    }
    for mut a in agents {
        a.stop().await;
    }
    let mut gw = gw;
    gw.stop().await;
    let mut server = server;
    server.stop().await;
    authority.shutdown().await;
    println!("stopped cleanly");
    Ok(())
}

/// Agent rows shown on a terminal; the rest are counted.
const ROWS: usize = 20;

/// The terminal view: the summary, then a row per agent (state, licence, update).
fn table(summary: &str, agents: &[Agent]) -> String {
    let mut out = String::new();
    for l in summary.lines() {
        out.push_str(l);
        out.push_str("\x1b[K\n");
    }
    out.push_str(&format!(
        "\n  {:<16} {:<12} {:<11} {:<8} {:<9} {}\x1b[K\n",
        "agent", "session", "licence", "key", "update", "why"
    ));
    for a in agents.iter().take(ROWS) {
        let s = a.h().status().borrow().clone();
        let update = if s.update_revision == 0 {
            "-".to_owned()
        } else if s.update_fetched == s.update_revision {
            format!("rev {}", s.update_revision)
        } else {
            format!("{}%", s.update_progress * 100 / s.update_total.max(1))
        };
        let why = if s.licence.state == "licensed" {
            String::new()
        } else {
            s.licence.reason.chars().take(60).collect()
        };
        out.push_str(&format!(
            "  {:<16} {:<12} {:<11} {:<8} {:<9} {}\x1b[K\n",
            s.device_id, s.state, s.licence.state, s.licence.key, update, why
        ));
    }
    if agents.len() > ROWS {
        out.push_str(&format!("  … and {} more\x1b[K\n", agents.len() - ROWS));
    }
    out
}

async fn summary(server: &Server, gw: &Gateway, agents: &[Agent]) -> (bool, String) {
    let mut licensed = 0;
    let mut unlicensed = vec![];
    let mut connected = 0;
    let mut checked = 0;
    let mut fetched = 0;
    let mut revision = 0;
    for a in agents {
        let s = a.h().status().borrow().clone();
        revision = revision.max(s.update_revision);
        if s.update_revision > 0 && s.update_fetched == s.update_revision {
            fetched += 1;
        }
        if s.state == "connected" {
            connected += 1;
        }
        if s.last_sync > 0 {
            checked += 1;
        }
        match s.licence.state.as_str() {
            "licensed" => licensed += 1,
            _ if s.last_sync > 0 => {
                unlicensed.push((s.device_id.clone(), s.licence.reason.clone()))
            }
            _ => {}
        }
    }
    let keys = match server.try_admin(Op::KeyList(Empty {})).await {
        Ok(R::Keys(k)) => k
            .keys
            .iter()
            .map(|k| format!("{} {}/{}", k.key_id, k.seats_used, k.seats_total))
            .collect::<Vec<_>>()
            .join(", "),
        _ => String::new(),
    };
    let g = gw.h().status();
    let mut out = format!(
        "[{}] gateway uplink {}, {} agent(s) connected, {} relayed session(s) | agents: {} connected, {} licensed, {} unlicensed | seats used: {} | updates: revision {}, {}/{} agents fetched, gateway cache {} hits {} misses\n",
        outpost_proto::licence::key::format_time(outpost_net::unix_now()),
        g.uplink,
        g.agents_connected,
        g.sessions_active,
        connected,
        licensed,
        unlicensed.len(),
        if keys.is_empty() { "no keys" } else { &keys },
        revision,
        fetched,
        agents.len(),
        g.cache_hits,
        g.cache_misses,
    );
    for (id, reason) in unlicensed.iter().take(5) {
        out.push_str(&format!("    {id} unlicensed: {reason}\n"));
    }
    if unlicensed.len() > 5 {
        out.push_str(&format!("    … and {} more\n", unlicensed.len() - 5));
    }
    (checked == agents.len() && fetched == agents.len(), out)
}
