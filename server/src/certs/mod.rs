//! The server's certificates at run time (S9): the CAs it trusts and the one that issues, its
//! own certificate, and every TLS configuration built from them — swapped in place when the
//! server certificate is rotated or the CA rolled over, so no listener restarts and no
//! connection drops.
//!
//! A CA roll-over has two steps, each one atomic write of `pki.toml`:
//!
//! 1. `ca roll-over`: a new CA is created and trusted beside the old one; devices receive both
//!    at their next sync (gateways at once) and renew their certificates under the new CA. The
//!    server keeps its certificate from the old CA, so a device that has not synced yet still
//!    connects.
//! 2. `ca finish-roll-over`: once no active device holds a certificate from the old CA (or
//!    with `--force`), the server certificate is re-issued under the new CA and the old CA is
//!    no longer trusted; its files move to `retired/`.
//!
//! ```text
//! <data>/pki.toml            issuing = "ca-…", trusted = ["ca", "ca-…"]  (absent: only ca.crt)
//! <data>/<name>.crt, .key    each CA named there
//! <data>/server.crt, .key    the server's certificate chain and key
//! ```

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use outpost_net::fsutil::{read_string, write_atomic};
use outpost_proto::alpn;
use outpost_proto::pki::{self, Ca, CertRole, ClientAuth, Identity};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::datadir::{DataDir, DataDirError};
use crate::store::{IssuedCert, fp_hex};

mod link;
mod renew;
pub use link::Link;
pub use renew::{renew_device, renew_own};

/// Why a certificate operation failed. Each names the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// A file could not be read or written.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// Certificates could not be made or parsed.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// A roll-over is under way already.
    #[error(
        "a CA roll-over is already under way (new CA {0}); finish it with `ca finish-roll-over`"
    )]
    AlreadyRolling(String),
    /// No roll-over to finish.
    #[error("no CA roll-over is under way; start one with `ca roll-over`")]
    NotRolling,
    /// Devices would be cut off by finishing now.
    #[error(
        "{count} active device(s) still hold a certificate from the old CA ({first}): they renew \
         at their next connection. Wait for them (`status` shows the count), or pass --force: \
         they will then need new tokens"
    )]
    DevicesOnOldCa {
        /// How many.
        count: u64,
        /// The first few ids.
        first: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PkiFile {
    /// The CA that issues device certificates.
    issuing: String,
    /// Every CA whose certificates are accepted (the issuing one included).
    trusted: Vec<String>,
}

impl Default for PkiFile {
    fn default() -> Self {
        PkiFile {
            issuing: "ca".into(),
            trusted: vec!["ca".into()],
        }
    }
}

/// One trusted CA.
pub struct NamedCa {
    /// File stem in the data directory.
    pub name: String,
    /// The CA.
    pub ca: Ca,
    /// SHA-256 of its certificate, hex.
    pub sha256: String,
    /// Its not-after, Unix seconds.
    pub expires_at: i64,
}

/// A consistent set of certificates and the TLS configurations built from them.
pub struct State {
    /// Trusted CAs; the issuing one first.
    pub cas: Vec<NamedCa>,
    /// The server's own identity.
    pub server: Identity,
    /// Its not-after.
    pub server_expires_at: i64,
    /// SHA-256 of the CA in the server's chain (what tokens pin).
    pub server_ca_sha256: [u8; 32],
    /// Hash over the trusted CAs, as devices compute it.
    pub trust_sha256: [u8; 32],
    /// The QUIC listener configuration.
    pub listener: quinn::ServerConfig,
    /// Inner TLS for relayed agent sessions.
    pub session_tls: TlsAcceptor,
    /// Inner TLS for relayed enrollments.
    pub enroll_tls: TlsAcceptor,
    /// Client configuration of DMZ diallers.
    pub dmz_client: quinn::ClientConfig,
}

impl State {
    /// The CA issuing device certificates.
    pub fn issuer(&self) -> &NamedCa {
        &self.cas[0]
    }

    /// The trusted CA certificates, issuing one first (what devices are sent).
    pub fn trusted_der(&self) -> Vec<CertificateDer<'static>> {
        self.cas.iter().map(|c| c.ca.cert_der().clone()).collect()
    }

    /// Whether a roll-over is under way.
    pub fn rolling(&self) -> bool {
        self.cas.len() > 1
    }
}

/// The server's certificates, swappable at run time.
pub struct Certs {
    data: DataDir,
    idle_timeout: std::time::Duration,
    device_lifetime: i64,
    server_lifetime: i64,
    server_names: Vec<String>,
    deployment: String,
    state: RwLock<Arc<State>>,
    endpoint: std::sync::OnceLock<quinn::Endpoint>,
    trust: watch::Sender<[u8; 32]>,
    ops: tokio::sync::Mutex<()>,
    pins: pki::Pins,
    link: Link,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs").finish_non_exhaustive()
    }
}

