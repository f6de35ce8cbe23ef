//! The running server: one QUIC endpoint for every role (T1), the accept loop, dispatch by
//! ALPN, shutdown.
//!
//! One task per connection, each with a `conn` span carrying the connection id, the peer
//! address and (once known) the device id. Shutdown: cancel the root token, stop accepting,
//! tell live sessions to come back later (with a jittered retry-after, T6), wait for tasks
//! within the grace period, close the endpoint, close the store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use outpost_net::{endpoint, refuse, transport};
use outpost_proto::alpn;
use outpost_proto::error::{RefusalCode, Refused};
use outpost_proto::licence::GrantSigner;
use outpost_proto::pki::{self, Ca, ClientAuth};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::config::ServerConfig;
use crate::datadir::DataDir;
use crate::push::Registry;
use crate::store::{DeviceRow, Store, fp_hex};
use crate::{admin, enroll, session, uplink};

/// Counters, for status and tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Sessions refused because `max_sessions` were running.
    pub sessions_refused: AtomicU64,
    /// Sessions started.
    pub sessions_started: AtomicU64,
    /// Connections closed because their certificate is unknown, revoked or of the wrong role.
    pub connections_refused: AtomicU64,
    /// Frames rejected as malformed or oversized.
    pub bad_frames: AtomicU64,
}

/// A gateway connected now.
#[derive(Debug, Clone)]
pub struct GatewayLink {
    /// Its remote address (changes when its NAT rebinds, T5).
    pub connection: quinn::Connection,
    /// When the uplink came up (unix seconds).
    pub since: i64,
    /// "dial-in" or "dmz".
    pub direction: &'static str,
    /// Last report.
    pub report: outpost_proto::pb::v1::GatewayReport,
}

/// State shared by every task of the server. Fields are immutable after start except those
/// behind their own lock or atomic.
pub struct Shared {
    /// Configuration (read-only).
    pub config: Arc<ServerConfig>,
    /// Data directory.
    pub data: DataDir,
    /// Store.
    pub store: Store,
    /// The CA (issues enrollment certificates).
    pub ca: Ca,
    /// SHA-256 of the CA certificate (goes into tokens).
    pub ca_sha256: [u8; 32],
    /// Signs grants.
    pub grants: GrantSigner,
    /// Licence authority public key.
    pub authority_public: Vec<u8>,
    /// Live sessions.
    pub registry: Registry,
    /// Bounds concurrent sessions (T9).
    pub sessions: Arc<Semaphore>,
    /// Connected gateways by device id.
    pub gateways: std::sync::Mutex<std::collections::HashMap<String, GatewayLink>>,
    /// Inner TLS for relayed agent sessions (client certificate required).
    pub inner_session_tls: tokio_rustls::TlsAcceptor,
    /// Inner TLS for relayed enrollments (no client certificate).
    pub inner_enroll_tls: tokio_rustls::TlsAcceptor,
    /// Counters.
    pub stats: Stats,
    /// Bumped by every change that can alter a device's licence (keys, assignments, seats
    /// freed, devices moved); live sessions re-check at their next sync when it moved.
    pub licence_epoch: AtomicU64,
    /// Root of shutdown.
    pub shutdown: CancellationToken,
    /// Every task of the server.
    pub tasks: TaskTracker,
    /// Start time.
    pub started: tokio::time::Instant,
    /// Address bound.
    pub local_addr: SocketAddr,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// A refusal telling a client to come back later, jittered so clients spread out (T6).
    pub fn come_back_later(&self, code: RefusalCode, why: &str) -> Refused {
        let base = self.config.timing.retry_after;
        Refused::new(code, why.to_owned()).with_retry_after(outpost_net::jittered(base, base))
    }

