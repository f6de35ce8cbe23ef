//! The running server: one [`Node`] holding a handle per concept, built by [`start`] and
//! shared by every task; the [`ServerHandle`] that owns it; shutdown.
//!
//! | handle | what it holds | who writes |
//! |---|---|---|
//! | [`Runtime`] | root of shutdown, every task | `start`, `shutdown` |
//! | [`Licensing`] | the store, grant signing, licence policy, the licence epoch | store write paths |
//! | [`Sessions`] | the session bound, live-session registry, counters | session drivers |
//! | [`Gateways`] | the uplinks up now and their reports | uplink tasks |
//! | [`Enrollment`] | the CA, inner TLS for relayed sessions and enrollments | nobody (fixed) |
//!
//! Shutdown: begin shutdown on the runtime, stop accepting, tell live sessions to come back
//! later (with a jittered retry-after, T6), wait for tasks within the grace period, close the
//! endpoint, close the store.

mod accept;
mod instance;
mod start;

use std::net::SocketAddr;
use std::sync::Arc;

use outpost_proto::error::{RefusalCode, Refused};
use tracing::warn;

pub use accept::{Identified, authenticate, identify, identify_found, removed, revoked};
pub use start::{StartError, start};

use crate::config::ServerConfig;
use crate::datadir::DataDir;
use crate::dmz::Dmz;
use crate::enroll::Enrollment;
use crate::gateways::Gateways;
use crate::licence::Licensing;
use crate::sessions::Sessions;
use crate::store::Store;
use outpost_net::runtime::Runtime;

/// Everything the server's tasks share, one handle per concept. Immutable after start except
/// behind each handle's own locks and atomics.
pub struct Node {
    config: Arc<ServerConfig>,
    data: DataDir,
    runtime: Runtime,
    licensing: Licensing,
    sessions: Sessions,
    gateways: Gateways,
    broadcasts: crate::broadcast::Stats,
    files: crate::files::Stats,
    updates: crate::updates::Updates,
    dmz: Dmz,
    peers: crate::peers::Peers,
    enrollment: Enrollment,
    local_addr: SocketAddr,
    /// The running instances' addresses on a shared store (P2), refreshed at each heartbeat.
    instances: std::sync::Mutex<Vec<String>>,
    /// Prometheus metrics (O7) and the instruments filled as things happen.
    metrics: Arc<outpost_net::metrics::Metrics>,
    instruments: crate::metrics::Instruments,
    /// Where metrics are served, once bound.
    metrics_addr: std::sync::OnceLock<SocketAddr>,
    /// Where the web console is served, once bound.
    console_addr: std::sync::OnceLock<SocketAddr>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// The instruments filled as things happen (O7).
    pub fn instruments(&self) -> &crate::metrics::Instruments {
        &self.instruments
    }

    /// Where `/metrics` is served (`None`: not configured).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr.get().copied()
    }

    /// Where the web console is served (`None`: `console.listen` not set).
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console_addr.get().copied()
    }

    /// Configuration (read-only).
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The data directory.
    pub fn data(&self) -> &DataDir {
        &self.data
    }

    /// Shutdown and tasks.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The licence manager.
    pub fn licensing(&self) -> &Licensing {
        &self.licensing
    }

    /// The store (the licence manager's).
    pub fn store(&self) -> &Store {
        self.licensing.store()
    }

    /// Agent sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Gateway uplinks.
    pub fn gateways(&self) -> &Gateways {
        &self.gateways
    }

    /// Broadcast counters (D4).
    pub fn broadcasts(&self) -> &crate::broadcast::Stats {
        &self.broadcasts
    }

    /// The update repository's signing key (D1).
    pub fn updates(&self) -> &crate::updates::Updates {
        &self.updates
    }

    /// Update blocks served (D2).
    pub fn file_stats(&self) -> &crate::files::Stats {
        &self.files
    }

    /// The gateways in a DMZ this server dials (T4).
    pub fn dmz(&self) -> &Dmz {
        &self.dmz
    }

    /// Links to neighbour servers (H1–H8).
    pub fn peers(&self) -> &crate::peers::Peers {
        &self.peers
    }

    /// The CA and inner TLS.
    pub fn enrollment(&self) -> &Enrollment {
        &self.enrollment
    }

    /// The address bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address clients dial this instance at (`ServerConfig::client_address` with the
    /// port actually bound).
    pub fn client_address(&self) -> String {
        let mut c = (*self.config).clone();
        if c.listen.port() == 0 {
            c.listen = self.local_addr;
        }
        c.client_address()
    }

    /// The server addresses handed to agents at sync (P2): `server_addresses`, else the
    /// running instances on a shared store when there are several.
    pub fn server_addresses(&self) -> Vec<String> {
        if !self.config.server_addresses.is_empty() {
            return self.config.server_addresses.clone();
        }
        self.instances.lock().expect("instances lock").clone()
    }

    pub(crate) fn set_instances(&self, names: Vec<String>) {
        *self.instances.lock().expect("instances lock") = names;
    }

    /// A refusal telling a client to come back later, jittered so clients spread out (T6).
    pub fn come_back_later(&self, code: RefusalCode, why: &str) -> Refused {
        let base = self.config.timing.retry_after;
        Refused::new(code, why.to_owned()).with_retry_after(outpost_net::jittered(base, base))
    }
}

