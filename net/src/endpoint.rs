//! UDP sockets through socket2 (T10) and quinn endpoints on them.
//!
//! Receive and send buffers are raised so one socket can carry many connections (a server
//! holding thousands of gateway uplinks); the kernel may cap them at `net.core.rmem_max`, and
//! the sizes actually granted are logged. quinn-udp uses GSO/GRO where the platform has them.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};

/// Socket settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketOptions {
    /// SO_RCVBUF requested, bytes.
    pub recv_buffer: usize,
    /// SO_SNDBUF requested, bytes.
    pub send_buffer: usize,
    /// For an IPv6 address: also accept IPv4 (dual-stack).
    pub dual_stack: bool,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            recv_buffer: 4 << 20,
            send_buffer: 4 << 20,
            dual_stack: true,
        }
    }
}

impl SocketOptions {
    /// Small buffers for a client with one connection (an agent).
    pub fn client() -> Self {
        SocketOptions {
            recv_buffer: 256 << 10,
            send_buffer: 256 << 10,
            dual_stack: true,
        }
    }
}

/// Creates and binds a non-blocking UDP socket.
pub fn udp_socket(addr: SocketAddr, opts: &SocketOptions) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(!opts.dual_stack)?;
    }
    // Buffer sizes are best effort: the kernel caps them, which is not an error.
    if let Err(e) = socket.set_recv_buffer_size(opts.recv_buffer) {
        tracing::debug!(error = %e, "could not set SO_RCVBUF");
    }
    if let Err(e) = socket.set_send_buffer_size(opts.send_buffer) {
        tracing::debug!(error = %e, "could not set SO_SNDBUF");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tracing::debug!(
        %addr,
        recv_buffer = socket.recv_buffer_size().unwrap_or(0),
        send_buffer = socket.send_buffer_size().unwrap_or(0),
        "udp socket bound"
    );
    Ok(socket.into())
}

/// A quinn endpoint on a socket2 socket; a server endpoint when `server` is given.
pub fn endpoint(
    addr: SocketAddr,
    opts: &SocketOptions,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    endpoint_with_reset_key(addr, opts, server, None)
}

/// As [`endpoint`], with the key stateless resets are derived from. A listener that keeps
/// this key across restarts answers packets of connections it lost in a crash or restart
/// with a stateless reset, so its peers notice at once instead of after their idle timeout.
pub fn endpoint_with_reset_key(
    addr: SocketAddr,
    opts: &SocketOptions,
    server: Option<quinn::ServerConfig>,
    reset_key: Option<&[u8; 32]>,
) -> std::io::Result<quinn::Endpoint> {
    let socket = udp_socket(addr, opts)?;
    let config = match reset_key {
        Some(k) => {
            let mut c = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                k,
            )));
            // Connection ids are validated with a keyed hash: the key must survive the restart
            // too, or packets of lost connections are dropped as invalid instead of reset.
            let cid_key =
                u64::from_be_bytes(k[..8].try_into().expect("8 bytes")) ^ 0x6f75_7470_6f73_7421;
            c.cid_generator(move || {
                Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
            });
            c
        }
        None => quinn::EndpointConfig::default(),
    };
    quinn::Endpoint::new(config, server, socket, Arc::new(quinn::TokioRuntime))
}

/// Reads the stateless-reset key kept in a data directory, creating it on first use.
pub fn reset_key(data: &std::path::Path) -> std::io::Result<[u8; 32]> {
    let path = data.join("reset.key");
    if let Ok(b) = std::fs::read(&path)
        && let Ok(k) = <[u8; 32]>::try_from(b.as_slice())
    {
        return Ok(k);
    }
    let k: [u8; 32] = rand::random();
    crate::fsutil::write_atomic(&path, &k, true)?;
    Ok(k)
}

/// Why a node's listener could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// The stateless-reset key in the data directory is unusable.
    #[error("{}: {source}", path.display())]
    ResetKey {
        /// `reset.key`.
        path: std::path::PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The UDP port could not be bound (in use, no permission, no such address).
    #[error("cannot listen on udp {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the system said.
        source: std::io::Error,
    },
}

