//! A device's identity on disk and how it gets one: enrollment with a token (S6).
//!
//! ```text
//! <data>/identity/cert.pem     certificate chain issued by the server's CA
//! <data>/identity/key.pem      private key, generated here, never sent anywhere (0600)
//! <data>/identity/ca.pem       the deployment CA
//! <data>/identity/device.toml  device id, group, grant public key
//! ```
//!
//! Enrollment dials the server directly (`outpost-enroll/1`), or a gateway, which relays the
//! request inside an inner TLS session to the server. Either way the device trusts the server
//! only through the CA fingerprint carried in the token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use outpost_proto::alpn;
use outpost_proto::error::Refused;
use outpost_proto::pb::v1::{EnrollRequest, Inventory, Role, envelope::Msg};
use outpost_proto::pki::{self, Identity, IdentityPem, Trust};
use outpost_proto::token::Token;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};

use crate::fsutil::{ReadError, read_string, write_atomic};
use crate::{endpoint, refuse, stream, transport};

/// Why a stored identity could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A file is damaged.
    #[error("{}: {what} (delete the identity directory and enroll again with a new token)", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A file could not be written.
    #[error("cannot store the identity: {0}")]
    Write(#[from] std::io::Error),
}

/// Why an enrollment failed, sorted by what the user can do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// The server refused (token unknown, expired, used up, for another role …): final.
    #[error("enrollment refused: {0}")]
    Refused(Refused),
    /// The server or gateway could not be reached: worth retrying.
    #[error("cannot reach {addr} to enroll: {why}")]
    Unreachable {
        /// Where.
        addr: String,
        /// Why.
        why: String,
    },
    /// The peer answered something that is not an enrollment answer.
    #[error("enrollment failed: {0}")]
    Protocol(String),
    /// The answer is not from the deployment the token names.
    #[error(
        "the server's CA does not match the CA fingerprint in the enrollment token (the token is from another deployment, or the address reaches another server)"
    )]
    WrongCa,
    /// This side failed (key generation, TLS setup, storing the identity).
    #[error("enrollment failed on this device: {0}")]
    Local(String),
}

impl EnrollError {
    /// Whether retrying later, or on another path, could help: the path was unreachable or
    /// broke off, or the server said to come back later (overloaded, restarting). A refusal of
    /// the token or the device, a foreign CA or a local failure is final.
    pub fn is_retryable(&self) -> bool {
        use outpost_proto::error::Fault;
        match self {
            EnrollError::Unreachable { .. } | EnrollError::Protocol(_) => true,
            EnrollError::Refused(r) => matches!(
                r.code().fault(),
                Fault::Unavailable | Fault::Timeout | Fault::Io
            ),
            EnrollError::WrongCa | EnrollError::Local(_) => false,
        }
    }
}

/// An enrolled device's credentials.
#[derive(Debug, Clone)]
pub struct DeviceIdentity {
    /// Device id assigned by the server.
    pub device_id: String,
    /// Group at enrollment.
    pub group: String,
    /// Certificate chain and key.
    pub identity: Identity,
    /// The deployment's CA certificates, the issuing one first (two during a roll-over, S9).
    pub cas: Vec<CertificateDer<'static>>,
    /// Ed25519 key that signs grants.
    pub grant_public_key: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceFile {
    device_id: String,
    group: String,
    grant_public_key: String,
}

fn dir(data: &Path) -> PathBuf {
    data.join("identity")
}

impl DeviceIdentity {
    /// Loads the identity, or `None` if the device has not enrolled yet.
    pub fn load(data: &Path) -> Result<Option<DeviceIdentity>, IdentityError> {
        let d = dir(data);
        if !d.join("device.toml").exists() {
            return Ok(None);
        }
        let damaged = |file: &str, what: String| IdentityError::Damaged {
            path: d.join(file),
            what,
        };
        let file: DeviceFile = toml::from_str(&read_string(&d.join("device.toml"))?)
            .map_err(|e| damaged("device.toml", e.to_string()))?;
        // A renewal that a crash interrupted before it was installed (S9): the complete new
        // identity is in renewed.pem. Read-only here (`status` reads while the device runs);
        // the device installs it at start, `complete_renewal`.
        let renewed = d.join("renewed.pem");
        let identity = if renewed.exists() {
            let text = read_string(&renewed)?;
            Identity::from_pem(
                &IdentityPem {
                    chain_pem: text.clone(),
                    key_pem: text,
                },
                &renewed.display().to_string(),
            )
            .map_err(|e| damaged("renewed.pem", e.to_string()))?
        } else {
            Identity::from_pem(
                &IdentityPem {
                    chain_pem: read_string(&d.join("cert.pem"))?,
                    key_pem: read_string(&d.join("key.pem"))?,
                },
                &d.join("cert.pem").display().to_string(),
            )
            .map_err(|e| damaged("cert.pem", e.to_string()))?
        };
        let cas = pki::certs_from_pem(&read_string(&d.join("ca.pem"))?, "identity/ca.pem")
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| damaged("ca.pem", "no certificate in it".into()))?;
        let grant_public_key = base64::engine::general_purpose::STANDARD
            .decode(&file.grant_public_key)
            .map_err(|e| damaged("device.toml", format!("grant_public_key: {e}")))?;
        Ok(Some(DeviceIdentity {
            device_id: file.device_id,
            group: file.group,
            identity,
            cas,
            grant_public_key,
        }))
    }

