//! Downloading a revision's files (D2) from the agent's gateway, or from the server when the
//! agent has no gateway, on `outpost-files/1`.
//!
//! Files are kept by content: `updates/files/<sha256>`, so a file unchanged between revisions
//! is not fetched again. A download goes to `updates/partial/<sha256>`; every block is checked
//! against the manifest's hash before it is written, and a download that was cut short (link
//! lost, agent stopped) resumes after the last block that checks out. The signed manifest
//! carries every block's hash, so a file whose blocks all match is the file the manifest names.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use outpost_net::blocks;
use outpost_proto::files::{self, BlockStatus, MAX_BLOCKS};
use outpost_proto::pb::v1::{UpdateFile, UpdateManifest};

/// Where blocks come from.
pub(crate) struct Source {
    pub ep: quinn::Endpoint,
    pub addr: SocketAddr,
    pub client: quinn::ClientConfig,
    /// The TLS name the peer's certificate carries (gateway or server).
    pub name: &'static str,
    /// "gateway 10.0.0.2:4701" / "server … (direct)".
    pub label: String,
}

impl Source {
    /// A source on the path `via` at `addr`.
    pub fn new(
        ep: quinn::Endpoint,
        addr: SocketAddr,
        via: crate::connect::Via,
        client: quinn::ClientConfig,
    ) -> Source {
        let (name, label) = match via {
            crate::connect::Via::Gateway => {
                (outpost_proto::pki::GATEWAY_NAME, format!("gateway {addr}"))
            }
            crate::connect::Via::Server => (
                outpost_proto::pki::SERVER_NAME,
                format!("server {addr} (direct)"),
            ),
        };
        Source {
            ep,
            addr,
            client,
            name,
            label,
        }
    }
}

/// Why a download stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// Worth trying again later (unreachable, uplink of the gateway down, link lost).
    #[error("{0}")]
    Retry(String),
    /// Will not get better by retrying now (the server does not have the block, or sends bad
    /// bytes).
    #[error("{0}")]
    Failed(String),
}

/// Progress: (bytes held of the files wanted, their total).
pub(crate) type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

fn dir(data: &Path, sub: &str) -> PathBuf {
    data.join("updates").join(sub)
}

/// Where a complete file is kept.
pub(crate) fn kept_path(data: &Path, f: &UpdateFile) -> PathBuf {
    dir(data, "files").join(hex::encode(&f.sha256))
}

/// Whether a file is held complete.
pub(crate) fn held(data: &Path, f: &UpdateFile) -> bool {
    std::fs::metadata(kept_path(data, f)).is_ok_and(|m| m.len() == f.size)
}

/// Fetches the files not held yet; returns the bytes fetched.
pub(crate) async fn fetch(
    data: &Path,
    m: &UpdateManifest,
    wanted: &[&UpdateFile],
    source: &Source,
    progress: Progress<'_>,
) -> Result<u64, FetchError> {
    let total: u64 = wanted.iter().map(|f| f.size).sum();
    let mut done: u64 = wanted
        .iter()
        .filter(|f| held(data, f))
        .map(|f| f.size)
        .sum();
    progress(done, total);
    if wanted.iter().all(|f| held(data, f)) {
        return Ok(0);
    }
    for sub in ["files", "partial"] {
        std::fs::create_dir_all(dir(data, sub))
            .map_err(|e| FetchError::Failed(format!("{}: {e}", dir(data, sub).display())))?;
    }
    let conn = source
        .ep
        .connect_with(source.client.clone(), source.addr, source.name)
        .map_err(|e| FetchError::Retry(format!("{}: {e}", source.label)))?
        .await
        .map_err(|e| {
            FetchError::Retry(format!(
                "{}: {}",
                source.label,
                outpost_net::refuse::explain(&e)
            ))
        })?;
    let mut fetched = 0;
    let r = async {
        for f in wanted.iter().filter(|f| !held(data, f)) {
            fetched += file(data, m, f, &conn, source, &mut done, total, progress).await?;
        }
        Ok(())
    }
    .await;
    conn.close(quinn::VarInt::from_u32(0), b"done");
    r.map(|()| fetched)
}

