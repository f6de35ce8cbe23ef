//! Refusals and who is at fault.
//!
//! Every error that crosses the wire becomes a [`Refusal`] with a [`RefusalCode`]; a QUIC
//! connection or stream closed because of it carries the code as its application error code
//! and the encoded `Refusal` as the close reason, so the other side can tell its user exactly
//! what happened (and when to come back, T6).

use std::fmt;
use std::time::Duration;

use prost::Message;

pub use crate::pb::v1::{Refusal, RefusalCode};

/// Who is at fault for an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The peer sent something invalid: close that peer, keep serving others.
    PeerMisbehaved,
    /// The peer is valid but speaks something we do not (version, role).
    PeerIncompatible,
    /// The peer is not allowed to do this (credentials, revocation, tokens).
    NotAllowed,
    /// The request cannot be served as asked (bad argument, not found, conflict).
    BadRequest,
    /// This side is overloaded or shutting down: retry later.
    Unavailable,
    /// A bug or misuse on this side.
    LocalMisuse,
    /// Transport or storage failed.
    Io,
    /// Something took too long.
    Timeout,
}

impl RefusalCode {
    /// Who is at fault when this code is sent.
    pub fn fault(self) -> Fault {
        use RefusalCode::*;
        match self {
            Malformed | FrameTooLarge | UnexpectedMessage => Fault::PeerMisbehaved,
            UnsupportedVersion | WrongRole => Fault::PeerIncompatible,
            Unauthenticated | Revoked | Removed | TokenInvalid | TokenExpired | TokenUsedUp
            | Forbidden => Fault::NotAllowed,
            InvalidArgument | NotFound | Conflict => Fault::BadRequest,
            Overloaded | ShuttingDown | UpstreamUnavailable => Fault::Unavailable,
            Internal | Unspecified => Fault::LocalMisuse,
            Timeout => Fault::Timeout,
        }
    }

    /// The QUIC application error code used when closing for this reason.
    pub fn close_code(self) -> u32 {
        self as i32 as u32
    }
}

/// Builds a refusal.
pub fn refusal(code: RefusalCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code: code as i32,
        message: message.into(),
        retry_after_ms: 0,
    }
}

/// A refusal received from (or about to be sent to) a peer, as a Rust error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Refused(pub Refusal);

impl Refused {
    /// Builds one.
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        Refused(refusal(code, message))
    }

    /// The refusal code (unknown numbers map to `Unspecified`).
    pub fn code(&self) -> RefusalCode {
        RefusalCode::try_from(self.0.code).unwrap_or(RefusalCode::Unspecified)
    }

    /// When the peer said to come back, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        (self.0.retry_after_ms > 0).then(|| Duration::from_millis(self.0.retry_after_ms.into()))
    }

    /// Sets the retry-after hint.
    pub fn with_retry_after(mut self, d: Duration) -> Self {
        self.0.retry_after_ms = d.as_millis().min(u32::MAX as u128) as u32;
        self
    }

    /// The close reason bytes for a QUIC connection close.
    pub fn to_close_reason(&self) -> Vec<u8> {
        let mut r = self.0.clone();
        // A close frame must fit one packet; keep the message short.
        if r.message.len() > 900 {
            let mut cut = 900;
            while !r.message.is_char_boundary(cut) {
                cut -= 1;
            }
            r.message.truncate(cut);
        }
        r.encode_to_vec()
    }

    /// Decodes a close reason. Peers that are not Outpost send text; keep it readable.
    pub fn from_close(code: u64, reason: &[u8]) -> Refused {
        match Refusal::decode(reason) {
            Ok(r) if r.code as u64 == code && !r.message.is_empty() => Refused(r),
            _ => Refused(Refusal {
                code: i32::try_from(code).unwrap_or(0),
                message: String::from_utf8_lossy(reason).into_owned(),
                retry_after_ms: 0,
            }),
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.code().as_str_name();
        let name = name
            .strip_prefix("REFUSAL_CODE_")
            .unwrap_or(name)
            .to_lowercase();
        write!(f, "refused ({name}): {}", self.0.message)?;
        if let Some(d) = self.retry_after() {
            write!(f, " (retry after {} ms)", d.as_millis())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reason_round_trip_and_foreign_text() {
        let r = Refused::new(RefusalCode::Overloaded, "too many sessions")
            .with_retry_after(Duration::from_millis(1500));
        let back = Refused::from_close(r.code().close_code().into(), &r.to_close_reason());
        assert_eq!(back, r);
        assert_eq!(back.retry_after(), Some(Duration::from_millis(1500)));
        assert!(
            back.to_string()
                .contains("refused (overloaded): too many sessions")
        );
        let foreign = Refused::from_close(7, b"bye");
        assert_eq!(foreign.0.message, "bye");
    }

    #[test]
    fn every_code_has_a_fault() {
        for c in 0..=50 {
            if let Ok(code) = RefusalCode::try_from(c) {
                let _ = code.fault();
            }
        }
        assert_eq!(RefusalCode::Revoked.fault(), Fault::NotAllowed);
        assert_eq!(RefusalCode::FrameTooLarge.fault(), Fault::PeerMisbehaved);
    }
}