    /// Stores the identity; device.toml is written last, so a crash leaves "not enrolled".
    pub fn save(&self, data: &Path, key_pem: &str) -> Result<(), IdentityError> {
        let d = dir(data);
        let chain: String = self
            .identity
            .chain
            .iter()
            .map(|c| pki::cert_to_pem(c))
            .collect();
        write_atomic(&d.join("key.pem"), key_pem.as_bytes(), true)?;
        write_atomic(&d.join("cert.pem"), chain.as_bytes(), false)?;
        self.save_trust(data)?;
        let file = DeviceFile {
            device_id: self.device_id.clone(),
            group: self.group.clone(),
            grant_public_key: base64::engine::general_purpose::STANDARD
                .encode(&self.grant_public_key),
        };
        let text = toml::to_string(&file).expect("device file serializes");
        write_atomic(&d.join("device.toml"), text.as_bytes(), false)?;
        Ok(())
    }
}

impl DeviceIdentity {
    /// Stores the CA certificates to trust (S9).
    pub fn save_trust(&self, data: &Path) -> Result<(), IdentityError> {
        let text: String = self.cas.iter().map(|c| pki::cert_to_pem(c)).collect();
        write_atomic(&dir(data).join("ca.pem"), text.as_bytes(), false)?;
        Ok(())
    }

    /// The hash of the trusted CA set, as the server compares it.
    pub fn trust_sha256(&self) -> [u8; 32] {
        pki::trust_sha256(&self.cas)
    }

    /// When this device's certificate is due for renewal: two thirds of its lifetime, or now
    /// when the issuing CA (the first trusted one) did not issue it (a roll-over).
    pub fn renewal_due(&self) -> i64 {
        let leaf = self.identity.leaf();
        if let Some(issuing) = self.cas.first()
            && !pki::issued_by(leaf, issuing)
        {
            return 0;
        }
        pki::renewal_due(leaf).unwrap_or(0)
    }

    /// The certificate's expiry, Unix seconds.
    pub fn expires_at(&self) -> i64 {
        pki::validity(self.identity.leaf())
            .map(|v| v.1)
            .unwrap_or(0)
    }

    /// Takes a renewed certificate for the key pair `key_pem` (S9): stored in one file first,
    /// so a crash leaves either the old identity or the complete new one, then installed.
    pub fn renewed(
        &mut self,
        data: &Path,
        key_pem: &str,
        cert_der: Vec<u8>,
        cas: Vec<CertificateDer<'static>>,
    ) -> Result<(), IdentityError> {
        let d = dir(data);
        let issuing = cas
            .iter()
            .find(|c| pki::issued_by(&cert_der, c))
            .cloned()
            .ok_or_else(|| IdentityError::Damaged {
                path: d.join("renewed.pem"),
                what: "the renewed certificate was not issued by any CA the server sent".into(),
            })?;
        let text = format!(
            "{key_pem}{}{}",
            pki::cert_to_pem(&cert_der),
            pki::cert_to_pem(&issuing)
        );
        let identity = Identity::from_pem(
            &IdentityPem {
                chain_pem: text.clone(),
                key_pem: text.clone(),
            },
            "renewed certificate",
        )
        .map_err(|e| IdentityError::Damaged {
            path: d.join("renewed.pem"),
            what: e.to_string(),
        })?;
        write_atomic(&d.join("renewed.pem"), text.as_bytes(), true)?;
        if !cas.is_empty() {
            self.cas = cas;
            self.save_trust(data)?;
        }
        install(&d, &text, &identity)?;
        self.identity = identity;
        Ok(())
    }
}

