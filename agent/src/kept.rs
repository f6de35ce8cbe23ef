//! What the agent keeps from the server between runs — learned paths, policy, tasks, update
//! manifest — each a JSON file in its data directory, written atomically. A file missing or
//! damaged counts as nothing kept: the server sends it again at the next sync.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Reads `<data>/<name>`, or the default.
pub(crate) fn load<T: DeserializeOwned + Default>(data: &Path, name: &str) -> T {
    std::fs::read_to_string(data.join(name))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Writes `<data>/<name>` atomically.
pub(crate) fn save<T: Serialize>(data: &Path, name: &str, value: &T) -> std::io::Result<()> {
    if let Some(dir) = data.join(name).parent() {
        std::fs::create_dir_all(dir)?;
    }
    outpost_net::fsutil::write_atomic(
        &data.join(name),
        serde_json::to_string(value).unwrap_or_default().as_bytes(),
        false,
    )
}
