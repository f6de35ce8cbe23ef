//! The office's update cache (D2).
//!
//! Blocks are content-addressed by SHA-256 ([`disk`]). An agent asks for blocks by hash; the
//! cache answers from disk, or joins the download already in flight for that block, or starts
//! one upstream ([`upstream`]) for it and the blocks after it in the same request. Waiters are
//! served each block as soon as it arrived and matched its hash — there is no time-out after
//! which they would go upstream themselves, so N agents asking at once cause one transfer.
//! A block is checked before it is served or stored (one that does not match is asked for
//! again once, then reported corrupt, never served); blocks found on disk at start are checked
//! the first time they are served. A download cut short leaves the blocks that completed, so
//! it resumes from the last good block. The cache is bounded ([`CacheConfig::max_mib`]): past
//! the bound the blocks used longest ago go first, blocks of the revisions kept last.

pub(crate) mod disk;
pub mod manifests;
pub mod serve;
mod upstream;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use outpost_proto::files::BlockStatus;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::warn;

use crate::node::Node;
use disk::{Disk, Entry};

/// `[cache]` in `gateway.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Bound of the blocks stored, in MiB.
    pub max_mib: u64,
    /// Revisions whose blocks are evicted last (the newest ones).
    pub revisions_kept: u32,
    /// Download a new revision's files as soon as its manifest arrives, before any agent asks.
    pub prefetch: bool,
    /// Other places to take files from before the server: directories holding the update
    /// files under their manifest names (a vendor mirror, a network share mounted here). Their
    /// blocks are checked like the server's.
    pub sources: Vec<PathBuf>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_mib: 10 * 1024,
            revisions_kept: 2,
            prefetch: true,
            sources: Vec::new(),
        }
    }
}

/// Counters (status, report to the server).
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Blocks served from disk.
    pub hits: AtomicU64,
    /// Blocks served after they came from upstream or a source (joined or started).
    pub misses: AtomicU64,
    /// Bytes received from the server.
    pub upstream_bytes: AtomicU64,
    /// Blocks taken from a configured source.
    pub source_blocks: AtomicU64,
    /// Blocks that did not match their hash (from upstream, a source or the disk).
    pub refused: AtomicU64,
    /// Blocks evicted to keep the bound.
    pub evicted: AtomicU64,
}

/// What waiters of a block get.
pub(crate) type Outcome = Result<Bytes, BlockStatus>;

type Waiters = watch::Receiver<Option<Outcome>>;

#[derive(Default)]
struct Inner {
    present: HashMap<[u8; 32], Entry>,
    total: u64,
    inflight: HashMap<[u8; 32], Waiters>,
}

/// The cache.
pub struct Cache {
    disk: Disk,
    max_bytes: u64,
    inner: Mutex<Inner>,
    stats: CacheStats,
    /// The manifests kept (which blocks belong to the revisions kept, where a source holds
    /// them).
    pub(crate) manifests: manifests::Manifests,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").finish_non_exhaustive()
    }
}

/// One claimed block: its hash and how its waiters are told.
pub(crate) type Claim = ([u8; 32], watch::Sender<Option<Outcome>>);

enum Next {
    Disk { verified: bool, touch: bool },
    Wait(Waiters),
    Fetch(Vec<Claim>, Waiters),
}

impl Cache {
    /// Opens the cache in `<data>/cache` (the index is the block directory).
    pub fn open(data: &std::path::Path, config: &CacheConfig) -> std::io::Result<Cache> {
        let dir = data.join("cache");
        let disk = Disk::new(&dir);
        let present = disk.scan()?;
        let total = present.values().map(|e| e.size).sum();
        Ok(Cache {
            disk,
            max_bytes: config.max_mib.saturating_mul(1 << 20),
            inner: Mutex::new(Inner {
                present,
                total,
                inflight: HashMap::new(),
            }),
            stats: CacheStats::default(),
            manifests: manifests::Manifests::open(&dir, config.revisions_kept)?,
        })
    }

    /// Counters.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// Bytes and blocks stored.
    pub fn stored(&self) -> (u64, u64) {
        let i = self.inner.lock().expect("cache lock");
        (i.total, i.present.len() as u64)
    }

    /// Whether a block is stored.
    pub fn has(&self, h: &[u8; 32]) -> bool {
        self.inner
            .lock()
            .expect("cache lock")
            .present
            .contains_key(h)
    }

