//! The agent's licence grants (L5, L7): what the server signed at the last check, verified
//! before it is kept and when it is read back. The licence state is derived from them and the
//! clock alone, so the agent stays licensed offline until its grant expires and moves to its
//! reserve grant without a connection.
//!
//! On disk: one `LicenceStatus` in a [`SlotFile`] (`<data>/licence.a`/`.b`), rewritten in place
//! at every check; in memory: the verified grant bodies, so deciding the state costs no I/O
//! and no signature check. The licence clock ([`licence_clock`]) re-derives the state at the
//! moment a grant expires.

use std::path::Path;
use std::sync::Mutex;

use outpost_net::fsutil::SlotFile;
use outpost_proto::licence::{LicenceView, effective_licence, verify_grant};
use outpost_proto::pb::v1::{GrantBody, LicenceStatus};
use prost::Message;
use serde::{Deserialize, Serialize};

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
    /// The reserve key waiting to take over when the active one expires (L5); empty: none.
    #[serde(default)]
    pub reserve_key: String,
    /// Why unlicensed.
    pub reason: String,
}

#[derive(Debug, Default, Clone)]
struct Verified {
    active: Option<GrantBody>,
    reserve: Option<GrantBody>,
    reason: String,
    /// When the server made the status (its `checked_at_ms`).
    checked_at_ms: i64,
}

/// Why grants from the server were not stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A grant does not verify (wrong signature, another device): nothing was stored.
    #[error(transparent)]
    Invalid(#[from] outpost_proto::licence::GrantError),
    /// The licence file could not be written.
    #[error("cannot write the licence file: {0}")]
    Write(#[from] std::io::Error),
}

/// The stored grants of one device.
#[derive(Debug)]
pub struct Grants {
    slot: SlotFile,
    device_id: String,
    key: Vec<u8>,
    /// Verified copy of what is on disk; written by `store`, read by `state`.
    mem: Mutex<Verified>,
}

fn verify(
    status: &LicenceStatus,
    device_id: &str,
    key: &[u8],
) -> Result<Verified, outpost_proto::licence::GrantError> {
    let check = |g: &Option<outpost_proto::pb::v1::SignedGrant>| {
        g.as_ref()
            .map(|g| verify_grant(g, key, device_id))
            .transpose()
    };
    Ok(Verified {
        active: check(&status.active)?,
        reserve: check(&status.reserve)?,
        reason: status.reason.clone(),
        checked_at_ms: status.checked_at_ms,
    })
}

impl Grants {
    /// Opens the grants of a data directory, verifying what is stored.
    pub fn open(data: &Path, device_id: &str, key: &[u8]) -> Grants {
        let slot = SlotFile::new(&data.join("licence"));
        let mem = slot
            .read()
            .and_then(|(_, b)| LicenceStatus::decode(b.as_slice()).ok())
            .and_then(|s| match verify(&s, device_id, key) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(error = %e, "stored licence grant ignored");
                    None
                }
            })
            .unwrap_or_default();
        Grants {
            slot,
            device_id: device_id.to_owned(),
            key: key.to_vec(),
            mem: Mutex::new(mem),
        }
    }

    /// Verifies and stores what the server sent; stores nothing if a grant does not verify.
    /// Returns whether the grants are now on other keys than before: then the server may be
    /// holding seats for the replaced ones until the agent confirms (L15).
    pub fn store(&self, status: &LicenceStatus) -> Result<bool, StoreError> {
        let v = verify(status, &self.device_id, &self.key)?;
        self.slot.write(&status.encode_to_vec())?;
        let keys =
            |v: &Verified| [&v.active, &v.reserve].map(|g| g.as_ref().map(|g| g.key_id.clone()));
        let mut mem = self.mem.lock().expect("grants lock");
        let changed = keys(&mem) != keys(&v);
        *mem = v;
        Ok(changed)
    }

    /// `checked_at_ms` of the stored status: the agent tells the server which status it
    /// holds, so seats of grants it replaced stop counting (L15).
    pub fn checked_at_ms(&self) -> i64 {
        self.mem.lock().expect("grants lock").checked_at_ms
    }

    /// Drops every grant at once, durably (the server said this device is revoked or removed,
    /// S8): the agent is unlicensed with `reason` from now on, offline too.
    pub fn drop_all(&self, reason: &str, now: i64) -> Result<(), StoreError> {
        self.store(&LicenceStatus {
            licensed: false,
            active: None,
            reserve: None,
            reason: reason.to_owned(),
            checked_at: now,
            checked_at_ms: now.saturating_mul(1000),
        })
        .map(|_| ())
    }

    /// The licence state at `now`.
    pub fn state(&self, now: i64) -> LicenceState {
        let v = self.mem.lock().expect("grants lock").clone();
        match effective_licence(v.active.as_ref(), v.reserve.as_ref(), now, &v.reason) {
            LicenceView::Licensed {
                grant,
                promoted_reserve,
            } => LicenceState {
                state: "licensed".into(),
                key: grant.key_id,
                components: grant.components,
                expires_at: grant.expires_at,
                promoted_reserve,
                reserve_key: match (&v.reserve, promoted_reserve) {
                    (Some(r), false) => r.key_id.clone(),
                    _ => String::new(),
                },
                reason: String::new(),
            },
            LicenceView::Unlicensed { reason } => LicenceState {
                state: "unlicensed".into(),
                reason,
                ..Default::default()
            },
        }
    }
}

/// The licence state of a data directory at `now`, read from disk (the `status` command).
pub fn state(data: &Path, device_id: &str, grant_key: &[u8], now: i64) -> LicenceState {
    Grants::open(data, device_id, grant_key).state(now)
}

/// Re-derives the licence state from the stored grants whenever a grant may have expired, so
/// the active → reserve promotion (L5) and expiry (L7) happen without any connection.
/// Puts the licence state at `now` into the status (and tells observers when it changed).
pub(crate) fn publish_state(shared: &crate::node::Shared, now: i64) -> LicenceState {
    let st = shared.grants.state(now);
    let changed = shared.status.send_if_modified(|s| {
        if s.licence != st {
            s.licence = st.clone();
            s.updated_at = now;
            true
        } else {
            false
        }
    });
    if changed {
        tracing::info!(state = %st.state, key = %st.key, reason = %st.reason, "licence state");
        let _ = shared
            .events
            .send(crate::node::AgentEvent::Licence(st.clone()));
    }
    st
}

pub(crate) async fn licence_clock(shared: std::sync::Arc<crate::node::Shared>) {
    loop {
        let now = outpost_net::unix_now();
        let st = publish_state(&shared, now);
        // Next moment the state can change by itself: the grant in force expires.
        let wait = if st.state == "licensed" {
            std::time::Duration::from_secs((st.expires_at - now).max(0) as u64)
                + std::time::Duration::from_millis(50)
        } else {
            std::time::Duration::from_secs(3600)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait.min(std::time::Duration::from_secs(3600))) => {}
            _ = shared.grants_changed.notified() => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}
