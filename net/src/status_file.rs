//! `status.json` in a data directory: written by the running gateway or agent on every change,
//! read by their `status` commands (O4). Never fsynced (it is recomputed on start).

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// File name.
pub const FILE: &str = "status.json";

/// Why a status file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// There is none: the process never ran with this data directory.
    #[error("{} has no status.json: has the {what} been started with this data directory?", dir.display())]
    Missing {
        /// The data directory.
        dir: std::path::PathBuf,
        /// "gateway" or "agent".
        what: &'static str,
    },
    /// It is not a status file of this version.
    #[error("{}: damaged status file ({why}); it is rewritten when the process runs", path.display())]
    Damaged {
        /// The file.
        path: std::path::PathBuf,
        /// What the parser said.
        why: String,
    },
}

/// Replaces the status file with `s`.
pub fn write<T: Serialize>(data: &Path, s: &T) {
    if let Ok(text) = serde_json::to_string_pretty(s) {
        let _ = crate::fsutil::write_replace(&data.join(FILE), text.as_bytes());
    }
}

/// Reads the status file of the `what` ("gateway", "agent") in `data`.
pub fn read<T: DeserializeOwned>(data: &Path, what: &'static str) -> Result<T, StatusError> {
    let path = data.join(FILE);
    let text = std::fs::read_to_string(&path).map_err(|_| StatusError::Missing {
        dir: data.to_owned(),
        what,
    })?;
    serde_json::from_str(&text).map_err(|e| StatusError::Damaged {
        path,
        why: e.to_string(),
    })
}

/// Whether the process `pid` that wrote a status file is alive.
pub fn process_running(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}
