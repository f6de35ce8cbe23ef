//! Key import (L1, L2): single key files or .zip archives holding several, verified against
//! the licence authority before anything is stored, all-or-nothing.

use std::io::{Cursor, Read};

use outpost_proto::licence::key::MAX_KEY_FILE;
use outpost_proto::licence::{LicenceKey, verify_key_file};

use super::Licensing;
use crate::store::StoreError;

/// Most entries read from one archive.
const MAX_ARCHIVE_ENTRIES: usize = 1000;

/// Verifies every key in `content` (a key file or a zip archive of key files). Any bad entry
/// fails the whole import, naming the entry.
pub fn verify_upload(
    file_name: &str,
    content: &[u8],
    authority: &[u8],
) -> Result<Vec<(String, LicenceKey)>, StoreError> {
    let bad =
        |entry: &str, e: String| StoreError::Invalid(format!("{entry}: {e}; nothing was imported"));
    let mut keys = vec![];
    if content.starts_with(b"PK\x03\x04") || file_name.ends_with(".zip") {
        let mut zip = zip::ZipArchive::new(Cursor::new(content))
            .map_err(|e| bad(file_name, format!("not a readable .zip archive ({e})")))?;
        if zip.len() > MAX_ARCHIVE_ENTRIES {
            return Err(bad(
                file_name,
                format!(
                    "archive holds {} entries (maximum {MAX_ARCHIVE_ENTRIES})",
                    zip.len()
                ),
            ));
        }
        for i in 0..zip.len() {
            let mut entry = zip
                .by_index(i)
                .map_err(|e| bad(file_name, format!("entry {i} unreadable ({e})")))?;
            if entry.is_dir() {
                continue;
            }
            let name = entry
                .enclosed_name()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| format!("entry-{i}"));
            let label = format!("{file_name}: {name}");
            if entry.size() > MAX_KEY_FILE as u64 {
                return Err(bad(
                    &label,
                    format!("{} bytes is too large for a key file", entry.size()),
                ));
            }
            let mut buf = Vec::with_capacity(entry.size() as usize);
            (&mut entry)
                .take(MAX_KEY_FILE as u64 + 1)
                .read_to_end(&mut buf)
                .map_err(|e| bad(&label, format!("cannot extract ({e})")))?;
            let key = verify_key_file(&buf, authority).map_err(|e| bad(&label, e.to_string()))?;
            keys.push((name, key));
        }
        if keys.is_empty() {
            return Err(bad(file_name, "archive holds no key files".into()));
        }
    } else {
        let key = verify_key_file(content, authority).map_err(|e| bad(file_name, e.to_string()))?;
        keys.push((file_name.to_owned(), key));
    }
    let mut ids: Vec<&str> = keys.iter().map(|(_, k)| k.body.key_id.as_str()).collect();
    ids.sort();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(bad(file_name, format!("key {} appears twice", w[0])));
    }
    Ok(keys)
}

/// Imports an upload: verify all, keep the files in the data directory, add all keys in one
/// transaction. On a database refusal the files written by this call are removed again.
pub async fn import(
    licensing: &Licensing,
    file_name: &str,
    content: &[u8],
    auto_distribute: bool,
    assign_everyone: bool,
    activation_reserve: bool,
) -> Result<Vec<String>, StoreError> {
    if activation_reserve && auto_distribute {
        return Err(StoreError::Invalid(
            "a key added as reserve through an activation code is never distributed automatically (L8): drop --auto-distribute".into(),
        ));
    }
    let file_name = sanitize(file_name);
    let keys = verify_upload(&file_name, content, licensing.authority_public())?;
    let dir = licensing.keys_dir();
    let mut written = vec![];
    let mut stored = Vec::with_capacity(keys.len());
    for (name, key) in &keys {
        let path = dir.join(format!("{}.key", key.body.key_id));
        let existed = path.exists();
        outpost_net::fsutil::write_atomic(&path, &key.file, false).map_err(|e| {
            StoreError::Invalid(format!("cannot keep {} in {}: {e}", name, dir.display()))
        })?;
        if !existed {
            written.push(path);
        }
        stored.push((name.clone(), key.clone()));
    }
    let now = outpost_net::unix_now();
    if let Err(e) = licensing
        .store()
        .insert_keys(
            &stored,
            auto_distribute,
            assign_everyone,
            if activation_reserve {
                "activation"
            } else {
                "imported"
            },
            now,
        )
        .await
    {
        for p in written {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    Ok(keys.into_iter().map(|(_, k)| k.body.key_id).collect())
}

fn sanitize(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let clean: String = base
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(100)
        .collect();
    if clean.is_empty() {
        "upload.key".into()
    } else {
        clean
    }
}
