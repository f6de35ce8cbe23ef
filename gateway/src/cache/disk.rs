//! The cache on disk: one file per block, named by its SHA-256, under
//! `<data>/cache/blocks/<first two hex digits>/`. A block file appears only by a rename after
//! its bytes matched their hash, so the directory itself is the index that survives a restart;
//! a file's modification time is when it was last served (eviction takes the oldest first).
//! Leftover temporaries of a crash are removed at start.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What the cache knows of a stored block.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub size: u64,
    /// Unix seconds it was last served (or stored).
    pub last_used: i64,
    /// Checked against its hash since this process started (blocks found at start are
    /// checked the first time they are served).
    pub verified: bool,
}

/// The block directory.
#[derive(Debug, Clone)]
pub(crate) struct Disk {
    root: PathBuf,
}

fn hex(h: &[u8; 32]) -> String {
    hex::encode(h)
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Disk {
    pub(crate) fn new(cache_dir: &Path) -> Disk {
        Disk {
            root: cache_dir.join("blocks"),
        }
    }

    fn path(&self, h: &[u8; 32]) -> PathBuf {
        let x = hex(h);
        self.root.join(&x[..2]).join(x)
    }

    /// Lists the stored blocks (and removes temporaries a crash left).
    pub(crate) fn scan(&self) -> std::io::Result<HashMap<[u8; 32], Entry>> {
        std::fs::create_dir_all(&self.root)?;
        let mut out = HashMap::new();
        for sub in std::fs::read_dir(&self.root)? {
            let sub = sub?;
            if !sub.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(sub.path())? {
                let f = f?;
                let name = f.file_name().to_string_lossy().into_owned();
                let mut h = [0u8; 32];
                if name.len() != 64 || hex::decode_to_slice(&name, &mut h).is_err() {
                    // A temporary of a block being written when the process stopped.
                    let _ = std::fs::remove_file(f.path());
                    continue;
                }
                let meta = f.metadata()?;
                out.insert(
                    h,
                    Entry {
                        size: meta.len(),
                        last_used: meta.modified().map(unix).unwrap_or(0),
                        verified: false,
                    },
                );
            }
        }
        Ok(out)
    }

    /// Reads a block; marks it used when `touch` (its modification time is the eviction
    /// order across restarts).
    pub(crate) fn read(&self, h: &[u8; 32], touch: bool) -> std::io::Result<Vec<u8>> {
        let p = self.path(h);
        let data = std::fs::read(&p)?;
        if touch && let Ok(f) = std::fs::File::options().append(true).open(&p) {
            let _ = f.set_modified(SystemTime::now());
        }
        Ok(data)
    }

    /// Stores a block whose bytes matched its hash: written to a temporary, then renamed.
    pub(crate) fn write(&self, h: &[u8; 32], data: &[u8]) -> std::io::Result<()> {
        let p = self.path(h);
        let dir = p.parent().expect("block path has a parent");
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{}.tmp{}", hex(h), std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        drop(f);
        std::fs::rename(&tmp, &p)
    }

    /// Removes a block (evicted, or found corrupt).
    pub(crate) fn remove(&self, h: &[u8; 32]) {
        let _ = std::fs::remove_file(self.path(h));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn d2_blocks_survive_a_rescan_and_temporaries_are_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let d = Disk::new(dir.path());
        let h = [0xab; 32];
        d.write(&h, b"hello").unwrap();
        let stray = dir.path().join("blocks/ab/.abab.tmp99");
        std::fs::write(&stray, b"half").unwrap();
        let found = d.scan().unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[&h].size, 5);
        assert!(!found[&h].verified);
        assert!(!stray.exists());
        assert_eq!(d.read(&h, true).unwrap(), b"hello");
        d.remove(&h);
        assert!(d.scan().unwrap().is_empty());
    }
}
