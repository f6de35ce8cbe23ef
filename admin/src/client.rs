//! The admin client: dials the server with the admin certificate (`outpost-admin/1`) and runs
//! one request per stream, each opened with the control-stream machine
//! ([`outpost_proto::control`]): hello, then the request pipelined behind it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use outpost_net::{endpoint, refuse, stream, transport};
use outpost_proto::alpn;
use outpost_proto::control::{Channel, ControlError, Opener, OpenerEvent};
use outpost_proto::error::{RefusalCode, Refused};
use outpost_proto::pb::admin::{AdminRequest, admin_request::Op, admin_response::Result as R};
use outpost_proto::pb::v1::envelope::Msg;
use outpost_proto::pki::{self, Identity, Trust};

use crate::bundle::{Bundle, BundleError};

/// Largest answer accepted (a key export, a long device list).
const MAX_ANSWER: usize = 64 << 20;

/// Why an admin request did not produce a result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The admin bundle is missing or damaged.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The server could not be reached.
    #[error("cannot reach the server at {addr}: {why}")]
    Unreachable {
        /// Where.
        addr: String,
        /// Why.
        why: String,
    },
    /// The server refused the connection or stream (revoked admin, incompatible version …).
    #[error("{0}")]
    Refused(Refused),
    /// The server refused this request, saying why.
    #[error("{message}")]
    Failed {
        /// Refusal code.
        code: RefusalCode,
        /// What the server said.
        message: String,
    },
    /// The exchange broke off or the answer made no sense.
    #[error("{0}")]
    Protocol(String),
    /// This side failed (TLS set-up, a local file).
    #[error("{0}")]
    Local(String),
}

impl From<ControlError> for AdminError {
    fn from(e: ControlError) -> AdminError {
        match e {
            ControlError::Refused(r) => AdminError::Refused(r),
            other => AdminError::Protocol(other.to_string()),
        }
    }
}

/// A connection to a server as an administrator.
#[derive(Debug)]
pub struct AdminClient {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

impl AdminClient {
    /// Connects with the bundle in `dir`, to `server` if given, else to the bundle's address.
    pub async fn from_bundle(dir: &Path, server: Option<&str>) -> Result<AdminClient, AdminError> {
        let bundle = Bundle::load(dir)?;
        let target = server.unwrap_or(&bundle.server);
        let addr = endpoint::resolve(target)
            .await
            .map_err(|e| AdminError::Unreachable {
                addr: target.to_owned(),
                why: e.to_string(),
            })?;
        Self::connect(&bundle.identity, bundle.cas, addr).await
    }

    /// Connects with an identity.
    pub async fn connect(
        id: &Identity,
        cas: Vec<rustls_pki_types::CertificateDer<'static>>,
        addr: SocketAddr,
    ) -> Result<AdminClient, AdminError> {
        let local = |e: &dyn std::fmt::Display| AdminError::Local(e.to_string());
        let tls =
            pki::client_config(Some(id), &Trust::Ca(cas), &[alpn::ADMIN]).map_err(|e| local(&e))?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
            .map_err(|e| local(&e))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
        cfg.transport_config(transport::client(
            Duration::from_secs(10),
            Duration::from_secs(30),
        ));
        let ep = endpoint::client_endpoint(addr).map_err(|e| local(&e))?;
        let unreachable = |why: String| AdminError::Unreachable {
            addr: addr.to_string(),
            why,
        };
        let conn = ep
            .connect_with(cfg, addr, pki::SERVER_NAME)
            .map_err(|e| unreachable(refuse::explain_connect(&e)))?
            .await
            .map_err(|e| match refuse::refusal_of(&e) {
                Some(r) => AdminError::Refused(r),
                None => unreachable(refuse::explain(&e)),
            })?;
        Ok(AdminClient {
            _endpoint: ep,
            conn,
        })
    }

    /// Runs one request. A refusal of the request comes back as [`AdminError::Failed`].
    pub async fn request(&self, op: Op) -> Result<R, AdminError> {
        let (send, recv) = self.conn.open_bi().await.map_err(|e| self.closed(&e))?;
        let mut f = stream::framed(stream::bi(send, recv), MAX_ANSWER);
        let mut sm = Opener::new(
            Channel::Admin,
            &format!("outpost-admin {}", outpost_proto::SOFTWARE_VERSION),
        );
        sm.send(Msg::AdminRequest(AdminRequest { op: Some(op) }))?;
        loop {
            while let Some(m) = sm.poll_transmit() {
                f.feed(m)
                    .await
                    .map_err(|e| AdminError::Protocol(format!("cannot send the request: {e}")))?;
            }
            f.flush()
                .await
                .map_err(|e| AdminError::Protocol(format!("cannot send the request: {e}")))?;
            while let Some(ev) = sm.poll_event() {
                if let OpenerEvent::Message(m) = ev
                    && let Msg::AdminResponse(resp) = *m
                {
                    return match resp.result {
                        Some(R::Error(e)) => Err(AdminError::Failed {
                            code: RefusalCode::try_from(e.code).unwrap_or(RefusalCode::Unspecified),
                            message: e.message,
                        }),
                        Some(r) => Ok(r),
                        None => Err(AdminError::Protocol(
                            "the server sent an empty answer (is it newer than this tool?)".into(),
                        )),
                    };
                }
            }
            let msg = match f.next().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(AdminError::Protocol(e.to_string())),
                None => {
                    return Err(match self.conn.close_reason() {
                        Some(e) => self.closed(&e),
                        None => AdminError::Protocol(
                            "the server closed the stream without an answer".into(),
                        ),
                    });
                }
            };
            sm.handle_message(msg)?;
        }
    }

    fn closed(&self, e: &quinn::ConnectionError) -> AdminError {
        match refuse::refusal_of(e) {
            Some(r) => AdminError::Refused(r),
            None => AdminError::Unreachable {
                addr: self.conn.remote_address().to_string(),
                why: refuse::explain(e),
            },
        }
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.conn.close(quinn::VarInt::from_u32(0), b"done");
    }
}
