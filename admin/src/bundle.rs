//! The admin bundle: what an administrator needs to reach a server, in one directory the server
//! writes at init (`<server data>/admin/`) and that can be copied to a workstation.
//!
//! ```text
//! admin.toml   server = "host:port"   (where to connect)
//! cert.pem     the admin certificate chain, issued by the deployment CA
//! key.pem      its private key (0600)
//! ca.pem       the deployment CA, to verify the server
//! ```

use std::path::{Path, PathBuf};

use outpost_net::fsutil::{read_string, write_atomic};
use outpost_proto::pki::{self, Identity, IdentityPem};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

/// `admin.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToml {
    /// Server address to dial.
    pub server: String,
}

/// A loaded bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Where the server is.
    pub server: String,
    /// The admin identity.
    pub identity: Identity,
    /// The deployment's CA certificates (two during a CA roll-over, S9).
    pub cas: Vec<CertificateDer<'static>>,
}

/// Why a bundle could not be used.
#[derive(Debug, thiserror::Error)]
#[error("admin bundle {}: {what}", dir.display())]
pub struct BundleError {
    /// The bundle directory.
    pub dir: PathBuf,
    /// What is wrong, and the fix.
    pub what: String,
}

impl Bundle {
    /// Loads the bundle in `dir`.
    pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
        let err = |what: String| BundleError {
            dir: dir.to_owned(),
            what,
        };
        let read = |f: &str| {
            read_string(&dir.join(f)).map_err(|e| {
                err(format!(
                    "{e} (point --data-dir at the server's data directory, or --bundle at a copy of its admin/ directory)"
                ))
            })
        };
        let toml: AdminToml =
            toml::from_str(&read("admin.toml")?).map_err(|e| err(format!("admin.toml: {e}")))?;
        let identity = Identity::from_pem(
            &IdentityPem {
                chain_pem: read("cert.pem")?,
                key_pem: read("key.pem")?,
            },
            "admin certificate",
        )
        .map_err(|e| err(e.to_string()))?;
        let cas = pki::certs_from_pem(&read("ca.pem")?, "ca.pem")
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| err("ca.pem holds no certificate".into()))?;
        Ok(Bundle {
            server: toml.server,
            identity,
            cas,
        })
    }
}

/// Writes a bundle: the admin identity, the CA, and where the server is.
pub fn write(dir: &Path, id: &IdentityPem, ca_pem: &str, server: &str) -> std::io::Result<()> {
    write_atomic(&dir.join("cert.pem"), id.chain_pem.as_bytes(), false)?;
    write_atomic(&dir.join("key.pem"), id.key_pem.as_bytes(), true)?;
    write_atomic(&dir.join("ca.pem"), ca_pem.as_bytes(), false)?;
    set_server(dir, server)
}

/// Points a bundle at `server`.
pub fn set_server(dir: &Path, server: &str) -> std::io::Result<()> {
    let body = toml::to_string(&AdminToml {
        server: server.to_owned(),
    })
    .expect("admin.toml serializes");
    let text = format!(
        "# Where `outpost-server admin` connects. Copy this directory to an admin workstation\n\
         # and change `server` to an address that reaches the server.\n{body}"
    );
    write_atomic(&dir.join("admin.toml"), text.as_bytes(), false)
}

/// The server address a bundle points at, if it has one.
pub fn server_of(dir: &Path) -> Option<String> {
    let text = read_string(&dir.join("admin.toml")).ok()?;
    toml::from_str::<AdminToml>(&text).ok().map(|t| t.server)
}
