//! The agent session protocol as two I/O-free state machines: [`ClientSession`] (agent side)
//! and [`ServerSession`] (server side). See the flow in `proto/outpost.proto`.
//!
//! Both are driven the same way, after the quinn-proto `Connection` model:
//!
//! 1. feed every received message to `handle_message`,
//! 2. call `handle_timeout(now)` when `poll_timeout()` has passed (client),
//! 3. drain `poll_transmit()` into the stream and `poll_event()`/`poll_action()` into the
//!    application, which answers through the typed methods (`send_sync`, `licence_checked`,
//!    `sync_done`, `push`).
//!
//! They enforce the ordering rules: hello and version negotiation first (S2), the licence check
//! before any sync (S3), one outstanding sync at a time, pushes only on an established session.
//! They never touch sockets, tasks or clocks.

mod client;
mod server;

use std::time::Duration;

pub use client::{ClientEvent, ClientSession};
pub use server::{ServerAction, ServerSession};

use crate::error::Refused;
use crate::pb::v1::{Hello, RefusalCode, Role, envelope::Msg};
use crate::version::{self, VersionMismatch};

/// Why a session ended with an error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The peer refused.
    #[error("{0}")]
    Refused(#[from] Refused),
    /// No common protocol version.
    #[error("{0}")]
    Version(#[from] VersionMismatch),
    /// The peer sent a message that is not allowed at this point.
    #[error("unexpected {got} while {phase}")]
    Unexpected {
        /// Message kind received.
        got: &'static str,
        /// What the session was waiting for.
        phase: &'static str,
    },
    /// The peer did not answer a sync in time.
    #[error("no sync response within {0:?}")]
    Timeout(Duration),
}

impl SessionError {
    /// The refusal to send to the peer for this error, if any.
    pub fn to_refusal(&self) -> Option<Refused> {
        match self {
            SessionError::Refused(_) => None,
            SessionError::Version(v) => {
                Some(Refused::new(RefusalCode::UnsupportedVersion, v.to_string()))
            }
            SessionError::Unexpected { .. } => Some(Refused::new(
                RefusalCode::UnexpectedMessage,
                self.to_string(),
            )),
            SessionError::Timeout(_) => Some(Refused::new(RefusalCode::Timeout, self.to_string())),
        }
    }
}

/// Short name of a message kind, for errors and logs.
pub fn msg_name(msg: &Msg) -> &'static str {
    match msg {
        Msg::Hello(_) => "Hello",
        Msg::HelloAck(_) => "HelloAck",
        Msg::Refusal(_) => "Refusal",
        Msg::LicenceStatus(_) => "LicenceStatus",
        Msg::SyncRequest(_) => "SyncRequest",
        Msg::SyncResponse(_) => "SyncResponse",
        Msg::Push(_) => "Push",
        Msg::PushAck(_) => "PushAck",
        Msg::EnrollRequest(_) => "EnrollRequest",
        Msg::EnrollResponse(_) => "EnrollResponse",
        Msg::RelayOpen(_) => "RelayOpen",
        Msg::GatewayReport(_) => "GatewayReport",
        Msg::GatewayDirective(_) => "GatewayDirective",
        Msg::AdminRequest(_) => "AdminRequest",
        Msg::AdminResponse(_) => "AdminResponse",
        Msg::RenewalQuery(_) => "RenewalQuery",
        Msg::RenewalOffer(_) => "RenewalOffer",
        Msg::LicenceDropped(_) => "LicenceDropped",
        Msg::CertRenewal(_) => "CertRenewal",
        Msg::CertRenewed(_) => "CertRenewed",
        Msg::LeaseGrant(_) => "LeaseGrant",
        Msg::LeaseRenewal(_) => "LeaseRenewal",
        Msg::LeaseSync(_) => "LeaseSync",
        Msg::UsageReport(_) => "UsageReport",
        Msg::NoticesUp(_) => "NoticesUp",
        Msg::NoticesAck(_) => "NoticesAck",
        Msg::SeatNeeds(_) => "SeatNeeds",
        Msg::SignedBroadcast(_) => "SignedBroadcast",
        Msg::BroadcastAcks(_) => "BroadcastAcks",
        Msg::BlockRequest(_) => "BlockRequest",
        Msg::DiscoveryReport(_) => "DiscoveryReport",
        Msg::HandDown(_) => "HandDown",
    }
}

/// Capability: the first sync travels in the hello and is answered after the licence check.
pub const SYNC_IN_HELLO: &str = "sync-in-hello";

/// A Hello for this build.
pub fn hello(role: Role, software: &str, capabilities: &[&str]) -> Hello {
    Hello {
        min_version: version::MIN_PROTOCOL_VERSION,
        max_version: version::PROTOCOL_VERSION,
        capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
        software: software.to_owned(),
        role: role as i32,
        first_sync: None,
    }
}

#[cfg(test)]
mod tests;
