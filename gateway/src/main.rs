//! `outpost-gateway`: run a gateway, show its status.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use outpost_gateway::{GatewayConfig, StartOptions, node, status};
use outpost_net::identity::{self, DeviceIdentity, EnrollVia};
use outpost_proto::pb::v1::Role;
use outpost_proto::token::Token;

#[derive(Parser)]
#[command(
    name = "outpost-gateway",
    version,
    about = "Outpost gateway: office uplink and end-to-end agent relay"
)]
struct Cli {
    /// Log filter (e.g. info, debug); default from RUST_LOG, else info.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway (enrolls on first start with --token and --server).
    Run {
        /// Data directory.
        #[arg(
            long,
            env = "OUTPOST_GATEWAY_DATA",
            default_value = "/var/lib/outpost-gateway"
        )]
        data_dir: PathBuf,
        /// Server address host:port (first start; later edit gateway.toml).
        #[arg(long)]
        server: Option<String>,
        /// Enrollment token (first start only).
        #[arg(long, env = "OUTPOST_TOKEN")]
        token: Option<String>,
        /// Office-side UDP address for agents (first start; later edit gateway.toml).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Show uplink state, agents, sessions and counters of the gateway using this data directory.
    Status {
        /// Data directory.
        #[arg(
            long,
            env = "OUTPOST_GATEWAY_DATA",
            default_value = "/var/lib/outpost-gateway"
        )]
        data_dir: PathBuf,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    outpost_net::logging::init(cli.log_level.as_deref());
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cli.cmd)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
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
        Cmd::Run {
            data_dir,
            server,
            token,
            listen,
        } => {
            let cfg_path = node::config_path(&data_dir);
            if !cfg_path.exists() {
                let server = server.clone().ok_or_else(|| {
                    anyhow::anyhow!("{} has no gateway.toml: the first start needs --server <host:port> and --token <token>", data_dir.display())
                })?;
                let mut cfg = GatewayConfig {
                    server,
                    ..Default::default()
                };
                if let Some(l) = listen {
                    cfg.listen = l;
                }
                cfg.validate()?;
                outpost_net::fsutil::write_atomic(
                    &cfg_path,
                    cfg.to_commented_toml().as_bytes(),
                    false,
                )?;
            }
            let cfg = GatewayConfig::load(&cfg_path)?;
            if DeviceIdentity::load(&data_dir)?.is_none() {
                let token = token.ok_or_else(|| {
                    anyhow::anyhow!(
                        "{} holds no gateway identity: start once with --token <enrollment token>",
                        data_dir.display()
                    )
                })?;
                let token = Token::parse(&token)?;
                let addr = outpost_net::endpoint::resolve(&cfg.server).await?;
                let inv = identity::inventory(
                    None,
                    None,
                    &data_dir,
                    &format!("outpost-gateway {}", outpost_proto::SOFTWARE_VERSION),
                );
                let id = identity::enroll(
                    &data_dir,
                    EnrollVia::Server(addr),
                    &token,
                    Role::Gateway,
                    inv,
                )
                .await?;
                eprintln!("enrolled as gateway {} (group {})", id.device_id, id.group);
            }
            let gw = outpost_gateway::start(&data_dir, StartOptions::default()).await?;
            wait_for_signal().await;
            tracing::info!("shutting down");
            gw.shutdown().await;
            Ok(())
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