/// How a shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shutdown {
    /// Every session and dialler ended within `timing.shutdown_grace`.
    pub tasks_ended_in_grace: bool,
}

/// A running server.
pub struct ServerHandle {
    node: Arc<Node>,
    endpoint: quinn::Endpoint,
    accept: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addr", &self.addr())
            .finish()
    }
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.node.local_addr
    }

    /// Where `/metrics` is served (`None`: `metrics.listen` not set).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.node.metrics_addr()
    }

    /// Where the web console is served (`None`: `console.listen` not set).
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.node.console_addr()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        self.node.store()
    }

    /// SHA-256 of the deployment CA certificate (what enrollment tokens carry).
    pub fn ca_sha256(&self) -> [u8; 32] {
        self.node.enrollment.ca_sha256()
    }

    /// Agent sessions (registry, counters).
    pub fn sessions(&self) -> &Sessions {
        &self.node.sessions
    }

    /// Gateway uplinks up now.
    pub fn gateways(&self) -> &Gateways {
        &self.node.gateways
    }

    /// Broadcast counters (D4).
    pub fn broadcasts(&self) -> &crate::broadcast::Stats {
        &self.node.broadcasts
    }

    /// Frees the seats of agents not seen since `cutoff` (L9), as the licence clock does;
    /// returns how many.
    pub async fn reclaim(&self, cutoff: i64, now: i64) -> Result<usize, crate::store::StoreError> {
        crate::licence::clock::reclaim(&self.node, cutoff, now).await
    }

    /// Stops accepting and dialling, ends sessions with a retry-after, waits within the grace
    /// period. Says whether every task ended within it.
    pub async fn shutdown(self) -> Shutdown {
        let grace = self.node.config.timing.shutdown_grace;
        self.node.runtime.begin_shutdown();
        let _ = self.accept.await;
        let in_grace = tokio::time::timeout(grace, self.node.runtime.wait())
            .await
            .is_ok();
        if !in_grace {
            warn!(
                tasks = self.node.runtime.tasks_left(),
                "tasks still running after the grace period; closing"
            );
        }
        let r = Refused::new(RefusalCode::ShuttingDown, "server is shutting down");
        self.endpoint.close(
            quinn::VarInt::from_u32(r.code().close_code()),
            &r.to_close_reason(),
        );
        let _ = tokio::time::timeout(grace, self.endpoint.wait_idle()).await;
        self.node.store().close().await;
        Shutdown {
            tasks_ended_in_grace: in_grace,
        }
    }

    /// Simulates a crash for tests: drops everything without telling anyone.
    pub async fn abort(self) {
        self.accept.abort();
        self.node.runtime.begin_shutdown();
        self.endpoint.close(quinn::VarInt::from_u32(0), b"");
        self.node.store().close().await;
    }
}
