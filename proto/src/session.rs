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

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::error::{Refused, refusal};
use crate::pb::v1::{
    Hello, HelloAck, LicenceStatus, Push, PushAck, RefusalCode, Role, SyncRequest, SyncResponse,
    envelope::Msg,
};
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
    }
}

/// A Hello for this build.
pub fn hello(role: Role, software: &str, capabilities: &[&str]) -> Hello {
    Hello {
        min_version: version::MIN_PROTOCOL_VERSION,
        max_version: version::PROTOCOL_VERSION,
        capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
        software: software.to_owned(),
        role: role as i32,
    }
}

// ---------------------------------------------------------------------------------------------

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
    Synced(SyncResponse),
    /// A push arrived (already acknowledged on the wire).
    Push(Push),
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
        if self.phase != ClientPhase::Ready {
            return;
        }
        if self.outstanding.is_some() {
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
                self.events.push_back(ClientEvent::Established {
                    version: ack.version,
                    device_id: ack.device_id,
                });
                Ok(())
            }
            (ClientPhase::AwaitLicence, Msg::LicenceStatus(status)) => {
                self.phase = ClientPhase::Ready;
                self.events.push_back(ClientEvent::Licence(status));
                self.sync_due = Some(now);
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
                self.events.push_back(ClientEvent::Synced(resp));
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
            (phase, msg) => Err(unexpected(&msg, phase)),
        }
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerPhase {
    AwaitHello,
    AwaitLicenceCheck,
    Ready,
    Closed,
}

