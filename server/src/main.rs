//! `outpost-server`: run the server, administer it, act as licence authority.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use outpost_proto::pb::admin::{
    DeviceList, DeviceMove, DeviceRef, Empty, GroupCreate, KeyAssign, KeyImport, KeyRef,
    KeyUnassign, PushRequest, TokenCreate, admin_request::Op, admin_response::Result as R,
};
use outpost_server::admin::client::AdminClient;
use outpost_server::admin::render;
use outpost_server::{DataDir, InitOptions, authority};

#[derive(Parser)]
#[command(
    name = "outpost-server",
    version,
    about = "Outpost server: CA, licence manager, device registry, sync and push"
)]
struct Cli {
    /// Log filter (e.g. info, debug, outpost_server=debug); default from RUST_LOG, else info.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (initialises the data directory on first start).
    Run(InitArgs),
    /// Initialise a data directory without running.
    Init(InitArgs),
    /// Licence authority: create the authority key, issue signed key files.
    Authority {
        #[command(subcommand)]
        cmd: AuthorityCmd,
    },
    /// Administer a running server over QUIC with the admin certificate.
    Admin(AdminArgs),
}

#[derive(Args)]
struct InitArgs {
    /// Data directory.
    #[arg(
        long,
        env = "OUTPOST_SERVER_DATA",
        default_value = "/var/lib/outpost-server"
    )]
    data_dir: PathBuf,
    /// Licence authority public key file (or its text); needed on first start only.
    #[arg(long)]
    authority_key: Option<String>,
    /// UDP address to listen on (first start; later edit server.toml).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Extra DNS name or IP for the server certificate (repeatable; first start only).
    #[arg(long = "server-name")]
    server_names: Vec<String>,
}

