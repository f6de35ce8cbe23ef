//! Reconnect pacing (T6): exponential backoff with full jitter, reset only after a connection
//! has stayed healthy for a while, and server-given retry-after hints obeyed.
//!
//! No clock and no randomness of its own: callers pass `now` and a uniform random number in
//! `[0, 1)`. Call order: `on_connected` when a link comes up, `on_disconnected` when it drops,
//! then `next_delay` for how long to wait before the next dial.

use std::time::{Duration, Instant};

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Upper bound of the first delay.
    pub initial: Duration,
    /// Upper bound of any delay.
    pub max: Duration,
    /// A link that stayed up this long resets the backoff.
    pub healthy_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            healthy_after: Duration::from_secs(30),
        }
    }
}

/// Backoff state of one reconnecting link.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
    connected_at: Option<Instant>,
    retry_after: Option<Duration>,
}

impl Backoff {
    /// Fresh state.
    pub fn new(config: BackoffConfig) -> Self {
        Backoff {
            config,
            attempt: 0,
            connected_at: None,
            retry_after: None,
        }
    }

    /// Failed attempts since the last healthy link.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The link came up.
    pub fn on_connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// The link went down (or a dial failed). Resets the backoff if the link had been healthy.
    pub fn on_disconnected(&mut self, now: Instant) {
        if let Some(at) = self.connected_at.take()
            && now.saturating_duration_since(at) >= self.config.healthy_after
        {
            self.attempt = 0;
        }
    }

    /// The peer said when to come back; the next delay is exactly that (it is already jittered
    /// by the peer).
    pub fn on_retry_after(&mut self, d: Duration) {
        self.retry_after = Some(d);
    }

    /// How long to wait before the next dial. `unit` is uniform in `[0, 1)`.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        if let Some(d) = self.retry_after.take() {
            self.attempt = self.attempt.saturating_add(1);
            return d;
        }
        let exp = self
            .config
            .initial
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.config.max);
        self.attempt = self.attempt.saturating_add(1);
        exp.mul_f64(unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(8),
            healthy_after: Duration::from_secs(10),
        }
    }

    #[test]
    fn t6_backoff_grows_to_max_with_jitter() {
        let mut b = Backoff::new(cfg());
        let ceilings: Vec<_> = (0..6).map(|_| b.next_delay(0.999_999)).collect();
        let secs: Vec<u64> = ceilings
            .iter()
            .map(|d| d.as_secs_f64().round() as u64)
            .collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 8, 8]);
        let mut b = Backoff::new(cfg());
        assert_eq!(b.next_delay(0.0), Duration::ZERO);
        assert_eq!(b.next_delay(0.5), Duration::from_secs(1));
    }

    #[test]
    fn t6_reset_only_after_healthy_period() {
        let t0 = Instant::now();
        let mut b = Backoff::new(cfg());
        for _ in 0..3 {
            b.next_delay(0.5);
        }
        b.on_connected(t0);
        b.on_disconnected(t0 + Duration::from_secs(2));
        assert_eq!(
            b.attempt(),
            3,
            "a short-lived link does not reset the backoff"
        );
        b.on_connected(t0 + Duration::from_secs(3));
        b.on_disconnected(t0 + Duration::from_secs(13));
        assert_eq!(b.attempt(), 0, "a healthy link resets it");
    }

    #[test]
    fn t6_retry_after_is_obeyed() {
        let mut b = Backoff::new(cfg());
        b.on_retry_after(Duration::from_millis(4321));
        assert_eq!(b.next_delay(0.0), Duration::from_millis(4321));
        assert_eq!(b.next_delay(0.999_999).as_secs_f64().round(), 2.0);
    }
}
