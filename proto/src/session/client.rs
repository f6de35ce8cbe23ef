//! The agent side of a session.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{SessionError, msg_name};
use crate::error::Refused;
use crate::pb::v1::{
    Hello, LicenceStatus, Push, PushAck, SyncRequest, SyncResponse, envelope::Msg,
};
use crate::version::{self, VersionMismatch};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientPhase {
    AwaitHelloAck,
    AwaitLicence,
    Ready,
}

impl ClientPhase {
    fn describe(self) -> &'static str {
        match self {
            ClientPhase::AwaitHelloAck => "waiting for HelloAck",
            ClientPhase::AwaitLicence => "waiting for the licence check",
            ClientPhase::Ready => "established",
        }
    }
}

/// What the agent application must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// The server accepted the hello.
    Established {
        /// Negotiated protocol version.
        version: u32,
        /// The id the server knows this device as.
        device_id: String,
    },
    /// The result of a licence check (at connect, or changed later).
    Licence(LicenceStatus),
    /// A sync is due: gather inventory and queued events and call `send_sync`.
    SyncDue,
    /// The server answered a sync.
    Synced(Box<SyncResponse>),
    /// A push arrived (already acknowledged on the wire).
    Push(Push),
    /// The server issued the certificate asked for with `renew_certificate` (S9).
    CertRenewed(crate::pb::v1::CertRenewed),
}

/// Agent side of a session.
#[derive(Debug)]
pub struct ClientSession {
    phase: ClientPhase,
    transmit: VecDeque<Msg>,
    events: VecDeque<ClientEvent>,
    next_seq: u64,
    /// Sequence number and send time of the sync awaiting its response.
    outstanding: Option<(u64, Instant)>,
    /// When the next sync is due (None while one is outstanding or before the licence check).
    sync_due: Option<Instant>,
    /// A sync was requested while one was outstanding: run another right after.
    sync_again: bool,
    sync_timeout: Duration,
}

impl ClientSession {
    /// Starts a session with the first sync sent inside the hello (one round trip to licensed
    /// and synced). If the server does not answer it (no `sync-in-hello` capability in its
    /// HelloAck), the sync is sent again after the licence check, as `new` does.
    pub fn with_first_sync(
        mut hello: Hello,
        mut first: SyncRequest,
        sync_timeout: Duration,
        now: Instant,
    ) -> Self {
        first.seq = 1;
        hello.first_sync = Some(Box::new(first));
        let mut s = ClientSession::new(hello, sync_timeout);
        s.next_seq = 2;
        s.outstanding = Some((1, now));
        s
    }

    /// Starts a session; the hello is the first transmit.
    pub fn new(hello: Hello, sync_timeout: Duration) -> Self {
        ClientSession {
            phase: ClientPhase::AwaitHelloAck,
            transmit: VecDeque::from([Msg::Hello(hello)]),
            events: VecDeque::new(),
            next_seq: 1,
            outstanding: None,
            sync_due: None,
            sync_again: false,
            sync_timeout,
        }
    }

    /// Next message to write to the stream.
    pub fn poll_transmit(&mut self) -> Option<Msg> {
        self.transmit.pop_front()
    }

