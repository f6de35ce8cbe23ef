//! The gateways connected now (T3, T4): one uplink per gateway, with its last report.
//! Written by the uplink tasks; read by admin status, device lists and pushes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use outpost_proto::pb::admin::GatewayLinkInfo;
use outpost_proto::pb::v1::GatewayReport;
use outpost_proto::pb::v1::envelope::Msg;
use tokio::sync::mpsc;

/// Messages waiting for one gateway's control stream (broadcasts, D4); more are dropped and
/// counted (the agents then get the push in their own sessions).
const DIRECTIVE_QUEUE: usize = 64;

/// Who opened an uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The gateway dialled the server (T3).
    DialIn,
    /// The server dialled a gateway in a DMZ (T4).
    Dmz,
}

impl Direction {
    /// The path a gateway's record shows (`device list`): who dialled, and the address.
    pub fn describe(self, remote: std::net::SocketAddr) -> String {
        match self {
            Direction::DialIn => format!("uplink from {remote}"),
            Direction::Dmz => format!("uplink to {remote} (DMZ, dialled by the server)"),
        }
    }

    /// As shown by `admin status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::DialIn => "dial-in",
            Direction::Dmz => "dmz",
        }
    }
}

#[derive(Debug)]
struct Link {
    connection: quinn::Connection,
    since: i64,
    direction: Direction,
    report: GatewayReport,
    /// To the uplink's control stream.
    directives: mpsc::Sender<Msg>,
}

/// Connected gateways by device id. The lock is held only for map operations.
#[derive(Debug, Default)]
pub struct Gateways {
    links: Mutex<HashMap<String, Link>>,
    /// Messages for a control stream whose queue was full.
    pub dropped_directives: AtomicU64,
}

impl Gateways {
    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<String, Link>> {
        self.links.lock().expect("gateways lock")
    }

    /// Records a gateway's uplink as up (replacing an older one). The receiver is for its
    /// control stream: messages [`Gateways::send`] hands it.
    pub fn up(
        &self,
        id: &str,
        connection: quinn::Connection,
        since: i64,
        direction: Direction,
    ) -> mpsc::Receiver<Msg> {
        let (directives, rx) = mpsc::channel(DIRECTIVE_QUEUE);
        self.links().insert(
            id.to_owned(),
            Link {
                connection,
                since,
                direction,
                report: GatewayReport::default(),
                directives,
            },
        );
        rx
    }

    /// Hands a message to a gateway's control stream. False when its uplink is not up here or
    /// its queue is full (counted).
    pub fn send(&self, id: &str, msg: Msg) -> bool {
        let Some(tx) = self.links().get(id).map(|l| l.directives.clone()) else {
            return false;
        };
        match tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped_directives.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Records an uplink as gone, unless a newer one already replaced it. Returns whether it
    /// was removed.
    pub fn down(&self, id: &str, connection: &quinn::Connection) -> bool {
        let mut links = self.links();
        let current = links
            .get(id)
            .is_some_and(|l| l.connection.stable_id() == connection.stable_id());
        if current {
            links.remove(id);
        }
        current
    }

    /// Ends a gateway's uplink with a refusal (revoked, removed). Returns whether it was up.
    pub fn disconnect(&self, id: &str, why: &outpost_proto::error::Refused) -> bool {
        match self.links().get(id) {
            Some(l) => {
                outpost_net::refuse::close(&l.connection, why);
                true
            }
            None => false,
        }
    }

    /// Keeps a gateway's latest report.
    pub fn report(&self, id: &str, report: GatewayReport) {
        if let Some(l) = self.links().get_mut(id) {
            l.report = report;
        }
    }

    /// The path of an uplink that is up, as it is now (its address changes when the
    /// gateway's NAT rebinds, T5).
    pub fn path(&self, id: &str) -> Option<String> {
        self.links()
            .get(id)
            .map(|l| l.direction.describe(l.connection.remote_address()))
    }

    /// Whether the gateway's uplink is up.
    pub fn is_up(&self, id: &str) -> bool {
        self.links().contains_key(id)
    }

    /// The gateways whose uplink is up.
    pub fn ids(&self) -> Vec<String> {
        self.links().keys().cloned().collect()
    }

    /// How many uplinks are up.
    pub fn count(&self) -> usize {
        self.links().len()
    }

    /// Every uplink, for `admin status`.
    pub fn infos(&self) -> Vec<GatewayLinkInfo> {
        let mut v: Vec<GatewayLinkInfo> = self
            .links()
            .iter()
            .map(|(id, l)| GatewayLinkInfo {
                device_id: id.clone(),
                remote: l.connection.remote_address().to_string(),
                rtt_ms: l.connection.rtt().as_millis() as u32,
                agents_connected: l.report.agents_connected,
                sessions_relayed: l.report.sessions_relayed,
                connected_since: l.since,
                direction: l.direction.as_str().into(),
                connection_id: l.connection.stable_id() as u64,
                bytes_down: l.connection.stats().udp_tx.bytes,
                bytes_up: l.connection.stats().udp_rx.bytes,
                cache_revision: l.report.cache_revision,
                cache_bytes: l.report.cache_bytes,
                cache_hits: l.report.cache_hits,
                cache_misses: l.report.cache_misses,
                cache_upstream_bytes: l.report.cache_upstream_bytes,
                cache_refused_blocks: l.report.cache_refused_blocks,
            })
            .collect();
        v.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        v
    }
}
