//! Async plumbing shared by the three Outpost drivers (agent, gateway, server): UDP sockets
//! and quinn endpoints (T10), transport settings per role (T3, NOTES §1/§4), framed streams,
//! splicing of relayed streams (S1), inner TLS, refusals on the wire, durable file writes,
//! logging setup.
//!
//! This crate holds no protocol decisions: those live in `outpost-proto`. It exists so the
//! drivers do not each carry their own copy of the same transport code.
#![forbid(unsafe_code)]

pub mod blocks;
pub mod config;
pub mod endpoint;
pub mod fsutil;
pub mod hostinfo;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod refuse;
pub mod renewal;
pub mod runtime;
pub mod signal;
pub mod splice;
pub mod status_file;
pub mod stream;
pub mod transport;

/// Current wall-clock time as unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Current wall-clock time as unix milliseconds.
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A uniform random number in `[0, 1)` for jitter.
pub fn jitter_unit() -> f64 {
    rand::random::<f64>()
}

/// `base` plus a uniformly random part of `spread`: how a busy node spaces out its clients.
pub fn jittered(base: std::time::Duration, spread: std::time::Duration) -> std::time::Duration {
    base + spread.mul_f64(jitter_unit())
}
