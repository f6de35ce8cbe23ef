//! The agent's licence grants on disk (L5, L7): what the server signed at the last check,
//! verified before it is stored and again when read. The licence state is derived from them
//! and the clock alone, so the agent stays licensed offline until its grant expires and moves
//! to its reserve grant without a connection.

use std::path::{Path, PathBuf};

use outpost_proto::licence::{LicenceView, effective_licence, verify_grant};
use outpost_proto::pb::v1::{GrantBody, LicenceStatus, SignedGrant};
use prost::Message;
use serde::{Deserialize, Serialize};

/// Grants directory of a data directory.
fn dir(data: &Path) -> PathBuf {
    data.join("grants")
}

/// The licence state shown by `status` (O4).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LicenceState {
    /// "licensed" or "unlicensed".
    pub state: String,
    /// Key licensing the device.
    pub key: String,
    /// Components licensed.
    pub components: Vec<String>,
    /// Unix seconds when the grant in force expires.
    pub expires_at: i64,
    /// True when the reserve grant took over.
    pub promoted_reserve: bool,
    /// Why unlicensed.
    pub reason: String,
}

/// Verifies and stores what the server sent. Returns an error (and stores nothing) when a
/// grant does not verify.
pub fn store(
    data: &Path,
    status: &LicenceStatus,
    device_id: &str,
    grant_key: &[u8],
) -> anyhow::Result<()> {
    for g in [&status.active, &status.reserve].into_iter().flatten() {
        verify_grant(g, grant_key, device_id)?;
    }
    let d = dir(data);
    std::fs::create_dir_all(&d)?;
    for (name, g) in [
        ("active.grant", &status.active),
        ("reserve.grant", &status.reserve),
    ] {
        let p = d.join(name);
        match g {
            Some(g) => outpost_net::fsutil::write_atomic(&p, &g.encode_to_vec(), false)?,
            None => {
                if p.exists() {
                    std::fs::remove_file(&p)?;
                }
            }
        }
    }
    outpost_net::fsutil::write_atomic(&d.join("reason.txt"), status.reason.as_bytes(), false)?;
    Ok(())
}

fn load(path: &Path, device_id: &str, grant_key: &[u8]) -> Option<GrantBody> {
    let bytes = std::fs::read(path).ok()?;
    let g = SignedGrant::decode(bytes.as_slice()).ok()?;
    match verify_grant(&g, grant_key, device_id) {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "stored grant ignored");
            None
        }
    }
}

/// The licence state at `now`, from the stored grants alone.
pub fn state(data: &Path, device_id: &str, grant_key: &[u8], now: i64) -> LicenceState {
    let d = dir(data);
    let active = load(&d.join("active.grant"), device_id, grant_key);
    let reserve = load(&d.join("reserve.grant"), device_id, grant_key);
    let reason = std::fs::read_to_string(d.join("reason.txt")).unwrap_or_default();
    match effective_licence(active.as_ref(), reserve.as_ref(), now, &reason) {
        LicenceView::Licensed {
            grant,
            promoted_reserve,
        } => LicenceState {
            state: "licensed".into(),
            key: grant.key_id,
            components: grant.components,
            expires_at: grant.expires_at,
            promoted_reserve,
            reason: String::new(),
        },
        LicenceView::Unlicensed { reason } => LicenceState {
            state: "unlicensed".into(),
            reason,
            ..Default::default()
        },
    }
}
