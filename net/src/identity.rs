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

use anyhow::Context;
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use outpost_proto::alpn;
use outpost_proto::error::Refused;
use outpost_proto::pb::v1::{EnrollRequest, Inventory, Role, envelope::Msg};
use outpost_proto::pki::{self, Identity, IdentityPem, Trust};
use outpost_proto::token::Token;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};

use crate::fsutil::{read_string, write_atomic};
use crate::{endpoint, refuse, stream, transport};

/// An enrolled device's credentials.
#[derive(Debug, Clone)]
pub struct DeviceIdentity {
    /// Device id assigned by the server.
    pub device_id: String,
    /// Group at enrollment.
    pub group: String,
    /// Certificate chain and key.
    pub identity: Identity,
    /// The deployment CA.
    pub ca: CertificateDer<'static>,
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
    pub fn load(data: &Path) -> anyhow::Result<Option<DeviceIdentity>> {
        let d = dir(data);
        if !d.join("device.toml").exists() {
            return Ok(None);
        }
        let file: DeviceFile = toml::from_str(&read_string(&d.join("device.toml"))?)
            .with_context(|| format!("{}/device.toml is damaged", d.display()))?;
        let identity = Identity::from_pem(
            &IdentityPem {
                chain_pem: read_string(&d.join("cert.pem"))?,
                key_pem: read_string(&d.join("key.pem"))?,
            },
            &d.join("cert.pem").display().to_string(),
        )?;
        let ca =
            pki::certs_from_pem(&read_string(&d.join("ca.pem"))?, "identity/ca.pem")?.remove(0);
        let grant_public_key = base64::engine::general_purpose::STANDARD
            .decode(&file.grant_public_key)
            .context("device.toml: grant_public_key")?;
        Ok(Some(DeviceIdentity {
            device_id: file.device_id,
            group: file.group,
            identity,
            ca,
            grant_public_key,
        }))
    }

    /// Stores the identity; device.toml is written last, so a crash leaves "not enrolled".
    pub fn save(&self, data: &Path, key_pem: &str) -> anyhow::Result<()> {
        let d = dir(data);
        let chain: String = self
            .identity
            .chain
            .iter()
            .map(|c| pki::cert_to_pem(c))
            .collect();
        write_atomic(&d.join("key.pem"), key_pem.as_bytes(), true)?;
        write_atomic(&d.join("cert.pem"), chain.as_bytes(), false)?;
        write_atomic(
            &d.join("ca.pem"),
            pki::cert_to_pem(&self.ca).as_bytes(),
            false,
        )?;
        let file = DeviceFile {
            device_id: self.device_id.clone(),
            group: self.group.clone(),
            grant_public_key: base64::engine::general_purpose::STANDARD
                .encode(&self.grant_public_key),
        };
        write_atomic(
            &d.join("device.toml"),
            toml::to_string(&file)?.as_bytes(),
            false,
        )?;
        Ok(())
    }
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
) -> anyhow::Result<DeviceIdentity> {
    let hostname = if inventory.hostname.is_empty() {
        "device".to_owned()
    } else {
        inventory.hostname.clone()
    };
    let csr = pki::generate_csr(&hostname)?;
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
    let tls = pki::client_config(None, &trust, &[alpn::ENROLL])?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport::client(
        Duration::from_secs(10),
        Duration::from_secs(30),
    ));
    let ep = endpoint::client_endpoint(addr)?;
    let conn = match tokio::time::timeout(
        Duration::from_secs(10),
        ep.connect_with(cfg, addr, name)?,
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => anyhow::bail!("cannot reach {addr} to enroll: {}", refuse::explain(&e)),
        Err(_) => anyhow::bail!("cannot reach {addr} to enroll: no answer within 10s"),
    };
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| anyhow::anyhow!("{}", refuse::explain(&e)))?;
    let resp = match via {
        EnrollVia::Server(_) => exchange(stream::bi(send, recv), req).await,
        EnrollVia::Gateway(_) => {
            // The gateway relays; the request travels inside TLS to the server itself.
            let inner = pki::client_config(None, &trust, &[alpn::ENROLL])?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(inner))
                .connect(
                    ServerName::try_from(pki::SERVER_NAME)?,
                    stream::bi(send, recv),
                )
                .await
                .context("inner TLS to the server through the gateway failed")?;
            exchange(tls, req).await
        }
    };
    conn.close(quinn::VarInt::from_u32(0), b"enrolled");
    let resp = resp?;
    let ca = CertificateDer::from(resp.ca_der);
    anyhow::ensure!(
        pki::fingerprint(&ca) == token.ca_sha256,
        "the server answered with a CA that does not match the token"
    );
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
    )?;
    let id = DeviceIdentity {
        device_id: resp.device_id,
        group: resp.group,
        identity,
        ca,
        grant_public_key: resp.grant_public_key,
    };
    id.save(data, &csr.key_pem)?;
    Ok(id)
}

async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    io: S,
    req: EnrollRequest,
) -> anyhow::Result<outpost_proto::pb::v1::EnrollResponse> {
    let mut f = stream::framed(io, 1 << 20);
    f.send(Msg::EnrollRequest(req)).await?;
    match tokio::time::timeout(Duration::from_secs(30), f.next()).await {
        Ok(Some(Ok(Msg::EnrollResponse(r)))) => Ok(r),
        Ok(Some(Ok(Msg::Refusal(r)))) => {
            Err(anyhow::Error::new(Refused(r)).context("enrollment refused"))
        }
        Ok(Some(Ok(other))) => anyhow::bail!(
            "unexpected {} during enrollment",
            outpost_proto::session::msg_name(&other)
        ),
        Ok(Some(Err(e))) => Err(e.into()),
        Ok(None) => anyhow::bail!("the server closed the enrollment stream without an answer"),
        Err(_) => anyhow::bail!("no enrollment answer within 30s"),
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
        addresses: vec![],
        agent_version: software.to_owned(),
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
