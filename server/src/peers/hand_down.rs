//! What a primary hands down to its secondaries (H4): its root group's effective policy and
//! root tasks (D5; how a secondary places them: `store::inherit`), and its newest update
//! revision (D1).
//!
//! The primary sends a `HandDown` when the link comes up, whenever one of them changes, and at
//! each synchronisation period when it differs from what the link last carried. The secondary
//! stores policy and tasks at once. For an update revision it checks the manifest against the
//! primary's update key (pinned at the first revision taken; the link itself is mutually
//! authenticated by pinned certificates), refuses one older than a revision already taken
//! (rollback) or expired (freeze), fetches the blocks it does not hold on bidi streams of the
//! link (`BlockRequest`, as a gateway does on its uplink), checks each block's SHA-256, and
//! records the files as a revision of its own, signed with its own update key — its devices
//! pinned that key at enrollment, and the content stays verified end to end by the block and
//! file hashes, which the re-signing does not change. A failed fetch is tried again on the
//! link's ticker; blocks already stored are not fetched again.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use outpost_net::blocks;
use outpost_proto::files::{self, BlockStatus, MAX_BLOCKS};
use outpost_proto::pb::v1::{self as pb, SignedManifest, UpdateManifest, envelope::Msg};
use outpost_proto::update::{self, ManifestError};
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};

use super::link::{Ctl, Link};
use crate::node::Node;
use crate::store::updates::{Upstream, hex};

/// Blocks stored per transaction while taking a revision.
const BLOCKS_PER_COMMIT: usize = 16;

/// Wait before a failed fetch of the primary's revision is tried again.
const RETRY: Duration = Duration::from_secs(30);

/// The update side of a link to the primary.
#[derive(Default)]
pub(super) struct Taking {
    /// A fetch runs; its result arrives on the link's channel.
    pub(super) fetching: bool,
    /// The newest offer (manifest, key), kept to try again and to take after a running fetch.
    offer: Option<(SignedManifest, Vec<u8>)>,
    /// When the offer may be tried again after a failure.
    retry_at: Option<Instant>,
    /// The last refusal notified, so one offer sent again and again is notified once.
    refused: Option<String>,
    /// Digest of the last `HandDown` sent on this link (primary side).
    sent: Option<Vec<u8>>,
}

/// The outcome of one fetch.
pub(super) type Fetched = Result<u64, String>;

impl Link {
    /// Sends what this server hands down when the neighbour is its secondary and it differs
    /// from what this link last carried (`force`: send anyway).
    pub(super) async fn hand_down(&mut self, ctl: &mut Ctl, force: bool) {
        if self.r.kind != "secondary" {
            return;
        }
        let store = self.node.store();
        let (policy, tasks, manifest) = match (store.root_policy().await, store.root_tasks().await)
        {
            (Ok(p), Ok(t)) => (p, t, store.update_manifest(None).await.ok().flatten()),
            (Err(e), _) | (_, Err(e)) => {
                return warn!(error = %e, "hand-down to the secondary skipped; retried at the next synchronisation");
            }
        };
        let m = pb::HandDown {
            policy: policy.to_string(),
            tasks,
            update_key: manifest
                .as_ref()
                .map(|_| self.node.updates().public_key())
                .unwrap_or_default(),
            manifest,
        };
        let digest = files::sha256(&m.encode_to_vec()).to_vec();
        if !force && self.taking.sent.as_ref() == Some(&digest) {
            return;
        }
        self.taking.sent = Some(digest);
        ctl.send(Msg::HandDown(m));
    }

    /// What the primary handed down.
    pub(super) async fn on_hand_down(&mut self, m: pb::HandDown) {
        if self.r.kind != "primary" {
            return debug!("hand-down from a server that is not this server's primary ignored");
        }
        let now = outpost_net::unix_now();
        match self
            .node
            .store()
            .take_hand_down(&self.r.name, &m.policy, &m.tasks, now)
            .await
        {
            Ok(true) => {
                info!(
                    tasks = m.tasks.len(),
                    "policy and tasks from the primary taken"
                );
                self.node.sessions().registry().nudge_all();
                self.node
                    .store()
                    .announce_sync(crate::store::inherit::ROOT)
                    .await;
                self.node.peers().hand_down_changed();
            }
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, "policy and tasks from the primary refused; nothing changed")
            }
        }
        if let Some(signed) = m.manifest {
            self.taking.offer = Some((signed, m.update_key));
            self.taking.retry_at = None;
            self.take_offer().await;
        }
    }

    /// Starts taking the offered revision, unless a fetch runs or it is not to be taken.
    pub(super) async fn take_offer(&mut self) {
        if self.taking.fetching {
            return;
        }
        if let Some(at) = self.taking.retry_at
            && Instant::now() < at
        {
            return;
        }
        let Some((signed, key)) = self.taking.offer.clone() else {
            return;
        };
        let source = self.r.name.clone();
        let held = match self.node.store().upstream_update(&source).await {
            Ok(h) => h,
            Err(e) => {
                return warn!(error = %e, "update offer from the primary not looked at; retried");
            }
        };
        let refusal = match &held {
            Some((pinned, _)) if pinned != &key => Some(format!(
                "the update key of {source} is not the one pinned here at its first revision; \
                 its revisions are refused (if {source} was set up again, remove and add the \
                 relation)"
            )),
            _ => None,
        };
        let taken = held.map_or(0, |(_, r)| r);
        let now = outpost_net::unix_now();
        let m = match refusal {
            Some(r) => Err(r),
            None => match update::accept(&signed, &key, taken, now) {
                Ok(m) => Ok(m),
                Err(ManifestError::AlreadyHeld(_)) => {
                    self.taking.offer = None;
                    return;
                }
                Err(e) => Err(format!("update revision from {source} refused: {e}")),
            },
        };
        let m = match m {
            Ok(m) => m,
            Err(why) => {
                self.taking.offer = None;
                if self.taking.refused.as_ref() != Some(&why) {
                    warn!(reason = %why, "update revision from the primary refused");
                    let _ = self
                        .node
                        .store()
                        .notify(
                            "update-refused",
                            None,
                            &why,
                            serde_json::json!({ "server": source }),
                        )
                        .await;
                    self.taking.refused = Some(why);
                }
                return;
            }
        };
        self.taking.fetching = true;
        let done = self.fetch_done.clone();
        let node = self.node.clone();
        let conn = self.conn.clone();
        self.node.runtime().spawn(
            async move {
                let r = fetch(&node, &conn, &source, &key, m).await;
                let _ = done.send(r).await;
            }
            .in_current_span(),
        );
    }

    /// A fetch ended: a failure is tried again after a while; a newer offer is taken next.
    pub(super) async fn fetched(&mut self, r: Fetched) {
        self.taking.fetching = false;
        match r {
            Ok(revision) => {
                info!(revision, "update revision from the primary taken");
                self.taking.refused = None;
            }
            Err(e) => {
                warn!(error = %e, "update revision from the primary not taken; tried again in {}s", RETRY.as_secs());
                self.taking.retry_at = Some(Instant::now() + RETRY);
            }
        }
        self.take_offer().await;
    }
}