fn damaged(path: PathBuf, e: impl std::fmt::Display) -> DataDirError {
    DataDirError::Damaged {
        path,
        what: e.to_string(),
    }
}

impl Certs {
    /// Loads the certificates of a data directory and builds the TLS configurations.
    pub fn load(data: DataDir, config: &crate::config::ServerConfig) -> Result<Certs, CertError> {
        finish_interrupted_write(&data);
        let pins = pki::Pins::default();
        let link = Link::load_or_create(&data, &config.deployment)?;
        let state = build(&data, config.timing.idle_timeout, &pins, &link)?;
        let (trust, _) = watch::channel(state.trust_sha256);
        Ok(Certs {
            data,
            idle_timeout: config.timing.idle_timeout,
            device_lifetime: config.certificates.device_lifetime.as_secs() as i64,
            server_lifetime: config.certificates.server_lifetime.as_secs() as i64,
            server_names: config.server_names.clone(),
            deployment: config.deployment.clone(),
            state: RwLock::new(Arc::new(state)),
            endpoint: std::sync::OnceLock::new(),
            trust,
            ops: tokio::sync::Mutex::new(()),
            pins,
            link,
        })
    }

    /// The link certificates of neighbour servers the listener accepts (H1).
    pub fn pins(&self) -> &pki::Pins {
        &self.pins
    }

    /// This server's link certificate.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// The listener whose configuration follows rotations.
    pub fn attach(&self, ep: quinn::Endpoint) {
        let _ = self.endpoint.set(ep);
    }

    /// The current certificates.
    pub fn current(&self) -> Arc<State> {
        self.state.read().expect("certs lock").clone()
    }

    /// Changes of the trusted CA set (gateways are told at once).
    pub fn trust_changes(&self) -> watch::Receiver<[u8; 32]> {
        self.trust.subscribe()
    }

    /// Issues a device certificate for the key in `csr`.
    pub fn issue_device(
        &self,
        csr: &[u8],
        role: CertRole,
        id: &str,
        now: i64,
    ) -> Result<IssuedCert, pki::PkiError> {
        let st = self.current();
        let issuer = st.issuer();
        let der = issuer
            .ca
            .issue_for_csr(csr, role, id, now, self.device_lifetime)?;
        Ok(IssuedCert {
            sha256: fp_hex(&pki::fingerprint(&der)),
            expires_at: pki::validity(&der)?.1,
            ca_sha256: issuer.sha256.clone(),
            der: der.to_vec(),
        })
    }

    /// Re-issues the server certificate (same names, new key) under the CA that issued the
    /// current one; new connections get it at once. Returns its expiry.
    pub async fn rotate_server(&self) -> Result<i64, CertError> {
        let _op = self.ops.lock().await;
        let st = self.current();
        let leaf = st.server.leaf().clone();
        let ca = st
            .cas
            .iter()
            .find(|c| pki::issued_by(&leaf, c.ca.cert_der()))
            .unwrap_or(st.issuer());
        self.write_server(&ca.ca)?;
        self.reload()
    }

    /// Starts a CA roll-over (see the module documentation). Returns the new CA's name.
    pub async fn roll_over(&self) -> Result<String, CertError> {
        let _op = self.ops.lock().await;
        let st = self.current();
        if st.rolling() {
            return Err(CertError::AlreadyRolling(st.issuer().name.clone()));
        }
        let now = outpost_net::unix_now();
        let stamp = outpost_proto::licence::key::format_time(now);
        let ca = Ca::generate(&format!("{} {stamp}", self.deployment), now)?;
        let name = format!("ca-{now}");
        write_atomic(&self.crt(&name), ca.cert_pem().as_bytes(), false)
            .map_err(DataDirError::from)?;
        write_atomic(&self.key(&name), ca.key_pem().as_bytes(), true)
            .map_err(DataDirError::from)?;
        let mut trusted = vec![name.clone()];
        trusted.extend(st.cas.iter().map(|c| c.name.clone()));
        self.write_pki(&PkiFile {
            issuing: name.clone(),
            trusted,
        })?;
        self.reload()?;
        Ok(name)
    }

