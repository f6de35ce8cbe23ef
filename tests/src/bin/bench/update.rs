//! `update_fanout` (D2): N agents behind one gateway fetch the same file at once. Reported:
//! aggregate delivery throughput (N × size / time from the import to the last agent holding
//! the file verified) against a bare quinn single-stream transfer of the same bytes measured
//! at its best in the same run. Asserted: exactly one upstream transfer (the server served the
//! file's bytes once).

use std::sync::Arc;

use super::*;
use crate::agents::{enroll_agents, start_agents, wait_all_checked};
use outpost_proto::pb::admin::{Empty, UpdateImport};
use outpost_proto::pki::{self, ClientAuth};

/// Bytes per second of one bare quinn stream carrying `size` bytes (best of five).
async fn bare_transfer(size: u64) -> anyhow::Result<f64> {
    let bare = bench::BarePki::generate();
    let tls = pki::server_config(
        &bare.server,
        std::slice::from_ref(&bare.ca),
        &[b"bench"],
        ClientAuth::Required,
    )?;
    let cfg = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls))?,
    ));
    let opts = outpost_net::endpoint::SocketOptions::default();
    let server = outpost_net::endpoint::endpoint("127.0.0.1:0".parse()?, &opts, Some(cfg))?;
    let addr = server.local_addr()?;
    let block = bytes::Bytes::from(vec![7u8; 1 << 20]);
    tokio::spawn(async move {
        while let Some(inc) = server.accept().await {
            let block = block.clone();
            tokio::spawn(async move {
                let Ok(conn) = inc.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let _ = recv.read_to_end(64).await;
                    let mut left = size;
                    while left > 0 {
                        let n = left.min(block.len() as u64) as usize;
                        if send.write_chunk(block.slice(..n)).await.is_err() {
                            return;
                        }
                        left -= n as u64;
                    }
                    let _ = send.finish();
                }
            });
        }
    });
    let client = bench::client_endpoints(1).remove(0);
    let mut best = 0f64;
    for _ in 0..5 {
        let conn = client
            .connect_with(bare.client_config(None), addr, pki::SERVER_NAME)?
            .await?;
        let started = Instant::now();
        let (mut send, mut recv) = conn.open_bi().await?;
        send.finish()?;
        let mut got = 0u64;
        while let Some(c) = recv.read_chunk(1 << 20, true).await? {
            got += c.bytes.len() as u64;
        }
        anyhow::ensure!(got == size, "bare transfer: {got} of {size} bytes");
        best = best.max(size as f64 / started.elapsed().as_secs_f64());
        conn.close(0u32.into(), b"done");
    }
    Ok(best)
}

/// The scenario.
pub(crate) async fn update_fanout(n: usize, mib: u64) -> anyhow::Result<ScenarioResult> {
    let size = mib << 20;
    let baseline = bare_transfer(size).await?;
    let auth = Authority::new();
    let server = Server::start(&auth, |c| {
        c.store.durability = Durability::Normal;
        c.timing.session_setup_timeout = Duration::from_secs(120);
    })
    .await;
    let gw = outpost_tests::Gateway::start(&server, |o, c| {
        o.no_status_file = true;
        // Agents' requests start the download: what is measured is the fan-out from the
        // transfer in flight, not a cache warmed beforehand.
        c.cache.prefetch = false;
    })
    .await;
    let token = server.token("agent", n as u32).await;
    let root = tempfile::tempdir()?;
    let dirs = enroll_agents(root.path(), server.addr(), &token, n, "u").await?;
    let endpoints = bench::client_endpoints(8);
    let (_go, hold) = tokio::sync::watch::channel(true);
    let agents = start_agents(&dirs, gw.addr(), &endpoints, &hold)?;
    wait_all_checked(&agents).await;

    let src = tempfile::tempdir()?;
    let mut content = Vec::with_capacity(size as usize);
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    while content.len() < size as usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        content.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(src.path().join("update.bin"), &content)?;
    drop(content);
    let started = Instant::now();
    let r = server
        .admin(Op::UpdateImport(UpdateImport {
            dir: src.path().display().to_string(),
        }))
        .await;
    anyhow::ensure!(matches!(r, R::Updates(_)), "import: {r:?}");
    for a in &agents {
        a.wait_for(|s| s.update_fetched == 1).await;
    }
    let elapsed = started.elapsed();
    let served = match server.admin(Op::ServerStatus(Empty {})).await {
        R::ServerStatus(s) => s.files.unwrap_or_default(),
        other => anyhow::bail!("status: {other:?}"),
    };
    anyhow::ensure!(
        served.bytes == size,
        "{} bytes served upstream for one {size}-byte file: not one transfer",
        served.bytes
    );
    let st = gw.h().status();
    for a in agents {
        a.shutdown().await;
    }
    let rate = (n as u64 * size) as f64 / elapsed.as_secs_f64();
    Ok(ScenarioResult::new(
        "update_fanout",
        rate / 1e6,
        "MB/s delivered (all agents)",
        Some(baseline / 1e6),
        0.8,
        "ratio>=",
    )
    .with("agents", n)
    .with("file_mib", mib)
    .with("seconds", elapsed.as_secs_f64())
    .with("upstream_transfers", served.bytes / size)
    .with("upstream_bytes", served.bytes)
    .with("cache_hits", st.cache_hits)
    .with("cache_misses", st.cache_misses)
    .with(
        "via",
        "one gateway, prefetch off; every agent verifies each 1 MiB block and writes the file",
    ))
}
