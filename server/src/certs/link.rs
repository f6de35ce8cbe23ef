//! The server's link certificate (H1): a self-signed certificate and key, made once per data
//! directory, that this server presents on every server↔server link and that neighbours pin
//! by SHA-256 (`server export-cert` writes it to a file for them). It is separate from the
//! server certificate on purpose: that one rotates with renewals and CA roll-overs, and every
//! rotation would break the pins of all neighbours. The link certificate lives 20 years; a
//! re-installed server gets a new one, which its neighbours refuse with a message naming both
//! fingerprints until they pin the new file.

use std::path::PathBuf;

use outpost_net::fsutil::{read_string, write_atomic};
use outpost_proto::pki::{self, Identity, IdentityPem};

use crate::datadir::{DataDir, DataDirError};

/// This server's link certificate.
#[derive(Debug)]
pub struct Link {
    /// Certificate and key.
    pub identity: Identity,
    /// SHA-256 of the certificate: what neighbours pin.
    pub sha256: [u8; 32],
    /// The certificate as PEM (the exported file).
    pub pem: String,
}

fn files(data: &DataDir) -> (PathBuf, PathBuf) {
    (data.root().join("link.crt"), data.root().join("link.key"))
}

impl Link {
    /// Loads `link.crt`/`link.key`, creating them on first use (also in data directories made
    /// before server links existed). The key is written first; a crash before the certificate
    /// leaves a key alone, which the next start replaces.
    pub fn load_or_create(data: &DataDir, deployment: &str) -> Result<Link, DataDirError> {
        let (crt, key) = files(data);
        if !crt.exists() {
            let id = pki::self_signed(
                &format!("outpost server link ({deployment})"),
                outpost_net::unix_now(),
            )?;
            write_atomic(&key, id.key_pem.as_bytes(), true)?;
            write_atomic(&crt, id.chain_pem.as_bytes(), false)?;
        }
        let pem = IdentityPem {
            chain_pem: read_string(&crt)?,
            key_pem: read_string(&key)?,
        };
        let identity =
            Identity::from_pem(&pem, "link certificate").map_err(|e| DataDirError::Damaged {
                path: crt.clone(),
                what: format!(
                    "{e} (the server link certificate: restore link.crt and link.key from a \
                     backup, or delete both to make a new one and re-pin it on every neighbour)"
                ),
            })?;
        Ok(Link {
            sha256: pki::fingerprint(identity.leaf()),
            pem: pem.chain_pem,
            identity,
        })
    }
}
