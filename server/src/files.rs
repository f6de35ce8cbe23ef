//! Serving update blocks (D2): to gateways' caches on their uplink (a relayed stream of kind
//! `FILES`) and to agents without a gateway on `outpost-files/1`. Blocks come from the store
//! by hash, as stored: the check against the hash happens at the receiving end (the gateway
//! and the agent), which is the end that must not be fooled.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use outpost_net::blocks;
use outpost_proto::files::BlockStatus;
use outpost_proto::pb::admin::FileServing;
use tracing::{Instrument, debug};

use crate::node::Node;
use crate::store::updates::hex;

/// Blocks read from the store ahead of the one being sent.
const READ_AHEAD: usize = 2;

/// What this instance served (`admin status`).
#[derive(Debug, Default)]
pub struct Stats {
    requests: AtomicU64,
    blocks: AtomicU64,
    bytes: AtomicU64,
    unknown: AtomicU64,
}

impl Stats {
    /// A snapshot for `admin status`.
    pub fn snapshot(&self) -> FileServing {
        FileServing {
            requests: self.requests.load(Ordering::Relaxed),
            blocks: self.blocks.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            unknown: self.unknown.load(Ordering::Relaxed),
        }
    }
}

/// Serves an agent's `outpost-files/1` connection (already authenticated) until it closes.
pub async fn serve_connection(node: Arc<Node>, conn: quinn::Connection) {
    loop {
        let (send, recv) = tokio::select! {
            s = conn.accept_bi() => match s { Ok(s) => s, Err(_) => return },
            _ = node.runtime().cancelled() => return,
        };
        node.runtime()
            .spawn(serve_stream(node.clone(), send, recv).in_current_span());
    }
}

/// Serves one block request stream.
pub async fn serve_stream(
    node: Arc<Node>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let hashes = match blocks::read_request(&mut recv, node.config().limits.max_frame).await {
        Ok(h) => h,
        Err(e) => {
            debug!(error = %e, "bad block request");
            node.sessions().bad_frame();
            let _ = send.reset(quinn::VarInt::from_u32(
                outpost_proto::error::RefusalCode::Malformed.close_code(),
            ));
            return;
        }
    };
    let stats = node.file_stats();
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let store = node.store();
    let mut reads = futures_util::stream::iter(hashes)
        .map(|h| async move { store.update_block(&hex(&h)).await })
        .buffered(READ_AHEAD);
    while let Some(r) = reads.next().await {
        let (status, data) = match r {
            Ok(Some(d)) => (BlockStatus::Ok, Bytes::from(d)),
            Ok(None) => {
                stats.unknown.fetch_add(1, Ordering::Relaxed);
                (BlockStatus::Unknown, Bytes::new())
            }
            Err(e) => {
                debug!(error = %e, "update block read failed");
                (BlockStatus::Unavailable, Bytes::new())
            }
        };
        let len = data.len() as u64;
        if blocks::write_block(&mut send, status, data).await.is_err() {
            return;
        }
        if status == BlockStatus::Ok {
            stats.blocks.fetch_add(1, Ordering::Relaxed);
            stats.bytes.fetch_add(len, Ordering::Relaxed);
        }
    }
    let _ = send.finish();
}