impl ServerPhase {
    fn describe(self) -> &'static str {
        match self {
            ServerPhase::AwaitHello => "waiting for Hello",
            ServerPhase::AwaitLicenceCheck => "checking the licence",
            ServerPhase::Ready => "established",
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
            (ServerPhase::AwaitHello, Msg::Hello(hello)) => {
                let v =
                    version::negotiate(version::supported(), hello.min_version, hello.max_version)?;
                self.transmit.push_back(Msg::HelloAck(HelloAck {
                    version: v,
                    capabilities: vec![],
                    software: self.software.clone(),
                    server_time_ms: now_unix_ms,
                    device_id: self.device_id.clone(),
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
            (phase, msg) => Err(SessionError::Unexpected {
                got: msg_name(&msg),
                phase: phase.describe(),
            }),
        }
    }

    /// Answers `CheckLicence`. The session becomes ready.
    pub fn licence_checked(&mut self, status: LicenceStatus) {
        if self.phase == ServerPhase::AwaitLicenceCheck {
            self.transmit.push_back(Msg::LicenceStatus(status));
            self.phase = ServerPhase::Ready;
        }
    }

    /// Answers `Sync`.
    pub fn sync_done(&mut self, resp: SyncResponse) {
        if self.phase == ServerPhase::Ready && self.syncs_pending > 0 {
            self.syncs_pending -= 1;
            self.transmit.push_back(Msg::SyncResponse(resp));
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

    /// Ends the session with a refusal (revoked, shutting down …).
    pub fn refuse(&mut self, code: RefusalCode, message: impl Into<String>) {
        self.transmit
            .push_back(Msg::Refusal(refusal(code, message)));
        self.phase = ServerPhase::Closed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::v1::{Event, PushKind};

    struct Pair {
        client: ClientSession,
        server: ServerSession,
        now: Instant,
    }

    impl Pair {
        fn new() -> Pair {
            Pair {
                client: ClientSession::new(
                    hello(Role::Agent, "test", &[]),
                    Duration::from_secs(30),
                ),
                server: ServerSession::new("d-1", "server"),
                now: Instant::now(),
            }
        }

        /// Moves every queued message both ways until quiet.
        fn drive(&mut self) -> Result<(), SessionError> {
            loop {
                let mut moved = false;
                while let Some(m) = self.client.poll_transmit() {
                    moved = true;
                    self.server.handle_message(m, 0)?;
                }
                while let Some(m) = self.server.poll_transmit() {
                    moved = true;
                    self.client.handle_message(m, self.now)?;
                }
                if !moved {
                    return Ok(());
                }
            }
        }
    }

    #[test]
    fn s3_licence_check_comes_before_any_sync() {
        let mut p = Pair::new();
        p.drive().unwrap();
        assert!(matches!(
            p.server.poll_action(),
            Some(ServerAction::CheckLicence { version: 1, .. })
        ));
        assert!(!p.client.is_ready());
        // A client that syncs before its licence check is refused.
        let mut rogue = ServerSession::new("d-2", "server");
        rogue
            .handle_message(Msg::Hello(hello(Role::Agent, "x", &[])), 0)
            .unwrap();
        let err = rogue
            .handle_message(Msg::SyncRequest(SyncRequest::default()), 0)
            .unwrap_err();
        assert!(matches!(
            err,
            SessionError::Unexpected {
                got: "SyncRequest",
                ..
            }
        ));
        assert!(matches!(rogue.poll_transmit(), Some(Msg::HelloAck(_))));
        assert!(matches!(rogue.poll_transmit(), Some(Msg::Refusal(_))));

        p.server.licence_checked(LicenceStatus {
            licensed: true,
            ..Default::default()
        });
        p.drive().unwrap();
        assert!(matches!(
            p.client.poll_event(),
            Some(ClientEvent::Established { .. })
        ));
        assert!(matches!(p.client.poll_event(), Some(ClientEvent::Licence(l)) if l.licensed));
        p.client.handle_timeout(p.now).unwrap();
        assert_eq!(p.client.poll_event(), Some(ClientEvent::SyncDue));
    }

    #[test]
    fn s4_sync_repeats_at_interval_and_on_push() {
        let mut p = Pair::new();
        p.drive().unwrap();
        p.server.poll_action();
        p.server.licence_checked(LicenceStatus::default());
        p.drive().unwrap();
        while p.client.poll_event().is_some() {}
        p.client.handle_timeout(p.now).unwrap();
        assert_eq!(p.client.poll_event(), Some(ClientEvent::SyncDue));
        let req = SyncRequest {
            events: vec![Event {
                id: "e1".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let seq = p.client.send_sync(req, p.now);
        p.drive().unwrap();
        let Some(ServerAction::Sync(got)) = p.server.poll_action() else {
            panic!()
        };
        assert_eq!(got.seq, seq);
        p.server.sync_done(SyncResponse {
            seq,
            acked_event_ids: vec!["e1".into()],
            next_sync_secs: 60,
            ..Default::default()
        });
        p.drive().unwrap();
        assert!(
            matches!(p.client.poll_event(), Some(ClientEvent::Synced(r)) if r.acked_event_ids == ["e1"])
        );
        assert_eq!(
            p.client.poll_timeout(),
            Some(p.now + Duration::from_secs(60))
        );
        // A push asking for a sync makes one due now, and is acknowledged.
        assert!(p.server.push(Push {
            id: "p1".into(),
            kind: PushKind::SyncNow as i32,
            ..Default::default()
        }));
        p.drive().unwrap();
        assert_eq!(
            p.server.poll_action(),
            Some(ServerAction::PushAcked("p1".into()))
        );
        assert!(matches!(p.client.poll_event(), Some(ClientEvent::Push(_))));
        assert_eq!(p.client.poll_timeout(), Some(p.now));
    }

    #[test]
    fn s2_version_mismatch_is_refused_with_both_versions() {
        let mut server = ServerSession::new("d-1", "server");
        let mut h = hello(Role::Agent, "future", &[]);
        h.min_version = 7;
        h.max_version = 9;
        let err = server.handle_message(Msg::Hello(h), 0).unwrap_err();
        assert!(matches!(err, SessionError::Version(_)));
        match server.poll_transmit() {
            Some(Msg::Refusal(r)) => {
                assert_eq!(r.code, RefusalCode::UnsupportedVersion as i32);
                assert!(
                    r.message.contains("7..=9") && r.message.contains("1..=1"),
                    "{}",
                    r.message
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sync_timeout_fails_the_session() {
        let mut p = Pair::new();
        p.drive().unwrap();
        p.server.poll_action();
        p.server.licence_checked(LicenceStatus::default());
        p.drive().unwrap();
        p.client.send_sync(SyncRequest::default(), p.now);
        assert_eq!(
            p.client.poll_timeout(),
            Some(p.now + Duration::from_secs(30))
        );
        assert!(
            p.client
                .handle_timeout(p.now + Duration::from_secs(29))
                .is_ok()
        );
        assert!(matches!(
            p.client.handle_timeout(p.now + Duration::from_secs(30)),
            Err(SessionError::Timeout(_))
        ));
    }
}
