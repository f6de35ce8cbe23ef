//! ALPN protocol names (T1): each names the role of a connection and the protocol major
//! version. A listener offers only the names it serves, so a peer speaking another role or an
//! unknown version is refused during the TLS handshake.

/// Agent to server, direct.
pub const AGENT: &[u8] = b"outpost-agent/1";
/// Agent to gateway: each stream relays an inner TLS session to the server (S1).
pub const RELAY: &[u8] = b"outpost-relay/1";
/// Enrollment with a token, before the device holds a certificate (S6).
pub const ENROLL: &[u8] = b"outpost-enroll/1";
/// Gateway uplink (either side may dial, T3/T4).
pub const GATEWAY: &[u8] = b"outpost-gw/1";
/// Admin tool to server (O3).
pub const ADMIN: &[u8] = b"outpost-admin/1";
/// Server to server: the hierarchy's link (H1–H9). Both ends pin each other's link
/// certificate.
pub const PEER: &[u8] = b"outpost-peer/1";
/// Server to licence authority service (L11).
pub const AUTHORITY: &[u8] = b"outpost-authority/1";
/// Update files by block, from a gateway's cache or the server (D2); only enrolled devices.
pub const FILES: &[u8] = b"outpost-files/1";
/// Inner TLS between agent and server inside a relayed stream.
pub const INNER_SESSION: &[u8] = b"outpost-session/1";

/// Human-readable form of an ALPN value for error messages.
pub fn display(alpn: Option<&[u8]>) -> String {
    match alpn {
        Some(a) => String::from_utf8_lossy(a).into_owned(),
        None => "(none)".to_owned(),
    }
}
