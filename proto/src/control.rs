//! Control streams as I/O-free state machines: the opening exchange every stream that is not
//! an agent session starts with — hello, version negotiation and role check (S2) — and the
//! table of messages each kind of stream may carry afterwards.
//!
//! Three kinds exist ([`Channel`]): a gateway uplink's control stream (reports up, directives
//! down), an admin request stream (one request, one response), and the server↔server link of
//! the hierarchy (H1–H9). The side that opens the stream runs an [`Opener`], the other side an
//! [`Acceptor`]. Both are driven like [`crate::session`]:
//!
//! 1. feed every received message to `handle_message` (and call `handle_timeout(now)` once
//!    `poll_timeout()` has passed, on the acceptor);
//! 2. drain `poll_transmit()` into the stream and `poll_event()` into the application;
//! 3. send application messages with `send`, which checks them against the channel's table.
//!
//! An error from `handle_message` has already queued the refusal for the peer (when one is
//! owed): flush `poll_transmit()`, then close. Nothing here touches sockets, tasks or clocks.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::error::Refused;
use crate::pb::v1::{Hello, HelloAck, RefusalCode, Role, envelope::Msg};
use crate::session::msg_name;
use crate::version::{self, VersionMismatch};

/// A state machine with messages queued for the peer. Drivers drain it with one helper
/// (`outpost_net::stream::send_queued`).
pub trait Outgoing {
    /// Next message to write, if any.
    fn poll_transmit(&mut self) -> Option<Msg>;
}

impl Outgoing for Acceptor {
    fn poll_transmit(&mut self) -> Option<Msg> {
        self.transmit.pop_front()
    }
}

impl Outgoing for Opener {
    fn poll_transmit(&mut self) -> Option<Msg> {
        self.transmit.pop_front()
    }
}

impl Outgoing for crate::session::ServerSession {
    fn poll_transmit(&mut self) -> Option<Msg> {
        crate::session::ServerSession::poll_transmit(self)
    }
}

impl Outgoing for crate::session::ClientSession {
    fn poll_transmit(&mut self) -> Option<Msg> {
        crate::session::ClientSession::poll_transmit(self)
    }
}

/// The kind of control stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// First stream of a gateway uplink (`outpost-gw/1`): the gateway opens it.
    Uplink,
    /// One admin request (`outpost-admin/1`): the admin tool opens it.
    Admin,
    /// A server↔server link (`outpost-peer/1`): the dialling server opens it.
    Peer,
}

impl Channel {
    /// The role the opener must claim in its hello.
    pub fn opener_role(self) -> Role {
        match self {
            Channel::Uplink => Role::Gateway,
            Channel::Admin => Role::Admin,
            Channel::Peer => Role::Peer,
        }
    }

    /// Whether the opener may send `msg` once the hello is done.
    pub fn opener_may_send(self, msg: &Msg) -> bool {
        matches!(
            (self, msg),
            (
                Channel::Uplink,
                Msg::GatewayReport(_)
                    | Msg::CertRenewal(_)
                    | Msg::BroadcastAcks(_)
                    | Msg::DiscoveryReport(_)
            ) | (Channel::Admin, Msg::AdminRequest(_))
                | (
                    Channel::Peer,
                    Msg::LeaseGrant(_)
                        | Msg::LeaseRenewal(_)
                        | Msg::LeaseSync(_)
                        | Msg::UsageReport(_)
                        | Msg::NoticesUp(_)
                        | Msg::NoticesAck(_)
                        | Msg::SeatNeeds(_)
                        | Msg::HandDown(_)
                )
        )
    }

    /// Whether the acceptor may send `msg` once the hello is done.
    pub fn acceptor_may_send(self, msg: &Msg) -> bool {
        matches!(
            (self, msg),
            (
                Channel::Uplink,
                Msg::GatewayDirective(_) | Msg::CertRenewed(_) | Msg::SignedBroadcast(_)
            ) | (Channel::Admin, Msg::AdminResponse(_))
                // Either end of a server link may give seats (a primary, or a peer that sends)
                // and report (a secondary dialled by its primary in a DMZ).
                | (
                    Channel::Peer,
                    Msg::LeaseGrant(_)
                        | Msg::LeaseRenewal(_)
                        | Msg::LeaseSync(_)
                        | Msg::UsageReport(_)
                        | Msg::NoticesUp(_)
                        | Msg::NoticesAck(_)
                        | Msg::SeatNeeds(_)
                        | Msg::HandDown(_)
                )
        )
    }