    /// Records a change that can alter licences.
    pub fn licence_changed(&self) {
        self.licence_epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Grant TTL in seconds.
    pub fn grant_ttl(&self) -> i64 {
        self.config.timing.grant_ttl.as_secs() as i64
    }
}

/// A running server.
pub struct ServerHandle {
    /// Shared state (for tests and the sandbox).
    pub shared: Arc<Shared>,
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
        self.shared.local_addr
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Stops accepting, ends sessions with a retry-after, waits within the grace period.
    pub async fn shutdown(self) {
        let grace = self.shared.config.timing.shutdown_grace;
        self.shared.shutdown.cancel();
        let _ = self.accept.await;
        self.shared.tasks.close();
        if tokio::time::timeout(grace, self.shared.tasks.wait())
            .await
            .is_err()
        {
            warn!("sessions still running after the grace period; closing");
        }
        let r = Refused::new(RefusalCode::ShuttingDown, "server is shutting down");
        self.endpoint.close(
            quinn::VarInt::from_u32(r.code().close_code()),
            &r.to_close_reason(),
        );
        let _ = tokio::time::timeout(grace, self.endpoint.wait_idle()).await;
        self.shared.store.close().await;
    }

    /// Simulates a crash for tests: drops everything without telling anyone.
    pub async fn abort(self) {
        self.accept.abort();
        self.shared.shutdown.cancel();
        self.endpoint.close(quinn::VarInt::from_u32(0), b"");
        self.shared.store.close().await;
    }
}

/// Starts a server on an initialised data directory.
pub async fn start(data: DataDir) -> anyhow::Result<ServerHandle> {
    anyhow::ensure!(
        data.is_initialized(),
        "{} is not initialised (run `outpost-server run --data-dir {} --authority-key <file>` once)",
        data.root().display(),
        data.root().display()
    );
    let config = Arc::new(ServerConfig::load(&data.config())?);
    let ca = data.load_ca()?;
    let identity = data.load_server_identity()?;
    let grants = GrantSigner::from_pkcs8(&outpost_net::fsutil::read(&data.grant_key())?)
        .with_context(|| format!("{}", data.grant_key().display()))?;
    let authority_public =
        outpost_proto::licence::key::decode_public_key(&config.authority_public_key)
            .context("server.toml: authority_public_key")?;
    let store = Store::open(&data.db(), config.store.durability)
        .await
        .with_context(|| format!("cannot open the store {}", data.db().display()))?;

    let ca_der = ca.cert_der().clone();
    let mut tls = pki::server_config(
        &identity,
        &ca_der,
        &[alpn::AGENT, alpn::GATEWAY, alpn::ADMIN, alpn::ENROLL],
        ClientAuth::OptionalForEnrollment,
    )?;
    tls.max_early_data_size = 0;
    let quic_tls = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls))?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic_tls));
    server_config.transport_config(transport::listener(config.timing.idle_timeout));
    let reset_key = endpoint::reset_key(data.root()).context("stateless reset key")?;
    let ep = endpoint::endpoint_with_reset_key(
        config.listen,
        &config.socket,
        Some(server_config),
        Some(&reset_key),
    )
    .with_context(|| format!("cannot listen on udp {}", config.listen))?;
    let local_addr = ep.local_addr()?;

    let inner_session = pki::server_config(
        &identity,
        &ca_der,
        &[alpn::INNER_SESSION],
        ClientAuth::Required,
    )?;
    let inner_enroll = pki::server_config(&identity, &ca_der, &[alpn::ENROLL], ClientAuth::None)?;

    if local_addr.port() != config.listen.port() || data.admin().join("admin.toml").exists() {
        let mut c = (*config).clone();
        c.listen = local_addr;
        data.set_admin_server(&c.client_address())?;
    }

    let shared = Arc::new(Shared {
        sessions: Arc::new(Semaphore::new(config.limits.max_sessions as usize)),
        ca_sha256: pki::fingerprint(&ca_der),
        config,
        data,
        store,
        ca,
        grants,
        authority_public,
        registry: Registry::default(),
        gateways: Default::default(),
        inner_session_tls: tokio_rustls::TlsAcceptor::from(Arc::new(inner_session)),
        inner_enroll_tls: tokio_rustls::TlsAcceptor::from(Arc::new(inner_enroll)),
        stats: Stats::default(),
        licence_epoch: AtomicU64::new(0),
        shutdown: CancellationToken::new(),
        tasks: TaskTracker::new(),
        started: tokio::time::Instant::now(),
        local_addr,
    });
    info!(addr = %local_addr, "outpost-server listening");
    if !shared.config.dmz_gateways.is_empty() {
        let client = crate::dmz::client_config(&identity, &ca_der)?;
        for target in shared.config.dmz_gateways.clone() {
            shared.tasks.spawn(crate::dmz::run(
                shared.clone(),
                ep.clone(),
                client.clone(),
                target,
            ));
        }
    }
    if let Some(rx) = shared.store.take_notice_receiver() {
        shared.tasks.spawn(crate::notify::run(shared.clone(), rx));
    }
    shared
        .tasks
        .spawn(crate::licence_tasks::run(shared.clone()));
    let accept = tokio::spawn(accept_loop(shared.clone(), ep.clone()));
    Ok(ServerHandle {
        shared,
        endpoint: ep,
        accept,
    })
}

