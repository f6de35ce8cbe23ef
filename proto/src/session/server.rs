//! The server side of a session.

use std::collections::VecDeque;

use super::{SessionError, msg_name};
use crate::error::{Refused, refusal};
use crate::pb::v1::{
    Hello, HelloAck, LicenceStatus, Push, RefusalCode, SyncRequest, SyncResponse, envelope::Msg,
};
use crate::version;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerPhase {
    AwaitHello,
    AwaitLicenceCheck,
    Ready,
    /// The device was told it is revoked or removed; waiting for it to confirm it dropped
    /// its grants.
    AwaitDrop,
    Closed,
}

impl ServerPhase {
    fn describe(self) -> &'static str {
        match self {
            ServerPhase::AwaitHello => "waiting for Hello",
            ServerPhase::AwaitLicenceCheck => "checking the licence",
            ServerPhase::Ready => "established",
            ServerPhase::AwaitDrop => "waiting for the device to drop its grants",
            ServerPhase::Closed => "closed",
        }
    }
}

/// What the server application must do for a session.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerAction {
    /// Run the licence check (S3, L6) and answer with `licence_checked`.
    CheckLicence {
        /// The agent's hello.
        hello: Hello,
        /// Negotiated version.
        version: u32,
    },
    /// Store the events, compute what changed, answer with `sync_done`.
    Sync(SyncRequest),
    /// The agent acknowledged a push.
    PushAcked(String),
    /// The device asks for a certificate for the key in this CSR (S9); answer with
    /// `cert_renewed`.
    RenewCertificate(Vec<u8>),
    /// The device confirmed it dropped its grants after being told it is revoked or removed
    /// (S8): the seats held for them can be freed (L15). The session is over.
    LicenceDropped,
}

/// Server side of a session.
#[derive(Debug)]
pub struct ServerSession {
    phase: ServerPhase,
    device_id: String,
    software: String,
    transmit: VecDeque<Msg>,
    actions: VecDeque<ServerAction>,
    /// Syncs handed to the application and not yet answered.
    syncs_pending: u32,
    /// A first sync that came with the hello, handed over once the licence is checked (S3).
    first_sync: Option<SyncRequest>,
}

impl ServerSession {
    /// A session for the authenticated device `device_id`.
    pub fn new(device_id: impl Into<String>, software: impl Into<String>) -> Self {
        ServerSession {
            phase: ServerPhase::AwaitHello,
            device_id: device_id.into(),
            software: software.into(),
            transmit: VecDeque::new(),
            actions: VecDeque::new(),
            syncs_pending: 0,
            first_sync: None,
        }
    }

    /// Next message to write.
    pub fn poll_transmit(&mut self) -> Option<Msg> {
        self.transmit.pop_front()
    }

    /// Next thing for the application to do.
    pub fn poll_action(&mut self) -> Option<ServerAction> {
        self.actions.pop_front()
    }

    /// Whether the licence check has been answered and the session is live.
    pub fn is_ready(&self) -> bool {
        self.phase == ServerPhase::Ready
    }

    /// Whether the session is over (nothing more will be read).
    pub fn is_closed(&self) -> bool {
        self.phase == ServerPhase::Closed
    }

    /// Whether the device was told it is revoked or removed and its confirmation is awaited.
    pub fn awaits_drop(&self) -> bool {
        self.phase == ServerPhase::AwaitDrop
    }

    /// Feeds one received message. On error a refusal has been queued for the peer; send it
    /// and end the stream.
    pub fn handle_message(&mut self, msg: Msg, now_unix_ms: i64) -> Result<(), SessionError> {
        let result = self.handle_inner(msg, now_unix_ms);
        if let Err(e) = &result {
            if let Some(r) = e.to_refusal() {
                self.transmit.push_back(Msg::Refusal(r.0));
            }
            self.phase = ServerPhase::Closed;
        }
        result
    }

