//! The running gateway: one [`Node`] holding a handle per concept, built by [`start`] and
//! shared by every task; the [`GatewayHandle`]; shutdown.
//!
//! | handle | what it holds | who writes |
//! |---|---|---|
//! | `Runtime` | root of shutdown, every task | `start`, `shutdown` |
//! | [`Uplink`] | the uplink's state and how to dial | the uplink task |
//! | [`Office`] | agent/session/enrollment bounds, counters, relayed bytes | relay tasks |

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use outpost_net::endpoint;
use outpost_net::identity::{DeviceIdentity, IdentityError};
use outpost_net::runtime::Runtime;
use outpost_net::splice::Tap;
use outpost_proto::pb::v1::GatewayReport;
use tokio::sync::{Notify, watch};

use crate::config::GatewayConfig;
use crate::office::Office;
use crate::status::GatewayStatus;
use crate::uplink::{Uplink, UplinkState};

/// Everything the gateway's tasks share. Immutable after start except behind each handle's own
/// locks and atomics.
pub struct Node {
    config: Arc<GatewayConfig>,
    data: PathBuf,
    device_id: String,
    /// Identity and TLS configurations; swapped on renewal or a new CA set (S9).
    tls: std::sync::RwLock<Arc<crate::certs::Tls>>,
    /// Endpoints whose configuration follows `tls`: the office one, and the DMZ listener.
    /// Taken at shutdown, so a task outliving it cannot keep the office port bound.
    office_ep: std::sync::Mutex<Option<quinn::Endpoint>>,
    listen_ep: std::sync::Mutex<Option<quinn::Endpoint>>,
    runtime: Runtime,
    uplink: Uplink,
    office: Office,
    /// Wakes the status writer.
    status_changed: Notify,
    /// Where `/metrics` is served, once bound (O7).
    metrics_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// Address of the office listener.
    local_addr: std::net::SocketAddr,
    /// The update cache (D2).
    cache: crate::cache::Cache,
    /// Wakes the prefetch of the newest revision.
    prefetch: Notify,
    /// Network discovery (D3).
    discovery: crate::discovery::Discovery,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Configuration (read-only).
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The data directory.
    pub fn data(&self) -> &Path {
        &self.data
    }

    /// This gateway's credentials and TLS configurations of the moment.
    pub fn tls(&self) -> Arc<crate::certs::Tls> {
        self.tls.read().expect("tls lock").clone()
    }

    /// Its device id.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// Swaps in new TLS configurations; every endpoint uses them for its next handshakes.
    pub fn set_tls(&self, t: crate::certs::Tls) {
        if let Some(ep) = self.office_ep.lock().expect("office lock").as_ref() {
            ep.set_server_config(Some(t.office.clone()));
        }
        if let Some(ep) = self.listen_ep.lock().expect("listen lock").as_ref() {
            ep.set_server_config(Some(t.listen.clone()));
        }
        *self.tls.write().expect("tls lock") = Arc::new(t);
    }

    /// Registers the DMZ listen endpoint (its configuration then follows renewals).
    pub fn set_listen_endpoint(&self, ep: Option<quinn::Endpoint>) {
        *self.listen_ep.lock().expect("listen lock") = ep;
    }

    /// Shutdown and tasks.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The uplink.
    pub fn uplink(&self) -> &Uplink {
        &self.uplink
    }

    /// The office side.
    pub fn office(&self) -> &Office {
        &self.office
    }

    /// The update cache (D2).
    pub fn cache(&self) -> &crate::cache::Cache {
        &self.cache
    }

    /// Network discovery (D3).
    pub fn discovery(&self) -> &crate::discovery::Discovery {
        &self.discovery
    }

    /// Wakes the prefetch (a new manifest).
    pub fn prefetch_wake(&self) {
        self.prefetch.notify_one();
    }

    /// Waits for [`Node::prefetch_wake`].
    pub async fn prefetch_notified(&self) {
        self.prefetch.notified().await
    }

    /// Tells the status writer something changed.
    pub fn status_changed(&self) {
        self.status_changed.notify_one();
    }

    /// Resolves when the status writer should look again.
    pub async fn status_notified(&self) {
        self.status_changed.notified().await
    }