    /// Finishes a roll-over: the server certificate moves to the new CA and the old CA is no
    /// longer trusted. `on_old_ca` is what the registry says about devices still on it.
    pub async fn finish_roll_over(
        &self,
        on_old_ca: &crate::store::CertSummary,
        force: bool,
    ) -> Result<String, CertError> {
        let _op = self.ops.lock().await;
        let st = self.current();
        if !st.rolling() {
            return Err(CertError::NotRolling);
        }
        if on_old_ca.on_other_ca > 0 && !force {
            return Err(CertError::DevicesOnOldCa {
                count: on_old_ca.on_other_ca,
                first: on_old_ca.first_on_other_ca.join(", "),
            });
        }
        let issuer = st.issuer();
        self.write_server(&issuer.ca)?;
        self.write_pki(&PkiFile {
            issuing: issuer.name.clone(),
            trusted: vec![issuer.name.clone()],
        })?;
        let retired = self.data.root().join("retired");
        std::fs::create_dir_all(&retired).map_err(DataDirError::from)?;
        for old in &st.cas[1..] {
            for path in [self.crt(&old.name), self.key(&old.name)] {
                if let Some(f) = path.file_name() {
                    let _ = std::fs::rename(&path, retired.join(f));
                }
            }
        }
        self.reload()?;
        Ok(issuer.name.clone())
    }

    /// Renews the server certificate when two thirds of its lifetime have passed (S9).
    /// Returns whether it did.
    pub async fn renew_server_if_due(&self, now: i64) -> Result<bool, CertError> {
        let due = pki::renewal_due(self.current().server.leaf())?;
        if now < due {
            return Ok(false);
        }
        self.rotate_server().await?;
        Ok(true)
    }

    /// The local admin bundle's certificate re-issued under the issuing CA, and the bundle's
    /// CA list brought up to date. Returns the new certificate for the registry.
    pub fn renew_admin_bundle(
        &self,
        admin_id: &str,
        server: &str,
    ) -> Result<IssuedCert, CertError> {
        let st = self.current();
        let issuer = st.issuer();
        let now = outpost_net::unix_now();
        let id = issuer
            .ca
            .issue(CertRole::Admin, admin_id, &[], now, self.device_lifetime)?;
        let leaf = Identity::from_pem(&id, "admin certificate")?;
        let der = leaf.leaf().to_vec();
        // The bundle keeps the address it points at (it may have been edited).
        let server = outpost_admin::bundle::Bundle::load(&self.data.admin())
            .map(|b| b.server)
            .unwrap_or_else(|_| server.to_owned());
        outpost_admin::bundle::write(&self.data.admin(), &id, &self.trusted_pem(), &server)
            .map_err(DataDirError::from)?;
        Ok(IssuedCert {
            sha256: fp_hex(&pki::fingerprint(&der)),
            expires_at: pki::validity(&der)?.1,
            ca_sha256: issuer.sha256.clone(),
            der,
        })
    }

    /// Every trusted CA certificate as PEM, issuing one first.
    pub fn trusted_pem(&self) -> String {
        self.current().cas.iter().map(|c| c.ca.cert_pem()).collect()
    }

    fn crt(&self, name: &str) -> PathBuf {
        self.data.root().join(format!("{name}.crt"))
    }

    fn key(&self, name: &str) -> PathBuf {
        self.data.root().join(format!("{name}.key"))
    }

    fn write_pki(&self, f: &PkiFile) -> Result<(), CertError> {
        let text = format!(
            "# Which CA issues device certificates and which are trusted (S9). Written by\n\
             # `outpost-server admin ca roll-over` and `ca finish-roll-over`; do not edit.\n{}",
            toml::to_string(f).expect("pki file serializes")
        );
        write_atomic(&self.data.root().join("pki.toml"), text.as_bytes(), false)
            .map_err(DataDirError::from)?;
        Ok(())
    }

    /// Writes a new server key and certificate: both to `.new` files, then the key, then the
    /// certificate renamed into place; [`finish_interrupted_write`] completes a crash between.
    fn write_server(&self, ca: &Ca) -> Result<(), CertError> {
        let now = outpost_net::unix_now();
        let id = ca.issue(
            CertRole::Server,
            pki::SERVER_NAME,
            &self.server_names,
            now,
            self.server_lifetime,
        )?;
        let (crt, key) = (self.data.server_cert(), self.data.server_key());
        let (crt_new, key_new) = (with_suffix(&crt), with_suffix(&key));
        write_atomic(&crt_new, id.chain_pem.as_bytes(), false).map_err(DataDirError::from)?;
        write_atomic(&key_new, id.key_pem.as_bytes(), true).map_err(DataDirError::from)?;
        std::fs::rename(&key_new, &key).map_err(DataDirError::from)?;
        std::fs::rename(&crt_new, &crt).map_err(DataDirError::from)?;
        Ok(())
    }

    /// Rebuilds the state from the files and swaps it in; the listener gets the new
    /// configuration for its next handshakes. Returns the server certificate's expiry.
    fn reload(&self) -> Result<i64, CertError> {
        let st = Arc::new(build(
            &self.data,
            self.idle_timeout,
            &self.pins,
            &self.link,
        )?);
        if let Some(ep) = self.endpoint.get() {
            ep.set_server_config(Some(st.listener.clone()));
        }
        let expires = st.server_expires_at;
        let trust = st.trust_sha256;
        *self.state.write().expect("certs lock") = st;
        self.trust
            .send_if_modified(|t| std::mem::replace(t, trust) != trust);
        Ok(expires)
    }
}

