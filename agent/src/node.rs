//! The running agent: its shared state, the handle, start and shutdown, the status writer.
//!
//! Three tasks: the connect loop ([`crate::connect`]: path selection T8, reconnects T6, one
//! live session at a time driven by [`crate::session`]), the licence clock
//! ([`crate::grants::licence_clock`], L5, L7) and the status writer. Through a gateway the
//! session is an inner TLS 1.3 session with the server inside a stream of the agent's
//! connection to the gateway (S1); directly it is a stream of a connection to the server.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_net::identity::{DeviceIdentity, IdentityError};
use outpost_proto::pb::v1::{Inventory, Push};
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use crate::config::AgentConfig;
use crate::grants::{Grants, LicenceState};
use crate::queue::{Queue, QueueError};
use crate::status::{self, AgentStatus};

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// `agent.toml` is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] outpost_net::config::ConfigError),
    /// The stored identity is unreadable.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The agent never enrolled.
    #[error("{0} holds no agent identity: start once with --token <enrollment token>")]
    NotEnrolled(String),
    /// The event queue could not be opened.
    #[error("cannot open the event queue: {0}")]
    Queue(#[from] std::io::Error),
    /// TLS could not be set up from the stored certificates.
    #[error("TLS set-up: {0}")]
    Tls(String),
}

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
    /// A new policy was received and kept (D5).
    Policy {
        /// Its revision.
        revision: u64,
    },
    /// A new task list was received and kept (D5).
    Tasks {
        /// Its revision.
        revision: u64,
        /// Tasks in it.
        count: usize,
    },
    /// A new update manifest was verified and kept (D1).
    Manifest {
        /// Its revision.
        revision: u64,
    },
    /// A revision's files were fetched and handed to the update handler (D2).
    UpdateHandled {
        /// Its revision.
        revision: u64,
    },
    /// A task run ended and its result was queued (D5).
    TaskDone {
        /// The task.
        task: String,
        /// The run.
        run: u64,
        /// ok, failed, …
        outcome: String,
    },
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
    /// Tests: stop dead the moment a sync answer acknowledges events, before they leave the
    /// queue — as if the process were killed between the server's commit and the agent's
    /// deletion (S5). The status says `crashed`.
    pub die_before_ack: bool,
}

/// What the agent's tasks share. Immutable after start except behind the watch, the notifies
/// and the gateway-list lock.
pub(crate) struct Shared {
    pub(crate) data: PathBuf,
    pub(crate) config: AgentConfig,
    /// Device id (never changes).
    pub(crate) device_id: String,
    /// Identity and TLS configurations; swapped on renewal or a new CA set (S9).
    pub(crate) tls: crate::certs::Current,
    pub(crate) queue: Queue,
    pub(crate) inventory: Inventory,
    /// A shared endpoint for every connection (benchmarks); else one per attempt.
    pub(crate) endpoint: Option<quinn::Endpoint>,
    /// The status; written by the tasks, read by `status.json` and observers.
    pub(crate) status: watch::Sender<AgentStatus>,
    pub(crate) events: broadcast::Sender<AgentEvent>,
    /// Wakes the session to sync now (new local events).
    pub(crate) nudge: Notify,
    /// Bumped to end the current session; the connect loop starts over at once.
    pub(crate) reconnect: watch::Sender<u64>,
    /// Wakes the licence clock (grants changed).
    pub(crate) grants_changed: Notify,
    /// Stored grants.
    pub(crate) grants: Grants,
    pub(crate) shutdown: CancellationToken,
    /// Gateway and server lists sent by the server, with their revision.
    pub(crate) server_gateways: Mutex<Learned>,
    /// Ids of the pushes received lately: one delivered twice (its acknowledgement was not yet
    /// committed when a server instance caught up on its mailbox, P2) is acknowledged again
    /// but acted on once.
    pub(crate) recent_pushes: Mutex<std::collections::VecDeque<String>>,
    /// The policy held (D5), kept in `policy.json`.
    pub(crate) policy: Mutex<HeldPolicy>,
    /// The device's group as the server last said (enrollment, then every sync): decides
    /// which broadcasts are for it (D4).
    pub(crate) group: Mutex<String>,
    /// The tasks held (D5), kept in `tasks.json` with the runs handled.
    pub(crate) tasks: Mutex<crate::tasks::HeldTasks>,
    /// The update manifest held (D1), kept in `update.json`.
    pub(crate) update: Mutex<crate::updates::HeldUpdate>,
    /// Wakes the task runner (a new list).
    pub(crate) tasks_changed: Notify,
    /// Wakes the update download (a new manifest, an `update-available` push, connected).
    pub(crate) update_wake: Notify,
    /// The path the session uses now (update downloads go the same way, D2).
    pub(crate) path_now: Mutex<Option<(crate::connect::Via, std::net::SocketAddr)>>,
    /// See [`StartOptions::die_before_ack`].
    pub(crate) die_before_ack: bool,
}