/// Installs a renewal a crash interrupted (S9). The device calls it at start, before `load`.
pub fn complete_renewal(data: &Path) -> Result<(), IdentityError> {
    let d = dir(data);
    if !d.join("renewed.pem").exists() {
        return Ok(());
    }
    let text = read_string(&d.join("renewed.pem"))?;
    let id = Identity::from_pem(
        &IdentityPem {
            chain_pem: text.clone(),
            key_pem: text.clone(),
        },
        "renewed.pem",
    )
    .map_err(|e| IdentityError::Damaged {
        path: d.join("renewed.pem"),
        what: e.to_string(),
    })?;
    install(&d, &text, &id)
}

/// Installs a renewed identity (`text`, the content of `renewed.pem`: key then chain) as
/// key.pem and cert.pem, then removes `renewed.pem`.
fn install(d: &Path, text: &str, id: &Identity) -> Result<(), IdentityError> {
    let key_start = text.find("-----BEGIN PRIVATE KEY-----").unwrap_or(0);
    let key_end = text
        .find("-----END PRIVATE KEY-----")
        .map(|i| i + "-----END PRIVATE KEY-----\n".len())
        .unwrap_or(0)
        .min(text.len());
    let chain: String = id.chain.iter().map(|c| pki::cert_to_pem(c)).collect();
    write_atomic(
        &d.join("key.pem"),
        &text.as_bytes()[key_start..key_end],
        true,
    )?;
    write_atomic(&d.join("cert.pem"), chain.as_bytes(), false)?;
    std::fs::remove_file(d.join("renewed.pem"))?;
    Ok(())
}

/// Where to enroll.
#[derive(Debug, Clone, Copy)]
pub enum EnrollVia {
    /// The server, directly.
    Server(SocketAddr),
    /// A gateway, which relays to the server.
    Gateway(SocketAddr),
}

/// Enrolls with a token and stores the identity in `data`.
pub async fn enroll(
    data: &Path,
    via: EnrollVia,
    token: &Token,
    role: Role,
    inventory: Inventory,
) -> Result<DeviceIdentity, EnrollError> {
    let local = |e: &dyn std::fmt::Display| EnrollError::Local(e.to_string());
    let hostname = if inventory.hostname.is_empty() {
        "device".to_owned()
    } else {
        inventory.hostname.clone()
    };
    let csr = pki::generate_csr(&hostname).map_err(|e| local(&e))?;
    let req = EnrollRequest {
        token: token.to_text(),
        csr_der: csr.csr_der.clone(),
        inventory: Some(inventory),
        role: role as i32,
    };
    let trust = Trust::PinnedCa(token.ca_sha256);
    let (addr, name) = match via {
        EnrollVia::Server(a) => (a, pki::SERVER_NAME),
        EnrollVia::Gateway(a) => (a, pki::GATEWAY_NAME),
    };
    let unreachable = |why: String| EnrollError::Unreachable {
        addr: addr.to_string(),
        why,
    };
    let tls = pki::client_config(None, &trust, &[alpn::ENROLL]).map_err(|e| local(&e))?;
    let quic =
        quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).map_err(|e| local(&e))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport::client(
        Duration::from_secs(10),
        Duration::from_secs(30),
    ));
    let ep = endpoint::client_endpoint(addr).map_err(|e| local(&e))?;
    let connecting = ep
        .connect_with(cfg, addr, name)
        .map_err(|e| unreachable(refuse::explain_connect(&e)))?;
    let conn = match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Err(match refuse::refusal_of(&e) {
                Some(r) => EnrollError::Refused(r),
                None => unreachable(refuse::explain(&e)),
            });
        }
        Err(_) => return Err(unreachable("no answer within 10s".into())),
    };
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| unreachable(refuse::explain(&e)))?;
    let resp = match via {
        EnrollVia::Server(_) => exchange(stream::bi(send, recv), req).await,
        EnrollVia::Gateway(_) => {
            // The gateway relays; the request travels inside TLS to the server itself.
            let inner = pki::client_config(None, &trust, &[alpn::ENROLL]).map_err(|e| local(&e))?;
            let sni = ServerName::try_from(pki::SERVER_NAME).expect("static name");
            match tokio_rustls::TlsConnector::from(Arc::new(inner))
                .connect(sni, stream::bi(send, recv))
                .await
            {
                Ok(tls) => exchange(tls, req).await,
                Err(e) => Err(unreachable(format!(
                    "inner TLS to the server through the gateway failed: {e}"
                ))),
            }
        }
    };
    conn.close(quinn::VarInt::from_u32(0), b"enrolled");
    let resp = resp?;
    // The issuing CA first, then any other the deployment trusts (S9). The token pins the
    // CA of the server's chain, which must be among them.
    let mut cas: Vec<CertificateDer<'static>> = resp
        .trusted_ca_der
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    if cas.is_empty() {
        cas.push(CertificateDer::from(resp.ca_der));
    }
    if !cas.iter().any(|c| pki::fingerprint(c) == token.ca_sha256) {
        return Err(EnrollError::WrongCa);
    }
    let ca = cas
        .iter()
        .find(|c| pki::issued_by(&resp.certificate_der, c))
        .cloned()
        .ok_or_else(|| {
            EnrollError::Protocol("the issued certificate names no CA the server sent".into())
        })?;
    let chain_pem = format!(
        "{}{}",
        pki::cert_to_pem(&resp.certificate_der),
        pki::cert_to_pem(&ca)
    );
    let identity = Identity::from_pem(
        &IdentityPem {
            chain_pem,
            key_pem: csr.key_pem.clone(),
        },
        "issued certificate",
    )
    .map_err(|e| EnrollError::Protocol(format!("the issued certificate is unusable: {e}")))?;
    let id = DeviceIdentity {
        device_id: resp.device_id,
        group: resp.group,
        identity,
        cas,
        grant_public_key: resp.grant_public_key,
    };
    id.save(data, &csr.key_pem).map_err(|e| local(&e))?;
    Ok(id)
}

