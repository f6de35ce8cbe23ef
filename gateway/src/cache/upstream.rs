//! Fetching claimed blocks: from a configured source when a kept manifest says which file
//! holds the block, else from the server on a `FILES` stream of the uplink. Every block is
//! checked against its hash first; one that does not match is asked for once more, then its
//! waiters are told it is corrupt. Blocks that cannot be fetched now (uplink down or lost
//! mid-transfer) end `Unavailable`: the next request claims them again, starting from there.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use outpost_net::blocks;
use outpost_proto::files::{BlockStatus, MAX_BLOCKS, block_matches};
use outpost_proto::pb::v1::{RelayKind, RelayOpen, envelope::Msg};
use tracing::{debug, warn};

use super::Claim;
use crate::node::Node;

/// Fetches claimed blocks and completes each.
pub(crate) async fn fetch(node: Arc<Node>, claims: Vec<Claim>) {
    let cache = node.cache();
    let mut rest = Vec::with_capacity(claims.len());
    for c in claims {
        match from_sources(&node, &c.0).await {
            Some(data) => {
                cache.stats.source_blocks.fetch_add(1, Ordering::Relaxed);
                cache.complete(c, Ok(data)).await;
            }
            None => rest.push(c),
        }
    }
    let mut again = Vec::new();
    for chunk in chunks(rest) {
        again.extend(from_server(&node, chunk, false).await);
    }
    for chunk in chunks(again) {
        from_server(&node, chunk, true).await;
    }
}

fn chunks(mut v: Vec<Claim>) -> Vec<Vec<Claim>> {
    let mut out = Vec::new();
    while v.len() > MAX_BLOCKS {
        let tail = v.split_off(MAX_BLOCKS);
        out.push(v);
        v = tail;
    }
    if !v.is_empty() {
        out.push(v);
    }
    out
}

/// A block from the first configured source that holds it with the right bytes.
async fn from_sources(node: &Arc<Node>, h: &[u8; 32]) -> Option<Bytes> {
    let sources = &node.config().cache.sources;
    if sources.is_empty() {
        return None;
    }
    let loc = node.cache().manifests.location(h)?;
    for src in sources {
        let path = src.join(&loc.name);
        let (offset, len) = (loc.offset, loc.len as usize);
        let read = tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::open(&path)?;
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = vec![0u8; len];
            f.read_exact(&mut buf)?;
            Ok::<_, std::io::Error>(buf)
        })
        .await;
        match read {
            Ok(Ok(buf)) if block_matches(h, &buf) => return Some(Bytes::from(buf)),
            Ok(Ok(_)) => {
                node.cache().stats.refused.fetch_add(1, Ordering::Relaxed);
                warn!(source = %src.display(), file = %loc.name, "a source's block does not match the manifest; not used");
            }
            _ => debug!(source = %src.display(), file = %loc.name, "block not in this source"),
        }
    }
    None
}

/// Asks the server for the claimed blocks on one stream of the uplink and completes them as
/// they arrive. Returns the blocks whose bytes did not match (completed only when `last`).
async fn from_server(node: &Arc<Node>, claims: Vec<Claim>, last: bool) -> Vec<Claim> {
    let cache = node.cache();
    let mut pending = claims.into_iter();
    let mut bad = Vec::new();
    let stream = async {
        let conn = node.uplink().conn().ok_or("the uplink is down")?;
        let (mut send, recv) =
            tokio::time::timeout(node.config().timing.relay_open_timeout, conn.open_bi())
                .await
                .map_err(|_| "no stream on the uplink in time")?
                .map_err(|_| "the uplink closed")?;
        let open = RelayOpen {
            kind: RelayKind::Files as i32,
            ..Default::default()
        };
        outpost_net::stream::write_one_frame(&mut send, Msg::RelayOpen(open))
            .await
            .map_err(|_| "the uplink closed")?;
        Ok::<_, &str>((send, recv))
    }
    .await;
    let (mut send, mut recv) = match stream {
        Ok(s) => s,
        Err(why) => {
            debug!(why, "blocks not fetched now");
            for c in pending {
                cache.complete(c, Err(BlockStatus::Unavailable)).await;
            }
            return bad;
        }
    };
    let hashes: Vec<[u8; 32]> = pending.as_slice().iter().map(|c| c.0).collect();
    if blocks::request(&mut send, &hashes).await.is_err() {
        for c in pending {
            cache.complete(c, Err(BlockStatus::Unavailable)).await;
        }
        return bad;
    }
    for c in pending.by_ref() {
        match blocks::read_block(&mut recv).await {
            Ok((BlockStatus::Ok, data)) => {
                cache
                    .stats
                    .upstream_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                if block_matches(&c.0, &data) {
                    cache.complete(c, Ok(data)).await;
                } else {
                    cache.stats.refused.fetch_add(1, Ordering::Relaxed);
                    warn!(block = %hex::encode(c.0), again = !last, "the server sent a block that does not match its hash; not served");
                    bad.push(c);
                }
            }
            Ok((status, _)) => cache.complete(c, Err(status)).await,
            Err(e) => {
                debug!(error = %e, "block download cut short; the blocks left are fetched at the next request");
                cache.complete(c, Err(BlockStatus::Unavailable)).await;
                break;
            }
        }
    }
    for c in pending {
        cache.complete(c, Err(BlockStatus::Unavailable)).await;
    }
    if last {
        for c in std::mem::take(&mut bad) {
            cache.complete(c, Err(BlockStatus::Corrupt)).await;
        }
    }
    bad
}
