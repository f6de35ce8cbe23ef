//! The running agent: path selection (T8), reconnects (T6), and the session driver around
//! `outpost_proto::session::ClientSession` (S2–S5, T7).
//!
//! One task runs the connect loop; at most one session is live at a time. Through a gateway
//! the session is an inner TLS 1.3 session with the server inside a stream of the agent's
//! connection to the gateway (S1); directly it is a stream of a connection to the server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use outpost_net::identity::DeviceIdentity;
use outpost_net::{endpoint, refuse, stream, transport};
use outpost_proto::alpn;
use outpost_proto::backoff::{Backoff, BackoffConfig};
use outpost_proto::error::{Fault, RefusalCode, Refused};
use outpost_proto::pb::v1::{Inventory, Push, PushKind, Role, SyncRequest, Versions};
use outpost_proto::pki::{self, Trust};
use outpost_proto::session::{ClientEvent, ClientSession, SessionError, hello};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::AgentConfig;
use crate::grants::{Grants, LicenceState};
use crate::queue::{Queue, QueueError};
use crate::status::{self, AgentStatus};

/// Largest frame the agent accepts from the server.
const MAX_FRAME: usize = 4 << 20;

/// Something that happened, for in-process observers (tests, the sandbox).
#[derive(Debug, Clone)]
pub enum AgentEvent {
    /// A session was established on this path.
    Connected {
        /// "gateway <addr>" or "server <addr> (direct)".
        path: String,
    },
    /// The licence state changed (after a check, or a grant expiring).
    Licence(LicenceState),
    /// A sync completed; this many events were acknowledged.
    Synced {
        /// Events acknowledged.
        acked: usize,
    },
    /// A push arrived.
    Push(Push),
    /// A session ended.
    Disconnected {
        /// Why.
        reason: String,
    },
}

/// Options that are not configuration (tests, benchmarks).
#[derive(Default)]
pub struct StartOptions {
    /// Use this endpoint for every connection (many simulated agents share a few sockets).
    pub endpoint: Option<quinn::Endpoint>,
    /// Override the config file.
    pub config: Option<AgentConfig>,
    /// Do not write `status.json` (benchmarks with thousands of agents).
    pub no_status_file: bool,
    /// Hold the first connection attempt until this turns true (benchmarks start thousands of
    /// agents, then release them at once).
    pub hold: Option<watch::Receiver<bool>>,
}

struct Shared {
    data: PathBuf,
    config: AgentConfig,
    identity: DeviceIdentity,
    queue: Queue,
    inventory: Inventory,
    relay_client: quinn::ClientConfig,
    direct_client: quinn::ClientConfig,
    inner_tls: tokio_rustls::TlsConnector,
    endpoint: Option<quinn::Endpoint>,
    status: watch::Sender<AgentStatus>,
    events: broadcast::Sender<AgentEvent>,
    /// Wakes the session to sync now (new local events).
    nudge: Notify,
    /// Wakes the licence clock (grants changed).
    grants_changed: Notify,
    /// Stored grants.
    grants: Grants,
    shutdown: CancellationToken,
    /// Gateway list sent by the server (replaces the configured one), with its revision.
    server_gateways: Mutex<(u64, Vec<String>)>,
}

/// A running agent.
pub struct AgentHandle {
    shared: Arc<Shared>,
    tasks: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for AgentHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHandle")
            .field("device", &self.shared.identity.device_id)
            .finish()
    }
}

impl AgentHandle {
    /// Device id.
    pub fn device_id(&self) -> &str {
        &self.shared.identity.device_id
    }

    /// Watches the status.
    pub fn status(&self) -> watch::Receiver<AgentStatus> {
        self.shared.status.subscribe()
    }

    /// Subscribes to events.
    pub fn events(&self) -> broadcast::Receiver<AgentEvent> {
        self.shared.events.subscribe()
    }