    /// The report sent up the uplink.
    pub fn report(&self) -> GatewayReport {
        let s = self.status();
        GatewayReport {
            agents_connected: s.agents_connected,
            sessions_relayed: s.sessions_active,
            sessions_refused: s.refused_no_uplink + s.refused_overload,
            bytes_up: s.bytes_up,
            bytes_down: s.bytes_down,
            software: format!("outpost-gateway {}", outpost_proto::SOFTWARE_VERSION),
            trust_sha256: self.tls().trust_sha256.to_vec(),
            cache_revision: s.cache_revision,
            cache_bytes: s.cache_bytes,
            cache_hits: s.cache_hits,
            cache_misses: s.cache_misses,
            cache_upstream_bytes: s.cache_upstream_bytes,
            cache_refused_blocks: s.cache_refused_blocks,
            cache_blocks: s.cache_blocks,
        }
    }

    /// The current status.
    pub fn status(&self) -> GatewayStatus {
        let up = self.uplink.state();
        let st = self.office.stats();
        let bytes = self.office.bytes();
        let fan = self.office.fanout();
        let cs = self.cache.stats();
        let stored = self.cache.stored();
        GatewayStatus {
            device_id: self.device_id.clone(),
            cert_expires_at: self.tls().identity.expires_at(),
            pid: std::process::id(),
            updated_at: outpost_net::unix_now(),
            server: self.config.server.to_string(),
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
            uplink_connection_id: up.server_connection_id,
            uplink_last_error: up.last_error,
            uplink_connects: self.uplink.connects(),
            agents_connected: st.agents_connected.load(Ordering::Relaxed),
            sessions_active: st.sessions_active.load(Ordering::Relaxed),
            sessions_total: st.sessions_total.load(Ordering::Relaxed),
            refused_no_uplink: st.refused_no_uplink.load(Ordering::Relaxed),
            refused_overload: st.refused_overload.load(Ordering::Relaxed),
            bytes_up: bytes.up.load(Ordering::Relaxed),
            bytes_down: bytes.down.load(Ordering::Relaxed),
            broadcasts: fan.broadcasts.load(Ordering::Relaxed),
            broadcast_acked: fan.acked.load(Ordering::Relaxed),
            broadcast_declined: fan.declined.load(Ordering::Relaxed),
            broadcast_failed: fan.failed.load(Ordering::Relaxed),
            cache_revision: self.cache.manifests.newest(),
            cache_bytes: stored.0,
            cache_blocks: stored.1,
            cache_hits: cs.hits.load(Ordering::Relaxed),
            cache_misses: cs.misses.load(Ordering::Relaxed),
            cache_upstream_bytes: cs.upstream_bytes.load(Ordering::Relaxed),
            cache_source_blocks: cs.source_blocks.load(Ordering::Relaxed),
            cache_refused_blocks: cs.refused.load(Ordering::Relaxed),
            cache_evicted: cs.evicted.load(Ordering::Relaxed),
            cache_error: self.cache.manifests.error(),
            discovery_scans: self.discovery.scans.load(Ordering::Relaxed),
            discovery_hosts: self.discovery.last_hosts.load(Ordering::Relaxed),
            broadcasts_running: fan.running.load(Ordering::Relaxed),
            broadcasts_dropped_busy: fan.dropped_busy.load(Ordering::Relaxed),
            discovery_reports_queued: self.discovery.queued() as u64,
            discovery_reports_dropped: self.discovery.dropped.load(Ordering::Relaxed),
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
    /// Tests: act as a compromised gateway that alters every broadcast before fanning it out
    /// (D4: agents must refuse it).
    pub tamper_broadcasts: bool,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// `gateway.toml` is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] outpost_net::config::ConfigError),
    /// The stored identity is unreadable.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The gateway never enrolled.
    #[error(
        "{0} holds no gateway identity: start once with --token <enrollment token> --server <host:port>"
    )]
    NotEnrolled(String),
    /// The office port could not be bound.
    #[error(transparent)]
    Listen(#[from] endpoint::ListenError),
    /// TLS could not be set up from the stored certificates.
    #[error("TLS set-up: {0}")]
    Tls(String),
    /// The metrics address could not be bound (the message names `metrics.listen`).
    #[error("{0}")]
    Metrics(std::io::Error),
    /// The update cache directory cannot be used.
    #[error("update cache in {0}: {1} (check the data directory's permissions and free space)")]
    Cache(String, std::io::Error),
}

/// A running gateway.
pub struct GatewayHandle {
    node: Arc<Node>,
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
        self.node.local_addr
    }

