//! The admin client: dials the server with the admin certificate (`outpost-admin/1`) and runs
//! one request per stream.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use outpost_net::{endpoint, refuse, stream, transport};
use outpost_proto::alpn;
use outpost_proto::error::{RefusalCode, Refused};
use outpost_proto::pb::admin::{AdminRequest, admin_request::Op, admin_response::Result as R};
use outpost_proto::pb::v1::{Role, envelope::Msg};
use outpost_proto::pki::{self, Identity, IdentityPem, Trust};

use crate::datadir::AdminBundle;

/// A connection to a server as an administrator.
#[derive(Debug)]
pub struct AdminClient {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

/// An admin request the server refused.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AdminFailure {
    /// Refusal code.
    pub code: RefusalCode,
    /// What the server said.
    pub message: String,
}

impl AdminClient {
    /// Connects with the bundle in `dir` (`admin.toml`, `cert.pem`, `key.pem`, `ca.pem`).
    pub async fn from_bundle(dir: &Path, server: Option<&str>) -> anyhow::Result<AdminClient> {
        let read = |f: &str| outpost_net::fsutil::read_string(&dir.join(f));
        let bundle: AdminBundle = toml::from_str(&read("admin.toml")?)
            .with_context(|| format!("{}/admin.toml is invalid", dir.display()))?;
        let id = Identity::from_pem(
            &IdentityPem {
                chain_pem: read("cert.pem")?,
                key_pem: read("key.pem")?,
            },
            "admin certificate",
        )?;
        let ca = pki::certs_from_pem(&read("ca.pem")?, "admin ca.pem")?.remove(0);
        let target = server.unwrap_or(&bundle.server);
        let addr = endpoint::resolve(target).await?;
        Self::connect(&id, ca, addr).await
    }

    /// Connects with an identity.
    pub async fn connect(
        id: &Identity,
        ca: rustls_pki_types::CertificateDer<'static>,
        addr: SocketAddr,
    ) -> anyhow::Result<AdminClient> {
        let tls = pki::client_config(Some(id), &Trust::Ca(ca), &[alpn::ADMIN])?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
        cfg.transport_config(transport::client(
            Duration::from_secs(10),
            Duration::from_secs(30),
        ));
        let ep = endpoint::client_endpoint(addr)?;
        let conn = ep
            .connect_with(cfg, addr, pki::SERVER_NAME)?
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot reach the server at {addr}: {}", refuse::explain(&e))
            })?;
        Ok(AdminClient {
            _endpoint: ep,
            conn,
        })
    }

    /// Runs one request. A refusal comes back as an `AdminFailure` error.
    pub async fn request(&self, op: Op) -> anyhow::Result<R> {
        let (send, recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| anyhow::anyhow!("{}", refuse::explain(&e)))?;
        let mut f = stream::framed(stream::bi(send, recv), 64 << 20);
        f.send(Msg::Hello(outpost_proto::session::hello(
            Role::Admin,
            &format!("outpost-admin {}", outpost_proto::SOFTWARE_VERSION),
            &[],
        )))
        .await?;
        f.send(Msg::AdminRequest(AdminRequest { op: Some(op) }))
            .await?;
        let mut acked = false;
        loop {
            let msg = match f.next().await {
                Some(m) => m?,
                None => {
                    let why = self
                        .conn
                        .close_reason()
                        .map(|e| refuse::explain(&e))
                        .unwrap_or_else(|| "the server closed the stream without an answer".into());
                    anyhow::bail!("{why}");
                }
            };
            match msg {
                Msg::HelloAck(_) if !acked => acked = true,
                Msg::Refusal(r) => return Err(Refused(r).into()),
                Msg::AdminResponse(resp) => {
                    return match resp.result {
                        Some(R::Error(e)) => Err(AdminFailure {
                            code: RefusalCode::try_from(e.code).unwrap_or(RefusalCode::Unspecified),
                            message: e.message,
                        }
                        .into()),
                        Some(r) => Ok(r),
                        None => anyhow::bail!("the server sent an empty answer (newer server?)"),
                    };
                }
                other => anyhow::bail!(
                    "unexpected {} from the server",
                    outpost_proto::session::msg_name(&other)
                ),
            }
        }
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.conn.close(quinn::VarInt::from_u32(0), b"done");
    }
}
