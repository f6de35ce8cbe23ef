//! Waking the other instances on a shared PostgreSQL database (P2).
//!
//! The database is the truth; `LISTEN/NOTIFY` on channel `outpost` only wakes instances up.
//! Payloads are `<instance>:epoch` (licences may have changed: sessions re-check, as after a
//! local change), `<instance>:gone:<revoked|removed>:<device>` (end that device's session
//! here) and `<instance>:push:<push id>:<device>` (a push is in the device's mailbox, the
//! `pushes` table: the instance holding its session delivers it), `<instance>:sync:<group>`
//! (devices of the group and below sync now: their policy changed). An instance ignores its own. A notification can be missed (the listening connection
//! dropped): after every (re)connect of the listener the instance catches up from the
//! database — it moves its licence epoch and re-checks every session it holds against the
//! devices table ([`Remote::CatchUp`]).

use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use super::backend::Pool;

const CHANNEL: &str = "outpost";

/// What another instance announced, for the node to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    /// The device was revoked (`removed: false`) or removed through another instance: its
    /// session here ends.
    Gone {
        /// The device.
        device: String,
        /// Removed rather than revoked.
        removed: bool,
    },
    /// A push was queued through another instance for a device that was not connected there:
    /// delivered from the mailbox if its session is here.
    Push {
        /// The device.
        device: String,
        /// The push.
        push_id: String,
    },
    /// A group's policy changed through another instance: the sessions here of devices in it
    /// and below sync now (a missed one arrives at their next periodic sync).
    Sync {
        /// The group.
        group: String,
    },
    /// Notifications may have been missed: check every session held here against the database.
    CatchUp,
}

/// This instance's side of the wake-ups.
#[derive(Debug, Clone)]
pub struct Waker {
    instance: String,
    write: Pool,
    remote: broadcast::Sender<Remote>,
    /// Local licence changes to announce (coalesced by the watch).
    changes: watch::Sender<u64>,
    /// Ends both tasks (the store closed).
    stop: tokio_util::sync::CancellationToken,
}

impl Waker {
    /// Starts listening at `url` and announcing local changes; remote epochs move `epoch`.
    pub fn start(
        url: &str,
        instance: &str,
        write: Pool,
        epoch: std::sync::Arc<watch::Sender<u64>>,
    ) -> Waker {
        let w = Waker {
            instance: instance.to_owned(),
            write,
            remote: broadcast::channel(1024).0,
            changes: watch::Sender::new(0),
            stop: tokio_util::sync::CancellationToken::new(),
        };
        let stop = w.stop.clone();
        let listener = listen(url.to_owned(), w.clone(), epoch);
        tokio::spawn(async move {
            tokio::select! {
                _ = listener => {}
                _ = stop.cancelled() => {}
            }
        });
        let stop = w.stop.clone();
        let announcer = announce_changes(w.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = announcer => {}
                _ = stop.cancelled() => {}
            }
        });
        w
    }

    /// Stops listening and announcing.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Announcements from other instances.
    pub fn subscribe(&self) -> broadcast::Receiver<Remote> {
        self.remote.subscribe()
    }

    /// A local commit changed licences: the other instances are told (at most every 100 ms).
    pub fn licence_changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// A device was revoked or removed here: the instance holding its session ends it.
    pub async fn gone(&self, device: &str, removed: bool) {
        let what = if removed { "removed" } else { "revoked" };
        self.notify(&format!("{}:gone:{what}:{device}", self.instance))
            .await;
    }

    /// Something devices of `group` and below must learn changed (a policy): they sync now.
    pub async fn sync(&self, group: &str) {
        self.notify(&format!("{}:sync:{group}", self.instance))
            .await;
    }

    /// A push for `device` is in the mailbox; the instance holding its session delivers it.
    pub async fn pushed(&self, device: &str, push_id: &str) {
        self.notify(&format!("{}:push:{push_id}:{device}", self.instance))
            .await;
    }

    async fn notify(&self, payload: &str) {
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(&self.write)
            .await
        {
            // The others catch up when they next read; nothing is lost but the wake-up.
            warn!(error = %e, "could not wake the other instances");
        }
    }
}

async fn announce_changes(w: Waker) {
    let mut rx = w.changes.subscribe();
    while rx.changed().await.is_ok() {
        w.notify(&format!("{}:epoch", w.instance)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn listen(url: String, w: Waker, epoch: std::sync::Arc<watch::Sender<u64>>) {
    let mut delay = Duration::from_millis(200);
    loop {
        let mut l = match PgListener::connect(&url).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot listen for other instances; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        if let Err(e) = l.listen(CHANNEL).await {
            warn!(error = %e, "cannot listen for other instances; retrying");
            tokio::time::sleep(delay).await;
            continue;
        }
        delay = Duration::from_millis(200);
        info!("listening for other instances on the shared database");
        // Whatever was announced while not listening: catch up from the database.
        epoch.send_modify(|e| *e += 1);
        let _ = w.remote.send(Remote::CatchUp);
        loop {
            match l.try_recv().await {
                Ok(Some(n)) => {
                    let Some((from, what)) = n.payload().split_once(':') else {
                        continue;
                    };
                    if from == w.instance {
                        continue;
                    }
                    if what == "epoch" {
                        epoch.send_modify(|e| *e += 1);
                    } else if let Some(rest) = what.strip_prefix("push:")
                        && let Some((push_id, device)) = rest.split_once(':')
                    {
                        let _ = w.remote.send(Remote::Push {
                            device: device.to_owned(),
                            push_id: push_id.to_owned(),
                        });
                    } else if let Some(group) = what.strip_prefix("sync:") {
                        let _ = w.remote.send(Remote::Sync {
                            group: group.to_owned(),
                        });
                    } else if let Some(rest) = what.strip_prefix("gone:")
                        && let Some((how, device)) = rest.split_once(':')
                    {
                        let _ = w.remote.send(Remote::Gone {
                            device: device.to_owned(),
                            removed: how == "removed",
                        });
                    }
                }
                // The connection dropped (sqlx reconnects on the next call); announcements in
                // between may be lost: catch up.
                Ok(None) => {
                    epoch.send_modify(|e| *e += 1);
                    let _ = w.remote.send(Remote::CatchUp);
                }
                Err(e) => {
                    warn!(error = %e, "listening for other instances failed; reconnecting");
                    break;
                }
            }
        }
    }
}
