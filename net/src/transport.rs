//! QUIC transport settings per role.
//!
//! quinn pre-allocates state for every stream it lets the peer open (NOTES §1), so connections
//! from agents advertise a handful of streams and small windows, while a gateway uplink — one
//! stream per relayed agent session — gets its large stream limit only after the server has
//! identified it as a gateway (`raise_for_uplink`).

use std::sync::Arc;
use std::time::Duration;

use quinn::{IdleTimeout, TransportConfig, VarInt};

/// Streams an agent may open towards a gateway or server (one session, spare for retries).
pub const AGENT_STREAMS: u32 = 4;
/// Default bound on relayed sessions per gateway uplink.
pub const DEFAULT_UPLINK_STREAMS: u32 = 10_000;

fn idle(d: Duration) -> Option<IdleTimeout> {
    IdleTimeout::try_from(d).ok()
}

/// Listener side of agent-facing connections (server endpoint, gateway's office listener),
/// also the initial settings of every connection the server accepts.
pub fn listener(idle_timeout: Duration) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    // Agents exchange small messages; small windows and no MTU probing keep an idle
    // connection cheap (measured by the idle_memory benchmark).
    t.max_concurrent_bidi_streams(AGENT_STREAMS.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((64u32 << 10).into())
        .receive_window((256u32 << 10).into())
        .send_window(256 << 10)
        .datagram_receive_buffer_size(None)
        .datagram_send_buffer_size(0)
        .mtu_discovery_config(None)
        .enable_segmentation_offload(false)
        .max_idle_timeout(idle(idle_timeout));
    Arc::new(t)
}

/// Client side for agents and admins: the peer never opens streams towards us.
pub fn client(keep_alive: Duration, idle_timeout: Duration) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((256u32 << 10).into())
        .receive_window((1u32 << 20).into())
        .send_window(1 << 20)
        .datagram_receive_buffer_size(None)
        .keep_alive_interval(Some(keep_alive))
        .max_idle_timeout(idle(idle_timeout));
    Arc::new(t)
}

/// The gateway's side of its uplink (T3): keep-alives below the NAT's UDP mapping timeout,
/// idle timeout above it, room for many concurrent relayed streams in flight.
pub fn uplink(keep_alive: Duration, idle_timeout: Duration) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((256u32 << 10).into())
        .receive_window((32u32 << 20).into())
        .send_window(32 << 20)
        .datagram_receive_buffer_size(None)
        .keep_alive_interval(Some(keep_alive))
        .max_idle_timeout(idle(idle_timeout));
    Arc::new(t)
}

/// Server side, once a connection is known to be a gateway uplink: let it open one stream per
/// relayed agent session and give it a connection window to match.
pub fn raise_for_uplink(conn: &quinn::Connection, max_sessions: u32) {
    conn.set_max_concurrent_bi_streams(VarInt::from_u32(max_sessions.saturating_add(1)));
    conn.set_receive_window(VarInt::from_u32(32 << 20));
    conn.set_send_window(32 << 20);
}