/// Checks the blocks already in a partial file; keeps those that match (in order) and cuts
/// the rest. Returns how many blocks are good.
fn good_prefix(path: &Path, f: &UpdateFile, block_size: u32) -> std::io::Result<u64> {
    let mut file = match std::fs::File::options().read(true).write(true).open(path) {
        Ok(x) => x,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let mut good = 0u64;
    let mut buf = vec![0u8; block_size as usize];
    for (i, h) in f.block_sha256.iter().enumerate() {
        let want = files::block_len(f.size, block_size, i as u64) as usize;
        if (good * u64::from(block_size)) + want as u64 > len {
            break;
        }
        file.read_exact(&mut buf[..want])?;
        if !files::block_matches(h, &buf[..want]) {
            break;
        }
        good += 1;
    }
    file.set_len((good * u64::from(block_size)).min(f.size))?;
    Ok(good)
}

#[allow(clippy::too_many_arguments)]
async fn file(
    data: &Path,
    m: &UpdateManifest,
    f: &UpdateFile,
    conn: &quinn::Connection,
    source: &Source,
    done: &mut u64,
    total: u64,
    progress: Progress<'_>,
) -> Result<u64, FetchError> {
    let io = |e: std::io::Error| FetchError::Failed(format!("{}: {e}", f.name));
    let partial = dir(data, "partial").join(hex::encode(&f.sha256));
    let (p, fx, bs) = (partial.clone(), f.clone(), m.block_size);
    let good = tokio::task::spawn_blocking(move || good_prefix(&p, &fx, bs))
        .await
        .map_err(|e| FetchError::Failed(e.to_string()))?
        .map_err(io)?;
    *done += (good * u64::from(bs)).min(f.size);
    progress(*done, total);
    let mut out = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&partial)
        .map_err(io)?;
    let mut fetched = 0u64;
    let hashes: Vec<[u8; 32]> = f.block_sha256[good as usize..]
        .iter()
        .filter_map(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .collect();
    let mut index = good;
    for chunk in hashes.chunks(MAX_BLOCKS) {
        let lost = |e: &dyn std::fmt::Display| {
            FetchError::Retry(format!(
                "{}: download of {} cut short: {e}",
                source.label, f.name
            ))
        };
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
        blocks::request(&mut send, chunk)
            .await
            .map_err(|e| lost(&e))?;
        for h in chunk {
            let (status, bytes) = blocks::read_block(&mut recv).await.map_err(|e| lost(&e))?;
            let want = files::block_len(f.size, bs, index);
            match status {
                BlockStatus::Ok
                    if bytes.len() as u64 == want && files::block_matches(h, &bytes) => {}
                BlockStatus::Ok => {
                    return Err(FetchError::Failed(format!(
                        "{}: block {index} of {} does not match the manifest's hash: refused",
                        source.label, f.name
                    )));
                }
                BlockStatus::Unavailable => {
                    return Err(FetchError::Retry(format!(
                        "{}: block {index} of {} is not available now (the gateway cannot reach the server)",
                        source.label, f.name
                    )));
                }
                BlockStatus::Unknown => {
                    return Err(FetchError::Failed(format!(
                        "{}: block {index} of {} is unknown upstream (the revision was removed?)",
                        source.label, f.name
                    )));
                }
                BlockStatus::Corrupt => {
                    return Err(FetchError::Failed(format!(
                        "{}: block {index} of {} arrived corrupt from the server twice: refused (check the server's store)",
                        source.label, f.name
                    )));
                }
            }
            out.write_all(&bytes).map_err(io)?;
            index += 1;
            fetched += want;
            *done += want;
            progress(*done, total);
        }
    }
    out.sync_all().map_err(io)?;
    drop(out);
    std::fs::rename(&partial, kept_path(data, f)).map_err(io)?;
    Ok(fetched)
}

/// Held while a download runs: one at a time per data directory (the running agent and
/// `outpost-agent update fetch`). `None` when another holds it.
pub(crate) fn lock(data: &Path) -> Option<std::fs::File> {
    let d = dir(data, "");
    std::fs::create_dir_all(&d).ok()?;
    let f = std::fs::File::create(d.join("fetch.lock")).ok()?;
    f.try_lock().ok()?;
    Some(f)
}

/// Removes kept files and partial downloads that are not among `wanted` (after a revision
/// was handled: older files are no longer needed).
pub(crate) fn keep_only(data: &Path, wanted: &[&UpdateFile]) {
    let keep: std::collections::HashSet<String> =
        wanted.iter().map(|f| hex::encode(&f.sha256)).collect();
    for sub in ["files", "partial"] {
        let Ok(rd) = std::fs::read_dir(dir(data, sub)) else {
            continue;
        };
        for e in rd.flatten() {
            if !keep.contains(&*e.file_name().to_string_lossy()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn d2_a_partial_download_keeps_its_good_blocks_and_cuts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let bs = 4u32;
        let content = b"aaaabbbbccccdd".to_vec();
        let f = UpdateFile {
            name: "x".into(),
            size: content.len() as u64,
            block_sha256: content
                .chunks(4)
                .map(|c| files::sha256(c).to_vec())
                .collect(),
            ..Default::default()
        };
        let p = dir.path().join("part");
        // Two good blocks, a bad third, a stray byte.
        std::fs::write(&p, b"aaaabbbbcXcc1").unwrap();
        assert_eq!(good_prefix(&p, &f, bs).unwrap(), 2);
        assert_eq!(std::fs::read(&p).unwrap(), b"aaaabbbb");
        std::fs::write(&p, &content).unwrap();
        assert_eq!(good_prefix(&p, &f, bs).unwrap(), 4);
        assert_eq!(good_prefix(&dir.path().join("none"), &f, bs).unwrap(), 0);
    }
}