fn with_suffix(p: &std::path::Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".new");
    PathBuf::from(s)
}

/// Completes a server certificate write a crash interrupted: the key was renamed into place
/// but not the certificate (finish it), or neither was (drop the new files).
fn finish_interrupted_write(data: &DataDir) {
    let (crt, key) = (data.server_cert(), data.server_key());
    let (crt_new, key_new) = (with_suffix(&crt), with_suffix(&key));
    if crt_new.exists() && !key_new.exists() {
        let _ = std::fs::rename(&crt_new, &crt);
    } else {
        let _ = std::fs::remove_file(&crt_new);
        let _ = std::fs::remove_file(&key_new);
    }
}

fn build(
    data: &DataDir,
    idle_timeout: std::time::Duration,
    pins: &pki::Pins,
    link: &Link,
) -> Result<State, CertError> {
    let pki_path = data.root().join("pki.toml");
    let file: PkiFile = if pki_path.exists() {
        toml::from_str(&read_string(&pki_path).map_err(DataDirError::from)?).map_err(|e| {
            damaged(
                pki_path.clone(),
                format!(
                    "{e}\n(written by `admin ca roll-over`: restore it from a backup; it names the \
                     issuing CA and the trusted ones by the stems of their .crt/.key files here)"
                ),
            )
        })?
    } else {
        PkiFile::default()
    };
    let mut names = vec![file.issuing.clone()];
    names.extend(file.trusted.iter().filter(|n| **n != file.issuing).cloned());
    let mut cas = Vec::new();
    for name in names {
        let crt = data.root().join(format!("{name}.crt"));
        let key = data.root().join(format!("{name}.key"));
        let ca = Ca::load(
            &read_string(&crt).map_err(DataDirError::from)?,
            &read_string(&key).map_err(DataDirError::from)?,
        )
        .map_err(|e| damaged(crt.clone(), e))?;
        let der = ca.cert_der().clone();
        cas.push(NamedCa {
            name,
            sha256: fp_hex(&pki::fingerprint(&der)),
            expires_at: pki::validity(&der)?.1,
            ca,
        });
    }
    let server = data.load_server_identity()?;
    let trusted: Vec<CertificateDer<'static>> =
        cas.iter().map(|c| c.ca.cert_der().clone()).collect();
    let tls = |e: &dyn std::fmt::Display| damaged(data.server_cert(), e);
    // Devices under the deployment CA (a certificate is optional for enrollment only), and
    // neighbour servers by their pinned link certificates.
    let mut outer = pki::server_config_with_pins(
        &server,
        &trusted,
        &[
            alpn::AGENT,
            alpn::FILES,
            alpn::GATEWAY,
            alpn::ADMIN,
            alpn::ENROLL,
            alpn::PEER,
        ],
        pins.clone(),
        (&link.identity, alpn::PEER),
    )?;
    outer.max_early_data_size = 0;
    let quic =
        quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(outer)).map_err(|e| tls(&e))?;
    let mut listener = quinn::ServerConfig::with_crypto(Arc::new(quic));
    listener.transport_config(outpost_net::transport::listener(idle_timeout));
    let mut session = pki::server_config(
        &server,
        &trusted,
        &[alpn::INNER_SESSION],
        ClientAuth::Required,
    )?;
    // Relayed sessions resume (TLS 1.3 tickets): an agent reconnecting through a gateway skips
    // both certificate signatures and chain verifications. The tickets are stateless (nothing
    // kept per device here), encrypted under keys that rotate every 6 hours and are new
    // whenever this state is rebuilt — server certificate rotation, CA roll-over — so a ticket
    // never outlives the trust it was issued under. The device registry is still consulted
    // for every session, and an expired certificate is refused after a resumption too
    // (`uplink::serve_relayed`).
    session.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| tls(&e))?;
    session.send_tls13_tickets = 1;
    let enroll = pki::server_config(&server, &trusted, &[alpn::ENROLL], ClientAuth::None)?;
    let dmz_client = crate::dmz::client_config(&server, &trusted).map_err(|e| tls(&e))?;
    let server_ca_sha256 = server
        .chain
        .get(1)
        .map(|c| pki::fingerprint(c))
        .unwrap_or_else(|| pki::fingerprint(cas[0].ca.cert_der()));
    Ok(State {
        server_expires_at: pki::validity(server.leaf())?.1,
        trust_sha256: pki::trust_sha256(&trusted),
        server_ca_sha256,
        listener,
        session_tls: TlsAcceptor::from(Arc::new(session)),
        enroll_tls: TlsAcceptor::from(Arc::new(enroll)),
        dmz_client,
        server,
        cas,
    })
}
