//! The licence authority tool (`outpost-server authority …`): creates the authority key pair
//! and issues signed key files (L1). In production the authority is the vendor; this tool is
//! how a deployment, a test or the sandbox gets keys.

use std::path::{Path, PathBuf};

use anyhow::Context;
use outpost_net::fsutil::{read, read_string, write_atomic};
use outpost_proto::licence::key::{decode_public_key, encode_public_key, parse_time};
use outpost_proto::licence::{Authority, KeyBody, LicenceKey};
use outpost_proto::pb::v1::KeyKind;

/// File of the private key in an authority directory.
pub const PRIVATE_FILE: &str = "authority.key";
/// File of the public key in an authority directory.
pub const PUBLIC_FILE: &str = "authority.pub";

/// Creates an authority in `dir`; refuses to overwrite one.
pub fn init(dir: &Path) -> anyhow::Result<(Authority, PathBuf)> {
    let private = dir.join(PRIVATE_FILE);
    anyhow::ensure!(
        !private.exists(),
        "{} already exists; an authority key is never overwritten",
        private.display()
    );
    let (auth, pk8) = Authority::generate();
    write_atomic(&private, &pk8, true)?;
    let public = dir.join(PUBLIC_FILE);
    write_atomic(
        &public,
        format!("{}\n", encode_public_key(auth.public_key())).as_bytes(),
        false,
    )?;
    Ok((auth, public))
}

/// Loads the authority from `dir`.
pub fn load(dir: &Path) -> anyhow::Result<Authority> {
    let private = dir.join(PRIVATE_FILE);
    Authority::from_pkcs8(&read(&private)?).with_context(|| format!("{}", private.display()))
}

/// Reads a public key file (or the text itself).
pub fn read_public(path_or_text: &str) -> anyhow::Result<String> {
    let text = if path_or_text.starts_with(outpost_proto::licence::key::PUBLIC_KEY_PREFIX) {
        path_or_text.to_owned()
    } else {
        read_string(Path::new(path_or_text))?
    };
    decode_public_key(&text)
        .with_context(|| format!("{path_or_text}: not an authority public key"))?;
    Ok(text.trim().to_owned())
}

/// Parses "now", RFC 3339, or unix seconds.
pub fn parse_when(s: &str, now: i64) -> anyhow::Result<i64> {
    if s == "now" {
        return Ok(now);
    }
    if let Some(t) = parse_time(s) {
        return Ok(t);
    }
    s.parse::<i64>().map_err(|_| {
        anyhow::anyhow!(
            "{s:?} is not a time: use \"now\", RFC 3339 like 2027-01-31T23:59:59Z, or unix seconds"
        )
    })
}

/// What to put in a key.
#[derive(Debug, Clone)]
pub struct IssueSpec {
    /// Key id.
    pub key_id: String,
    /// Licensee.
    pub licensee: String,
    /// Product.
    pub product: String,
    /// Components.
    pub components: Vec<String>,
    /// Seats.
    pub seats: u32,
    /// Unix seconds.
    pub valid_from: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// Demo or commercial.
    pub demo: bool,
    /// Key it renews.
    pub renews: Option<String>,
}

/// Issues a key file.
pub fn issue(auth: &Authority, spec: &IssueSpec) -> anyhow::Result<LicenceKey> {
    Ok(auth.issue(&KeyBody {
        key_id: spec.key_id.clone(),
        licensee: spec.licensee.clone(),
        product: spec.product.clone(),
        components: spec.components.clone(),
        seats: spec.seats,
        valid_from: spec.valid_from,
        expires_at: spec.expires_at,
        kind: if spec.demo {
            KeyKind::Demo
        } else {
            KeyKind::Commercial
        },
        renews: spec.renews.clone(),
    })?)
}