    /// A block's bytes, from disk, the download in flight, or a new download of it and the
    /// blocks in `after` that nobody fetches yet (`after`: the rest of the same request).
    pub async fn get(node: &Arc<Node>, h: [u8; 32], after: &[[u8; 32]]) -> Outcome {
        let cache = node.cache();
        loop {
            match cache.next_step(h, after) {
                Next::Disk { verified, touch } => {
                    let disk = cache.disk.clone();
                    let read = tokio::task::spawn_blocking(move || {
                        let data = disk.read(&h, touch)?;
                        let ok = verified || outpost_proto::files::block_matches(&h, &data);
                        Ok::<_, std::io::Error>((data, ok))
                    })
                    .await;
                    match read {
                        Ok(Ok((data, true))) => {
                            if !verified {
                                cache.mark_verified(&h);
                            }
                            cache.stats.hits.fetch_add(1, Ordering::Relaxed);
                            return Ok(Bytes::from(data));
                        }
                        Ok(Ok((_, false))) => {
                            warn!(block = %hex::encode(h), "a cached block no longer matches its hash; fetching it again");
                            cache.stats.refused.fetch_add(1, Ordering::Relaxed);
                            cache.forget(&h);
                        }
                        // Evicted meanwhile, or unreadable: fetch it again.
                        _ => cache.forget(&h),
                    }
                }
                Next::Wait(rx) => return cache.wait(rx).await,
                Next::Fetch(claims, rx) => {
                    node.runtime().spawn(upstream::fetch(node.clone(), claims));
                    return cache.wait(rx).await;
                }
            }
        }
    }

    async fn wait(&self, mut rx: Waiters) -> Outcome {
        let r = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().expect("waited for a value"),
            // The fetch ended without a word (its task was cancelled at shutdown).
            Err(_) => Err(BlockStatus::Unavailable),
        };
        if r.is_ok() {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn next_step(&self, h: [u8; 32], after: &[[u8; 32]]) -> Next {
        let mut i = self.inner.lock().expect("cache lock");
        let now = outpost_net::unix_now();
        if let Some(e) = i.present.get_mut(&h) {
            let touch = now - e.last_used > 60;
            e.last_used = now;
            return Next::Disk {
                verified: e.verified,
                touch,
            };
        }
        if let Some(rx) = i.inflight.get(&h) {
            return Next::Wait(rx.clone());
        }
        let mut claims = Vec::new();
        let mut first = None;
        for b in std::iter::once(&h).chain(after) {
            if i.present.contains_key(b) || i.inflight.contains_key(b) {
                continue;
            }
            let (tx, rx) = watch::channel(None);
            if first.is_none() {
                first = Some(rx.clone());
            }
            i.inflight.insert(*b, rx);
            claims.push((*b, tx));
        }
        Next::Fetch(claims, first.expect("the first block was claimed"))
    }

    fn mark_verified(&self, h: &[u8; 32]) {
        if let Some(e) = self.inner.lock().expect("cache lock").present.get_mut(h) {
            e.verified = true;
        }
    }

    fn forget(&self, h: &[u8; 32]) {
        let mut i = self.inner.lock().expect("cache lock");
        if let Some(e) = i.present.remove(h) {
            i.total -= e.size;
        }
        drop(i);
        self.disk.remove(h);
    }

    /// Ends a claimed block: tells its waiters, stores a good block, keeps the bound.
    pub(crate) async fn complete(&self, claim: Claim, outcome: Outcome) {
        let (h, tx) = claim;
        let data = match &outcome {
            Ok(d) => Some(d.clone()),
            Err(_) => None,
        };
        // Waiters first: the bytes matched their hash already.
        tx.send_replace(Some(outcome));
        let stored = match data {
            Some(d) => {
                let disk = self.disk.clone();
                let size = d.len() as u64;
                match tokio::task::spawn_blocking(move || disk.write(&h, &d)).await {
                    Ok(Ok(())) => Some(size),
                    Ok(Err(e)) => {
                        warn!(error = %e, "could not store a block in the cache (served from memory this once)");
                        None
                    }
                    Err(_) => None,
                }
            }
            None => None,
        };
        let mut i = self.inner.lock().expect("cache lock");
        i.inflight.remove(&h);
        if let Some(size) = stored {
            i.present.insert(
                h,
                Entry {
                    size,
                    last_used: outpost_net::unix_now(),
                    verified: true,
                },
            );
            i.total += size;
        }
        let victims = self.victims(&mut i);
        drop(i);
        for v in victims {
            self.disk.remove(&v);
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Blocks to evict so the bound holds again (down to 90 % of it, so eviction does not run
    /// at every block): unpinned blocks used longest ago first, then pinned ones.
    fn victims(&self, i: &mut Inner) -> Vec<[u8; 32]> {
        if i.total <= self.max_bytes {
            return Vec::new();
        }
        let target = self.max_bytes - self.max_bytes / 10;
        let pinned = self.manifests.pinned();
        let mut order: Vec<([u8; 32], bool, i64)> = i
            .present
            .iter()
            .map(|(h, e)| (*h, pinned.contains(h), e.last_used))
            .collect();
        order.sort_by_key(|(_, p, t)| (*p, *t));
        let mut out = Vec::new();
        let mut warned = false;
        for (h, p, _) in order {
            if i.total <= target {
                break;
            }
            if p && !warned {
                warned = true;
                warn!("cache.max_mib is smaller than the revisions kept: evicting their blocks");
            }
            if let Some(e) = i.present.remove(&h) {
                i.total -= e.size;
                out.push(h);
            }
        }
        out
    }
}