async fn accept_loop(shared: Arc<Shared>, ep: quinn::Endpoint) {
    loop {
        let incoming = tokio::select! {
            i = ep.accept() => match i { Some(i) => i, None => break },
            _ = shared.shutdown.cancelled() => break,
        };
        let remote = incoming.remote_address();
        let span = info_span!("conn", peer = %remote, id = tracing::field::Empty, device = tracing::field::Empty);
        shared
            .tasks
            .spawn(handle_incoming(shared.clone(), incoming).instrument(span));
    }
}

async fn handle_incoming(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "incoming refused");
            return;
        }
    };
    let conn =
        match tokio::time::timeout(shared.config.timing.session_setup_timeout, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::debug!(error = %refuse::explain(&e), "handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!("handshake timed out");
                return;
            }
        };
    tracing::Span::current().record("id", conn.stable_id());
    let proto = endpoint::alpn(&conn);
    match proto.as_deref() {
        Some(a) if a == alpn::ENROLL => enroll::serve_connection(shared, conn).await,
        Some(a) if a == alpn::AGENT => {
            if let Some(dev) = authenticate(&shared, &conn, "agent").await {
                session::serve_direct(shared, conn, dev).await
            }
        }
        Some(a) if a == alpn::GATEWAY => {
            if let Some(dev) = authenticate(&shared, &conn, "gateway").await {
                uplink::serve(shared, conn, dev, "dial-in").await
            }
        }
        Some(a) if a == alpn::ADMIN => {
            if let Some(dev) = authenticate(&shared, &conn, "admin").await {
                admin::serve(shared, conn, dev).await
            }
        }
        other => {
            // rustls only completes handshakes for the ALPNs we offer; keep the guard anyway.
            let r = Refused::new(
                RefusalCode::WrongRole,
                format!("unknown protocol {}", alpn::display(other)),
            );
            refuse::close(&conn, &r);
        }
    }
}

/// Maps the connection's certificate to a registered device of the expected role; closes the
/// connection with a readable refusal otherwise.
pub async fn authenticate(
    shared: &Shared,
    conn: &quinn::Connection,
    role: &str,
) -> Option<DeviceRow> {
    let refused = |code, msg: String| {
        shared
            .stats
            .connections_refused
            .fetch_add(1, Ordering::Relaxed);
        warn!(%msg, "connection refused");
        refuse::close(conn, &Refused::new(code, msg));
        None
    };
    let Some(leaf) = endpoint::peer_leaf(conn) else {
        return refused(
            RefusalCode::Unauthenticated,
            "a client certificate is required: enroll this device with a token first".into(),
        );
    };
    let fp = fp_hex(&pki::fingerprint(&leaf));
    let dev = match shared.store.device_by_cert(&fp).await {
        Ok(d) => d,
        Err(e) => {
            return refused(RefusalCode::Internal, format!("registry unavailable: {e}"));
        }
    };
    match dev {
        None => refused(
            RefusalCode::Unauthenticated,
            "this certificate is not registered (device removed or re-enrolled elsewhere); enroll again with a new token".into(),
        ),
        Some(d) if d.revoked_at.is_some() => refused(
            RefusalCode::Revoked,
            format!("device {} was revoked by an administrator", d.id),
        ),
        Some(d) if d.role != role => refused(
            RefusalCode::WrongRole,
            format!("device {} is a {}, not a {role}", d.id, d.role),
        ),
        Some(d) => {
            tracing::Span::current().record("device", d.id.as_str());
            Some(d)
        }
    }
}

/// Default session setup timeout for streams.
pub fn setup_timeout(shared: &Shared) -> Duration {
    shared.config.timing.session_setup_timeout
}
