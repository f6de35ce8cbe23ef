//! Broadcast pushes (D4): one push for many agents, carried once over a gateway's uplink and
//! fanned out by the gateway. The server signs it with its grant key (the key agents already
//! hold to verify grants, L7), over a context string that no grant body can begin with, so a
//! broadcast signature is never a valid grant signature and the reverse. An agent acts on a
//! broadcast only if the signature verifies, it has not expired, and it is for the agent (every
//! agent, or the agent's group or a group above it). The gateway passes opaque bytes: it can
//! drop a broadcast, not forge or alter one.

use prost::Message;
use ring::signature::{ED25519, UnparsedPublicKey};

use crate::licence::grant::GrantSigner;
use crate::pb::v1::{BroadcastBody, SignedBroadcast};

/// Signed bytes begin with this (then the encoded body).
pub const CONTEXT: &[u8] = b"outpost-broadcast/1\0";

/// Why an agent does not act on a broadcast.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BroadcastError {
    /// The signature does not verify against the server's key.
    #[error("the broadcast's signature does not verify against the server's key")]
    BadSignature,
    /// Not a broadcast body.
    #[error("the broadcast is malformed: {0}")]
    Malformed(String),
    /// Past its expiry.
    #[error("the broadcast expired")]
    Expired,
    /// For another group.
    #[error("the broadcast is for group {0}, not this device's")]
    NotForThisDevice(String),
}

fn signed_bytes(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(CONTEXT.len() + body.len());
    v.extend_from_slice(CONTEXT);
    v.extend_from_slice(body);
    v
}

/// Signs a broadcast.
pub fn sign(signer: &GrantSigner, body: &BroadcastBody) -> SignedBroadcast {
    let body = body.encode_to_vec();
    let signature = signer.sign_bytes(&signed_bytes(&body));
    SignedBroadcast { body, signature }
}

/// Whether a broadcast for `target` (empty: everyone) is for a device in group `group`.
pub fn is_for(target: &str, group: &str) -> bool {
    target.is_empty()
        || group == target
        || group
            .strip_prefix(target)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// What an agent checks before it acts on a broadcast: signature, expiry, target.
pub fn verify(
    b: &SignedBroadcast,
    server_key: &[u8],
    group: &str,
    now_ms: i64,
) -> Result<BroadcastBody, BroadcastError> {
    UnparsedPublicKey::new(&ED25519, server_key)
        .verify(&signed_bytes(&b.body), &b.signature)
        .map_err(|_| BroadcastError::BadSignature)?;
    let body = BroadcastBody::decode(b.body.as_slice())
        .map_err(|e| BroadcastError::Malformed(e.to_string()))?;
    if body.push.is_none() {
        return Err(BroadcastError::Malformed("no push in it".into()));
    }
    if now_ms > body.expires_at_ms {
        return Err(BroadcastError::Expired);
    }
    if !is_for(&body.group, group) {
        return Err(BroadcastError::NotForThisDevice(body.group));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::licence::grant::verify_grant;
    use crate::pb::v1::{Push, SignedGrant};

    fn body(group: &str) -> BroadcastBody {
        BroadcastBody {
            push: Some(Push {
                id: "p-1".into(),
                kind: 5,
                payload: b"hello".to_vec(),
                created_at_ms: 1,
            }),
            group: group.into(),
            expires_at_ms: 1_000,
        }
    }

    #[test]
    fn d4_a_broadcast_verifies_only_unaltered_unexpired_and_for_the_device() {
        let (signer, _) = GrantSigner::generate();
        let key = signer.public_key();
        let b = sign(&signer, &body("everyone/berlin"));
        assert!(verify(&b, &key, "everyone/berlin/it", 10).is_ok());
        assert!(verify(&b, &key, "everyone/berlin", 10).is_ok());
        assert_eq!(
            verify(&b, &key, "everyone/berlinx", 10),
            Err(BroadcastError::NotForThisDevice("everyone/berlin".into()))
        );
        assert_eq!(
            verify(&b, &key, "everyone/berlin", 1_001),
            Err(BroadcastError::Expired)
        );
        // Altered by whoever carried it: a byte of the body, or another group.
        let mut altered = b.clone();
        let last = altered.body.len() - 1;
        altered.body[last] ^= 1;
        assert_eq!(
            verify(&altered, &key, "everyone/berlin", 10),
            Err(BroadcastError::BadSignature)
        );
        let mut regrouped = sign(&GrantSigner::generate().0, &body(""));
        regrouped.signature = b.signature.clone();
        assert_eq!(
            verify(&regrouped, &key, "everyone/berlin", 10),
            Err(BroadcastError::BadSignature)
        );
        // Signed by another key (a gateway's own).
        let forged = sign(&GrantSigner::generate().0, &body(""));
        assert_eq!(
            verify(&forged, &key, "everyone", 10),
            Err(BroadcastError::BadSignature)
        );
        assert!(verify(&sign(&signer, &body("")), &key, "anything", 10).is_ok());
    }

    #[test]
    fn d4_a_broadcast_signature_is_never_a_grant_signature() {
        let (signer, _) = GrantSigner::generate();
        let b = sign(&signer, &body(""));
        let as_grant = SignedGrant {
            body: b.body.clone(),
            signature: b.signature.clone(),
        };
        assert!(verify_grant(&as_grant, &signer.public_key(), "x").is_err());
    }
}
