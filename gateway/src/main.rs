//! `outpost-gateway`: run a gateway, show its status.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use outpost_gateway::{GatewayConfig, StartOptions, config, node, status};
use outpost_net::identity::{self, DeviceIdentity, EnrollVia};
use outpost_net::signal::{run_main, wait_for_signal};
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
        /// Server address host:port, or the deployment's server instances separated by commas
        /// (first start; later edit gateway.toml).
        #[arg(long)]
        server: Option<String>,
        /// Enrollment token (first start only).
        #[arg(long, env = "OUTPOST_TOKEN")]
        token: Option<String>,
        /// Office-side UDP address for agents (first start; later edit gateway.toml).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Machine identity (first start; default /etc/machine-id). Cloned machines sharing
        /// one /etc/machine-id need their own (S7).
        #[arg(long)]
        machine_id: Option<String>,
        /// Wait for the server to dial in on this UDP address instead of dialling it (a
        /// gateway in a DMZ, T4; first start).
        #[arg(long)]
        uplink_listen: Option<std::net::SocketAddr>,
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
        Cmd::Run {
            data_dir,
            server,
            token,
            listen,
            machine_id,
            uplink_listen,
        } => {
            let cfg_path = node::config_path(&data_dir);
            let cfg: GatewayConfig = outpost_net::config::load_or_create(
                &cfg_path,
                config::HEADER,
                || {
                    let server = match (&server, uplink_listen) {
                        (Some(s), _) => outpost_net::config::Addresses::from_commas(s),
                        // A DMZ gateway is dialled; the address still serves enrollment.
                        (None, Some(_)) => Default::default(),
                        (None, None) => {
                            return Err(outpost_net::config::ConfigError::invalid(format!(
                                "{} has no gateway.toml: the first start needs --server <host:port> and --token <token> \
                                 (or --uplink-listen <addr> for a gateway in a DMZ the server dials)",
                                data_dir.display()
                            )));
                        }
                    };
                    let mut cfg = GatewayConfig {
                        server,
                        machine_id: machine_id.clone().unwrap_or_default(),
                        ..Default::default()
                    };
                    if let Some(l) = listen {
                        cfg.listen = l;
                    }
                    if let Some(u) = uplink_listen {
                        cfg.uplink.mode = outpost_gateway::config::UplinkMode::Listen;
                        cfg.uplink.listen = u;
                    }
                    Ok(cfg)
                },
            )?;
            if DeviceIdentity::load(&data_dir)?.is_none() {
                let token = token.ok_or_else(|| {
                    anyhow::anyhow!(
                        "{} holds no gateway identity: start once with --token <enrollment token>",
                        data_dir.display()
                    )
                })?;
                let token = Token::parse(&token).context("--token")?;
                anyhow::ensure!(
                    !cfg.server.is_empty(),
                    "the first start enrolls with the server: give --server <host:port> too"
                );
                let addr = outpost_net::endpoint::resolve(&cfg.server.0[0]).await?;
                let inv = identity::inventory(
                    None,
                    (!cfg.machine_id.is_empty()).then_some(cfg.machine_id.as_str()),
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