#[derive(Subcommand)]
enum AuthorityCmd {
    /// Create an authority key pair in a directory (authority.key, authority.pub).
    Init {
        /// Directory for the key pair.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a signed licence key file.
    Issue(Box<IssueArgs>),
    /// Hold a renewal key file for the server that owns the key it renews (L11).
    Offer {
        /// Authority directory.
        #[arg(long)]
        dir: PathBuf,
        /// The renewal key file (issued with --renews).
        file: PathBuf,
    },
    /// Serve renewal keys to servers over QUIC (prints the TLS pin servers configure).
    Serve {
        /// Authority directory.
        #[arg(long)]
        dir: PathBuf,
        /// UDP address to listen on.
        #[arg(long, default_value = "0.0.0.0:4710")]
        listen: std::net::SocketAddr,
    },
}

#[derive(Args)]
struct IssueArgs {
    /// Authority directory (holding authority.key).
    #[arg(long)]
    dir: PathBuf,
    /// Key id (letters, digits, '.', '_', '-').
    #[arg(long)]
    id: String,
    /// Licensee.
    #[arg(long)]
    licensee: String,
    /// Product name.
    #[arg(long, default_value = "Outpost Endpoint")]
    product: String,
    /// Licensed components, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "antivirus,firewall")]
    components: Vec<String>,
    /// Number of seats (protected endpoints).
    #[arg(long)]
    seats: u32,
    /// Start of validity: now, RFC 3339, or unix seconds.
    #[arg(long, default_value = "now")]
    valid_from: String,
    /// End of validity: RFC 3339 or unix seconds (or use --valid-for).
    #[arg(long, conflicts_with = "valid_for")]
    expires: Option<String>,
    /// Length of validity from --valid-from, e.g. 365d, 30d, 90s.
    #[arg(long)]
    valid_for: Option<humantime::Duration>,
    /// Issue a demo key (full function, short validity).
    #[arg(long)]
    demo: bool,
    /// Id of the key this one renews.
    #[arg(long)]
    renews: Option<String>,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct AdminArgs {
    /// Server data directory (its admin/ bundle is used).
    #[arg(
        long,
        env = "OUTPOST_SERVER_DATA",
        default_value = "/var/lib/outpost-server"
    )]
    data_dir: PathBuf,
    /// Admin bundle directory (overrides <data-dir>/admin).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Server address (overrides the bundle's).
    #[arg(long)]
    server: Option<String>,
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: AdminCmd,
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Enrollment tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Licence keys.
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
    /// Devices (agents, gateways, admins).
    Device {
        #[command(subcommand)]
        cmd: DeviceCmd,
    },
    /// Administration groups.
    Group {
        #[command(subcommand)]
        cmd: GroupCmd,
    },
    /// Push a message to one agent or all.
    Push(PushArgs),
    /// The notification log (newest first).
    Notifications {
        /// Only this kind (e.g. key-renewed, usage-100).
        #[arg(long)]
        kind: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Seats.
    Seats {
        #[command(subcommand)]
        cmd: SeatsCmd,
    },
    /// Server status.
    Status,
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create an enrollment token (printed once).
    Create {
        /// agent or gateway.
        #[arg(long, default_value = "agent")]
        role: String,
        /// Target group.
        #[arg(long, default_value = "everyone")]
        group: String,
        /// Lifetime.
        #[arg(long, default_value = "1d")]
        ttl: humantime::Duration,
        /// How many devices may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Free text.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// List tokens.
    List,
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Import a key file or a .zip of key files (all or nothing).
    Import {
        /// File to import.
        file: PathBuf,
        /// Distribute automatically (L8).
        #[arg(long)]
        auto_distribute: bool,
        /// Assign to "everyone" right away.
        #[arg(long)]
        assign_everyone: bool,
        /// The key was obtained as a reserve key through an activation code: it is never
        /// distributed automatically (L8).
        #[arg(long, conflicts_with = "auto_distribute")]
        activation_reserve: bool,
    },
    /// List keys with seats total/used/leased/free, validity, components, objects.
    List,
    /// Assign a key to everyone, group:<path> or device:<id>.
    Assign {
        /// Key id.
        key: String,
        /// Object.
        object: String,
    },
    /// Remove an assignment.
    Unassign {
        /// Key id.
        key: String,
        /// Object.
        object: String,
    },
    /// Remove a key from the repository (its file stays in the data directory).
    Remove {
        /// Key id.
        key: String,
    },
    /// Check the licence authority for renewals of the keys this server owns, now (L11).
    Renew,
    /// Mark a key for automatic distribution (L8), or unmark it.
    AutoDistribute {
        /// Key id.
        key: String,
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Write the signed key file, byte-identical.
    Export {
        /// Key id.
        key: String,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum SeatsCmd {
    /// Free the seats of agents inactive longer than licensing.reclaim_after now (L9).
    Reclaim,
}

#[derive(Subcommand)]
enum DeviceCmd {
    /// List devices with licence state.
    List {
        /// Only this role: agent, gateway, admin.
        #[arg(long)]
        role: Option<String>,
    },
    /// Revoke a device: its next connect is refused, its seat freed.
    Revoke {
        /// Device id.
        id: String,
    },
    /// Remove a device record; its seat is freed.
    Remove {
        /// Device id.
        id: String,
    },
    /// Move a device to a group.
    Move {
        /// Device id.
        id: String,
        /// Group path or name.
        group: String,
    },
}

#[derive(Subcommand)]
enum GroupCmd {
    /// Create a group under an existing parent (e.g. everyone/berlin).
    Create {
        /// Group path.
        path: String,
    },
    /// List groups.
    List,
}

#[derive(Args)]
struct PushArgs {
    /// Target device id.
    #[arg(long, conflicts_with = "all", required_unless_present = "all")]
    device: Option<String>,
    /// Push to every agent.
    #[arg(long)]
    all: bool,
    /// sync-now, licence-changed, run-task, update-available, message.
    #[arg(long, default_value = "sync-now")]
    kind: String,
    /// Text carried by the push.
    #[arg(long, default_value = "")]
    message: String,
    /// How long to wait for acknowledgements.
    #[arg(long, default_value = "5s")]
    wait: humantime::Duration,
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
        Cmd::Init(a) => {
            let data = DataDir::new(&a.data_dir);
            let cfg = init(&data, &a).await?;
            println!(
                "initialised {} (listening address {})",
                a.data_dir.display(),
                cfg.listen
            );
            Ok(())
        }
        Cmd::Run(a) => {
            let data = DataDir::new(&a.data_dir);
            if !data.is_initialized() {
                init(&data, &a).await?;
                eprintln!(
                    "initialised {}: CA, server certificate, database, admin bundle in {}",
                    a.data_dir.display(),
                    data.admin().display()
                );
            }
            let server = outpost_server::start(data).await?;
            wait_for_signal().await;
            tracing::info!("shutting down");
            server.shutdown().await;
            Ok(())
        }
        Cmd::Authority { cmd } => authority_cmd(cmd).await,
        Cmd::Admin(a) => admin(a).await,
    }
}

async fn init(
    data: &DataDir,
    a: &InitArgs,
) -> anyhow::Result<outpost_server::config::ServerConfig> {
    let key = a.authority_key.as_deref().ok_or_else(|| {
        anyhow::anyhow!(
            "{} is not initialised; the first start needs --authority-key <authority.pub> \
             (create one with `outpost-server authority init --dir <dir>`)",
            data.root().display()
        )
    })?;
    data.init(&InitOptions {
        listen: a.listen,
        authority_public_key: authority::read_public(key)?,
        server_names: a.server_names.clone(),
        ..Default::default()
    })
    .await
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn authority_cmd(cmd: AuthorityCmd) -> anyhow::Result<()> {
    match cmd {
        AuthorityCmd::Offer { dir, file } => {
            let what = authority::offer(&dir, &file)?;
            println!("holding renewal key {what} until the server that owns the key fetches it");
            Ok(())
        }
        AuthorityCmd::Serve { dir, listen } => {
            let svc = authority::serve(&dir, listen).await?;
            println!(
                "licence authority serving renewals on udp {}\nservers need in server.toml:\n  [licensing]\n  authority = \"<this host>:{}\"\n  authority_tls_sha256 = \"{}\"",
                svc.addr,
                svc.addr.port(),
                svc.tls_sha256
            );
            wait_for_signal().await;
            svc.shutdown().await;
            Ok(())
        }
        AuthorityCmd::Init { dir } => {
            let (_, public) = authority::init(&dir)?;
            println!(
                "authority created in {}; give {} to servers (--authority-key), keep authority.key secret",
                dir.display(),
                public.display()
            );
            Ok(())
        }
        AuthorityCmd::Issue(a) => {
            let auth = authority::load(&a.dir)?;
            let now = outpost_net::unix_now();
            let valid_from = authority::parse_when(&a.valid_from, now).context("--valid-from")?;
            let expires_at = match (&a.expires, &a.valid_for) {
                (Some(e), _) => authority::parse_when(e, now).context("--expires")?,
                (None, Some(d)) => valid_from + d.as_secs() as i64,
                (None, None) => anyhow::bail!("give --expires <time> or --valid-for <duration>"),
            };
            let key = authority::issue(
                &auth,
                &authority::IssueSpec {
                    key_id: a.id,
                    licensee: a.licensee,
                    product: a.product,
                    components: a.components,
                    seats: a.seats,
                    valid_from,
                    expires_at,
                    demo: a.demo,
                    renews: a.renews,
                },
            )?;
            outpost_net::fsutil::write_atomic(&a.out, &key.file, false)?;
            println!(
                "issued key {} ({} seats, valid {} to {}) -> {}",
                key.body.key_id,
                key.body.seats,
                outpost_proto::licence::key::format_time(key.body.valid_from),
                outpost_proto::licence::key::format_time(key.body.expires_at),
                a.out.display()
            );
            Ok(())
        }
    }
}

async fn admin(a: AdminArgs) -> anyhow::Result<()> {
    let bundle = a.bundle.clone().unwrap_or_else(|| a.data_dir.join("admin"));
    let mut export_to = None;
    let op = match a.cmd {
        AdminCmd::Token {
            cmd:
                TokenCmd::Create {
                    role,
                    group,
                    ttl,
                    uses,
                    comment,
                },
        } => Op::TokenCreate(TokenCreate {
            role,
            group,
            ttl_secs: Duration::from(ttl).as_secs(),
            uses,
            comment,
        }),
        AdminCmd::Token {
            cmd: TokenCmd::List,
        } => Op::TokenList(Empty {}),
        AdminCmd::Key { cmd } => match cmd {
            KeyCmd::Import {
                file,
                auto_distribute,
                assign_everyone,
                activation_reserve,
            } => Op::KeyImport(KeyImport {
                file_name: file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                content: outpost_net::fsutil::read(&file)?,
                auto_distribute,
                assign_everyone,
                activation_reserve,
            }),
            KeyCmd::List => Op::KeyList(Empty {}),
            KeyCmd::Assign { key, object } => Op::KeyAssign(KeyAssign {
                key_id: key,
                object,
            }),
            KeyCmd::Unassign { key, object } => Op::KeyUnassign(KeyUnassign {
                key_id: key,
                object,
            }),
            KeyCmd::Remove { key } => Op::KeyRemove(KeyRef { key_id: key }),
            KeyCmd::Renew => Op::KeyRenew(Empty {}),
            KeyCmd::AutoDistribute { key, state } => {
                Op::KeyAutoDistribute(outpost_proto::pb::admin::KeyAutoDistribute {
                    key_id: key,
                    on: state == "on",
                })
            }
            KeyCmd::Export { key, out } => {
                export_to = Some(out);
                Op::KeyExport(KeyRef { key_id: key })
            }
        },
        AdminCmd::Device { cmd } => match cmd {
            DeviceCmd::List { role } => Op::DeviceList(DeviceList {
                role: role.unwrap_or_default(),
            }),
            DeviceCmd::Revoke { id } => Op::DeviceRevoke(DeviceRef { device_id: id }),
            DeviceCmd::Remove { id } => Op::DeviceRemove(DeviceRef { device_id: id }),
            DeviceCmd::Move { id, group } => Op::DeviceMove(DeviceMove {
                device_id: id,
                group,
            }),
        },
        AdminCmd::Group {
            cmd: GroupCmd::Create { path },
        } => Op::GroupCreate(GroupCreate { path }),
        AdminCmd::Group {
            cmd: GroupCmd::List,
        } => Op::GroupList(Empty {}),
        AdminCmd::Push(p) => Op::Push(PushRequest {
            device_id: p.device.unwrap_or_default(),
            all: p.all,
            kind: p.kind,
            message: p.message,
            wait_ms: Duration::from(p.wait).as_millis().min(u32::MAX as u128) as u32,
        }),
        AdminCmd::Status => Op::ServerStatus(Empty {}),
        AdminCmd::Notifications { kind, limit } => {
            Op::NotificationList(outpost_proto::pb::admin::NotificationList {
                kind: kind.unwrap_or_default(),
                limit,
            })
        }
        AdminCmd::Seats {
            cmd: SeatsCmd::Reclaim,
        } => Op::SeatsReclaim(Empty {}),
    };
    let client = AdminClient::from_bundle(&bundle, a.server.as_deref())
        .await
        .with_context(|| format!("admin bundle {}", bundle.display()))?;
    let result = client.request(op).await?;
    client.close();
    if let (Some(out), R::KeyFile(k)) = (&export_to, &result) {
        outpost_net::fsutil::write_atomic(out, &k.content, false)?;
        if a.json {
            println!(
                "{}",
                serde_json::json!({"key_id": k.key_id, "written_to": out, "bytes": k.content.len()})
            );
        } else {
            println!(
                "key {} exported to {} ({} bytes, signed, byte-identical)",
                k.key_id,
                out.display(),
                k.content.len()
            );
        }
        return Ok(());
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&render::json(&result))?);
    } else {
        print!("{}", render::human(&result));
    }
    Ok(())
}
