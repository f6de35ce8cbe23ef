//! The update manifests a gateway keeps (D1, D2): the server sends the newest on the uplink;
//! the gateway checks it as agents do (`outpost_proto::update::accept`: signature against the
//! update key it was first given, no rollback below a revision it holds, no expired manifest)
//! and keeps the newest [`super::CacheConfig::revisions_kept`] in `<data>/cache/manifests/`.
//! Their blocks are evicted last, and say where a configured source holds a block.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use outpost_proto::pb::v1::{SignedManifest, UpdateManifest};
use outpost_proto::update::{self, ManifestError};
use prost::Message;

/// Where a block sits in a file of a manifest.
#[derive(Debug, Clone)]
pub(crate) struct Location {
    pub name: String,
    pub offset: u64,
    pub len: u64,
}

#[derive(Default)]
struct Held {
    key: Vec<u8>,
    kept: BTreeMap<u64, UpdateManifest>,
    pinned: Arc<HashSet<[u8; 32]>>,
    locations: HashMap<[u8; 32], Location>,
    /// The last refusal, for the status.
    error: String,
}

/// The manifests kept.
pub(crate) struct Manifests {
    dir: PathBuf,
    keep: usize,
    held: Mutex<Held>,
}

fn hash32(b: &[u8]) -> Option<[u8; 32]> {
    <[u8; 32]>::try_from(b).ok()
}

impl Held {
    fn derive(&mut self) {
        let mut pinned = HashSet::new();
        let mut locations = HashMap::new();
        for m in self.kept.values() {
            let bs = u64::from(m.block_size);
            for f in &m.files {
                for (i, b) in f.block_sha256.iter().enumerate() {
                    let Some(h) = hash32(b) else { continue };
                    pinned.insert(h);
                    let offset = i as u64 * bs;
                    locations.insert(
                        h,
                        Location {
                            name: f.name.clone(),
                            offset,
                            len: outpost_proto::files::block_len(f.size, m.block_size, i as u64),
                        },
                    );
                }
            }
        }
        self.pinned = Arc::new(pinned);
        self.locations = locations;
    }
}

impl Manifests {
    /// Loads the kept manifests (each checked against the pinned key; expiry does not matter
    /// for keeping them).
    pub(crate) fn open(cache_dir: &Path, keep: u32) -> std::io::Result<Manifests> {
        let dir = cache_dir.join("manifests");
        std::fs::create_dir_all(&dir)?;
        let mut held = Held::default();
        if let Ok(k) = std::fs::read_to_string(dir.join("update-key")) {
            held.key = hex::decode(k.trim()).unwrap_or_default();
        }
        for f in std::fs::read_dir(&dir)? {
            let p = f?.path();
            if p.extension().is_none_or(|e| e != "manifest") {
                continue;
            }
            let Ok(bytes) = std::fs::read(&p) else {
                continue;
            };
            let Ok(signed) = SignedManifest::decode(bytes.as_slice()) else {
                continue;
            };
            if let Ok(m) = update::verify(&signed, &held.key) {
                held.kept.insert(m.revision, m);
            }
        }
        held.derive();
        Ok(Manifests {
            dir,
            keep: keep.max(1) as usize,
            held: Mutex::new(held),
        })
    }

    /// The newest revision held (0: none).
    pub(crate) fn newest(&self) -> u64 {
        let h = self.held.lock().expect("manifests lock");
        h.kept.keys().next_back().copied().unwrap_or(0)
    }

    /// The newest manifest held.
    pub(crate) fn newest_manifest(&self) -> Option<UpdateManifest> {
        let h = self.held.lock().expect("manifests lock");
        h.kept.values().next_back().cloned()
    }

    /// The last refusal ("" when the last manifest offered was accepted).
    pub(crate) fn error(&self) -> String {
        self.held.lock().expect("manifests lock").error.clone()
    }

    /// Blocks of the revisions kept.
    pub(crate) fn pinned(&self) -> Arc<HashSet<[u8; 32]>> {
        self.held.lock().expect("manifests lock").pinned.clone()
    }

    /// Where a block sits in a kept revision's files.
    pub(crate) fn location(&self, h: &[u8; 32]) -> Option<Location> {
        self.held
            .lock()
            .expect("manifests lock")
            .locations
            .get(h)
            .cloned()
    }

    /// A manifest the server sent, with its update key. `Ok(Some(revision))`: a new revision
    /// kept; `Ok(None)`: held already.
    pub(crate) fn offer(
        &self,
        signed: &SignedManifest,
        offered_key: &[u8],
        now: i64,
    ) -> Result<Option<u64>, String> {
        let mut h = self.held.lock().expect("manifests lock");
        let result = self.check(&mut h, signed, offered_key, now);
        h.error = match &result {
            Err(e) => e.clone(),
            Ok(_) => String::new(),
        };
        result
    }

    fn check(
        &self,
        h: &mut Held,
        signed: &SignedManifest,
        offered_key: &[u8],
        now: i64,
    ) -> Result<Option<u64>, String> {
        if h.key.is_empty() {
            if offered_key.is_empty() {
                return Err("the server sent an update manifest without its update key".into());
            }
            outpost_net::fsutil::write_atomic(
                &self.dir.join("update-key"),
                hex::encode(offered_key).as_bytes(),
                false,
            )
            .map_err(|e| format!("could not keep the update key: {e}"))?;
            h.key = offered_key.to_vec();
        } else if !offered_key.is_empty() && offered_key != h.key.as_slice() {
            return Err(
                "the server's update key is not the one this gateway was first given: \
                        manifest refused (enroll the gateway again to trust a new key)"
                    .into(),
            );
        }
        let held = h.kept.keys().next_back().copied().unwrap_or(0);
        let m = match update::accept(signed, &h.key, held, now) {
            Ok(m) => m,
            Err(ManifestError::AlreadyHeld(_)) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let path = self.dir.join(format!("{}.manifest", m.revision));
        outpost_net::fsutil::write_atomic(&path, &signed.encode_to_vec(), false)
            .map_err(|e| format!("could not keep manifest {}: {e}", m.revision))?;
        let revision = m.revision;
        h.kept.insert(revision, m);
        while h.kept.len() > self.keep {
            let (old, _) = h.kept.pop_first().expect("more than one kept");
            let _ = std::fs::remove_file(self.dir.join(format!("{old}.manifest")));
        }
        h.derive();
        Ok(Some(revision))
    }
}