    /// Waits until the status satisfies `pred`.
    pub async fn wait_for(&self, pred: impl FnMut(&AgentStatus) -> bool) -> AgentStatus {
        let mut rx = self.status();
        rx.wait_for(pred)
            .await
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Queues an event durably and asks for a sync.
    pub fn queue_event(&self, kind: &str, payload: &[u8]) -> Result<String, QueueError> {
        let id = self
            .shared
            .queue
            .push(kind, payload, outpost_net::unix_now_ms())?;
        self.shared
            .status
            .send_modify(|s| s.queue_depth = self.shared.queue.len());
        self.shared.nudge.notify_one();
        Ok(id)
    }

    /// Stops cleanly.
    pub async fn shutdown(self) {
        self.shared.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// The config file of a data directory.
pub fn config_path(data: &Path) -> PathBuf {
    data.join("agent.toml")
}

/// Starts an enrolled agent.
pub fn start(data: &Path, opts: StartOptions) -> anyhow::Result<AgentHandle> {
    let config = match opts.config {
        Some(c) => c,
        None => AgentConfig::load(&config_path(data))?,
    };
    config.validate()?;
    let identity = DeviceIdentity::load(data)?.ok_or_else(|| {
        anyhow::anyhow!(
            "{} holds no agent identity: start once with --token <enrollment token>",
            data.display()
        )
    })?;
    let queue = Queue::open(data, config.queue.max_events)?;
    let trust = Trust::Ca(identity.ca.clone());
    let client = |alpn: &[u8]| -> anyhow::Result<quinn::ClientConfig> {
        let tls = pki::client_config(Some(&identity.identity), &trust, &[alpn])?;
        let mut c = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))?,
        ));
        c.transport_config(transport::client(
            config.connect.keep_alive,
            config.connect.idle_timeout,
        ));
        Ok(c)
    };
    let relay_client = client(alpn::RELAY)?;
    let direct_client = client(alpn::AGENT)?;
    let inner = pki::client_config(Some(&identity.identity), &trust, &[alpn::INNER_SESSION])?;
    let inventory = outpost_net::identity::inventory(
        (!config.hostname.is_empty()).then_some(config.hostname.as_str()),
        (!config.machine_id.is_empty()).then_some(config.machine_id.as_str()),
        data,
        &format!("outpost-agent {}", outpost_proto::SOFTWARE_VERSION),
    );
    let saved_gateways = load_gateways(data);
    let grants = Grants::open(data, &identity.device_id, &identity.grant_public_key);
    let licence = grants.state(outpost_net::unix_now());
    let initial = AgentStatus {
        device_id: identity.device_id.clone(),
        pid: std::process::id(),
        updated_at: outpost_net::unix_now(),
        state: "starting".into(),
        licence,
        queue_depth: queue.len(),
        ..Default::default()
    };
    let (status_tx, _) = watch::channel(initial);
    let shared = Arc::new(Shared {
        data: data.to_owned(),
        config,
        identity,
        queue,
        inventory,
        relay_client,
        direct_client,
        inner_tls: tokio_rustls::TlsConnector::from(Arc::new(inner)),
        endpoint: opts.endpoint,
        status: status_tx,
        events: broadcast::channel(64).0,
        nudge: Notify::new(),
        grants_changed: Notify::new(),
        grants,
        shutdown: CancellationToken::new(),
        server_gateways: Mutex::new(saved_gateways),
    });
    let tasks = tokio_util::task::TaskTracker::new();
    let span = info_span!("agent", device = %shared.identity.device_id);
    let hold = opts.hold;
    let sh = shared.clone();
    tasks.spawn(
        async move {
            if let Some(mut h) = hold {
                let _ = h.wait_for(|go| *go).await;
            }
            connect_loop(sh).await
        }
        .instrument(span.clone()),
    );
    tasks.spawn(licence_clock(shared.clone()).instrument(span));
    if !opts.no_status_file {
        tasks.spawn(status_writer(shared.clone()));
    }
    Ok(AgentHandle { shared, tasks })
}

