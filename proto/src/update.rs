//! Update manifests (D1): what a revision of update content holds — every file with its size,
//! SHA-256 and the SHA-256 of each block — signed by the server's update key.
//!
//! A device accepts a manifest only when (checks after TUF, whose users were bitten by each
//! one missing):
//! - the signature verifies against the update key it holds (the first one it was given);
//! - its revision is not lower than one it holds (**rollback**: an attacker or a stale mirror
//!   replaying an old, vulnerable revision); the same revision is "already held";
//! - it has not expired (**freeze**: a repository that stopped moving — its manifests carry an
//!   expiry and the server re-issues them well before it);
//! - every file name is a plain relative path and its block list matches its size.

use prost::Message;
use ring::signature::{ED25519, UnparsedPublicKey};

use crate::licence::grant::GrantSigner;
use crate::pb::v1::{SignedManifest, UpdateFile, UpdateManifest};

/// Signed bytes begin with this (then the encoded manifest).
pub const CONTEXT: &[u8] = b"outpost-manifest/1\0";

/// Block size of new manifests.
pub const BLOCK_SIZE: u32 = 1 << 20;

/// Why a manifest is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The signature does not verify.
    #[error("the update manifest's signature does not verify against the server's update key")]
    BadSignature,
    /// Not a manifest.
    #[error("the update manifest is malformed: {0}")]
    Malformed(String),
    /// Older than one held.
    #[error(
        "update manifest revision {offered} is older than revision {held} held here: refused (rollback)"
    )]
    Rollback {
        /// Offered.
        offered: u64,
        /// Held.
        held: u64,
    },
    /// The same revision as the one held.
    #[error("update manifest revision {0} is held already")]
    AlreadyHeld(u64),
    /// Expired.
    #[error(
        "update manifest revision {revision} expired at unix {expired_at}: refused (the repository may be frozen)"
    )]
    Expired {
        /// Its revision.
        revision: u64,
        /// When it expired.
        expired_at: i64,
    },
    /// A file entry is unusable.
    #[error("update manifest file {0:?}: {1}")]
    BadFile(String, &'static str),
}

fn signed_bytes(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(CONTEXT.len() + body.len());
    v.extend_from_slice(CONTEXT);
    v.extend_from_slice(body);
    v
}

/// Signs a manifest with the update key.
pub fn sign(key: &GrantSigner, m: &UpdateManifest) -> SignedManifest {
    let body = m.encode_to_vec();
    let signature = key.sign_bytes(&signed_bytes(&body));
    SignedManifest { body, signature }
}

/// Whether a file name is a plain relative path: '/'-separated parts of letters, digits, '-',
/// '_', '.', none empty, `.` or `..`.
pub fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 512
        && name.split('/').all(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
}

/// The component of a file: its first directory ("" at the top).
pub fn component_of(name: &str) -> &str {
    name.split_once('/').map_or("", |(c, _)| c)
}

/// Blocks of a file of `size` bytes.
pub fn blocks(size: u64, block_size: u32) -> u64 {
    size.div_ceil(u64::from(block_size.max(1)))
}

/// Decodes and checks a signed manifest offered to a device holding `held` (its revision, 0
/// for none) at `now` (unix seconds).
pub fn accept(
    signed: &SignedManifest,
    key: &[u8],
    held: u64,
    now: i64,
) -> Result<UpdateManifest, ManifestError> {
    let m = verify(signed, key)?;
    if m.revision < held {
        return Err(ManifestError::Rollback {
            offered: m.revision,
            held,
        });
    }
    if m.revision == held {
        return Err(ManifestError::AlreadyHeld(held));
    }
    if now >= m.expires_at {
        return Err(ManifestError::Expired {
            revision: m.revision,
            expired_at: m.expires_at,
        });
    }
    Ok(m)
}

/// Checks the signature and the file entries only (a server reading its own repository).
pub fn verify(signed: &SignedManifest, key: &[u8]) -> Result<UpdateManifest, ManifestError> {
    UnparsedPublicKey::new(&ED25519, key)
        .verify(&signed_bytes(&signed.body), &signed.signature)
        .map_err(|_| ManifestError::BadSignature)?;
    let m = UpdateManifest::decode(signed.body.as_slice())
        .map_err(|e| ManifestError::Malformed(e.to_string()))?;
    if m.block_size == 0 {
        return Err(ManifestError::Malformed("block size 0".into()));
    }
    for f in &m.files {
        check_file(f, m.block_size)?;
    }
    Ok(m)
}

fn check_file(f: &UpdateFile, block_size: u32) -> Result<(), ManifestError> {
    let bad = |why| Err(ManifestError::BadFile(f.name.clone(), why));
    if !plain_name(&f.name) {
        return bad("not a plain relative path");
    }
    if f.component != component_of(&f.name) {
        return bad("component does not match the name");
    }
    if f.sha256.len() != 32 || f.block_sha256.iter().any(|b| b.len() != 32) {
        return bad("a hash is not 32 bytes");
    }
    if f.block_sha256.len() as u64 != blocks(f.size, block_size) {
        return bad("block list does not match the size");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(revision: u64, expires_at: i64) -> UpdateManifest {
        UpdateManifest {
            revision,
            created_at: 0,
            expires_at,
            block_size: 4,
            files: vec![UpdateFile {
                name: "av/bases.bin".into(),
                component: "av".into(),
                size: 9,
                sha256: vec![1; 32],
                block_sha256: vec![vec![2; 32]; 3],
            }],
        }
    }

    #[test]
    fn d1_rollback_freeze_and_tampering_are_refused() {
        let (key, _) = GrantSigner::generate();
        let pk = key.public_key();
        let s5 = sign(&key, &manifest(5, 1000));
        assert_eq!(accept(&s5, &pk, 4, 10).unwrap().revision, 5);
        assert_eq!(
            accept(&s5, &pk, 6, 10),
            Err(ManifestError::Rollback {
                offered: 5,
                held: 6
            })
        );
        assert_eq!(accept(&s5, &pk, 5, 10), Err(ManifestError::AlreadyHeld(5)));
        assert_eq!(
            accept(&s5, &pk, 0, 1000),
            Err(ManifestError::Expired {
                revision: 5,
                expired_at: 1000
            })
        );
        let mut tampered = s5.clone();
        tampered.body[3] ^= 1;
        assert_eq!(
            accept(&tampered, &pk, 0, 10),
            Err(ManifestError::BadSignature)
        );
        let other = sign(&GrantSigner::generate().0, &manifest(9, 1000));
        assert_eq!(accept(&other, &pk, 0, 10), Err(ManifestError::BadSignature));
    }

    #[test]
    fn d1_unsafe_file_entries_are_refused_even_when_signed() {
        let (key, _) = GrantSigner::generate();
        let pk = key.public_key();
        for (name, component, blocks, why) in [
            ("../etc/passwd", "..", 3, "not a plain relative path"),
            ("/abs", "", 3, "not a plain relative path"),
            ("av/bases.bin", "", 3, "component does not match the name"),
            (
                "av/bases.bin",
                "av",
                2,
                "block list does not match the size",
            ),
        ] {
            let mut m = manifest(1, 1000);
            m.files[0].name = name.into();
            m.files[0].component = component.into();
            m.files[0].block_sha256 = vec![vec![2; 32]; blocks];
            let s = sign(&key, &m);
            assert_eq!(
                accept(&s, &pk, 0, 10),
                Err(ManifestError::BadFile(name.into(), why)),
                "{name}"
            );
        }
        assert!(plain_name("a/b-c_d.e"));
        assert_eq!(component_of("top.bin"), "");
    }
}
