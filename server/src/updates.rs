//! The update repository's server side (D1): import of a revision from a directory, the
//! signing key, and the refresh that keeps the newest manifest from expiring while the server
//! runs (its expiry is what lets devices notice a repository that stopped moving).

use std::path::{Path, PathBuf};

use outpost_proto::licence::GrantSigner;
use outpost_proto::pb::v1::{
    GatewayDirective, SignedManifest, UpdateFile, UpdateManifest, envelope::Msg,
};
use outpost_proto::update::{self, BLOCK_SIZE};
use tokio::io::AsyncReadExt;
use tracing::{info, warn};

use crate::node::Node;
use crate::store::StoreError;
use crate::store::updates::{Upstream, hex};

/// Blocks stored per transaction during an import.
const BLOCKS_PER_COMMIT: usize = 16;

/// How often the newest manifest's expiry is looked at.
const REFRESH_CHECK: std::time::Duration = std::time::Duration::from_secs(3600);

/// The update-manifest signing key.
pub struct Updates {
    key: GrantSigner,
}

impl std::fmt::Debug for Updates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updates").finish_non_exhaustive()
    }
}

impl Updates {
    /// With the key from `update.key`.
    pub fn new(key: GrantSigner) -> Updates {
        Updates { key }
    }

    /// The public key devices verify manifests with.
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key()
    }

    fn sign(&self, m: &UpdateManifest) -> SignedManifest {
        update::sign(&self.key, m)
    }
}

/// The files of a directory, relative names sorted; a name that is not plain is refused.
fn files_of(dir: &Path) -> Result<Vec<(String, PathBuf)>, StoreError> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<(), StoreError> {
        let bad =
            |e: std::io::Error| StoreError::Invalid(format!("cannot read {}: {e}", dir.display()));
        for e in std::fs::read_dir(dir).map_err(bad)? {
            let e = e.map_err(bad)?;
            let path = e.path();
            let ty = e.file_type().map_err(bad)?;
            if ty.is_dir() {
                walk(root, &path, out)?;
            } else if ty.is_file() {
                let name = path
                    .strip_prefix(root)
                    .expect("under root")
                    .to_string_lossy()
                    .into_owned();
                if !update::plain_name(&name) {
                    return Err(StoreError::Invalid(format!(
                        "{}: update file names are letters, digits, '-', '_' and '.' (in \
                         directories); rename it",
                        path.display()
                    )));
                }
                out.push((name, path));
            } else {
                return Err(StoreError::Invalid(format!(
                    "{}: not a regular file or directory (symbolic links are not followed)",
                    path.display()
                )));
            }
        }
        Ok(())
    }
    let mut out = vec![];
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// Imports the files under `dir` (a path on the server's host) as a new revision; returns its
/// manifest. The revision exists once this returns and not before.
pub async fn import_dir(node: &Node, dir: &Path) -> Result<UpdateManifest, StoreError> {
    if !dir.is_dir() {
        return Err(StoreError::NotFound(format!(
            "{} is not a directory on the server's host",
            dir.display()
        )));
    }
    let files = files_of(dir)?;
    if files.is_empty() {
        return Err(StoreError::Invalid(format!(
            "{} holds no files to import",
            dir.display()
        )));
    }
    let store = node.store();
    let mut entries = vec![];
    for (name, path) in files {
        let mut f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| StoreError::Invalid(format!("{}: {e}", path.display())))?;
        let mut whole = ring::digest::Context::new(&ring::digest::SHA256);
        let mut hashes = vec![];
        let mut pending = vec![];
        let mut size = 0u64;
        loop {
            let mut block = Vec::with_capacity(BLOCK_SIZE as usize);
            let n = (&mut f)
                .take(u64::from(BLOCK_SIZE))
                .read_to_end(&mut block)
                .await
                .map_err(|e| StoreError::Invalid(format!("{}: {e}", path.display())))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            whole.update(&block);
            let h = ring::digest::digest(&ring::digest::SHA256, &block);
            hashes.push(h.as_ref().to_vec());
            pending.push((hex(h.as_ref()), block));
            if pending.len() >= BLOCKS_PER_COMMIT {
                store
                    .put_update_blocks(&std::mem::take(&mut pending))
                    .await?;
            }
        }
        store.put_update_blocks(&pending).await?;
        entries.push(UpdateFile {
            component: update::component_of(&name).to_owned(),
            name,
            size,
            sha256: whole.finish().as_ref().to_vec(),
            block_sha256: hashes,
        });
    }
    let source = dir.display().to_string();
    record(node, entries, &source, None).await
}

