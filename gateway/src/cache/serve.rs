//! Agents' `outpost-files/1` connections (D2: only devices with a certificate of the
//! deployment's CA get a handshake), and keeping the newest revision ready: a manifest from
//! the server is checked and kept, then (with `cache.prefetch`) its blocks are fetched before
//! any agent asks; a fetch cut short by the uplink resumes when it is back.

use std::sync::Arc;

use outpost_net::blocks;
use outpost_proto::files::{BlockStatus, MAX_BLOCKS};
use outpost_proto::pb::v1::GatewayDirective;
use tracing::{Instrument, debug, info, warn};

use crate::node::Node;

/// Serves one agent's files connection until it closes.
pub async fn connection(node: Arc<Node>, conn: quinn::Connection) {
    // Blocks go out faster than an agent's relayed session needs.
    conn.set_send_window(8 << 20);
    loop {
        let (send, recv) = tokio::select! {
            s = conn.accept_bi() => match s { Ok(s) => s, Err(_) => return },
            _ = node.runtime().cancelled() => return,
        };
        node.runtime()
            .spawn(stream(node.clone(), send, recv).in_current_span());
    }
}

async fn stream(node: Arc<Node>, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let hashes = match blocks::read_request(&mut recv, 1 << 20).await {
        Ok(h) => h,
        Err(e) => {
            debug!(error = %e, "bad block request from an agent");
            let _ = send.reset(quinn::VarInt::from_u32(
                outpost_proto::error::RefusalCode::Malformed.close_code(),
            ));
            return;
        }
    };
    for (i, h) in hashes.iter().enumerate() {
        let (status, data) = match crate::cache::Cache::get(&node, *h, &hashes[i + 1..]).await {
            Ok(d) => (BlockStatus::Ok, d),
            Err(s) => (s, bytes::Bytes::new()),
        };
        if blocks::write_block(&mut send, status, data).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

/// A directive's manifest: checked, kept, and the prefetch woken.
pub(crate) fn on_directive(node: &Node, d: &GatewayDirective) {
    let Some(signed) = &d.manifest else { return };
    let cache = node.cache();
    let before = cache.manifests.error();
    match cache
        .manifests
        .offer(signed, &d.update_key, outpost_net::unix_now())
    {
        Ok(Some(revision)) => {
            info!(revision, "update manifest received");
            node.prefetch_wake();
            node.status_changed();
        }
        Ok(None) => {}
        Err(e) => {
            if e != before {
                warn!(error = %e, "update manifest refused; keeping the revisions held");
            }
            node.status_changed();
        }
    }
}

/// Keeps the newest revision's blocks in the cache (with `cache.prefetch`).
pub(crate) async fn prefetch(node: Arc<Node>) {
    let mut uplink = node.uplink().subscribe();
    loop {
        let newest = node.cache().manifests.newest_manifest();
        if let Some(m) = newest.filter(|_| node.config().cache.prefetch) {
            prefetch_revision(&node, &m).await;
        }
        tokio::select! {
            _ = node.prefetch_notified() => {}
            // The uplink back: resume what it cut short.
            Ok(()) = uplink.changed() => {}
            _ = node.runtime().cancelled() => return,
        }
    }
}

/// Fetches the blocks of a revision the cache does not hold.
async fn prefetch_revision(node: &Arc<Node>, m: &outpost_proto::pb::v1::UpdateManifest) {
    let all: Vec<[u8; 32]> = m
        .files
        .iter()
        .flat_map(|f| f.block_sha256.iter())
        .filter_map(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .collect();
    for chunk in all.chunks(MAX_BLOCKS) {
        for (i, h) in chunk.iter().enumerate() {
            if node.cache().has(h) {
                continue;
            }
            match crate::cache::Cache::get(node, *h, &chunk[i + 1..]).await {
                Ok(_) => {}
                // The uplink is down: resumed when it is back.
                Err(BlockStatus::Unavailable) => return,
                Err(s) => {
                    warn!(block = %hex::encode(h), status = ?s, "block of the newest revision not fetched");
                }
            }
        }
    }
    debug!(revision = m.revision, "newest revision cached");
}
