//! `outpost-agent`: run the agent, show its status, queue an event.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use outpost_agent::{AgentConfig, StartOptions, config, node, status};
use outpost_net::identity::DeviceIdentity;
use outpost_net::signal::{run_main, wait_for_signal};
use outpost_proto::token::Token;

#[derive(Parser)]
#[command(name = "outpost-agent", version, about = "Outpost endpoint agent")]
struct Cli {
    /// Log filter (e.g. info, debug); default from RUST_LOG, else info.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent (enrolls on first start with --token).
    Run {
        /// Data directory.
        #[arg(
            long,
            env = "OUTPOST_AGENT_DATA",
            default_value = "/var/lib/outpost-agent"
        )]
        data_dir: PathBuf,
        /// Server host:port, or the deployment's server instances separated by commas (first
        /// start; later edit agent.toml).
        #[arg(long)]
        server: Option<String>,
        /// Gateway host:port, in order of preference (repeatable; first start).
        #[arg(long = "gateway")]
        gateways: Vec<String>,
        /// Enrollment token (first start only).
        #[arg(long, env = "OUTPOST_TOKEN")]
        token: Option<String>,
        /// Machine identity override (first start; default /etc/machine-id).
        #[arg(long)]
        machine_id: Option<String>,
        /// Host name override (first start).
        #[arg(long)]
        hostname: Option<String>,
    },
    /// Show path, licence, last sync and queue depth.
    Status {
        /// Data directory.
        #[arg(
            long,
            env = "OUTPOST_AGENT_DATA",
            default_value = "/var/lib/outpost-agent"
        )]
        data_dir: PathBuf,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Update files (D2): what is held and fetched, or fetch now.
    Update {
        #[command(subcommand)]
        cmd: UpdateCmd,
    },
    /// Queue an event durably; the running agent sends it at its next sync.
    Event {
        /// Data directory.
        #[arg(
            long,
            env = "OUTPOST_AGENT_DATA",
            default_value = "/var/lib/outpost-agent"
        )]
        data_dir: PathBuf,
        /// Event kind.
        #[arg(long)]
        kind: String,
        /// Payload text.
        #[arg(long, default_value = "")]
        payload: String,
    },
}

#[derive(Subcommand)]
enum UpdateCmd {
    /// The revision held, fetched and handled, download progress and errors.
    Status {
        /// Data directory.
        #[arg(
            long,
            env = "OUTPOST_AGENT_DATA",
            default_value = "/var/lib/outpost-agent"
        )]
        data_dir: PathBuf,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Download the held revision's files now (a progress bar on a terminal, lines otherwise).
    Fetch {
        /// Data directory.
        #[arg(
            long,
            env = "OUTPOST_AGENT_DATA",
            default_value = "/var/lib/outpost-agent"
        )]
        data_dir: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    run_main(cli.log_level.as_deref(), run(cli.cmd));
}

async fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Status { data_dir, json } => {
            let (s, running) = status::read(&data_dir)?;
            if json {
                let mut v = serde_json::to_value(&s)?;
                v["running"] = running.into();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", status::human(&s, running));
            }
            Ok(())
        }
        Cmd::Update {
            cmd: UpdateCmd::Status { data_dir, json },
        } => {
            let (s, running) = status::read(&data_dir)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "running": running,
                        "revision": s.update_revision,
                        "files": s.update_files,
                        "fetched": s.update_fetched,
                        "handled": s.update_handled,
                        "progress_bytes": s.update_progress,
                        "total_bytes": s.update_total,
                        "source": s.update_source,
                        "download_error": s.update_fetch_error,
                        "manifest_error": s.update_error,
                        "handler": s.update_handler_result,
                    }))?
                );
            } else {
                print!("{}", status::update_human(&s, running));
            }
            Ok(())
        }
        Cmd::Update {
            cmd: UpdateCmd::Fetch { data_dir },
        } => fetch(&data_dir).await,
        Cmd::Event {
            data_dir,
            kind,
            payload,
        } => {
            let cfg = AgentConfig::load(&node::config_path(&data_dir)).unwrap_or_default();
            let q = outpost_agent::queue::Queue::open(&data_dir, cfg.queue.max_events)?;
            let id = q.push(&kind, payload.as_bytes(), outpost_net::unix_now_ms())?;
            println!("{id}");
            Ok(())
        }
        Cmd::Run {
            data_dir,
            server,
            gateways,
            token,
            machine_id,
            hostname,
        } => {
            let cfg_path = node::config_path(&data_dir);
            let cfg: AgentConfig =
                outpost_net::config::load_or_create(&cfg_path, config::HEADER, || {
                    let cfg = AgentConfig {
                        server: outpost_net::config::Addresses::from_commas(
                            &server.unwrap_or_default(),
                        ),
                        gateways,
                        machine_id: machine_id.unwrap_or_default(),
                        hostname: hostname.unwrap_or_default(),
                        ..Default::default()
                    };
                    cfg.validate().map_err(|e| {
                        outpost_net::config::ConfigError::invalid(format!(
                            "{e}: pass --gateway <host:port> and/or --server <host:port>"
                        ))
                    })?;
                    Ok(cfg)
                })?;
            // No identity yet, or one whose certificate expired (S9) and a token to replace
            // it: enroll (again; the same machine id keeps its device record, S7).
            let expired = DeviceIdentity::load(&data_dir)?
                .map(|id| id.expires_at() <= outpost_net::unix_now());
            if expired.is_none() || (expired == Some(true) && token.is_some()) {
                let token = token.ok_or_else(|| {
                    anyhow::anyhow!(
                        "{} holds no agent identity: start once with --token <enrollment token>",
                        data_dir.display()
                    )
                })?;
                let token = Token::parse(&token).context("--token")?;
                // Unreachable or busy paths are retried with backoff (a fleet enrolling at once
                // must not fail); a refusal of the token itself is final.
                let mut backoff =
                    outpost_proto::backoff::Backoff::new(outpost_proto::backoff::BackoffConfig {
                        initial: cfg.connect.reconnect_initial,
                        max: cfg.connect.reconnect_max,
                        healthy_after: cfg.connect.healthy_after,
                    });
                let id = loop {
                    match outpost_agent::enroll(&data_dir, &cfg, &token).await {
                        Ok(id) => break id,
                        Err(e) if !e.is_retryable() => return Err(e.into()),
                        Err(e) => {
                            let d = backoff.next_delay(outpost_net::jitter_unit());
                            eprintln!("enrollment not possible yet ({e}); retrying in {d:?}");
                            tokio::select! {
                                _ = tokio::time::sleep(d) => {}
                                _ = wait_for_signal() => return Ok(()),
                            }
                        }
                    }
                };
                eprintln!("enrolled as agent {} (group {})", id.device_id, id.group);
            }
            let agent = outpost_agent::start(&data_dir, StartOptions::default())?;
            wait_for_signal().await;
            tracing::info!("shutting down");
            agent.shutdown().await;
            Ok(())
        }
    }
}

/// `update fetch`: a progress bar with bytes, rate and ETA on a terminal; a line per tenth
/// otherwise.
async fn fetch(data_dir: &std::path::Path) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    use std::sync::atomic::{AtomicU64, Ordering};
    let tty = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new(0);
    if tty {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .expect("static template"),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let tenth = AtomicU64::new(0);
    let progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
        if !tty && total > 0 {
            let t = done * 10 / total;
            if tenth.swap(t, Ordering::Relaxed) != t {
                eprintln!("{done} of {total} bytes");
            }
        }
    };
    let r = outpost_agent::fetch_now(data_dir, &progress).await;
    bar.finish_and_clear();
    let f = r.map_err(|e| anyhow::anyhow!(e))?;
    println!(
        "revision {}: {} bytes fetched from {} (the files are in {})",
        f.revision,
        f.bytes,
        f.source,
        data_dir.join("updates/files").display()
    );
    Ok(())
}