impl Shared {
    /// The identity and TLS configurations of the moment.
    pub(crate) fn tls(&self) -> Arc<crate::certs::Tls> {
        self.tls.read().expect("tls lock").clone()
    }
}

/// A running agent.
pub struct AgentHandle {
    shared: Arc<Shared>,
    tasks: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for AgentHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHandle")
            .field("device", &self.shared.device_id)
            .finish()
    }
}

impl AgentHandle {
    /// Device id.
    pub fn device_id(&self) -> &str {
        &self.shared.device_id
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

    /// Ends the current session (if one is running) and connects again at once, from the first path (what a
    /// network-change handler calls; benchmarks measure reconnects with it). Kept TLS session
    /// tickets let the new inner session resume.
    pub fn reconnect(&self) {
        self.shared.reconnect.send_modify(|g| *g += 1);
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
pub fn start(data: &Path, opts: StartOptions) -> Result<AgentHandle, StartError> {
    let config = match opts.config {
        Some(c) => c,
        None => AgentConfig::load(&config_path(data))?,
    };
    config.validate()?;
    outpost_net::identity::complete_renewal(data)?;
    let identity = DeviceIdentity::load(data)?
        .ok_or_else(|| StartError::NotEnrolled(data.display().to_string()))?;
    let queue = Queue::open(data, config.queue.max_events)?;
    let tls = crate::certs::build(identity, &config).map_err(StartError::Tls)?;
    let inventory = outpost_net::identity::inventory(
        (!config.hostname.is_empty()).then_some(config.hostname.as_str()),
        (!config.machine_id.is_empty()).then_some(config.machine_id.as_str()),
        data,
        &format!("outpost-agent {}", outpost_proto::SOFTWARE_VERSION),
    );
    let saved_gateways = load_gateways(data);
    let identity = &tls.identity;
    let group = identity.group.clone();
    let grants = Grants::open(data, &identity.device_id, &identity.grant_public_key);
    let licence = grants.state(outpost_net::unix_now());
    let saved_policy = HeldPolicy::load(data);
    let saved_tasks = crate::tasks::HeldTasks::load(data);
    let saved_update = crate::updates::HeldUpdate::load(data);
    let initial = AgentStatus {
        update_revision: saved_update.revision,
        update_files: saved_update.manifest().map_or(0, |m| m.files.len()),
        tasks_held: saved_tasks.tasks.len(),
        policy_revision: saved_policy.revision,
        policy: saved_policy.document.clone(),
        device_id: identity.device_id.clone(),
        pid: std::process::id(),
        updated_at: outpost_net::unix_now(),
        state: "starting".into(),
        licence,
        queue_depth: queue.len(),
        cert_expires_at: identity.expires_at(),
        ..Default::default()
    };
    let (status_tx, _) = watch::channel(initial);
    let shared = Arc::new(Shared {
        data: data.to_owned(),
        config,
        device_id: identity.device_id.clone(),
        tls: std::sync::RwLock::new(Arc::new(tls)),
        queue,
        inventory,
        endpoint: opts.endpoint,
        status: status_tx,
        events: broadcast::channel(64).0,
        nudge: Notify::new(),
        reconnect: watch::channel(0).0,
        grants_changed: Notify::new(),
        grants,
        shutdown: CancellationToken::new(),
        server_gateways: Mutex::new(saved_gateways),
        recent_pushes: Default::default(),
        policy: Mutex::new(saved_policy.clone()),
        group: Mutex::new(group),
        tasks: Mutex::new(saved_tasks),
        update: Mutex::new(saved_update),
        tasks_changed: Notify::new(),
        update_wake: Notify::new(),
        path_now: Mutex::new(None),
        die_before_ack: opts.die_before_ack,
    });
    let tasks = tokio_util::task::TaskTracker::new();
    let span = info_span!("agent", device = %shared.device_id);
    let hold = opts.hold;
    let sh = shared.clone();
    tasks.spawn(
        async move {
            if let Some(mut h) = hold {
                let _ = h.wait_for(|go| *go).await;
            }
            crate::connect::connect_loop(sh).await
        }
        .instrument(span.clone()),
    );
    tasks.spawn(crate::grants::licence_clock(shared.clone()).instrument(span.clone()));
    tasks.spawn(crate::tasks::runner(shared.clone()).instrument(span.clone()));
    tasks.spawn(crate::install::run(shared.clone()).instrument(span));
    if !opts.no_status_file {
        tasks.spawn(status_writer(shared.clone()));
    }
    Ok(AgentHandle { shared, tasks })
}

/// The paths the server sent at sync (T8, P2), kept in `gateways.json` across restarts.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Learned {
    /// The list's revision (0: none received).
    pub revision: u64,
    /// Gateways in order; replaces the configured ones when not empty.
    pub gateways: Vec<String>,
    /// The deployment's server instances; tried before the configured `server` addresses.
    #[serde(default)]
    pub servers: Vec<String>,
}

impl Learned {
    /// Keeps a list received at sync.
    pub(crate) fn save(&self, data: &Path) {
        let _ = crate::kept::save(data, "gateways.json", self);
    }
}

/// The policy an agent holds (D5): the server's merged settings for its group, and their
/// revision; kept in `policy.json` across restarts.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct HeldPolicy {
    /// 0: none received.
    pub revision: u64,
    /// The settings.
    pub document: serde_json::Value,
}

impl HeldPolicy {
    fn load(data: &Path) -> HeldPolicy {
        crate::kept::load(data, "policy.json")
    }

