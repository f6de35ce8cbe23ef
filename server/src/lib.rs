//! `outpost-server`: identity (the deployment CA), licence manager, device registry, sync and
//! push, serving agents directly and through gateway uplinks.
//!
//! The binary (`main.rs`) is a thin CLI over this library; tests and the sandbox run servers
//! in-process through [`node::start`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod authority;
pub mod config;
pub mod datadir;
pub mod dmz;
pub mod enroll;
pub mod licence_tasks;
pub mod licensing;
pub mod node;
pub mod notify;
pub mod push;
pub mod renewal;
pub mod session;
pub mod store;
pub mod uplink;

pub use datadir::{DataDir, InitOptions};
pub use node::{ServerHandle, start};
