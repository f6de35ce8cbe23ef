//! The registry of live sessions and push delivery to them (T7).
//!
//! Every established agent session registers a bounded sender here. A push is first stored
//! (so it survives a restart and reaches an offline device at its next connect), then handed
//! to the live session if there is one; the agent's acknowledgement deletes it. Delivery is
//! therefore at least once; push ids let the agent recognise a repeat.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use outpost_proto::error::Refused;
use outpost_proto::pb::v1::Push;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// One live session, owned by its session task.
struct Entry {
    session: u64,
    /// The gateway the session is relayed through (None: direct).
    via: Option<String>,
    tx: mpsc::Sender<Push>,
    /// Ends the session with this refusal (revoked, removed, S8).
    kick: oneshot::Sender<Refused>,
}

/// What a session task keeps of its registration.
#[derive(Debug)]
pub struct Registration {
    /// Its id in the registry.
    pub session: u64,
    /// Pushes for it.
    pub pushes: mpsc::Receiver<Push>,
    /// Resolves when an administrator ends the device's session (or a newer session of the
    /// same device replaced this one: then the sender is gone).
    pub kicked: oneshot::Receiver<Refused>,
}

/// Registry of live sessions. Shared by all tasks; each map has its own lock, held only for
/// map operations.
#[derive(Default)]
pub struct Registry {
    /// device id → live session.
    live: Mutex<HashMap<String, Entry>>,
    /// (device id, push id) → who waits for the acknowledgement.
    waiters: Mutex<HashMap<(String, String), oneshot::Sender<Instant>>>,
    next_session: AtomicU64,
    /// Pushes not handed to a live session because its queue was full (they stay stored).
    pub dropped_queue_full: AtomicU64,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("online", &self.online_count())
            .finish()
    }
}

/// Devices sorted by the path of their live session ([`Registry::by_path`]).
#[derive(Debug, Default)]
pub struct ByPath {
    /// Gateway id → devices relayed through it.
    pub via: HashMap<String, Vec<String>>,
    /// Devices connected directly.
    pub direct: Vec<String>,
    /// Devices without a live session here.
    pub offline: Vec<String>,
}

/// What became of a push handed to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Written to a live session.
    Sent,
    /// No live session: stays queued for the next connect.
    Offline,
    /// The session's queue was full: stays queued (counted in `dropped_queue_full`).
    QueueFull,
}

impl Registry {
    /// Registers a live session for a device, replacing an older one; at most `queue` pushes
    /// wait for it.
    pub fn register(&self, device: &str, queue: usize, via: Option<&str>) -> Registration {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (tx, pushes) = mpsc::channel(queue.max(1));
        let (kick, kicked) = oneshot::channel();
        self.live.lock().expect("registry lock").insert(
            device.to_owned(),
            Entry {
                session,
                via: via.map(str::to_owned),
                tx,
                kick,
            },
        );
        Registration {
            session,
            pushes,
            kicked,
        }
    }

    /// Removes a session, unless a newer one for the same device replaced it.
    pub fn unregister(&self, device: &str, session: u64) {
        let mut live = self.live.lock().expect("registry lock");
        if live.get(device).is_some_and(|e| e.session == session) {
            live.remove(device);
        }
    }

    /// Ends a device's live session (revoked, removed) with a refusal it can act on (S8).
    /// Returns whether it had one.
    pub fn kick(&self, device: &str, why: Refused) -> bool {
        match self.live.lock().expect("registry lock").remove(device) {
            Some(e) => {
                let _ = e.kick.send(why);
                true
            }
            None => false,
        }
    }

    /// Whether the device has a live session.
    pub fn is_online(&self, device: &str) -> bool {
        self.live
            .lock()
            .expect("registry lock")
            .contains_key(device)
    }

    /// The gateway a device's live session is relayed through: None when it has no live
    /// session, Some(None) when it is direct.
    pub fn via(&self, device: &str) -> Option<Option<String>> {
        self.live
            .lock()
            .expect("registry lock")
            .get(device)
            .map(|e| e.via.clone())
    }

    /// Sorts devices by how their live session reaches this server: per gateway, direct, and
    /// those without a live session here.
    pub fn by_path(&self, devices: &[String]) -> ByPath {
        let live = self.live.lock().expect("registry lock");
        let mut out = ByPath::default();
        for d in devices {
            match live.get(d) {
                Some(Entry { via: Some(g), .. }) => {
                    out.via.entry(g.clone()).or_default().push(d.clone())
                }
                Some(_) => out.direct.push(d.clone()),
                None => out.offline.push(d.clone()),
            }
        }
        out
    }

    /// Number of live sessions.
    pub fn online_count(&self) -> usize {
        self.live.lock().expect("registry lock").len()
    }

    /// Ids of devices with a live session.
    pub fn online(&self) -> Vec<String> {
        self.live
            .lock()
            .expect("registry lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Asks every live session to sync now (not stored: a device offline now syncs when it
    /// connects anyway). Used when something every device must learn changed (S9 trust).
    pub fn nudge_all(&self) {
        self.nudge(&self.online());
    }

    /// Asks the live sessions of `devices` to sync now; returns how many were live here.
    pub fn nudge(&self, devices: &[String]) -> usize {
        let now_ms = outpost_net::unix_now_ms();
        let mut live = 0;
        for (i, device) in devices.iter().enumerate() {
            let sent = self.send(
                device,
                Push {
                    id: format!("nudge-{now_ms}-{i}"),
                    kind: outpost_proto::pb::v1::PushKind::SyncNow as i32,
                    payload: Vec::new(),
                    created_at_ms: now_ms,
                },
            );
            live += usize::from(!matches!(sent, Delivery::Offline));
        }
        live
    }

    /// Hands a push to the device's live session.
    pub fn send(&self, device: &str, push: Push) -> Delivery {
        let tx = match self.live.lock().expect("registry lock").get(device) {
            Some(e) => e.tx.clone(),
            None => return Delivery::Offline,
        };
        match tx.try_send(push) {
            Ok(()) => Delivery::Sent,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
                Delivery::QueueFull
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Offline,
        }
    }

    /// Starts waiting for the acknowledgement of a push.
    pub fn wait_ack(&self, device: &str, push_id: &str) -> oneshot::Receiver<Instant> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .expect("registry lock")
            .insert((device.to_owned(), push_id.to_owned()), tx);
        rx
    }

    /// Stops waiting (timeout).
    pub fn forget_ack(&self, device: &str, push_id: &str) {
        self.waiters
            .lock()
            .expect("registry lock")
            .remove(&(device.to_owned(), push_id.to_owned()));
    }

    /// The agent acknowledged a push.
    pub fn acked(&self, device: &str, push_id: &str) {
        if let Some(tx) = self
            .waiters
            .lock()
            .expect("registry lock")
            .remove(&(device.to_owned(), push_id.to_owned()))
        {
            let _ = tx.send(Instant::now());
        }
    }
}

/// Waits for an acknowledgement up to `wait`; returns the latency if it came.
pub async fn await_ack(
    registry: &Registry,
    device: &str,
    push_id: &str,
    rx: oneshot::Receiver<Instant>,
    started: Instant,
    wait: Duration,
) -> Option<Duration> {
    match tokio::time::timeout(wait, rx).await {
        Ok(Ok(at)) => Some(at.saturating_duration_since(started)),
        _ => {
            registry.forget_ack(device, push_id);
            None
        }
    }
}
