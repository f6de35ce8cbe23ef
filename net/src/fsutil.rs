//! Durable file writes: a file is replaced whole or not at all, and is on disk when the call
//! returns (write to a temporary file, fsync, rename, fsync the directory).

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically and durably. `private` sets mode 0600 (keys).
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    write_atomic_inner(path, bytes, private)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))
}

fn write_atomic_inner(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if private { 0o600 } else { 0o644 });
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// fsyncs a directory so a rename or unlink in it is durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A file that could not be read, named.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {source}", path.display())]
pub struct ReadError {
    /// The file.
    pub path: std::path::PathBuf,
    /// What the system said.
    pub source: std::io::Error,
}

/// Reads a file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>, ReadError> {
    std::fs::read(path).map_err(|source| ReadError {
        path: path.to_owned(),
        source,
    })
}

/// Reads a text file, naming it in the error.
pub fn read_string(path: &Path) -> Result<String, ReadError> {
    std::fs::read_to_string(path).map_err(|source| ReadError {
        path: path.to_owned(),
        source,
    })
}

/// Writes a file that need not survive a power cut (status files): replaced atomically by
/// rename, never fsynced.
pub fn write_replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

const SLOT_MAGIC: &[u8; 4] = b"OPS1";

/// A small durable record updated in place, for state written on every connect (the
/// agent's licence grants): two slot files `<path>.a` and `<path>.b`, each holding
/// `magic, sequence number, length, payload, SHA-256`. A write overwrites the slot that does
/// not hold the newest valid record and fsyncs it; a crash mid-write can only damage that slot,
/// and a reader takes the valid slot with the highest sequence number. Unlike write-and-rename,
/// no new file (inode) is created once both slots exist.
#[derive(Debug, Clone)]
pub struct SlotFile {
    slots: [std::path::PathBuf; 2],
}

impl SlotFile {
    /// The record at `path` (the slot files are `<path>.a` and `<path>.b`).
    pub fn new(path: &Path) -> SlotFile {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        SlotFile {
            slots: [
                path.with_file_name(format!("{name}.a")),
                path.with_file_name(format!("{name}.b")),
            ],
        }
    }

    fn read_slot(p: &Path) -> Option<(u64, Vec<u8>)> {
        let b = std::fs::read(p).ok()?;
        if b.len() < 4 + 8 + 4 + 32 || &b[..4] != SLOT_MAGIC {
            return None;
        }
        let seq = u64::from_be_bytes(b[4..12].try_into().ok()?);
        let len = u32::from_be_bytes(b[12..16].try_into().ok()?) as usize;
        if b.len() != 16 + len + 32 {
            return None;
        }
        let body = &b[..16 + len];
        let digest = ring::digest::digest(&ring::digest::SHA256, body);
        (digest.as_ref() == &b[16 + len..]).then(|| (seq, b[16..16 + len].to_vec()))
    }

    /// The newest valid record, with its sequence number.
    pub fn read(&self) -> Option<(u64, Vec<u8>)> {
        let a = Self::read_slot(&self.slots[0]);
        let b = Self::read_slot(&self.slots[1]);
        match (a, b) {
            (Some(a), Some(b)) => Some(if a.0 >= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// Creates both (empty, not yet valid) slots, so that later writes never create a file.
    /// Call at install or enrollment time.
    pub fn create_slots(&self) -> std::io::Result<()> {
        for p in &self.slots {
            if !p.exists() {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(p)?;
            }
        }
        sync_dir(self.slots[0].parent().unwrap_or(Path::new(".")))
    }

    /// Replaces the record durably.
    pub fn write(&self, payload: &[u8]) -> std::io::Result<()> {
        use std::io::{Seek, SeekFrom};
        let a = Self::read_slot(&self.slots[0]).map(|r| r.0);
        let b = Self::read_slot(&self.slots[1]).map(|r| r.0);
        let (target, seq) = match (a, b) {
            (Some(x), Some(y)) if x >= y => (1, x + 1),
            (Some(_), Some(y)) => (0, y + 1),
            (Some(x), None) => (1, x + 1),
            (None, Some(y)) => (0, y + 1),
            (None, None) => (0, 1),
        };
        let mut buf = Vec::with_capacity(16 + payload.len() + 32);
        buf.extend_from_slice(SLOT_MAGIC);
        buf.extend_from_slice(&seq.to_be_bytes());
        buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        buf.extend_from_slice(payload);
        let digest = ring::digest::digest(&ring::digest::SHA256, &buf);
        buf.extend_from_slice(digest.as_ref());
        let path = &self.slots[target];
        let created = !path.exists();
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&buf)?;
        f.set_len(buf.len() as u64)?;
        f.sync_data()?;
        if created {
            sync_dir(path.parent().unwrap_or(Path::new(".")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p4_slot_file_keeps_the_newest_valid_record_after_a_torn_write() {
        let dir = tempfile::tempdir().unwrap();
        let f = SlotFile::new(&dir.path().join("licence"));
        assert_eq!(f.read(), None);
        f.write(b"one").unwrap();
        f.write(b"two").unwrap();
        f.write(b"three").unwrap();
        assert_eq!(f.read().unwrap().1, b"three");
        // Tear the newest slot: the previous record is what a restart sees.
        let (newest, _) = f.read().unwrap();
        let slot = if newest % 2 == 1 {
            "licence.a"
        } else {
            "licence.b"
        };
        let p = dir.path().join(slot);
        let mut bytes = std::fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n - 40] ^= 0xff;
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(f.read().unwrap().1, b"two");
        f.write(b"four").unwrap();
        assert_eq!(f.read().unwrap().1, b"four");
    }
}
