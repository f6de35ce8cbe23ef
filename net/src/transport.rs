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
    Arc::new(client_transport(keep_alive, idle_timeout))
}

fn client_transport(keep_alive: Duration, idle_timeout: Duration) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((256u32 << 10).into())
        .receive_window((1u32 << 20).into())
        .send_window(1 << 20)
        .datagram_receive_buffer_size(None)
        .keep_alive_interval(Some(keep_alive))
        .max_idle_timeout(idle(idle_timeout));
    t
}

/// Client side of an update download (D2): windows large enough for blocks of 1 MiB to
/// stream at line rate over a LAN or a WAN link.
pub fn files_client(keep_alive: Duration, idle_timeout: Duration) -> Arc<TransportConfig> {
    let mut t = client_transport(keep_alive, idle_timeout);
    t.stream_receive_window((8u32 << 20).into())
        .receive_window((16u32 << 20).into());
    Arc::new(t)
}

/// Broadcast streams a gateway may have open towards one agent at once (D4).
pub const BROADCAST_STREAMS: u32 = 2;

/// Client side for agents: as [`client`], but the gateway may open a few streams towards the
/// agent, each carrying one broadcast it fans out (D4).
pub fn agent(keep_alive: Duration, idle_timeout: Duration) -> Arc<TransportConfig> {
    let mut t = client_transport(keep_alive, idle_timeout);
    t.max_concurrent_bidi_streams(BROADCAST_STREAMS.into());
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

/// The dialling side of a server link (H1): as an uplink, but the neighbour may open a few
/// streams towards it (block requests of a secondary, H4), and a stream window that lets 1 MiB
/// update blocks flow over a WAN.
pub fn peer(keep_alive: Duration, idle_timeout: Duration) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(AGENT_STREAMS.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((8u32 << 20).into())
        .receive_window((32u32 << 20).into())
        .send_window(32 << 20)
        .datagram_receive_buffer_size(None)
        .keep_alive_interval(Some(keep_alive))
        .max_idle_timeout(idle(idle_timeout));
    Arc::new(t)
}

/// Streams a gateway uplink may open at first (control stream + relayed sessions).
pub const UPLINK_STREAMS_INITIAL: u32 = 128;

/// Server side, once a connection is known to be a gateway uplink: let it open relayed agent
/// sessions and give it a connection window to match. The stream allowance starts at
/// [`UPLINK_STREAMS_INITIAL`] and grows with use ([`UplinkCredit`]).
pub fn raise_for_uplink(conn: &quinn::Connection, max_sessions: u32) -> UplinkCredit {
    conn.set_receive_window(VarInt::from_u32(32 << 20));
    conn.set_send_window(32 << 20);
    UplinkCredit::new(conn, max_sessions)
}

/// The stream allowance of one gateway uplink, grown as its sessions grow.
///
/// quinn creates state for every stream it allows the peer to open (NOTES §1): allowing
/// `limits.max_sessions_per_gateway` (10,000) up front cost ~720 KiB of server memory per
/// uplink before a single agent connected (the `uplinks` benchmark), which is what bounds how
/// many offices one server can hold. The allowance doubles whenever the open streams reach
/// half of it, up to the maximum, so an uplink costs what its office uses. A gateway that
/// momentarily has more sessions to open than allowed waits for credit (quinn's `open_bi`),
/// which the doubling grants as soon as the server has accepted the streams in flight.
#[derive(Debug)]
pub struct UplinkCredit {
    conn: quinn::Connection,
    max: u32,
    allowed: std::sync::atomic::AtomicU32,
    open: std::sync::atomic::AtomicU32,
}

impl UplinkCredit {
    fn new(conn: &quinn::Connection, max_sessions: u32) -> UplinkCredit {
        let max = max_sessions.saturating_add(1);
        let allowed = UPLINK_STREAMS_INITIAL.min(max);
        conn.set_max_concurrent_bi_streams(VarInt::from_u32(allowed));
        UplinkCredit {
            conn: conn.clone(),
            max,
            allowed: allowed.into(),
            open: 0.into(),
        }
    }

    /// Counts a stream the gateway opened; grows the allowance when half of it is in use.
    /// The returned guard gives the stream back when dropped.
    pub fn opened(self: &Arc<Self>) -> UplinkStreamGuard {
        use std::sync::atomic::Ordering;
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        let allowed = self.allowed.load(Ordering::Acquire);
        if open.saturating_mul(2) >= allowed && allowed < self.max {
            let grown = allowed.saturating_mul(2).min(self.max);
            if self
                .allowed
                .compare_exchange(allowed, grown, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.conn
                    .set_max_concurrent_bi_streams(VarInt::from_u32(grown));
            }
        }
        UplinkStreamGuard(self.clone())
    }

    /// The current allowance.
    pub fn allowed(&self) -> u32 {
        self.allowed.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// An open uplink stream; dropping it gives it back to the count.
#[derive(Debug)]
pub struct UplinkStreamGuard(Arc<UplinkCredit>);

impl Drop for UplinkStreamGuard {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::pki;

    /// T9 with NOTES §1: an uplink starts with a small stream allowance (cheap to hold) and
    /// still carries far more concurrent sessions than that, the allowance growing with use.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn t9_uplink_stream_allowance_grows_with_open_sessions() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pem = pki::self_signed("uplink-test", 0).unwrap();
        let id = pki::Identity::from_pem(&pem, "test").unwrap();
        let tls = pki::server_config(
            &id,
            std::slice::from_ref(id.leaf()),
            &[b"t"],
            pki::ClientAuth::None,
        )
        .unwrap();
        let mut sc = quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls)).unwrap(),
        ));
        sc.transport_config(listener(Duration::from_secs(30)));
        let server = crate::endpoint::endpoint(
            "127.0.0.1:0".parse().unwrap(),
            &Default::default(),
            Some(sc),
        )
        .unwrap();
        let addr = server.local_addr().unwrap();
        let pin = pki::fingerprint(id.leaf());
        let ctls = pki::client_config(None, &pki::Trust::PinnedLeaf(pin), &[b"t"]).unwrap();
        let mut cc = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(ctls)).unwrap(),
        ));
        cc.transport_config(uplink(Duration::from_secs(5), Duration::from_secs(30)));
        let client = crate::endpoint::client_endpoint(addr).unwrap();

        const SESSIONS: u32 = 1000;
        let accept = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let credit = Arc::new(raise_for_uplink(&conn, 10_000));
            assert_eq!(credit.allowed(), UPLINK_STREAMS_INITIAL);
            let mut guards = vec![];
            for _ in 0..SESSIONS {
                let (_send, mut recv) = conn.accept_bi().await.unwrap();
                let mut b = [0u8; 1];
                recv.read_exact(&mut b).await.unwrap();
                guards.push((credit.opened(), _send, recv));
            }
            let peak = credit.allowed();
            drop(guards);
            (peak, credit, conn)
        });
        let conn = client
            .connect_with(cc, addr, "uplink-test")
            .unwrap()
            .await
            .unwrap();
        // Every session stays open: SESSIONS concurrent streams, far above the first allowance.
        let mut open = vec![];
        for _ in 0..SESSIONS {
            let (mut s, r) = tokio::time::timeout(Duration::from_secs(30), conn.open_bi())
                .await
                .expect("stream credit granted in time")
                .unwrap();
            s.write_all(b"x").await.unwrap();
            open.push((s, r));
        }
        let (peak, credit, _conn) = accept.await.unwrap();
        assert!(peak > SESSIONS, "allowance grew to {peak}");
        assert!(
            peak < 4 * SESSIONS,
            "grown by doubling, not to the maximum: {peak}"
        );
        assert!(credit.allowed() <= 10_001);
        drop(open);
    }
}
