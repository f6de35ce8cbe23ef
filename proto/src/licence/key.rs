//! Licence key files (L1): a readable TOML body followed by an Ed25519 signature of the
//! licence authority over every byte of that body.
//!
//! ```text
//! # Outpost licence key. Any change to this file invalidates it.
//! format = "outpost-licence/1"
//! key_id = "K-ACME-0001"
//! licensee = "ACME GmbH"
//! product = "Outpost Endpoint"
//! components = ["antivirus", "firewall"]
//! seats = 40
//! valid_from = "2026-11-22T00:00:00Z"
//! expires = "2027-11-22T00:00:00Z"
//! kind = "commercial"
//! renews = "K-ACME-0000"          # optional
//! -----BEGIN OUTPOST SIGNATURE-----
//! <base64 Ed25519 signature over every byte above this line>
//! -----END OUTPOST SIGNATURE-----
//! ```
//!
//! The signature covers the exact bytes, so the file is exported byte-identical (L2) and any
//! edit — even whitespace — invalidates it. Unknown fields are refused: a newer format gets a
//! new `format` value, which this build refuses with a message saying so. A key whose
//! `valid_from` lies in the future is valid (renewal keys arrive early); it grants nothing
//! before that second.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::pb::v1::KeyKind;

/// The only key format this build reads.
pub const KEY_FORMAT: &str = "outpost-licence/1";
const SIG_BEGIN: &str = "-----BEGIN OUTPOST SIGNATURE-----\n";
const SIG_END: &str = "-----END OUTPOST SIGNATURE-----";
/// Largest key file accepted (a key is a few hundred bytes).
pub const MAX_KEY_FILE: usize = 64 * 1024;

/// Why a key file was refused. Every message names what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// No signature block.
    #[error(
        "not an Outpost licence key file (no signature block); use the file the licence authority issued"
    )]
    NotAKeyFile,
    /// The file is larger than any key.
    #[error("file of {0} bytes is too large to be a licence key (maximum {MAX_KEY_FILE})")]
    TooLarge(usize),
    /// The signature block is not valid base64 of 64 bytes.
    #[error(
        "signature block is damaged (not base64 of an Ed25519 signature); use an unmodified copy of the key file"
    )]
    BadSignatureEncoding,
    /// The signature does not verify.
    #[error(
        "signature does not verify against the licence authority key (was the file edited, or issued by another authority?)"
    )]
    SignatureMismatch,
    /// The body is not valid UTF-8 TOML of the expected shape.
    #[error("key body is unreadable: {0}")]
    Body(String),
    /// A format this build does not understand.
    #[error(
        "key format {found:?} is not supported (this server reads {KEY_FORMAT:?}); upgrade the server"
    )]
    UnsupportedFormat {
        /// The format found in the file.
        found: String,
    },
    /// A field has an invalid value.
    #[error("field {field}: {problem}")]
    Invalid {
        /// Field name.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The authority public key given to the server is malformed.
    #[error("licence authority public key is malformed: {0}")]
    BadAuthorityKey(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBody {
    format: String,
    key_id: String,
    licensee: String,
    product: String,
    components: Vec<String>,
    seats: u32,
    valid_from: String,
    expires: String,
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    renews: Option<String>,
}

/// What a licence key says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBody {
    /// Unique key id, `[A-Za-z0-9._-]`, 1..=64 chars.
    pub key_id: String,
    /// Who the key is licensed to.
    pub licensee: String,
    /// Product name.
    pub product: String,
    /// Licensed components (non-empty, sorted, unique).
    pub components: Vec<String>,
    /// Protected endpoints (servers and gateways cost nothing).
    pub seats: u32,
    /// Unix seconds.
    pub valid_from: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// Commercial or demo.
    pub kind: KeyKind,
    /// Id of the key this one renews.
    pub renews: Option<String>,
}

/// A verified licence key and the exact bytes it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenceKey {
    /// The verified contents.
    pub body: KeyBody,
    /// The signed file, byte for byte.
    pub file: Vec<u8>,
}