    fn describe(self) -> &'static str {
        match self {
            Channel::Uplink => "the uplink control stream",
            Channel::Admin => "an admin stream",
            Channel::Peer => "a server link",
        }
    }
}

/// Why a control stream failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The peer refused (its refusal, as sent).
    #[error("{0}")]
    Refused(#[from] Refused),
    /// No protocol version in common.
    #[error("{0}")]
    Version(#[from] VersionMismatch),
    /// The hello claimed a role this stream is not for.
    #[error("{channel} is for {expected:?} peers; the hello claimed {claimed}")]
    WrongRole {
        /// Which stream.
        channel: &'static str,
        /// The role it is for.
        expected: Role,
        /// What the hello said.
        claimed: String,
    },
    /// A message that is not allowed at this point.
    #[error("unexpected {got} on {channel} while {phase}")]
    Unexpected {
        /// Message kind received (or about to be sent).
        got: &'static str,
        /// Which stream.
        channel: &'static str,
        /// What it was waiting for.
        phase: &'static str,
    },
    /// The opening exchange did not finish in time.
    #[error("no hello within {0:?}")]
    Timeout(Duration),
    /// The peer sent bytes that are not a frame (the text says why).
    #[error("malformed frame on {channel}: {what}")]
    Malformed {
        /// Which stream.
        channel: &'static str,
        /// What the decoder said.
        what: String,
    },
    /// The peer ended the stream before the exchange was done.
    #[error("the peer closed {channel} while {phase}")]
    Closed {
        /// Which stream.
        channel: &'static str,
        /// What it was waiting for.
        phase: &'static str,
    },
}

impl ControlError {
    /// The refusal owed to the peer for this error (none when the peer refused).
    pub fn to_refusal(&self) -> Option<Refused> {
        let code = match self {
            ControlError::Refused(_) => return None,
            ControlError::Version(_) => RefusalCode::UnsupportedVersion,
            ControlError::WrongRole { .. } => RefusalCode::WrongRole,
            ControlError::Unexpected { .. } | ControlError::Closed { .. } => {
                RefusalCode::UnexpectedMessage
            }
            ControlError::Timeout(_) => RefusalCode::Timeout,
            ControlError::Malformed { .. } => RefusalCode::Malformed,
        };
        Some(Refused::new(code, self.to_string()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Hello,
    Open,
    Closed,
}

impl Phase {
    fn describe(self, opener: bool) -> &'static str {
        match (self, opener) {
            (Phase::Hello, false) => "waiting for Hello",
            (Phase::Hello, true) => "waiting for HelloAck",
            (Phase::Open, _) => "open",
            (Phase::Closed, _) => "closed",
        }
    }
}

/// What the accepting application must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum AcceptorEvent {
    /// The hello was accepted and answered.
    Established {
        /// Negotiated protocol version.
        version: u32,
        /// The peer's hello (software, capabilities).
        hello: Hello,
    },
    /// A message the channel allows from the opener.
    Message(Box<Msg>),
}

/// The accepting side of a control stream (the server for uplinks and admin streams).
#[derive(Debug)]
pub struct Acceptor {
    channel: Channel,
    phase: Phase,
    device_id: String,
    software: String,
    deadline: Instant,
    setup_timeout: Duration,
    connection_id: u64,
    transmit: VecDeque<Msg>,
    events: VecDeque<AcceptorEvent>,
}

impl Acceptor {
    /// Waits for the hello of a peer authenticated as `device_id` (told back in the
    /// `HelloAck`), for at most `setup_timeout` from `now`.
    pub fn new(
        channel: Channel,
        device_id: impl Into<String>,
        software: impl Into<String>,
        now: Instant,
        setup_timeout: Duration,
    ) -> Acceptor {
        Acceptor {
            channel,
            phase: Phase::Hello,
            device_id: device_id.into(),
            software: software.into(),
            deadline: now + setup_timeout,
            setup_timeout,
            connection_id: 0,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Tells the opener, in the `HelloAck`, the id this side knows the connection by (so both
    /// ends' status can name the same connection).
    pub fn with_connection_id(mut self, id: u64) -> Acceptor {
        self.connection_id = id;
        self
    }

    /// Next message to write.
    pub fn poll_transmit(&mut self) -> Option<Msg> {
        self.transmit.pop_front()
    }

    /// Next thing for the application.
    pub fn poll_event(&mut self) -> Option<AcceptorEvent> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must be called (only while waiting for the hello).
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.phase == Phase::Hello).then_some(self.deadline)
    }

    /// Whether the hello was accepted.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Whether the stream is over (refused or failed).
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Time passed: a hello that did not arrive in time fails the stream.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ControlError> {
        if self.phase == Phase::Hello && now >= self.deadline {
            return Err(self.fail(ControlError::Timeout(self.setup_timeout)));
        }
        Ok(())
    }

    /// Feeds one received message. `now_ms` goes into the `HelloAck` (unix milliseconds).
    pub fn handle_message(&mut self, msg: Msg, now_ms: i64) -> Result<(), ControlError> {
        match (self.phase, msg) {
            (Phase::Closed, m) => Err(self.unexpected(&m)),
            (_, Msg::Refusal(r)) => {
                self.phase = Phase::Closed;
                Err(ControlError::Refused(Refused(r)))
            }
            (Phase::Hello, Msg::Hello(h)) => {
                let expected = self.channel.opener_role();
                if h.role != expected as i32 {
                    let claimed = Role::try_from(h.role)
                        .map(|r| format!("{r:?}"))
                        .unwrap_or_else(|_| format!("role {}", h.role));
                    return Err(self.fail(ControlError::WrongRole {
                        channel: self.channel.describe(),
                        expected,
                        claimed,
                    }));
                }
                let v = match version::negotiate(version::supported(), h.min_version, h.max_version)
                {
                    Ok(v) => v,
                    Err(e) => return Err(self.fail(ControlError::Version(e))),
                };
                self.transmit.push_back(Msg::HelloAck(HelloAck {
                    version: v,
                    capabilities: vec![],
                    software: self.software.clone(),
                    server_time_ms: now_ms,
                    device_id: self.device_id.clone(),
                    connection_id: self.connection_id,
                }));
                self.phase = Phase::Open;
                self.events.push_back(AcceptorEvent::Established {
                    version: v,
                    hello: h,
                });
                Ok(())
            }
            (Phase::Open, m) if self.channel.opener_may_send(&m) => {
                self.events.push_back(AcceptorEvent::Message(Box::new(m)));
                Ok(())
            }
            (_, m) => Err(self.unexpected(&m)),
        }
    }

    /// Sends an application message (a directive, a response).
    pub fn send(&mut self, msg: Msg) -> Result<(), ControlError> {
        if self.phase != Phase::Open || !self.channel.acceptor_may_send(&msg) {
            return Err(ControlError::Unexpected {
                got: msg_name(&msg),
                channel: self.channel.describe(),
                phase: "sending",
            });
        }
        self.transmit.push_back(msg);
        Ok(())
    }

    /// The stream could not be read (`what`: the decoder's error) or ended (`None`): queues
    /// the refusal owed and closes. Returns the error for the caller to log.
    pub fn handle_broken(&mut self, what: Option<String>) -> ControlError {
        let channel = self.channel.describe();
        let e = match what {
            Some(what) => ControlError::Malformed { channel, what },
            None => ControlError::Closed {
                channel,
                phase: self.phase.describe(false),
            },
        };
        self.fail(e)
    }

    /// Refuses the peer (e.g. the application found it overloaded) and closes.
    pub fn refuse(&mut self, r: Refused) {
        if self.phase != Phase::Closed {
            self.transmit.push_back(Msg::Refusal(r.0));
            self.phase = Phase::Closed;
        }
    }

    fn unexpected(&mut self, msg: &Msg) -> ControlError {
        let e = ControlError::Unexpected {
            got: msg_name(msg),
            channel: self.channel.describe(),
            phase: self.phase.describe(false),
        };
        self.fail(e)
    }

    fn fail(&mut self, e: ControlError) -> ControlError {
        if let Some(r) = e.to_refusal() {
            self.refuse(r);
        }
        self.phase = Phase::Closed;
        e
    }
}

/// What the opening application must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum OpenerEvent {
    /// The peer accepted the hello.
    Established {
        /// Negotiated protocol version.
        version: u32,
        /// The id the peer knows this side's certificate as.
        device_id: String,
        /// The peer's software, for logs.
        software: String,
        /// The id the peer knows this connection by (0 = not said).
        connection_id: u64,
    },
    /// A message the channel allows from the acceptor.
    Message(Box<Msg>),
}

/// The opening side of a control stream (the gateway, the admin tool, a dialling server).
#[derive(Debug)]
pub struct Opener {
    channel: Channel,
    phase: Phase,
    transmit: VecDeque<Msg>,
    events: VecDeque<OpenerEvent>,
}

impl Opener {
    /// Starts the stream: the hello (claiming the channel's role) is the first transmit.
    pub fn new(channel: Channel, software: &str) -> Opener {
        let hello = crate::session::hello(channel.opener_role(), software, &[]);
        Opener {
            channel,
            phase: Phase::Hello,
            transmit: VecDeque::from([Msg::Hello(hello)]),
            events: VecDeque::new(),
        }
    }

    /// Next message to write.
    pub fn poll_transmit(&mut self) -> Option<Msg> {
        self.transmit.pop_front()
    }

    /// Next thing for the application.
    pub fn poll_event(&mut self) -> Option<OpenerEvent> {
        self.events.pop_front()
    }

    /// Whether the peer accepted the hello.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Feeds one received message.
    pub fn handle_message(&mut self, msg: Msg) -> Result<(), ControlError> {
        match (self.phase, msg) {
            (_, Msg::Refusal(r)) => {
                self.phase = Phase::Closed;
                Err(ControlError::Refused(Refused(r)))
            }
            (Phase::Hello, Msg::HelloAck(ack)) => {
                if !version::supported().contains(&ack.version) {
                    return Err(self.fail(ControlError::Version(VersionMismatch {
                        peer_min: ack.version,
                        peer_max: ack.version,
                        ours_min: version::MIN_PROTOCOL_VERSION,
                        ours_max: version::PROTOCOL_VERSION,
                    })));
                }
                self.phase = Phase::Open;
                self.events.push_back(OpenerEvent::Established {
                    version: ack.version,
                    device_id: ack.device_id,
                    software: ack.software,
                    connection_id: ack.connection_id,
                });
                Ok(())
            }
            (Phase::Open, m) if self.channel.acceptor_may_send(&m) => {
                self.events.push_back(OpenerEvent::Message(Box::new(m)));
                Ok(())
            }
            (phase, m) => {
                let e = ControlError::Unexpected {
                    got: msg_name(&m),
                    channel: self.channel.describe(),
                    phase: phase.describe(true),
                };
                Err(self.fail(e))
            }
        }
    }

    /// Sends an application message. Allowed before the `HelloAck` arrives (pipelined right
    /// behind the hello, as the admin tool does); the acceptor reads the hello first.
    pub fn send(&mut self, msg: Msg) -> Result<(), ControlError> {
        if self.phase == Phase::Closed || !self.channel.opener_may_send(&msg) {
            return Err(ControlError::Unexpected {
                got: msg_name(&msg),
                channel: self.channel.describe(),
                phase: "sending",
            });
        }
        self.transmit.push_back(msg);
        Ok(())
    }

    fn fail(&mut self, e: ControlError) -> ControlError {
        if let Some(r) = e.to_refusal() {
            self.transmit.push_back(Msg::Refusal(r.0));
        }
        self.phase = Phase::Closed;
        e
    }
}

#[cfg(test)]
mod tests;