    /// Next thing for the application to act on.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.outstanding {
            Some((_, sent)) => Some(sent + self.sync_timeout),
            None => self.sync_due,
        }
    }

    /// Whether the session passed the licence check.
    pub fn is_ready(&self) -> bool {
        self.phase == ClientPhase::Ready
    }

    /// Time passed: a due sync becomes a `SyncDue` event; an unanswered sync fails the session.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        if let Some((_, sent)) = self.outstanding {
            if now >= sent + self.sync_timeout {
                return Err(SessionError::Timeout(self.sync_timeout));
            }
            return Ok(());
        }
        if let Some(due) = self.sync_due
            && now >= due
        {
            self.sync_due = None;
            self.events.push_back(ClientEvent::SyncDue);
        }
        Ok(())
    }

    /// Asks for a sync as soon as possible (new local events, a push).
    pub fn request_sync(&mut self, now: Instant) {
        // Before the session is ready the hello's sync may already be built without what
        // prompted this request (an event queued meanwhile): sync again once it is answered.
        // Dropping the request would leave the event for the next periodic sync, minutes away.
        if self.phase != ClientPhase::Ready || self.outstanding.is_some() {
            self.sync_again = true;
        } else if self.sync_due.is_none_or(|d| d > now) {
            self.sync_due = Some(now);
        }
    }

    /// Sends a sync (after `SyncDue`). Returns the sequence number used.
    pub fn send_sync(&mut self, mut req: SyncRequest, now: Instant) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        req.seq = seq;
        self.outstanding = Some((seq, now));
        self.sync_due = None;
        self.transmit.push_back(Msg::SyncRequest(req));
        seq
    }

    /// After the server refused this device as revoked or removed (S8) and the application
    /// dropped its grants: confirms it on the same stream, so the server frees the seats it
    /// held for them (L15).
    pub fn licence_dropped(&mut self, reason: crate::pb::v1::RefusalCode) {
        self.transmit
            .push_back(Msg::LicenceDropped(crate::pb::v1::LicenceDropped {
                reason: reason as i32,
            }));
    }

    /// Asks for a certificate for a new key pair (S9); answered by `ClientEvent::CertRenewed`.
    /// Only on an established session.
    pub fn renew_certificate(&mut self, csr_der: Vec<u8>) -> bool {
        if self.phase != ClientPhase::Ready {
            return false;
        }
        self.transmit
            .push_back(Msg::CertRenewal(crate::pb::v1::CertRenewal { csr_der }));
        true
    }

    /// Feeds one received message.
    pub fn handle_message(&mut self, msg: Msg, now: Instant) -> Result<(), SessionError> {
        let unexpected = |msg: &Msg, phase: ClientPhase| SessionError::Unexpected {
            got: msg_name(msg),
            phase: phase.describe(),
        };
        match (self.phase, msg) {
            (_, Msg::Refusal(r)) => Err(SessionError::Refused(Refused(r))),
            (ClientPhase::AwaitHelloAck, Msg::HelloAck(ack)) => {
                if !version::supported().contains(&ack.version) {
                    return Err(SessionError::Version(VersionMismatch {
                        peer_min: ack.version,
                        peer_max: ack.version,
                        ours_min: version::MIN_PROTOCOL_VERSION,
                        ours_max: version::PROTOCOL_VERSION,
                    }));
                }
                self.phase = ClientPhase::AwaitLicence;
                if !ack.capabilities.iter().any(|c| c == super::SYNC_IN_HELLO) {
                    // The server ignored the sync in the hello: sync after the check.
                    self.outstanding = None;
                }
                self.events.push_back(ClientEvent::Established {
                    version: ack.version,
                    device_id: ack.device_id,
                });
                Ok(())
            }
            (ClientPhase::AwaitLicence, Msg::LicenceStatus(status)) => {
                self.phase = ClientPhase::Ready;
                self.events.push_back(ClientEvent::Licence(status));
                match &mut self.outstanding {
                    // The sync from the hello is answered from now on: its time-out runs from
                    // here (the setup time-out covered the wait for the check).
                    Some((_, sent)) => *sent = now,
                    None => self.sync_due = Some(now),
                }
                Ok(())
            }
            (ClientPhase::Ready, Msg::SyncResponse(resp)) => {
                match self.outstanding {
                    Some((seq, _)) if seq == resp.seq => {}
                    _ => {
                        return Err(SessionError::Unexpected {
                            got: "SyncResponse with an unknown sequence number",
                            phase: ClientPhase::Ready.describe(),
                        });
                    }
                }
                self.outstanding = None;
                let next = Duration::from_secs(u64::from(resp.next_sync_secs.max(1)));
                self.sync_due = Some(if std::mem::take(&mut self.sync_again) {
                    now
                } else {
                    now + next
                });
                if let Some(l) = resp.licence.clone() {
                    self.events.push_back(ClientEvent::Licence(l));
                }
                self.events.push_back(ClientEvent::Synced(Box::new(resp)));
                Ok(())
            }
            (ClientPhase::Ready, Msg::Push(push)) => {
                self.transmit.push_back(Msg::PushAck(PushAck {
                    id: push.id.clone(),
                }));
                use crate::pb::v1::PushKind;
                if matches!(
                    PushKind::try_from(push.kind),
                    Ok(PushKind::SyncNow | PushKind::LicenceChanged)
                ) {
                    self.request_sync(now);
                }
                self.events.push_back(ClientEvent::Push(push));
                Ok(())
            }
            (ClientPhase::Ready, Msg::LicenceStatus(status)) => {
                self.events.push_back(ClientEvent::Licence(status));
                Ok(())
            }
            (ClientPhase::Ready, Msg::CertRenewed(r)) => {
                self.events.push_back(ClientEvent::CertRenewed(r));
                Ok(())
            }
            (phase, msg) => Err(unexpected(&msg, phase)),
        }
    }
}