/// Formats unix seconds as RFC 3339 (UTC, to the second).
pub fn format_time(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// Parses RFC 3339 to unix seconds.
pub fn parse_time(s: &str) -> Option<i64> {
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// Whether a key id is well formed.
pub fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn kind_name(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Demo => "demo",
        _ => "commercial",
    }
}

impl KeyBody {
    fn validate(&self) -> Result<(), KeyError> {
        if !valid_key_id(&self.key_id) {
            return Err(KeyError::Invalid {
                field: "key_id",
                problem: format!(
                    "{:?} must be 1-64 characters of letters, digits, '.', '_' or '-'",
                    self.key_id
                ),
            });
        }
        if self.licensee.trim().is_empty() {
            return Err(KeyError::Invalid {
                field: "licensee",
                problem: "must not be empty".into(),
            });
        }
        if self.components.is_empty() || self.components.iter().any(|c| c.trim().is_empty()) {
            return Err(KeyError::Invalid {
                field: "components",
                problem: "must list at least one non-empty component".into(),
            });
        }
        if self.seats == 0 {
            return Err(KeyError::Invalid {
                field: "seats",
                problem: "must be at least 1".into(),
            });
        }
        if self.expires_at <= self.valid_from {
            return Err(KeyError::Invalid {
                field: "expires",
                problem: format!(
                    "{} is not after valid_from {}",
                    format_time(self.expires_at),
                    format_time(self.valid_from)
                ),
            });
        }
        if let Some(r) = &self.renews
            && !valid_key_id(r)
        {
            return Err(KeyError::Invalid {
                field: "renews",
                problem: format!("{r:?} is not a key id"),
            });
        }
        Ok(())
    }

    fn to_raw(&self) -> RawBody {
        RawBody {
            format: KEY_FORMAT.to_owned(),
            key_id: self.key_id.clone(),
            licensee: self.licensee.clone(),
            product: self.product.clone(),
            components: self.components.clone(),
            seats: self.seats,
            valid_from: format_time(self.valid_from),
            expires: format_time(self.expires_at),
            kind: kind_name(self.kind).to_owned(),
            renews: self.renews.clone(),
        }
    }

    fn from_raw(raw: RawBody) -> Result<KeyBody, KeyError> {
        if raw.format != KEY_FORMAT {
            return Err(KeyError::UnsupportedFormat { found: raw.format });
        }
        let time = |field: &'static str, s: &str| {
            parse_time(s).ok_or_else(|| KeyError::Invalid {
                field,
                problem: format!("{s:?} is not an RFC 3339 time like 2027-01-31T23:59:59Z"),
            })
        };
        let kind = match raw.kind.as_str() {
            "commercial" => KeyKind::Commercial,
            "demo" => KeyKind::Demo,
            other => {
                return Err(KeyError::Invalid {
                    field: "kind",
                    problem: format!("{other:?} must be \"commercial\" or \"demo\""),
                });
            }
        };
        let mut components = raw.components;
        components.sort();
        components.dedup();
        let body = KeyBody {
            valid_from: time("valid_from", &raw.valid_from)?,
            expires_at: time("expires", &raw.expires)?,
            key_id: raw.key_id,
            licensee: raw.licensee,
            product: raw.product,
            components,
            seats: raw.seats,
            kind,
            renews: raw.renews.filter(|r| !r.is_empty()),
        };
        body.validate()?;
        Ok(body)
    }

    /// Whether the key grants anything at `now`.
    pub fn is_valid_at(&self, now: i64) -> bool {
        self.valid_from <= now && now < self.expires_at
    }
}