fn load_gateways(data: &Path) -> (u64, Vec<String>) {
    std::fs::read_to_string(data.join("gateways.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or((0, vec![]))
}

/// Keeps `status.json` in step with the status, until shutdown.
async fn status_writer(shared: Arc<Shared>) {
    let mut rx = shared.status.subscribe();
    loop {
        let s = rx.borrow_and_update().clone();
        status::write(&shared.data, &s);
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = shared.shutdown.cancelled() => {
                let mut s = rx.borrow().clone();
                s.state = "stopped".into();
                s.updated_at = outpost_net::unix_now();
                status::write(&shared.data, &s);
                return;
            }
        }
        // Coalesce bursts.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Re-derives the licence state from the stored grants whenever a grant may have expired, so
/// the active → reserve promotion (L5) and expiry (L7) happen without any connection.
async fn licence_clock(shared: Arc<Shared>) {
    loop {
        let now = outpost_net::unix_now();
        let st = shared.grants.state(now);
        let changed = shared.status.send_if_modified(|s| {
            if s.licence != st {
                s.licence = st.clone();
                s.updated_at = now;
                true
            } else {
                false
            }
        });
        if changed {
            info!(state = %st.state, key = %st.key, reason = %st.reason, "licence state");
            let _ = shared.events.send(AgentEvent::Licence(st.clone()));
        }
        // Next moment the state can change by itself: the grant in force expires.
        let wait = if st.state == "licensed" {
            Duration::from_secs((st.expires_at - now).max(0) as u64) + Duration::from_millis(50)
        } else {
            Duration::from_secs(3600)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait.min(Duration::from_secs(3600))) => {}
            _ = shared.grants_changed.notified() => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Gateway,
    Server,
}

/// How one attempt on one path ended.
enum Attempt {
    /// Could not reach a usable session on this path; try the next.
    Unreachable(String),
    /// A session ran (or the server refused it); do not try other paths now.
    Ended {
        reason: String,
        retry_after: Option<Duration>,
        established: bool,
    },
}

fn targets(shared: &Shared) -> Vec<(Via, String)> {
    let server_list = shared
        .server_gateways
        .lock()
        .expect("gateways lock")
        .1
        .clone();
    let gws = if server_list.is_empty() {
        shared.config.gateways.clone()
    } else {
        server_list
    };
    let mut v: Vec<(Via, String)> = gws.into_iter().map(|g| (Via::Gateway, g)).collect();
    if !shared.config.server.is_empty() {
        v.push((Via::Server, shared.config.server.clone()));
    }
    v
}

async fn connect_loop(shared: Arc<Shared>) {
    let c = &shared.config.connect;
    let mut backoff = Backoff::new(BackoffConfig {
        initial: c.reconnect_initial,
        max: c.reconnect_max,
        healthy_after: c.healthy_after,
    });
    loop {
        if shared.shutdown.is_cancelled() {
            return;
        }
        shared.status.send_modify(|s| {
            s.state = "connecting".into();
            s.updated_at = outpost_net::unix_now();
        });
        let mut last = String::from("no gateway or server configured");
        let mut retry_after = None;
        for (via, target) in targets(&shared) {
            if shared.shutdown.is_cancelled() {
                return;
            }
            let started = Instant::now();
            match attempt(&shared, via, &target).await {
                Attempt::Unreachable(e) => {
                    debug!(%target, error = %e, "path unusable, trying the next");
                    last = e;
                }
                Attempt::Ended {
                    reason,
                    retry_after: ra,
                    established,
                } => {
                    if established {
                        backoff.on_connected(started.into_std());
                    }
                    last = reason;
                    retry_after = ra;
                    break;
                }
            }
        }
        backoff.on_disconnected(Instant::now().into_std());
        if let Some(d) = retry_after {
            backoff.on_retry_after(d);
        }
        let delay = backoff.next_delay(outpost_net::jitter_unit());
        info!(reason = %last, retry_in = ?delay, "offline");
        shared.status.send_modify(|s| {
            s.state = "offline".into();
            s.path.clear();
            s.last_error = last.clone();
            s.updated_at = outpost_net::unix_now();
        });
        let _ = shared
            .events
            .send(AgentEvent::Disconnected { reason: last });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

fn is_not_allowed(r: &Refused) -> bool {
    matches!(
        r.code().fault(),
        Fault::NotAllowed | Fault::PeerIncompatible
    )
}

/// A refusal that retrying soon cannot fix (revoked, unknown certificate, incompatible): come
/// back only after the longest backoff, so a fleet of such agents stays quiet.
fn refused_attempt(shared: &Shared, r: &Refused, established: bool) -> Attempt {
    let retry_after = if is_not_allowed(r) {
        let max = shared.config.connect.reconnect_max;
        Some(max.mul_f64(0.5 + outpost_net::jitter_unit() / 2.0))
    } else {
        r.retry_after()
    };
    Attempt::Ended {
        reason: r.to_string(),
        retry_after,
        established,
    }
}

async fn attempt(shared: &Arc<Shared>, via: Via, target: &str) -> Attempt {
    let addr: SocketAddr = match endpoint::resolve(target).await {
        Ok(a) => a,
        Err(e) => return Attempt::Unreachable(e.to_string()),
    };
    let (client, name, label) = match via {
        Via::Gateway => (
            shared.relay_client.clone(),
            pki::GATEWAY_NAME,
            format!("gateway {addr}"),
        ),
        Via::Server => (
            shared.direct_client.clone(),
            pki::SERVER_NAME,
            format!("server {addr} (direct)"),
        ),
    };
    let ep = match &shared.endpoint {
        Some(e) => e.clone(),
        None => match endpoint::client_endpoint(addr) {
            Ok(e) => e,
            Err(e) => return Attempt::Unreachable(e.to_string()),
        },
    };
    let connecting = match ep.connect_with(client, addr, name) {
        Ok(c) => c,
        Err(e) => return Attempt::Unreachable(refuse::explain_connect(&e)),
    };
    let conn = tokio::select! {
        r = tokio::time::timeout(shared.config.connect.dial_timeout, connecting) => match r {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return match refuse::refusal_of(&e) {
                    Some(r) if is_not_allowed(&r) => refused_attempt(shared, &r, false),
                    _ => Attempt::Unreachable(format!("{label}: {}", refuse::explain(&e))),
                };
            }
            Err(_) => return Attempt::Unreachable(format!("{label}: no answer within {:?}", shared.config.connect.dial_timeout)),
        },
        _ = shared.shutdown.cancelled() => return Attempt::Unreachable("shutting down".into()),
    };
    let result = on_connection(shared, via, &conn, &label).await;
    conn.close(quinn::VarInt::from_u32(0), b"session over");
    if shared.endpoint.is_none() {
        // Our own socket: let the close go out, then drop it.
        let _ = tokio::time::timeout(Duration::from_millis(200), ep.wait_idle()).await;
    }
    result
}

async fn on_connection(
    shared: &Arc<Shared>,
    via: Via,
    conn: &quinn::Connection,
    label: &str,
) -> Attempt {
    let closed_reason = |e: &quinn::ConnectionError| match refuse::refusal_of(e) {
        Some(r) => refused_attempt(shared, &r, false),
        None => Attempt::Unreachable(format!("{label}: {}", refuse::explain(e))),
    };
    let (send, recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return closed_reason(&e),
    };
    match via {
        Via::Server => run_session(shared, stream::bi(send, recv), label, conn).await,
        Via::Gateway => {
            let sni = ServerName::try_from(pki::SERVER_NAME).expect("static name");
            let tls = tokio::time::timeout(
                shared
                    .config
                    .connect
                    .dial_timeout
                    .max(Duration::from_secs(5)),
                shared.inner_tls.connect(sni, stream::bi(send, recv)),
            )
            .await;
            match tls {
                Ok(Ok(t)) => run_session(shared, t, label, conn).await,
                Ok(Err(e)) => {
                    if let Some(e) = conn.close_reason() {
                        return closed_reason(&e);
                    }
                    let why = match stream_reset_code(&e) {
                        Some(c) if c == RefusalCode::UpstreamUnavailable.close_code() as u64 => {
                            "the gateway has no uplink to the server right now".to_owned()
                        }
                        Some(c) if c == RefusalCode::Overloaded.close_code() as u64 => {
                            "the gateway is at its session limit".to_owned()
                        }
                        _ => format!("inner TLS with the server through the gateway failed: {e}"),
                    };
                    Attempt::Unreachable(format!("{label}: {why}"))
                }
                Err(_) => Attempt::Unreachable(format!(
                    "{label}: no TLS answer from the server through the gateway"
                )),
            }
        }
    }
}

/// The QUIC reset code inside an I/O error from a stream, if it is one.
fn stream_reset_code(e: &std::io::Error) -> Option<u64> {
    let inner = e.get_ref()?;
    match inner.downcast_ref::<quinn::ReadError>() {
        Some(quinn::ReadError::Reset(c)) => Some(c.into_inner()),
        _ => match inner.downcast_ref::<quinn::WriteError>() {
            Some(quinn::WriteError::Stopped(c)) => Some(c.into_inner()),
            _ => None,
        },
    }
}

async fn run_session<S>(
    shared: &Arc<Shared>,
    io: S,
    label: &str,
    conn: &quinn::Connection,
) -> Attempt
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut f = stream::framed(io, MAX_FRAME);
    let timeout = shared.config.connect.sync_timeout;
    let mut sm = ClientSession::new(
        hello(
            Role::Agent,
            &format!("outpost-agent {}", outpost_proto::SOFTWARE_VERSION),
            &[],
        ),
        timeout,
    );
    let setup_deadline = Instant::now() + timeout;
    let mut established = false;
    let end = |reason: String, retry_after: Option<Duration>, established: bool| Attempt::Ended {
        reason,
        retry_after,
        established,
    };
    loop {
        // Drive the state machine until it has nothing more to say or do.
        loop {
            let mut progressed = false;
            while let Some(m) = sm.poll_transmit() {
                progressed = true;
                if let Err(e) = f.feed(m).await {
                    return end(format!("{label}: write failed: {e}"), None, established);
                }
            }
            if progressed && f.flush().await.is_err() {
                return end(format!("{label}: connection lost"), None, established);
            }
            while let Some(ev) = sm.poll_event() {
                progressed = true;
                on_event(shared, &mut sm, ev, label, &mut established).await;
            }
            if !progressed {
                break;
            }
        }
        let deadline = match sm.poll_timeout() {
            Some(t) => Instant::from_std(t),
            None if !sm.is_ready() => setup_deadline,
            None => Instant::now() + Duration::from_secs(3600),
        };
        tokio::select! {
            m = f.next() => match m {
                Some(Ok(msg)) => {
                    if let Err(e) = sm.handle_message(msg, Instant::now().into_std()) {
                        return match e {
                            SessionError::Refused(r) => {
                                warn!(refusal = %r, "session refused by the server");
                                refused_attempt(shared, &r, established)
                            }
                            other => end(format!("{label}: {other}"), None, established),
                        };
                    }
                }
                Some(Err(e)) => return ended_by_peer(shared, conn, label, established, e.to_string()).await,
                None => return ended_by_peer(shared, conn, label, established, "the server ended the session".into()).await,
            },
            _ = tokio::time::sleep_until(deadline) => {
                if !sm.is_ready() && Instant::now() >= setup_deadline {
                    return end(format!("{label}: no licence check answer within {timeout:?}"), None, established);
                }
                if let Err(e) = sm.handle_timeout(Instant::now().into_std()) {
                    return end(format!("{label}: {e}"), None, established);
                }
            }
            _ = shared.nudge.notified() => sm.request_sync(Instant::now().into_std()),
            _ = shared.shutdown.cancelled() => {
                let _ = f.close().await;
                return end("shutting down".into(), None, established);
            }
        }
    }
}

/// The session stream ended without a refusal on it: if the whole connection is closing with a
/// refusal (revoked, shutting down …), that is the real reason.
async fn ended_by_peer(
    shared: &Shared,
    conn: &quinn::Connection,
    label: &str,
    established: bool,
    fallback: String,
) -> Attempt {
    // The stream can end a moment before the connection close arrives.
    let reason = match conn.close_reason() {
        Some(e) => Some(e),
        None => tokio::time::timeout(Duration::from_millis(250), conn.closed())
            .await
            .ok(),
    };
    match reason {
        Some(e) => match refuse::refusal_of(&e) {
            Some(r) => refused_attempt(shared, &r, established),
            None => Attempt::Ended {
                reason: format!("{label}: {}", refuse::explain(&e)),
                retry_after: None,
                established,
            },
        },
        None => Attempt::Ended {
            reason: format!("{label}: {fallback}"),
            retry_after: None,
            established,
        },
    }
}

async fn on_event(
    shared: &Arc<Shared>,
    sm: &mut ClientSession,
    ev: ClientEvent,
    label: &str,
    established: &mut bool,
) {
    let now = outpost_net::unix_now();
    match ev {
        ClientEvent::Established { version, device_id } => {
            if device_id != shared.identity.device_id {
                warn!(server_says = %device_id, "the server knows this certificate under another device id");
            }
            *established = true;
            info!(path = %label, version, "session established");
            shared.status.send_modify(|s| {
                s.state = "connected".into();
                s.path = label.to_owned();
                s.sessions += 1;
                s.last_error.clear();
                s.updated_at = now;
            });
            let _ = shared.events.send(AgentEvent::Connected {
                path: label.to_owned(),
            });
        }
        ClientEvent::Licence(status) => {
            // File I/O with fsync: off the async worker threads.
            let sh = shared.clone();
            let stored = tokio::task::spawn_blocking(move || sh.grants.store(&status)).await;
            match stored {
                Ok(Ok(())) => shared.grants_changed.notify_one(),
                Ok(Err(e)) => warn!(error = %e, "licence status from the server not stored"),
                Err(e) => warn!(error = %e, "licence store task failed"),
            }
        }
        ClientEvent::SyncDue => {
            let (q, batch) = (shared.queue.clone(), shared.config.queue.batch);
            let events = tokio::task::spawn_blocking(move || q.peek(batch, MAX_FRAME / 2))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let rev = shared.server_gateways.lock().expect("gateways lock").0;
            let req = SyncRequest {
                seq: 0,
                inventory: Some(shared.inventory.clone()),
                events,
                known: Some(Versions {
                    gateways: rev,
                    ..Default::default()
                }),
            };
            sm.send_sync(req, Instant::now().into_std());
        }
        ClientEvent::Synced(resp) => {
            let q = shared.queue.clone();
            let ids = resp.acked_event_ids.clone();
            let (acked, depth) = tokio::task::spawn_blocking(move || {
                let acked = q.ack(&ids).unwrap_or_else(|e| {
                    warn!(error = %e, "could not delete acknowledged events (they will be resent and de-duplicated)");
                    0
                });
                (acked, q.len())
            })
            .await
            .unwrap_or((0, 0));
            if let Some(g) = resp.gateways {
                let mut cur = shared.server_gateways.lock().expect("gateways lock");
                *cur = (g.revision, g.addresses);
                let _ = outpost_net::fsutil::write_atomic(
                    &shared.data.join("gateways.json"),
                    serde_json::to_string(&*cur).unwrap_or_default().as_bytes(),
                    false,
                );
            }
            if depth > 0 && acked > 0 {
                // More waiting: keep draining.
                sm.request_sync(Instant::now().into_std());
            }
            shared.status.send_modify(|s| {
                s.last_sync = now;
                s.queue_depth = depth;
                s.updated_at = now;
            });
            let _ = shared.events.send(AgentEvent::Synced { acked });
        }
        ClientEvent::Push(p) => {
            let kind = PushKind::try_from(p.kind)
                .map(|k| k.as_str_name())
                .unwrap_or("PUSH_KIND_UNKNOWN");
            let kind = kind
                .trim_start_matches("PUSH_KIND_")
                .to_lowercase()
                .replace('_', "-");
            let text = String::from_utf8_lossy(&p.payload).into_owned();
            info!(push = %p.id, %kind, %text, "push received");
            shared.status.send_modify(|s| {
                s.pushes_received += 1;
                s.last_push = if text.is_empty() {
                    kind.clone()
                } else {
                    format!("{kind}: {text}")
                };
                s.updated_at = now;
            });
            let _ = shared.events.send(AgentEvent::Push(p));
        }
    }
}