    /// Keeps a policy received at sync (written before the status shows it).
    pub(crate) fn save(&self, data: &Path) -> std::io::Result<()> {
        crate::kept::save(data, "policy.json", self)
    }
}

/// A policy received at sync (D5): kept, then shown. A document that is not JSON is not
/// kept (the agent asks again at the next sync: its revision did not move).
pub(crate) fn on_policy(shared: &Shared, p: outpost_proto::pb::v1::Policy) {
    let document = match serde_json::from_str(&p.document) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "policy from the server is not JSON; keeping the one held");
            return;
        }
    };
    let held = HeldPolicy {
        revision: p.revision,
        document,
    };
    if let Err(e) = held.save(&shared.data) {
        tracing::warn!(error = %e, "policy not saved; asked for again at the next sync");
        return;
    }
    tracing::info!(revision = %format!("{:016x}", held.revision), "policy received");
    let _ = shared.events.send(AgentEvent::Policy {
        revision: held.revision,
    });
    shared.status.send_modify(|s| {
        s.policy_revision = held.revision;
        s.policy = held.document.clone();
    });
    *shared.policy.lock().expect("policy lock") = held;
}

/// The saved list; one in the format of earlier versions (`[revision, [gateways]]`) or damaged
/// counts as none: the server sends it again at the next sync.
fn load_gateways(data: &Path) -> Learned {
    crate::kept::load(data, "gateways.json")
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