/// Reads a key file and verifies it against the authority's Ed25519 public key.
pub fn verify_key_file(file: &[u8], authority_public: &[u8]) -> Result<LicenceKey, KeyError> {
    if file.len() > MAX_KEY_FILE {
        return Err(KeyError::TooLarge(file.len()));
    }
    if authority_public.len() != 32 {
        return Err(KeyError::BadAuthorityKey(format!(
            "{} bytes, an Ed25519 public key has 32",
            authority_public.len()
        )));
    }
    let text = std::str::from_utf8(file).map_err(|_| KeyError::NotAKeyFile)?;
    let split = text.rfind(SIG_BEGIN).ok_or(KeyError::NotAKeyFile)?;
    let (body, sig_block) = text.split_at(split);
    let sig_text = sig_block[SIG_BEGIN.len()..]
        .trim_end()
        .strip_suffix(SIG_END)
        .ok_or(KeyError::BadSignatureEncoding)?;
    let sig_b64: String = sig_text.split_whitespace().collect();
    let sig = B64
        .decode(sig_b64)
        .map_err(|_| KeyError::BadSignatureEncoding)?;
    if sig.len() != 64 {
        return Err(KeyError::BadSignatureEncoding);
    }
    UnparsedPublicKey::new(&ED25519, authority_public)
        .verify(body.as_bytes(), &sig)
        .map_err(|_| KeyError::SignatureMismatch)?;
    let raw: RawBody = toml::from_str(body).map_err(|e| KeyError::Body(e.message().to_owned()))?;
    Ok(LicenceKey {
        body: KeyBody::from_raw(raw)?,
        file: file.to_vec(),
    })
}

/// The licence authority's signing key (Ed25519).
pub struct Authority {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("public", &encode_public_key(self.public_key()))
            .finish()
    }
}

/// Prefix of the one-line public key text format.
pub const PUBLIC_KEY_PREFIX: &str = "outpost-authority-ed25519:";

/// The one-line text form of an authority public key.
pub fn encode_public_key(raw: &[u8]) -> String {
    format!("{PUBLIC_KEY_PREFIX}{}", B64.encode(raw))
}

/// Parses the one-line text form of an authority public key.
pub fn decode_public_key(text: &str) -> Result<Vec<u8>, KeyError> {
    let b64 = text.trim().strip_prefix(PUBLIC_KEY_PREFIX).ok_or_else(|| {
        KeyError::BadAuthorityKey(format!("expected text starting with {PUBLIC_KEY_PREFIX}"))
    })?;
    let raw = B64
        .decode(b64)
        .map_err(|e| KeyError::BadAuthorityKey(e.to_string()))?;
    if raw.len() != 32 {
        return Err(KeyError::BadAuthorityKey(format!(
            "{} bytes, an Ed25519 public key has 32",
            raw.len()
        )));
    }
    Ok(raw)
}

