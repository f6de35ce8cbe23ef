//! The update manifest an agent holds (D1): checked with `outpost_proto::update::accept` —
//! signature against the update key this agent was first given, no rollback to a lower
//! revision than one held, no expired manifest — then kept in `update.json`. Refusals are
//! shown in the status (and logged once each); the agent keeps what it held.

use std::path::Path;

use outpost_proto::pb::v1::{SignedManifest, UpdateManifest};
use outpost_proto::update::{self, ManifestError};
use prost::Message;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::node::{AgentEvent, Shared};

/// `update.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct HeldUpdate {
    /// The update key (hex); empty until the first manifest.
    pub key: String,
    /// 0: none.
    pub revision: u64,
    /// The signed manifest (hex).
    pub body: String,
    pub signature: String,
}

impl HeldUpdate {
    pub(crate) fn load(data: &Path) -> HeldUpdate {
        crate::kept::load(data, "update.json")
    }

    fn save(&self, data: &Path) -> std::io::Result<()> {
        crate::kept::save(data, "update.json", self)
    }

    /// The manifest held, decoded.
    pub(crate) fn manifest(&self) -> Option<UpdateManifest> {
        let body = hex::decode(&self.body).ok()?;
        UpdateManifest::decode(body.as_slice()).ok()
    }
}

/// A manifest offered at sync, with the server's update key.
pub(crate) fn on_manifest(shared: &Shared, signed: SignedManifest, offered_key: &[u8]) {
    let mut held = shared.update.lock().expect("update lock");
    let pinned = hex::decode(&held.key).unwrap_or_default();
    let key = if pinned.is_empty() {
        offered_key.to_vec()
    } else {
        pinned
    };
    let result = if key.is_empty() {
        Err("the server sent an update manifest without its update key".to_owned())
    } else if !offered_key.is_empty() && offered_key != key.as_slice() {
        Err(
            "the server's update key is not the one this agent was first given: manifest \
             refused (enroll the agent again to trust a new key)"
                .to_owned(),
        )
    } else {
        match update::accept(&signed, &key, held.revision, outpost_net::unix_now()) {
            Ok(m) => Ok(m),
            Err(ManifestError::AlreadyHeld(_)) => return,
            Err(e) => Err(e.to_string()),
        }
    };
    match result {
        Ok(m) => {
            let next = HeldUpdate {
                key: hex::encode(&key),
                revision: m.revision,
                body: hex::encode(&signed.body),
                signature: hex::encode(&signed.signature),
            };
            if let Err(e) = next.save(&shared.data) {
                warn!(error = %e, "update manifest not saved; asked for again at the next sync");
                return;
            }
            *held = next;
            info!(
                revision = m.revision,
                files = m.files.len(),
                "update manifest received"
            );
            shared.status.send_modify(|s| {
                s.update_revision = m.revision;
                s.update_files = m.files.len();
                s.update_error.clear();
            });
            let _ = shared.events.send(AgentEvent::Manifest {
                revision: m.revision,
            });
            shared.update_wake.notify_one();
        }
        Err(e) => {
            let fresh = shared.status.borrow().update_error != e;
            if fresh {
                warn!(error = %e, "update manifest refused; keeping the one held");
                shared.status.send_modify(|s| s.update_error = e);
            }
        }
    }
}
