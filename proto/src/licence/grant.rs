//! Signed licence grants (L7) and the agent's view of its licence (L5).
//!
//! A grant is an encoded `GrantBody` signed by the server's grant key (Ed25519). The agent
//! keeps its grants on disk and decides offline, from the grants alone and the time, whether it
//! is licensed: the active grant until it expires, then the reserve grant, which becomes
//! active without any connection at that moment (L5).

use prost::Message;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::pb::v1::{GrantBody, GrantSlot, SignedGrant};

/// Why a grant was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// The signature does not verify against the server's grant key.
    #[error("grant signature does not verify against the server's grant key")]
    BadSignature,
    /// The body is not a valid `GrantBody`.
    #[error("grant body is malformed: {0}")]
    Malformed(String),
    /// The grant is for another device.
    #[error("grant is for device {found}, not {expected}")]
    WrongDevice {
        /// Device id in the grant.
        found: String,
        /// This device.
        expected: String,
    },
}

/// Signs grants with the server's Ed25519 grant key.
pub struct GrantSigner {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for GrantSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantSigner").finish_non_exhaustive()
    }
}

impl GrantSigner {
    /// Generates a grant key; returns it and its PKCS#8 bytes to store.
    pub fn generate() -> (GrantSigner, Vec<u8>) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("ed25519 keygen");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("fresh pkcs8");
        (GrantSigner { pair }, pkcs8.as_ref().to_vec())
    }

    /// Loads from PKCS#8 bytes.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<GrantSigner, GrantError> {
        Ed25519KeyPair::from_pkcs8(pkcs8)
            .map(|pair| GrantSigner { pair })
            .map_err(|e| GrantError::Malformed(format!("grant key: {e}")))
    }

    /// The raw public key agents verify grants with.
    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// Signs other bytes with the grant key. The caller puts a context string of its own
    /// first, which no encoded grant body begins with (`crate::broadcast`).
    pub fn sign_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        self.pair.sign(bytes).as_ref().to_vec()
    }

    /// Signs a grant body.
    pub fn sign(&self, body: &GrantBody) -> SignedGrant {
        let bytes = body.encode_to_vec();
        let signature = self.pair.sign(&bytes).as_ref().to_vec();
        SignedGrant {
            body: bytes,
            signature,
        }
    }
}

/// Verifies a grant's signature and that it belongs to `device_id`.
pub fn verify_grant(
    grant: &SignedGrant,
    public_key: &[u8],
    device_id: &str,
) -> Result<GrantBody, GrantError> {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&grant.body, &grant.signature)
        .map_err(|_| GrantError::BadSignature)?;
    let body = GrantBody::decode(grant.body.as_slice())
        .map_err(|e| GrantError::Malformed(e.to_string()))?;
    if body.device_id != device_id {
        return Err(GrantError::WrongDevice {
            found: body.device_id,
            expected: device_id.to_owned(),
        });
    }
    Ok(body)
}

/// The licence state an agent derives from its stored grants at a given time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LicenceView {
    /// Licensed by this grant (the active one, or the reserve after the active expired).
    Licensed {
        /// The grant in force.
        grant: GrantBody,
        /// True when the reserve grant took over from an expired active grant.
        promoted_reserve: bool,
    },
    /// Not licensed.
    Unlicensed {
        /// Why.
        reason: String,
    },
}

fn in_force(g: &GrantBody, now: i64) -> bool {
    g.valid_from <= now && now < g.expires_at
}

/// Decides, offline, which grant licenses the device at `now` (L5, L7).
///
/// `server_reason` is the reason the server gave the last time it found the device
/// unlicensed; it is reported when no grant is in force.
pub fn effective_licence(
    active: Option<&GrantBody>,
    reserve: Option<&GrantBody>,
    now: i64,
    server_reason: &str,
) -> LicenceView {
    if let Some(a) = active.filter(|a| in_force(a, now)) {
        return LicenceView::Licensed {
            grant: a.clone(),
            promoted_reserve: false,
        };
    }
    if let Some(r) = reserve.filter(|r| in_force(r, now)) {
        let mut grant = r.clone();
        grant.slot = GrantSlot::Active as i32;
        return LicenceView::Licensed {
            grant,
            promoted_reserve: true,
        };
    }
    let reason = match active {
        Some(a) if now >= a.expires_at => format!(
            "grant for key {} expired at {}",
            a.key_id,
            super::key::format_time(a.expires_at)
        ),
        _ if !server_reason.is_empty() => server_reason.to_owned(),
        _ => "no licence grant received yet".to_owned(),
    };
    LicenceView::Unlicensed { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(key: &str, from: i64, until: i64, slot: GrantSlot) -> GrantBody {
        GrantBody {
            device_id: "d-1".into(),
            key_id: key.into(),
            components: vec!["antivirus".into()],
            issued_at: from,
            expires_at: until,
            key_expires_at: until,
            slot: slot as i32,
            valid_from: from,
            ..Default::default()
        }
    }

    #[test]
    fn l7_grant_signature_and_device_are_checked() {
        let (signer, _) = GrantSigner::generate();
        let g = grant("K", 0, 100, GrantSlot::Active);
        let signed = signer.sign(&g);
        assert_eq!(verify_grant(&signed, &signer.public_key(), "d-1"), Ok(g));
        assert!(matches!(
            verify_grant(&signed, &signer.public_key(), "d-2"),
            Err(GrantError::WrongDevice { .. })
        ));
        let mut forged = signed.clone();
        forged.body[3] ^= 1;
        assert_eq!(
            verify_grant(&forged, &signer.public_key(), "d-1"),
            Err(GrantError::BadSignature)
        );
        let (other, _) = GrantSigner::generate();
        assert_eq!(
            verify_grant(&signed, &other.public_key(), "d-1"),
            Err(GrantError::BadSignature)
        );
    }

    #[test]
    fn l7_licensed_offline_until_grant_expiry() {
        let a = grant("K", 0, 100, GrantSlot::Active);
        assert!(matches!(
            effective_licence(Some(&a), None, 99, ""),
            LicenceView::Licensed { .. }
        ));
        match effective_licence(Some(&a), None, 100, "") {
            LicenceView::Unlicensed { reason } => assert!(reason.contains("expired"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn l5_reserve_promoted_on_expiry_without_connection() {
        let a = grant("K1", 0, 100, GrantSlot::Active);
        let r = grant("K2", 50, 300, GrantSlot::Reserve);
        match effective_licence(Some(&a), Some(&r), 99, "") {
            LicenceView::Licensed {
                grant,
                promoted_reserve,
            } => {
                assert_eq!(grant.key_id, "K1");
                assert!(!promoted_reserve);
            }
            other => panic!("{other:?}"),
        }
        match effective_licence(Some(&a), Some(&r), 100, "") {
            LicenceView::Licensed {
                grant,
                promoted_reserve,
            } => {
                assert_eq!(grant.key_id, "K2");
                assert!(promoted_reserve);
                assert_eq!(grant.slot, GrantSlot::Active as i32);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            effective_licence(Some(&a), Some(&r), 300, ""),
            LicenceView::Unlicensed { .. }
        ));
    }
}
