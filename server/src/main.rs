//! `outpost-server`: run the server, administer it, act as licence authority.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use outpost_admin::cli::AdminArgs;
use outpost_net::signal::{run_main, wait_for_signal};
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
    /// Copy the embedded store into an empty PostgreSQL database (P2) and point server.toml at
    /// it. Stop the server first; outpost.db stays as it was, as a backup.
    MigrateStore {
        /// Data directory.
        #[arg(
            long,
            env = "OUTPOST_SERVER_DATA",
            default_value = "/var/lib/outpost-server"
        )]
        data_dir: PathBuf,
        /// The PostgreSQL database: postgres://user:password@host:5432/database (empty).
        #[arg(long)]
        to: String,
    },
    /// Seal this instance's secrets and configuration into a file that `init --join` opens on
    /// a new host, making another instance of the deployment (P2; PostgreSQL store only).
    JoinBundle {
        /// Data directory.
        #[arg(
            long,
            env = "OUTPOST_SERVER_DATA",
            default_value = "/var/lib/outpost-server"
        )]
        data_dir: PathBuf,
        /// The bundle file to write (mode 0600; carry it to the new host, then delete it).
        #[arg(long)]
        out: PathBuf,
        /// File holding the passphrase (else OUTPOST_JOIN_PASSPHRASE).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
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
    /// Join an existing deployment on a shared PostgreSQL store as another instance, from a
    /// bundle made by `outpost-server join-bundle` on one of its instances (P2).
    #[arg(long, conflicts_with_all = ["authority_key", "server_names"])]
    join: Option<PathBuf>,
    /// With --join: the address clients reach this instance at (server.toml public_address).
    #[arg(long, requires = "join")]
    public_address: Option<String>,
    /// With --join: file holding the bundle's passphrase (else OUTPOST_JOIN_PASSPHRASE).
    #[arg(long, requires = "join")]
    passphrase_file: Option<PathBuf>,
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

fn main() {
    let cli = Cli::parse();
    run_main(cli.log_level.as_deref(), run(cli.cmd));
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
        Cmd::Admin(a) => Ok(outpost_admin::cli::run(a).await?),
        Cmd::MigrateStore { data_dir, to } => migrate_store(&data_dir, &to).await,
        Cmd::JoinBundle {
            data_dir,
            out,
            passphrase_file,
        } => {
            let pass = passphrase(passphrase_file.as_deref())?;
            let bundle = outpost_server::join::seal(&DataDir::new(&data_dir), &pass)?;
            outpost_net::fsutil::write_atomic(&out, &bundle, true)?;
            println!(
                "wrote {} ({} bytes): on the new host run `outpost-server init --join {} \
                 --listen <addr> --public-address <host:port>` with the same passphrase, then \
                 delete the file",
                out.display(),
                bundle.len(),
                out.display()
            );
            Ok(())
        }
    }
}

/// The join bundle's passphrase: from a file, else from OUTPOST_JOIN_PASSPHRASE.
fn passphrase(file: Option<&std::path::Path>) -> anyhow::Result<String> {
    match file {
        Some(f) => Ok(std::fs::read_to_string(f)
            .with_context(|| format!("--passphrase-file {}", f.display()))?
            .trim_end_matches(['\r', '\n'])
            .to_owned()),
        None => std::env::var("OUTPOST_JOIN_PASSPHRASE").map_err(|_| {
            anyhow::anyhow!(
                "give the join bundle's passphrase with --passphrase-file <file> or the \
                 OUTPOST_JOIN_PASSPHRASE environment variable"
            )
        }),
    }
}

/// `init --join`: the bundle opened into the data directory, then the shared database checked
/// to hold the deployment (if not, the directory is left uninitialised).
async fn join(
    data: &DataDir,
    a: &InitArgs,
    bundle: &std::path::Path,
) -> anyhow::Result<outpost_server::config::ServerConfig> {
    let pass = passphrase(a.passphrase_file.as_deref())?;
    let bytes = std::fs::read(bundle).with_context(|| format!("--join {}", bundle.display()))?;
    let cfg = outpost_server::join::open(
        data,
        &bytes,
        &bundle.display().to_string(),
        &pass,
        &outpost_server::join::JoinOptions {
            listen: a.listen,
            public_address: a.public_address.clone(),
        },
    )?;
    let checked = async {
        let store = outpost_server::store::Store::open_configured(
            &data.db(),
            &cfg.store.url,
            cfg.store.durability,
        )
        .await?;
        let holds = store.holds_a_deployment().await?;
        store.close().await;
        anyhow::ensure!(
            holds,
            "the database in store.url holds no deployment: an instance joins the database its \
             bundle came from"
        );
        Ok(())
    }
    .await;
    if let Err(e) = checked {
        let _ = std::fs::remove_file(data.config());
        return Err(e.context(format!("{} left uninitialised", data.root().display())));
    }
    Ok(cfg)
}

async fn migrate_store(dir: &std::path::Path, to: &str) -> anyhow::Result<()> {
    let data = DataDir::new(dir);
    anyhow::ensure!(
        data.is_initialized(),
        "{} is not an initialised data directory",
        dir.display()
    );
    anyhow::ensure!(
        outpost_server::store::backend::is_postgres(to),
        "--to must be a PostgreSQL URL: postgres://user:password@host:5432/database"
    );
    let path = data.root().join("server.toml");
    let mut cfg = outpost_server::config::ServerConfig::load(&path)?;
    anyhow::ensure!(
        cfg.store.url.is_empty(),
        "this server already uses PostgreSQL (store.url in {}); nothing to migrate",
        path.display()
    );
    // A running server holds its UDP port: refuse rather than copy a store being written.
    if let Err(e) = std::net::UdpSocket::bind(cfg.listen)
        && e.kind() == std::io::ErrorKind::AddrInUse
    {
        anyhow::bail!(
            "{} is in use: the server seems to be running; stop it before migrating its store",
            cfg.listen
        );
    }
    let copied = outpost_server::store::migrate::sqlite_to_postgres(&data.db(), to).await?;
    for (table, rows) in &copied {
        println!("{table:<18} {rows} row(s)");
    }
    cfg.store.url = to.to_owned();
    std::fs::write(&path, cfg.to_commented_toml())
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "copied and verified; {} now points at PostgreSQL ({} is left as it was, as a backup)",
        path.display(),
        data.db().display()
    );
    Ok(())
}

async fn init(
    data: &DataDir,
    a: &InitArgs,
) -> anyhow::Result<outpost_server::config::ServerConfig> {
    if let Some(bundle) = &a.join {
        return join(data, a, bundle).await;
    }
    let key = a.authority_key.as_deref().ok_or_else(|| {
        anyhow::anyhow!(
            "{} is not initialised; the first start needs --authority-key <authority.pub> \
             (create one with `outpost-server authority init --dir <dir>`)",
            data.root().display()
        )
    })?;
    Ok(data
        .init(&InitOptions {
            listen: a.listen,
            authority_public_key: authority::read_public(key)?,
            server_names: a.server_names.clone(),
            ..Default::default()
        })
        .await?)
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