/// The channel fetches report on.
pub(super) fn channel() -> (mpsc::Sender<Fetched>, mpsc::Receiver<Fetched>) {
    mpsc::channel(1)
}

/// Fetches the blocks of `m` not stored here from the primary, checks and stores them, and
/// records the revision; returns the local revision.
async fn fetch(
    node: &Node,
    conn: &quinn::Connection,
    source: &str,
    key: &[u8],
    m: UpdateManifest,
) -> Fetched {
    let store = node.store();
    let fail = |e: crate::store::StoreError| e.to_string();
    let mut seen = HashSet::new();
    let mut want = vec![];
    for b in m.files.iter().flat_map(|f| &f.block_sha256) {
        let h: [u8; 32] = b.as_slice().try_into().expect("checked by update::verify");
        if seen.insert(h) && !store.has_update_block(&hex(&h)).await.map_err(fail)? {
            want.push(h);
        }
    }
    let total = want.len();
    for chunk in want.chunks(MAX_BLOCKS) {
        let bad = fetch_blocks(node, conn, source, chunk).await?;
        if bad.is_empty() {
            continue;
        }
        // Asked for once more; a block that fails twice stops the fetch (nothing recorded).
        if let Some(h) = fetch_blocks(node, conn, source, &bad).await?.first() {
            return Err(format!(
                "block {} from {source} did not match its SHA-256 twice",
                hex(h)
            ));
        }
    }
    let up = Upstream {
        source,
        key,
        revision: m.revision,
        now: outpost_net::unix_now(),
    };
    let label = format!("server {source} revision {}", m.revision);
    let local = crate::updates::record_upstream(node, m.files, &label, up)
        .await
        .map_err(fail)?;
    info!(
        blocks = total,
        upstream = m.revision,
        local = local.revision,
        "blocks fetched from the primary"
    );
    Ok(local.revision)
}

/// Asks for `hashes` on one stream; stores those that match; returns those that did not.
async fn fetch_blocks(
    node: &Node,
    conn: &quinn::Connection,
    source: &str,
    hashes: &[[u8; 32]],
) -> Result<Vec<[u8; 32]>, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    blocks::request(&mut send, hashes)
        .await
        .map_err(|e| e.to_string())?;
    let mut bad = vec![];
    let mut batch = vec![];
    for h in hashes {
        let (status, data) = blocks::read_block(&mut recv)
            .await
            .map_err(|e| e.to_string())?;
        if status != BlockStatus::Ok {
            return Err(format!(
                "{source} does not have block {} of its own revision ({status:?}); it may have \
                 removed the revision meanwhile",
                hex(h)
            ));
        }
        if !files::block_matches(h, &data) {
            warn!(block = %hex(h), "a block from the primary does not match its SHA-256");
            bad.push(*h);
            continue;
        }
        batch.push((hex(h), data.to_vec()));
        if batch.len() >= BLOCKS_PER_COMMIT {
            node.store()
                .put_update_blocks(&std::mem::take(&mut batch))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    node.store()
        .put_update_blocks(&batch)
        .await
        .map_err(|e| e.to_string())?;
    Ok(bad)
}

/// Serves the bidi streams a neighbour opens after the control stream: block requests from a
/// secondary (the blocks of the revisions handed down); any other neighbour's are reset.
pub(super) async fn serve_streams(node: Arc<Node>, conn: quinn::Connection, secondary: bool) {
    loop {
        let (mut send, recv) = tokio::select! {
            s = conn.accept_bi() => match s { Ok(s) => s, Err(_) => return },
            _ = node.runtime().cancelled() => return,
        };
        if !secondary {
            debug!("a stream from a neighbour that is not this server's secondary reset");
            let _ = send.reset(quinn::VarInt::from_u32(
                outpost_proto::error::RefusalCode::Forbidden.close_code(),
            ));
            continue;
        }
        node.runtime()
            .spawn(crate::files::serve_stream(node.clone(), send, recv).in_current_span());
    }
}
