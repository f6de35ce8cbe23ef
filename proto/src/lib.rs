//! The shared core of Outpost: the wire contract, framing, version negotiation, PKI helpers,
//! the licence-key and grant formats, and the I/O-free state machines.
//!
//! Nothing here opens a socket, spawns a task or reads a clock: callers pass `now` in. The
//! async crates (`outpost-agent`, `outpost-gateway`, `outpost-server`) are thin drivers around
//! what lives here, so protocol and licence logic can be tested synchronously.
#![forbid(unsafe_code)]

pub mod alpn;
pub mod backoff;
pub mod broadcast;
pub mod control;
pub mod discovery;
pub mod error;
pub mod files;
pub mod frame;
pub mod lease;
pub mod licence;
pub mod pki;
pub mod policy;
pub mod session;
pub mod task;
pub mod token;
pub mod update;
pub mod version;

/// Generated protobuf messages (see `proto/*.proto`).
#[allow(missing_docs, clippy::all)]
pub mod pb {
    /// Protocol version 1 messages (`outpost.v1`).
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/outpost.v1.rs"));
    }
    /// Admin requests and results (`outpost.admin`).
    pub mod admin {
        include!(concat!(env!("OUT_DIR"), "/outpost.admin.rs"));
    }
}

pub use frame::{Frame, FrameCodec, FrameError};
pub use pb::v1::envelope::Msg;

/// Version string of this build, for Hello messages and logs.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");
