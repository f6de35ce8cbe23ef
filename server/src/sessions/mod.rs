//! Agent sessions on the server (S2–S5, T7, T9): the bound on concurrent sessions, the
//! registry of live ones (for pushes and kicks), counters, and the session driver.
//!
//! A session is one stream — a QUIC bidi stream of a direct agent connection, or the inner TLS
//! session inside a stream relayed by a gateway (S1). Either way the same driver runs
//! ([`driver`]), around `outpost_proto::session::ServerSession`.

pub mod driver;
pub mod registry;
mod sync;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use registry::{Delivery, Registry, await_ack};

/// Counters, for status and tests. Each is only ever incremented.
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
    /// Relayed sessions whose inner TLS handshake completed.
    pub relayed: AtomicU64,
    /// Of those, the ones that resumed with a ticket.
    pub relayed_resumed: AtomicU64,
}

impl Stats {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// The sessions of one server: bound, registry, counters. Shared by every session task.
#[derive(Debug)]
pub struct Sessions {
    /// Bounds concurrent sessions (T9).
    slots: Arc<Semaphore>,
    limit: u32,
    registry: Registry,
    stats: Stats,
    /// Connections and sessions refused at authentication, by refusal code (metrics).
    refusals: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Sessions {
    /// At most `limit` sessions at once.
    pub fn new(limit: u32) -> Sessions {
        Sessions {
            slots: Arc::new(Semaphore::new(limit as usize)),
            limit,
            registry: Registry::default(),
            stats: Stats::default(),
            refusals: Default::default(),
        }
    }

    /// A slot for a new session, or `None` at the limit (counted as refused).
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        match self.slots.clone().try_acquire_owned() {
            Ok(p) => {
                Stats::bump(&self.stats.sessions_started);
                Some(p)
            }
            Err(_) => {
                Stats::bump(&self.stats.sessions_refused);
                None
            }
        }
    }

    /// The session limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Live sessions by device.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Counts a connection refused at authentication, by its refusal code.
    pub fn refused_connection(&self, code: outpost_proto::error::RefusalCode) {
        Stats::bump(&self.stats.connections_refused);
        self.refused_session(code);
    }

    /// Counts a session refused on its stream (a revoked or removed agent, told why), by code.
    pub fn refused_session(&self, code: outpost_proto::error::RefusalCode) {
        let name = code
            .as_str_name()
            .trim_start_matches("REFUSAL_CODE_")
            .to_ascii_lowercase()
            .replace('_', "-");
        *self
            .refusals
            .lock()
            .expect("refusals lock")
            .entry(name)
            .or_default() += 1;
    }

    /// Refusals at authentication so far, by reason.
    pub fn refusals(&self) -> Vec<(String, u64)> {
        let m = self.refusals.lock().expect("refusals lock");
        m.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Counts a relayed session's completed inner handshake.
    pub fn relayed(&self, resumed: bool) {
        Stats::bump(&self.stats.relayed);
        if resumed {
            Stats::bump(&self.stats.relayed_resumed);
        }
    }

    /// Counts a malformed or oversized frame.
    pub fn bad_frame(&self) {
        Stats::bump(&self.stats.bad_frames);
    }
}
