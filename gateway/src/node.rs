//! The running gateway: the office listener, the uplink task, the status writer, shutdown.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use outpost_net::identity::DeviceIdentity;
use outpost_net::splice::{Counters, Tap};
use outpost_net::{endpoint, transport};
use outpost_proto::alpn;
use outpost_proto::pki::{self, ClientAuth};
use tokio::sync::{Notify, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::GatewayConfig;
use crate::status::GatewayStatus;

/// Counters and state shown by `outpost-gateway status`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Agent connections open now.
    pub agents_connected: AtomicU32,
    /// Relayed sessions open now.
    pub sessions_active: AtomicU32,
    /// Relayed sessions since start.
    pub sessions_total: AtomicU64,
    /// Agent streams refused because the uplink was down.
    pub refused_no_uplink: AtomicU64,
    /// Agent streams or connections refused by limits.
    pub refused_overload: AtomicU64,
    /// Uplink connections established since start.
    pub uplink_connects: AtomicU64,
}

/// The uplink as the rest of the gateway sees it.
#[derive(Debug, Clone, Default)]
pub struct UplinkState {
    /// The live connection, if up.
    pub conn: Option<quinn::Connection>,
    /// Unix seconds since when it is up.
    pub since: i64,
    /// Why it is down / the last failure.
    pub last_error: String,
    /// Next attempt, unix ms, while down.
    pub retry_at_ms: i64,
}

/// State shared by the gateway's tasks.
pub struct Shared {
    /// Configuration (read-only).
    pub config: Arc<GatewayConfig>,
    /// Data directory.
    pub data: PathBuf,
    /// Credentials.
    pub identity: DeviceIdentity,
    /// Current uplink; written only by the uplink task.
    pub uplink: watch::Sender<UplinkState>,
    /// Relayed byte counters.
    pub bytes: Arc<Counters>,
    /// Counters.
    pub stats: Stats,
    /// Bounds agent connections.
    pub agent_slots: Arc<Semaphore>,
    /// Bounds relayed sessions.
    pub session_slots: Arc<Semaphore>,
    /// Bounds relayed enrollments.
    pub enroll_slots: Arc<Semaphore>,
    /// Observes relayed bytes (tests).
    pub tap: Option<Tap>,
    /// Root of shutdown.
    pub shutdown: CancellationToken,
    /// Every task.
    pub tasks: TaskTracker,
    /// Wakes the status writer.
    pub status_changed: Notify,
    /// Address of the office listener.
    pub local_addr: std::net::SocketAddr,
    /// Client configuration for the uplink.
    pub uplink_client: quinn::ClientConfig,
    /// Last known server address, for status.
    pub server_addr: Mutex<String>,
    /// Where the DMZ uplink listener is bound (listen mode).
    pub uplink_listen: Mutex<Option<std::net::SocketAddr>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The current status.
    pub fn status(&self) -> GatewayStatus {
        let up = self.uplink.borrow().clone();
        GatewayStatus {
            device_id: self.identity.device_id.clone(),
            pid: std::process::id(),
            updated_at: outpost_net::unix_now(),
            server: self.config.server.clone(),
            listen: self.local_addr.to_string(),
            uplink: if up.conn.is_some() {
                "up".into()
            } else {
                "down".into()
            },
            uplink_since: up.since,
            uplink_remote: up
                .conn
                .as_ref()
                .map(|c| c.remote_address().to_string())
                .unwrap_or_default(),
            uplink_rtt_ms: up
                .conn
                .as_ref()
                .map(|c| c.rtt().as_millis() as u64)
                .unwrap_or(0),
            uplink_last_error: up.last_error,
            uplink_connects: self.stats.uplink_connects.load(Ordering::Relaxed),
            agents_connected: self.stats.agents_connected.load(Ordering::Relaxed),
            sessions_active: self.stats.sessions_active.load(Ordering::Relaxed),
            sessions_total: self.stats.sessions_total.load(Ordering::Relaxed),
            refused_no_uplink: self.stats.refused_no_uplink.load(Ordering::Relaxed),
            refused_overload: self.stats.refused_overload.load(Ordering::Relaxed),
            bytes_up: self.bytes.up.load(Ordering::Relaxed),
            bytes_down: self.bytes.down.load(Ordering::Relaxed),
        }
    }
}