/// A node's listening endpoint on `addr`, with the stateless-reset key kept in `data` (see
/// [`endpoint_with_reset_key`]). Returns it and the address actually bound.
pub fn listen(
    addr: SocketAddr,
    opts: &SocketOptions,
    server: quinn::ServerConfig,
    data: &std::path::Path,
) -> Result<(quinn::Endpoint, SocketAddr), ListenError> {
    let key = reset_key(data).map_err(|source| ListenError::ResetKey {
        path: data.join("reset.key"),
        source,
    })?;
    let bind = |source| ListenError::Bind { addr, source };
    let ep = endpoint_with_reset_key(addr, opts, Some(server), Some(&key)).map_err(bind)?;
    let local = ep.local_addr().map_err(bind)?;
    Ok((ep, local))
}

/// A client endpoint bound to an ephemeral port of the right address family for `remote`.
pub fn client_endpoint(remote: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let bind: SocketAddr = if remote.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    endpoint(bind, &SocketOptions::client(), None)
}

/// The ALPN the connection negotiated.
pub fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
}

/// The peer's leaf certificate, if it presented one.
pub fn peer_leaf(conn: &quinn::Connection) -> Option<rustls_pki_types::CertificateDer<'static>> {
    conn.peer_identity()
        .and_then(|i| {
            i.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|v| v.into_iter().next())
}

/// An address that could not be resolved.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {target:?}: {why}")]
pub struct ResolveError {
    /// What was asked for.
    pub target: String,
    /// Why not.
    pub why: String,
}

/// Resolves `host:port` (a literal address or a name) to the first address.
pub async fn resolve(target: &str) -> Result<SocketAddr, ResolveError> {
    if let Ok(a) = target.parse() {
        return Ok(a);
    }
    let err = |why: String| ResolveError {
        target: target.to_owned(),
        why,
    };
    tokio::net::lookup_host(target)
        .await
        .map_err(|e| err(format!("{e} (expected host:port)")))?
        .next()
        .ok_or_else(|| err("the name resolves to no address".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_socket_buffers_are_set_as_asked_and_dual_stack_is_honoured() {
        // A size no default gives: Linux grants exactly twice what was asked (bookkeeping), so
        // reading it back proves the setter ran (the default here is 212992).
        let small = SocketOptions {
            recv_buffer: 48 << 10,
            send_buffer: 40 << 10,
            dual_stack: true,
        };
        let s = Socket::from(udp_socket("127.0.0.1:0".parse().unwrap(), &small).unwrap());
        assert_eq!(s.recv_buffer_size().unwrap(), 2 * (48 << 10));
        assert_eq!(s.send_buffer_size().unwrap(), 2 * (40 << 10));
        // The server's default asks for 4 MiB: granted up to the kernel's cap.
        let cap = |f: &str| {
            std::fs::read_to_string(f)
                .ok()
                .and_then(|t| t.trim().parse::<usize>().ok())
                .unwrap_or(usize::MAX)
        };
        let big = SocketOptions::default();
        let s = Socket::from(udp_socket("127.0.0.1:0".parse().unwrap(), &big).unwrap());
        let want_r = big.recv_buffer.min(cap("/proc/sys/net/core/rmem_max"));
        let want_s = big.send_buffer.min(cap("/proc/sys/net/core/wmem_max"));
        assert!(s.recv_buffer_size().unwrap() >= want_r, "{want_r}");
        assert!(s.send_buffer_size().unwrap() >= want_s, "{want_s}");
        if let Ok(v6) = udp_socket("[::]:0".parse().unwrap(), &big) {
            assert!(!Socket::from(v6).only_v6().unwrap(), "dual-stack socket");
        }
        let v6only = SocketOptions {
            dual_stack: false,
            ..big
        };
        if let Ok(v6) = udp_socket("[::]:0".parse().unwrap(), &v6only) {
            assert!(Socket::from(v6).only_v6().unwrap(), "IPv6 only when asked");
        }
    }
}
