//! T9: memory a peer can pin is bounded by what it sends, not by what it announces. 1,000
//! session streams each sending only a frame header announcing the largest frame allowed must
//! not make the server hold more than a few MiB beyond the same streams announcing a tiny
//! frame.
//!
//! Measured with dhat's heap statistics (this test binary's allocator), server in-process:
//! both phases hold 250 agent connections × 4 streams, each stream sending one header; the
//! server ends every one at its session setup timeout, which is the readiness signal (every
//! header was decoded by then). The difference of the heap peaks is what the announced size
//! cost.

use std::sync::Arc;
use std::time::Duration;

use outpost_net::identity::DeviceIdentity;
use outpost_net::{endpoint, transport};
use outpost_proto::alpn;
use outpost_proto::frame::FRAME_ENVELOPE;
use outpost_proto::pki::{self, Trust};
use outpost_tests::*;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const CONNECTIONS: usize = 250;
const STREAMS: usize = 4;

/// Opens the streams, sends each a header announcing `len`, waits until the server ended
/// every stream. Returns the heap peak (bytes) seen since the profiler started.
async fn headers_only(id: &DeviceIdentity, addr: std::net::SocketAddr, len: u32) -> usize {
    let tls = pki::client_config(
        Some(&id.identity),
        &Trust::Ca(id.cas.clone()),
        &[alpn::AGENT],
    )
    .unwrap();
    let mut cfg = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).unwrap(),
    ));
    cfg.transport_config(transport::client(
        Duration::from_secs(5),
        Duration::from_secs(60),
    ));
    let ep = endpoint::client_endpoint(addr).unwrap();
    let mut conns = vec![];
    for _ in 0..CONNECTIONS {
        let c = ep
            .connect_with(cfg.clone(), addr, pki::SERVER_NAME)
            .unwrap()
            .await
            .expect("connect");
        conns.push(c);
    }
    let mut header = vec![FRAME_ENVELOPE];
    header.extend_from_slice(&len.to_be_bytes());
    let mut tasks = vec![];
    for c in &conns {
        for _ in 0..STREAMS {
            let c = c.clone();
            let header = header.clone();
            tasks.push(tokio::spawn(async move {
                let (mut send, mut recv) = c.open_bi().await.expect("open stream");
                send.write_all(&header).await.expect("send header");
                // The server ends the session at its setup timeout: by then it decoded the
                // header.
                let _ = recv.read_to_end(64 << 10).await;
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    for c in conns {
        c.close(quinn::VarInt::from_u32(0), b"done");
    }
    ep.wait_idle().await;
    dhat::HeapStats::get().max_bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t9_header_only_streams_pin_no_announced_memory() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let auth = Authority::new();
    let server = Server::start(&auth, |c| {
        c.timing.session_setup_timeout = Duration::from_secs(3);
    })
    .await;
    let token = server.token("agent", 1).await;
    let agent = Agent::enroll(
        test_agent_config(vec![], Some(server.addr()), "mem"),
        &token,
    )
    .await;
    let id = DeviceIdentity::load(&agent.data).unwrap().unwrap();
    let max_frame = 1 << 20;
    let small = headers_only(&id, server.addr(), 16).await;
    let big = headers_only(&id, server.addr(), max_frame).await;
    let extra = big.saturating_sub(small);
    println!(
        "T9: {} header-only streams announcing {} KiB: heap peak {} KiB vs {} KiB announcing 16 bytes (+{} KiB)",
        CONNECTIONS * STREAMS,
        max_frame >> 10,
        big >> 10,
        small >> 10,
        extra >> 10
    );
    assert!(
        extra < 4 << 20,
        "announcing {} bytes on {} streams pinned {} extra bytes",
        max_frame,
        CONNECTIONS * STREAMS,
        extra
    );
}
