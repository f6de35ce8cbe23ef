//! The office side's bounds and counters (T9): agent connections, relayed sessions and
//! enrollments are bounded; every refusal and every relayed byte is counted. Shared by the
//! relay tasks; read by status and reports.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use outpost_net::splice::{Counters, Tap};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Limits;

/// Counters of the office side. Only ever incremented, except the two gauges.
#[derive(Debug, Default)]
pub struct OfficeStats {
    /// Agent connections open now (gauge).
    pub agents_connected: AtomicU32,
    /// Relayed sessions open now (gauge).
    pub sessions_active: AtomicU32,
    /// Relayed sessions since start.
    pub sessions_total: AtomicU64,
    /// Agent streams refused because the uplink was down.
    pub refused_no_uplink: AtomicU64,
    /// Agent streams or connections refused by limits.
    pub refused_overload: AtomicU64,
}

/// What a relayed stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// An agent session.
    Session,
    /// An enrollment.
    Enrollment,
}

/// Bounds, counters and the byte tap of the office side.
pub struct Office {
    agent_slots: Arc<Semaphore>,
    session_slots: Arc<Semaphore>,
    enroll_slots: Arc<Semaphore>,
    bytes: Arc<Counters>,
    tap: Option<Tap>,
    stats: OfficeStats,
    agents: crate::fanout::Agents,
    fanout: crate::fanout::FanoutStats,
    tamper: bool,
}

impl std::fmt::Debug for Office {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Office")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Office {
    /// An office side bounded by `limits`, with relayed chunks shown to `tap` (tests).
    pub fn new(limits: &Limits, tap: Option<Tap>, tamper: bool) -> Office {
        Office {
            agent_slots: Arc::new(Semaphore::new(limits.max_agents as usize)),
            session_slots: Arc::new(Semaphore::new(limits.max_sessions as usize)),
            enroll_slots: Arc::new(Semaphore::new(limits.max_enrollments as usize)),
            bytes: Arc::new(Counters::default()),
            tap,
            stats: OfficeStats::default(),
            agents: Default::default(),
            fanout: Default::default(),
            tamper,
        }
    }

    /// A slot for a new agent connection, or `None` at the limit (counted).
    pub fn admit_agent(&self) -> Option<OwnedSemaphorePermit> {
        self.admit(&self.agent_slots)
    }

    /// A slot for a relayed stream, or `None` at the limit (counted).
    pub fn admit_stream(&self, kind: StreamKind) -> Option<OwnedSemaphorePermit> {
        match kind {
            StreamKind::Session => self.admit(&self.session_slots),
            StreamKind::Enrollment => self.admit(&self.enroll_slots),
        }
    }

    fn admit(&self, slots: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
        let p = slots.clone().try_acquire_owned().ok();
        if p.is_none() {
            self.stats.refused_overload.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    /// Counts a stream refused because the uplink was down.
    pub fn refused_no_uplink(&self) {
        self.stats.refused_no_uplink.fetch_add(1, Ordering::Relaxed);
    }

    /// Relayed byte counters.
    pub fn bytes(&self) -> &Arc<Counters> {
        &self.bytes
    }

    /// The byte tap, if any (tests).
    pub fn tap(&self) -> Option<&Tap> {
        self.tap.as_ref()
    }

    /// Counters.
    pub fn stats(&self) -> &OfficeStats {
        &self.stats
    }

    /// The agents connected now (broadcast fan-out, D4).
    pub fn agents(&self) -> &crate::fanout::Agents {
        &self.agents
    }

    /// Tests: whether broadcasts are altered before fan-out.
    pub fn tampers(&self) -> bool {
        self.tamper
    }

    /// Broadcast counters (D4).
    pub fn fanout(&self) -> &crate::fanout::FanoutStats {
        &self.fanout
    }
}
