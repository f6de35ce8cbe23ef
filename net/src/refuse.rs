//! Refusals on the wire: closing a connection or stream with a [`Refused`], and turning what
//! the peer closed with back into a readable error.

use outpost_proto::error::Refused;
use quinn::{ConnectionError, VarInt};

/// Closes a connection with a refusal the peer can read.
pub fn close(conn: &quinn::Connection, refused: &Refused) {
    conn.close(
        VarInt::from_u32(refused.code().close_code()),
        &refused.to_close_reason(),
    );
}

/// The refusal carried by a connection close, if the peer closed with one.
pub fn refusal_of(err: &ConnectionError) -> Option<Refused> {
    match err {
        ConnectionError::ApplicationClosed(c) => {
            Some(Refused::from_close(c.error_code.into_inner(), &c.reason))
        }
        _ => None,
    }
}

/// A sentence explaining a connection error to an operator.
pub fn explain(err: &ConnectionError) -> String {
    if let Some(r) = refusal_of(err) {
        return r.to_string();
    }
    match err {
        ConnectionError::TransportError(t) => explain_transport(&t.to_string(), t.code),
        ConnectionError::ConnectionClosed(c) => explain_transport(&c.to_string(), c.error_code),
        ConnectionError::TimedOut => {
            "no answer from the peer (timed out): check the address, port and firewall".into()
        }
        ConnectionError::VersionMismatch => "the peer speaks no QUIC version we know".into(),
        ConnectionError::Reset => "the peer reset the connection (restarted?)".into(),
        ConnectionError::LocallyClosed => "closed locally".into(),
        other => other.to_string(),
    }
}

fn explain_transport(text: &str, code: quinn::TransportErrorCode) -> String {
    let raw: u64 = code.into();
    // TLS alerts travel as CRYPTO_ERROR 0x100 + alert number.
    let hint = match raw {
        0x178 => Some(
            "no application protocol in common (ALPN): wrong port or role, or an incompatible version",
        ),
        0x174 => Some("the peer requires a client certificate: enroll this device first"),
        0x130 | 0x12a => Some(
            "certificate not trusted: the peers belong to different deployments (CA) or a certificate is wrong",
        ),
        0x12e => Some("certificate expired or not yet valid: check the clocks, or re-enroll"),
        0x12b | 0x12c => Some("certificate rejected by the peer"),
        _ => None,
    };
    match hint {
        Some(h) => format!("{h} ({text})"),
        None => text.to_owned(),
    }
}

/// A sentence for a connect (dial) failure.
pub fn explain_connect(err: &quinn::ConnectError) -> String {
    format!("cannot dial: {err}")
}