    /// The current status (what `status.json` holds).
    pub fn status(&self) -> GatewayStatus {
        self.node.status()
    }

    /// Where `/metrics` is served (`None`: not configured).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.node.metrics_addr.get().copied()
    }

    /// Where a listen-mode (DMZ) gateway waits for the server, once bound.
    pub fn uplink_listen_addr(&self) -> Option<std::net::SocketAddr> {
        self.node.uplink.listen_addr()
    }

    /// Watches the uplink.
    pub fn uplink(&self) -> watch::Receiver<UplinkState> {
        self.node.uplink.subscribe()
    }

    /// Waits until the uplink is up.
    pub async fn wait_uplink(&self) {
        let mut rx = self.uplink();
        let _ = rx.wait_for(|u| u.conn.is_some()).await;
    }

    /// Stops: no new agents, uplink closed, tasks waited for.
    pub async fn shutdown(self) {
        let grace = self.node.config.timing.shutdown_grace;
        self.node.runtime.begin_shutdown();
        self.node.office_ep.lock().expect("office lock").take();
        self.node.set_listen_endpoint(None);
        let _ = tokio::time::timeout(grace, self.node.runtime.wait()).await;
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"gateway shutting down");
        if let Some(c) = self.node.uplink.conn() {
            c.close(quinn::VarInt::from_u32(0), b"gateway shutting down");
        }
        let _ = tokio::time::timeout(grace, self.endpoint.wait_idle()).await;
    }
}

/// The config file of a data directory.
pub fn config_path(data: &Path) -> PathBuf {
    data.join("gateway.toml")
}

/// Starts an enrolled gateway.
pub async fn start(data: &Path, opts: StartOptions) -> Result<GatewayHandle, StartError> {
    let config = match opts.config {
        Some(c) => c,
        None => GatewayConfig::load(&config_path(data))?,
    };
    config.validate()?;
    outpost_net::identity::complete_renewal(data)?;
    let identity = DeviceIdentity::load(data)?
        .ok_or_else(|| StartError::NotEnrolled(data.display().to_string()))?;

    let tls = crate::certs::build(identity, &config).map_err(StartError::Tls)?;
    let server_cfg = tls.office.clone();
    let (ep, local_addr) = endpoint::listen(config.listen, &config.socket, server_cfg, data)?;

    let cache = crate::cache::Cache::open(data, &config.cache)
        .map_err(|e| StartError::Cache(data.join("cache").display().to_string(), e))?;
    let node = Arc::new(Node {
        cache,
        prefetch: Notify::new(),
        discovery: crate::discovery::Discovery::open(data),
        office: Office::new(&config.limits, opts.tap, opts.tamper_broadcasts),
        uplink: Uplink::new(),
        config: Arc::new(config),
        data: data.to_owned(),
        device_id: tls.identity.device_id.clone(),
        tls: std::sync::RwLock::new(Arc::new(tls)),
        office_ep: std::sync::Mutex::new(None),
        listen_ep: std::sync::Mutex::new(None),
        runtime: Runtime::default(),
        status_changed: Notify::new(),
        metrics_addr: Default::default(),
        local_addr,
    });
    *node.office_ep.lock().expect("office lock") = Some(ep.clone());
    tracing::info!(device = %node.device_id, listen = %local_addr, server = %node.config.server, "outpost-gateway starting");
    node.runtime.spawn(crate::uplink::run(node.clone()));
    node.runtime
        .spawn(crate::relay::accept_loop(node.clone(), ep.clone()));
    node.runtime
        .spawn(crate::cache::serve::prefetch(node.clone()));
    node.runtime.spawn(crate::discovery::run(node.clone()));
    if !opts.no_status_file {
        node.runtime.spawn(crate::status::writer(node.clone()));
    }
    if let Some(addr) = node.config.metrics.listen {
        let metrics = Arc::new(outpost_net::metrics::Metrics::default());
        let bound = outpost_net::metrics::serve(
            addr,
            metrics,
            crate::metrics::gather(node.clone()),
            node.runtime.child_token(),
        )
        .await
        .map_err(StartError::Metrics)?;
        let _ = node.metrics_addr.set(bound);
    }
    Ok(GatewayHandle { node, endpoint: ep })
}
