//! `outpost-server`: identity (the deployment CA), licence manager, device registry, sync and
//! push, serving agents directly and through gateway uplinks.
//!
//! The binary (`main.rs`) is a thin CLI over this library; tests and the sandbox run servers
//! in-process through [`node::start`]. Map of the crate:
//!
//! - [`node`]: the running server — the `Node` with one handle per concept, start, accept and
//!   dispatch by ALPN, shutdown.
//! - [`sessions`]: agent sessions (S2–S5, T7): bound, registry, the session driver and sync.
//! - [`uplink`], [`dmz`], [`gateways`]: gateway uplinks (T3, T4, S1), dialled in or out.
//! - [`peers`]: server↔server links of the hierarchy (H1–H8): relations, leases both ways.
//! - [`licence`]: the licence manager (SPEC §3): check, clock, renewal, key import.
//! - [`store`]: the database behind one seam (P1, P3): seats, devices, keys, events, pushes.
//! - [`enroll`]: enrollment and the CA (S6, S7).
//! - [`admin`]: admin actions served over `outpost-admin/1` (O3); the client is `outpost-admin`.
//! - [`notify`]: delivery of stored notifications to the log and the hook (L14).
//! - [`config`], [`datadir`], [`authority`], [`error`]: plumbing.
#![forbid(unsafe_code)]

pub mod admin;
pub mod authority;
pub mod broadcast;
pub mod certs;
pub mod config;
pub mod console;
pub mod datadir;
pub mod dmz;
pub mod enroll;
pub mod error;
pub mod files;
pub mod gateways;
pub mod join;
pub mod licence;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod peers;
pub mod sessions;
pub mod store;
pub mod updates;
pub mod uplink;

pub use datadir::{DataDir, InitOptions};
pub use node::{ServerHandle, start};