impl Authority {
    /// Generates a new authority key; returns it and its PKCS#8 bytes to store.
    pub fn generate() -> (Authority, Vec<u8>) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("ed25519 keygen");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("fresh pkcs8");
        (Authority { pair }, pkcs8.as_ref().to_vec())
    }

    /// Loads from PKCS#8 bytes.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Authority, KeyError> {
        Ed25519KeyPair::from_pkcs8(pkcs8)
            .map(|pair| Authority { pair })
            .map_err(|e| KeyError::BadAuthorityKey(e.to_string()))
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// Signs `body_text` as it stands into a key file, without checking what it says: the
    /// parser behind the signature is then reachable by tests and fuzzing, which must show it
    /// refuses anything malformed that an authority might sign by mistake.
    pub fn sign_raw_body(&self, body_text: &str) -> Vec<u8> {
        let mut text = body_text.to_owned();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let sig = self.pair.sign(text.as_bytes());
        text.push_str(SIG_BEGIN);
        text.push_str(&B64.encode(sig.as_ref()));
        text.push('\n');
        text.push_str(SIG_END);
        text.push('\n');
        text.into_bytes()
    }

    /// Writes and signs a key file for `body`.
    pub fn issue(&self, body: &KeyBody) -> Result<LicenceKey, KeyError> {
        body.validate()?;
        let mut text =
            String::from("# Outpost licence key. Any change to this file invalidates it.\n");
        text.push_str(&toml::to_string(&body.to_raw()).map_err(|e| KeyError::Body(e.to_string()))?);
        let file = self.sign_raw_body(&text);
        // Round-trip through the verifier so what we hand out is exactly what servers accept.
        verify_key_file(&file, self.public_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn body(id: &str, seats: u32) -> KeyBody {
        KeyBody {
            key_id: id.into(),
            licensee: "ACME GmbH".into(),
            product: "Outpost Endpoint".into(),
            components: vec!["firewall".into(), "antivirus".into()],
            seats,
            valid_from: 1_700_000_000,
            expires_at: 1_800_000_000,
            kind: KeyKind::Commercial,
            renews: None,
        }
    }

    #[test]
    fn l1_issued_key_verifies_and_round_trips_byte_identical() {
        let (auth, _) = Authority::generate();
        let key = auth.issue(&body("K-1", 40)).unwrap();
        let again = verify_key_file(&key.file, auth.public_key()).unwrap();
        assert_eq!(again.file, key.file);
        assert_eq!(again.body.seats, 40);
        assert_eq!(again.body.components, vec!["antivirus", "firewall"]);
        let text = String::from_utf8(key.file).unwrap();
        assert!(
            text.contains("expires = \"2027-01-15T08:00:00Z\""),
            "{text}"
        );
    }

    #[test]
    fn l1_any_modification_invalidates() {
        let (auth, _) = Authority::generate();
        let key = auth.issue(&body("K-1", 40)).unwrap();
        let text = String::from_utf8(key.file.clone()).unwrap();
        let tampered = text.replace("seats = 40", "seats = 400");
        assert_eq!(
            verify_key_file(tampered.as_bytes(), auth.public_key()),
            Err(KeyError::SignatureMismatch)
        );
        let spaced = text.replacen("licensee", "licensee ", 1);
        assert_eq!(
            verify_key_file(spaced.as_bytes(), auth.public_key()),
            Err(KeyError::SignatureMismatch)
        );
        let mut flipped = key.file.clone();
        let n = flipped.len();
        flipped[n - 40] ^= 1;
        assert!(verify_key_file(&flipped, auth.public_key()).is_err());
    }

    #[test]
    fn l1_other_authority_is_refused() {
        let (auth, _) = Authority::generate();
        let (other, _) = Authority::generate();
        let key = auth.issue(&body("K-1", 40)).unwrap();
        let err = verify_key_file(&key.file, other.public_key()).unwrap_err();
        assert_eq!(err, KeyError::SignatureMismatch);
        assert!(err.to_string().contains("another authority"));
    }

    #[test]
    fn l1_unknown_format_and_bad_fields_are_refused_even_when_signed() {
        let (auth, _) = Authority::generate();
        // Sign a body with a future format directly (the issuer refuses to write one).
        let text = "format = \"outpost-licence/2\"\nkey_id = \"K\"\nlicensee = \"x\"\nproduct = \"p\"\ncomponents = [\"a\"]\nseats = 1\nvalid_from = \"2026-01-01T00:00:00Z\"\nexpires = \"2027-01-01T00:00:00Z\"\nkind = \"demo\"\n";
        let signed = |t: &str| {
            let sig = auth.pair.sign(t.as_bytes());
            format!("{t}{SIG_BEGIN}{}\n{SIG_END}\n", B64.encode(sig.as_ref()))
        };
        assert!(matches!(
            verify_key_file(signed(text).as_bytes(), auth.public_key()),
            Err(KeyError::UnsupportedFormat { .. })
        ));
        let zero = text
            .replace("outpost-licence/2", KEY_FORMAT)
            .replace("seats = 1", "seats = 0");
        assert!(matches!(
            verify_key_file(signed(&zero).as_bytes(), auth.public_key()),
            Err(KeyError::Invalid { field: "seats", .. })
        ));
        let extra = text.replace("outpost-licence/2", KEY_FORMAT) + "bonus = 1\n";
        assert!(matches!(
            verify_key_file(signed(&extra).as_bytes(), auth.public_key()),
            Err(KeyError::Body(_))
        ));
        assert_eq!(
            verify_key_file(b"hello", auth.public_key()),
            Err(KeyError::NotAKeyFile)
        );
    }

    #[test]
    fn public_key_text_round_trip() {
        let (auth, pk8) = Authority::generate();
        let text = encode_public_key(auth.public_key());
        assert_eq!(decode_public_key(&text).unwrap(), auth.public_key());
        assert!(decode_public_key("nonsense").is_err());
        let again = Authority::from_pkcs8(&pk8).unwrap();
        assert_eq!(again.public_key(), auth.public_key());
    }
}