/// Options that are not configuration (tests, benchmarks).
#[derive(Default)]
pub struct StartOptions {
    /// Observe relayed chunks.
    pub tap: Option<Tap>,
    /// Override the config file's values.
    pub config: Option<GatewayConfig>,
    /// Do not write `status.json` (benchmarks with thousands of gateways).
    pub no_status_file: bool,
}

/// A running gateway.
pub struct GatewayHandle {
    /// Shared state.
    pub shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
}

impl std::fmt::Debug for GatewayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayHandle")
            .field("addr", &self.addr())
            .finish()
    }
}

impl GatewayHandle {
    /// Office-side address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.shared.local_addr
    }

    /// Watches the uplink.
    pub fn uplink(&self) -> watch::Receiver<UplinkState> {
        self.shared.uplink.subscribe()
    }

    /// Waits until the uplink is up.
    pub async fn wait_uplink(&self) {
        let mut rx = self.uplink();
        let _ = rx.wait_for(|u| u.conn.is_some()).await;
    }

    /// Stops: no new agents, uplink closed, tasks waited for.
    pub async fn shutdown(self) {
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), self.shared.tasks.wait()).await;
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"gateway shutting down");
        if let Some(c) = self.shared.uplink.borrow().conn.clone() {
            c.close(quinn::VarInt::from_u32(0), b"gateway shutting down");
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.endpoint.wait_idle())
            .await;
    }
}

/// The config file of a data directory.
pub fn config_path(data: &Path) -> PathBuf {
    data.join("gateway.toml")
}

/// Starts an enrolled gateway.
pub async fn start(data: &Path, opts: StartOptions) -> anyhow::Result<GatewayHandle> {
    let config = match opts.config {
        Some(c) => c,
        None => GatewayConfig::load(&config_path(data))?,
    };
    config.validate()?;
    let identity = DeviceIdentity::load(data)?.ok_or_else(|| {
        anyhow::anyhow!(
            "{} holds no gateway identity: start once with --token <enrollment token> --server <host:port>",
            data.display()
        )
    })?;

    let mut tls = pki::server_config(
        &identity.identity,
        &identity.ca,
        &[alpn::RELAY, alpn::ENROLL],
        ClientAuth::OptionalForEnrollment,
    )?;
    tls.max_early_data_size = 0;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls))?;
    let mut server_cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server_cfg.transport_config(transport::listener(
        config
            .uplink
            .idle_timeout
            .max(std::time::Duration::from_secs(30)),
    ));
    let reset_key = endpoint::reset_key(data).context("stateless reset key")?;
    let ep = endpoint::endpoint_with_reset_key(
        config.listen,
        &config.socket,
        Some(server_cfg),
        Some(&reset_key),
    )
    .with_context(|| format!("cannot listen on udp {}", config.listen))?;
    let local_addr = ep.local_addr()?;

    let up_tls = pki::client_config(
        Some(&identity.identity),
        &pki::Trust::Ca(identity.ca.clone()),
        &[alpn::GATEWAY],
    )?;
    let mut uplink_client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(up_tls))?,
    ));
    uplink_client.transport_config(transport::uplink(
        config.uplink.keep_alive,
        config.uplink.idle_timeout,
    ));

    let (uplink, _) = watch::channel(UplinkState::default());
    let shared = Arc::new(Shared {
        agent_slots: Arc::new(Semaphore::new(config.limits.max_agents as usize)),
        session_slots: Arc::new(Semaphore::new(config.limits.max_sessions as usize)),
        enroll_slots: Arc::new(Semaphore::new(config.limits.max_enrollments as usize)),
        config: Arc::new(config),
        data: data.to_owned(),
        identity,
        uplink,
        bytes: Arc::new(Counters::default()),
        stats: Stats::default(),
        tap: opts.tap,
        shutdown: CancellationToken::new(),
        tasks: TaskTracker::new(),
        status_changed: Notify::new(),
        local_addr,
        uplink_client,
        server_addr: Mutex::new(String::new()),
        uplink_listen: Mutex::new(None),
    });
    tracing::info!(device = %shared.identity.device_id, listen = %local_addr, server = %shared.config.server, "outpost-gateway starting");
    shared.tasks.spawn(crate::uplink::run(shared.clone()));
    shared
        .tasks
        .spawn(crate::relay::accept_loop(shared.clone(), ep.clone()));
    if !opts.no_status_file {
        shared.tasks.spawn(crate::status::writer(shared.clone()));
    }
    Ok(GatewayHandle {
        shared,
        endpoint: ep,
    })
}
