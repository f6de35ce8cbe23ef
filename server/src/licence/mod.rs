//! The licence manager's home (SPEC §3): the [`Licensing`] handle every part of the server
//! licenses through — the check at connect (S3, L5–L8), the signing of grants (L7), the
//! policy — and its parts: key import ([`import`], L1, L2), the licence clock ([`clock`]:
//! expiry notices, reserve promotion, reclaiming, the scheduled repository update; L5, L9,
//! L11, L14) and renewal with the licence authority ([`renewal`], L11–L13).
//!
//! The seat arithmetic itself is pure and lives in `outpost_proto::licence`; its execution as
//! conditional updates lives in the store. This module connects the two to the server.

pub mod clock;
pub mod import;
pub mod renewal;

use std::path::PathBuf;

use outpost_proto::licence::GrantSigner;
use outpost_proto::pb::v1::{GrantBody, GrantSlot, KeyKind, LicenceStatus, SignedGrant};
use tokio::sync::watch;

use crate::config::{self, ServerConfig};
use crate::store::{CheckOutcome, GrantKey, Policy, Store, StoreError};

/// Licensing as the rest of the server sees it. Immutable after start; cheap to share.
pub struct Licensing {
    store: Store,
    signer: GrantSigner,
    authority_public: Vec<u8>,
    policy: Policy,
    settings: config::Licensing,
    keys_dir: PathBuf,
}

impl std::fmt::Debug for Licensing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Licensing")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Licensing {
    /// Licensing over `store`, signing grants with `signer`, trusting key files signed by
    /// `authority_public`, keeping imported key files in `keys_dir`.
    pub fn new(
        store: Store,
        signer: GrantSigner,
        authority_public: Vec<u8>,
        config: &ServerConfig,
        keys_dir: PathBuf,
    ) -> Licensing {
        Licensing {
            store,
            signer,
            authority_public,
            policy: Policy {
                grant_ttl: config.timing.grant_ttl.as_secs() as i64,
                expiring_soon: config.licensing.expiring_soon.as_secs() as i64,
            },
            settings: config.licensing.clone(),
            keys_dir,
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Grant lifetime and "expiring soon" window.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Grant lifetime, seconds (L7).
    pub fn grant_ttl(&self) -> i64 {
        self.policy.grant_ttl
    }

    /// The `[licensing]` settings.
    pub fn settings(&self) -> &config::Licensing {
        &self.settings
    }

    /// The licence authority's public key (verifies key files, L1).
    pub fn authority_public(&self) -> &[u8] {
        &self.authority_public
    }

    /// The key agents verify grants with.
    pub fn grant_public_key(&self) -> Vec<u8> {
        self.signer.public_key()
    }

    /// Signs a broadcast push with the grant key (D4; `outpost_proto::broadcast`).
    pub fn sign_broadcast(
        &self,
        body: &outpost_proto::pb::v1::BroadcastBody,
    ) -> outpost_proto::pb::v1::SignedBroadcast {
        outpost_proto::broadcast::sign(&self.signer, body)
    }

    /// Where imported key files are kept (L2).
    pub fn keys_dir(&self) -> &std::path::Path {
        &self.keys_dir
    }

    /// Watches the licence epoch, moved by every write that can alter a licence.
    pub fn epoch(&self) -> watch::Receiver<u64> {
        self.store.licence_epoch()
    }

    /// Checks a device's licence and returns the status to send it. Seats are committed
    /// before this returns (P3).
    pub async fn check(
        &self,
        device_id: &str,
        path: Option<&str>,
    ) -> Result<LicenceStatus, StoreError> {
        let now = outpost_net::unix_now();
        let outcome = self
            .store
            .check_licence_via(device_id, path, now, &self.policy)
            .await?;
        // Taken after the commit: later than every hold the check created (L15).
        let checked_at_ms = outpost_net::unix_now_ms();
        Ok(match outcome {
            CheckOutcome::Licensed(l) => LicenceStatus {
                licensed: true,
                active: Some(self.sign(device_id, &l.active, GrantSlot::Active, now)),
                reserve: l
                    .reserve
                    .as_ref()
                    .map(|r| self.sign(device_id, r, GrantSlot::Reserve, now)),
                reason: String::new(),
                checked_at: now,
                checked_at_ms,
            },
            CheckOutcome::Unlicensed(reason) => LicenceStatus {
                licensed: false,
                active: None,
                reserve: None,
                reason,
                checked_at: now,
                checked_at_ms,
            },
        })
    }

    fn sign(&self, device_id: &str, g: &GrantKey, slot: GrantSlot, now: i64) -> SignedGrant {
        self.signer.sign(&GrantBody {
            device_id: device_id.to_owned(),
            key_id: g.key_id.clone(),
            components: g.components.clone(),
            issued_at: now,
            expires_at: g.expires_at,
            key_expires_at: g.key_expires_at,
            slot: slot as i32,
            licensee: g.licensee.clone(),
            product: g.product.clone(),
            kind: if g.kind == "demo" {
                KeyKind::Demo
            } else {
                KeyKind::Commercial
            } as i32,
            valid_from: g.valid_from,
        })
    }
}