async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    io: S,
    req: EnrollRequest,
) -> Result<outpost_proto::pb::v1::EnrollResponse, EnrollError> {
    let mut f = stream::framed(io, 1 << 20);
    f.send(Msg::EnrollRequest(req))
        .await
        .map_err(|e| EnrollError::Protocol(format!("cannot send the request: {e}")))?;
    match tokio::time::timeout(Duration::from_secs(30), f.next()).await {
        Ok(Some(Ok(Msg::EnrollResponse(r)))) => Ok(r),
        Ok(Some(Ok(Msg::Refusal(r)))) => Err(EnrollError::Refused(Refused(r))),
        Ok(Some(Ok(other))) => Err(EnrollError::Protocol(format!(
            "unexpected {} during enrollment",
            outpost_proto::session::msg_name(&other)
        ))),
        Ok(Some(Err(e))) => Err(EnrollError::Protocol(e.to_string())),
        Ok(None) => Err(EnrollError::Protocol(
            "the server closed the enrollment stream without an answer".into(),
        )),
        Err(_) => Err(EnrollError::Protocol(
            "no enrollment answer within 30s".into(),
        )),
    }
}

/// What a device reports about itself.
pub fn inventory(
    hostname: Option<&str>,
    machine_id: Option<&str>,
    data: &Path,
    software: &str,
) -> Inventory {
    let hostname = hostname
        .map(str::to_owned)
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let machine_id = machine_id
        .map(str::to_owned)
        .unwrap_or_else(|| local_machine_id(data));
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_owned())
            })
        })
        .unwrap_or_else(|| std::env::consts::OS.to_owned());
    Inventory {
        hostname,
        os,
        machine_id,
        addresses: crate::hostinfo::local_ipv4()
            .iter()
            .map(|a| a.to_string())
            .collect(),
        agent_version: software.to_owned(),
        macs: crate::hostinfo::macs(),
    }
}

/// The machine identity (S7): `/etc/machine-id`, or an id kept in the data directory.
fn local_machine_id(data: &Path) -> String {
    if let Ok(id) = std::fs::read_to_string("/etc/machine-id") {
        let id = id.trim();
        if !id.is_empty() {
            return id.to_owned();
        }
    }
    let path = data.join("machine-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        return id.trim().to_owned();
    }
    let id = format!("{:032x}", rand::random::<u128>());
    let _ = write_atomic(&path, id.as_bytes(), false);
    id
}