    fn handle_inner(&mut self, msg: Msg, now_unix_ms: i64) -> Result<(), SessionError> {
        match (self.phase, msg) {
            (_, Msg::Refusal(r)) => Err(SessionError::Refused(Refused(r))),
            (ServerPhase::AwaitHello, Msg::Hello(mut hello)) => {
                let v =
                    version::negotiate(version::supported(), hello.min_version, hello.max_version)?;
                self.first_sync = hello.first_sync.take().map(|b| *b);
                self.transmit.push_back(Msg::HelloAck(HelloAck {
                    version: v,
                    capabilities: vec![super::SYNC_IN_HELLO.to_owned()],
                    software: self.software.clone(),
                    server_time_ms: now_unix_ms,
                    device_id: self.device_id.clone(),
                    connection_id: 0,
                }));
                self.phase = ServerPhase::AwaitLicenceCheck;
                self.actions
                    .push_back(ServerAction::CheckLicence { hello, version: v });
                Ok(())
            }
            (ServerPhase::Ready, Msg::SyncRequest(req)) => {
                if self.syncs_pending > 0 {
                    return Err(SessionError::Unexpected {
                        got: "a second SyncRequest",
                        phase: "a sync is still being answered",
                    });
                }
                self.syncs_pending += 1;
                self.actions.push_back(ServerAction::Sync(req));
                Ok(())
            }
            (ServerPhase::Ready, Msg::PushAck(ack)) => {
                self.actions.push_back(ServerAction::PushAcked(ack.id));
                Ok(())
            }
            (ServerPhase::Ready, Msg::CertRenewal(r)) => {
                self.actions
                    .push_back(ServerAction::RenewCertificate(r.csr_der));
                Ok(())
            }
            (ServerPhase::AwaitDrop, Msg::LicenceDropped(_)) => {
                self.phase = ServerPhase::Closed;
                self.actions.push_back(ServerAction::LicenceDropped);
                Ok(())
            }
            // What the device sent before it read the refusal.
            (ServerPhase::AwaitDrop, _) => Ok(()),
            (phase, msg) => Err(SessionError::Unexpected {
                got: msg_name(&msg),
                phase: phase.describe(),
            }),
        }
    }

    /// Answers `CheckLicence`. The session becomes ready; a sync that came with the hello is
    /// handed over now, after the check (S3).
    pub fn licence_checked(&mut self, status: LicenceStatus) {
        if self.phase == ServerPhase::AwaitLicenceCheck {
            self.transmit.push_back(Msg::LicenceStatus(status));
            self.phase = ServerPhase::Ready;
            if let Some(req) = self.first_sync.take() {
                self.syncs_pending += 1;
                self.actions.push_back(ServerAction::Sync(req));
            }
        }
    }

    /// Answers `Sync`.
    pub fn sync_done(&mut self, resp: SyncResponse) {
        if self.phase == ServerPhase::Ready && self.syncs_pending > 0 {
            self.syncs_pending -= 1;
            self.transmit.push_back(Msg::SyncResponse(resp));
        }
    }

    /// Answers `RenewCertificate`.
    pub fn cert_renewed(&mut self, r: crate::pb::v1::CertRenewed) {
        if self.phase == ServerPhase::Ready {
            self.transmit.push_back(Msg::CertRenewed(r));
        }
    }

    /// Queues a push; false if the session is not established.
    pub fn push(&mut self, push: Push) -> bool {
        if self.phase != ServerPhase::Ready {
            return false;
        }
        self.transmit.push_back(Msg::Push(push));
        true
    }

    /// Tells an established session its licence changed (a freed seat, L9) without waiting
    /// for its next sync. Ignored before the licence check.
    pub fn licence_changed(&mut self, status: LicenceStatus) {
        if self.phase == ServerPhase::Ready {
            self.transmit.push_back(Msg::LicenceStatus(status));
        }
    }

    /// Tells the device it is revoked or removed (S8), at any point of the session, and waits
    /// for its `LicenceDropped`; `poll_action` then yields `LicenceDropped`.
    pub fn refuse_device(&mut self, r: Refused) {
        if self.phase != ServerPhase::Closed {
            self.transmit.push_back(Msg::Refusal(r.0));
            self.phase = ServerPhase::AwaitDrop;
        }
    }

    /// Ends the session with a refusal (shutting down, overloaded …).
    pub fn refuse(&mut self, code: RefusalCode, message: impl Into<String>) {
        self.transmit
            .push_back(Msg::Refusal(refusal(code, message)));
        self.phase = ServerPhase::Closed;
    }
}