/// Records the files of a primary's revision (H4) whose blocks are all stored here as a new
/// revision of this server, signed with its own key.
pub async fn record_upstream(
    node: &Node,
    files: Vec<UpdateFile>,
    source: &str,
    up: Upstream<'_>,
) -> Result<UpdateManifest, StoreError> {
    record(node, files, source, Some(up)).await
}

/// Signs and records a new revision of `files`.
async fn record(
    node: &Node,
    files: Vec<UpdateFile>,
    source: &str,
    upstream: Option<Upstream<'_>>,
) -> Result<UpdateManifest, StoreError> {
    let now = outpost_net::unix_now();
    let expires_at = now + node.config().timing.manifest_ttl.as_secs() as i64;
    let blocks: Vec<Vec<u8>> = files
        .iter()
        .flat_map(|f| f.block_sha256.iter().cloned())
        .collect();
    let m = node
        .store()
        .add_update_revision(
            |revision| {
                let m = UpdateManifest {
                    revision,
                    created_at: now,
                    expires_at,
                    block_size: BLOCK_SIZE,
                    files,
                };
                let signed = node.updates().sign(&m);
                (m, signed)
            },
            source,
            &blocks,
            upstream,
        )
        .await?;
    // Connected devices learn it at their next sync; make that now. Gateways get it on their
    // uplink at once (D2: they fetch it ahead of their agents).
    node.sessions().registry().nudge_all();
    if let Some(d) = gateway_directive(node, 0).await {
        for id in node.gateways().ids() {
            node.gateways().send(&id, d.clone());
        }
    }
    node.store().announce_sync("everyone").await;
    node.peers().hand_down_changed();
    info!(revision = m.revision, files = m.files.len(), %source, "update revision recorded");
    Ok(m)
}

/// Signs the newest revision's files again as a new revision when less than half of its
/// lifetime is left; returns the new revision.
pub async fn refresh_if_due(node: &Node) -> Result<Option<u64>, StoreError> {
    let Some(signed) = node.store().update_manifest(None).await? else {
        return Ok(None);
    };
    let m = update::verify(&signed, &node.updates().public_key())
        .map_err(|e| StoreError::Invalid(format!("the newest update manifest: {e}")))?;
    let ttl = node.config().timing.manifest_ttl.as_secs() as i64;
    if m.expires_at - outpost_net::unix_now() > ttl / 2 {
        return Ok(None);
    }
    let r = record(node, m.files, &format!("refresh of {}", m.revision), None).await?;
    Ok(Some(r.revision))
}

/// Refreshes the newest manifest when due, at start and every hour, until shutdown.
pub async fn refresher(node: std::sync::Arc<Node>) {
    loop {
        match refresh_if_due(&node).await {
            Ok(Some(r)) => info!(revision = r, "update manifest re-signed before it expires"),
            Ok(None) => {}
            Err(e) => warn!(error = %e, "update manifest refresh failed; retried in an hour"),
        }
        tokio::select! {
            _ = tokio::time::sleep(REFRESH_CHECK) => {}
            _ = node.runtime().cancelled() => return,
        }
    }
}

/// The directive handing a gateway the newest manifest and the update key (D2), when the
/// gateway reports holding another revision; `None` when it is current or there is none.
pub async fn gateway_directive(node: &Node, held: u64) -> Option<Msg> {
    let signed = node.store().update_manifest(None).await.ok()??;
    let revision = update::verify(&signed, &node.updates().public_key())
        .ok()?
        .revision;
    if revision == held {
        return None;
    }
    Some(Msg::GatewayDirective(GatewayDirective {
        manifest: Some(signed),
        update_key: node.updates().public_key(),
        ..Default::default()
    }))
}
