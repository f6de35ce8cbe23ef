//! Enrollment (S6): a device without a certificate presents a token and a CSR; the server
//! issues its certificate. Served on `outpost-enroll/1` connections (no client certificate)
//! and on enrollment streams relayed by a gateway. The token is never logged beyond its id.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use outpost_net::stream;
use outpost_proto::error::{RefusalCode, Refused, refusal};
use outpost_proto::pb::v1::{EnrollRequest, EnrollResponse, Role, envelope::Msg};
use outpost_proto::pki::CertRole;
use outpost_proto::token::Token;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info, warn};

use crate::certs::Certs;
use crate::node::Node;
use crate::store::NewDevice;

/// Identity issuing: the CAs and the server's certificate (S9), and the inner TLS the server
/// terminates for sessions and enrollments relayed by gateways (S1).
#[derive(Debug)]
pub struct Enrollment {
    certs: Certs,
}

impl Enrollment {
    /// Issuing from these certificates.
    pub fn new(certs: Certs) -> Enrollment {
        Enrollment { certs }
    }

    /// The certificates.
    pub fn certs(&self) -> &Certs {
        &self.certs
    }

    /// SHA-256 of the CA in the server's chain (goes into tokens, which pin it).
    pub fn ca_sha256(&self) -> [u8; 32] {
        self.certs.current().server_ca_sha256
    }

    /// Inner TLS for relayed agent sessions.
    pub fn session_tls(&self) -> TlsAcceptor {
        self.certs.current().session_tls.clone()
    }

    /// Inner TLS for relayed enrollments.
    pub fn enroll_tls(&self) -> TlsAcceptor {
        self.certs.current().enroll_tls.clone()
    }
}

/// Serves an enrollment connection: each bidi stream carries one request.
pub async fn serve_connection(node: Arc<Node>, conn: quinn::Connection) {
    loop {
        let (send, recv) = tokio::select! {
            s = conn.accept_bi() => match s { Ok(s) => s, Err(_) => return },
            _ = node.runtime().cancelled() => return,
        };
        let n = node.clone();
        node.runtime()
            .spawn(serve_stream(n, stream::bi(send, recv)).in_current_span());
    }
}

/// Serves one enrollment request on a byte stream.
pub async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(node: Arc<Node>, io: S) {
    let mut f = stream::framed(io, node.config().limits.max_frame);
    let setup = node.config().timing.session_setup_timeout;
    let msg = match tokio::time::timeout(setup, f.next()).await {
        Ok(Some(Ok(m))) => m,
        Ok(Some(Err(e))) => {
            let _ = f
                .send(Msg::Refusal(refusal(RefusalCode::Malformed, e.to_string())))
                .await;
            return;
        }
        _ => return,
    };
    let reply = match msg {
        Msg::EnrollRequest(req) => match enroll(&node, req).await {
            Ok(r) => Msg::EnrollResponse(r),
            Err(r) => {
                warn!(refusal = %r, "enrollment refused");
                Msg::Refusal(r.0)
            }
        },
        other => Msg::Refusal(refusal(
            RefusalCode::UnexpectedMessage,
            format!(
                "expected EnrollRequest on an enrollment stream, got {}",
                outpost_proto::session::msg_name(&other)
            ),
        )),
    };
    let _ = f.send(reply).await;
    let _ = f.close().await;
    debug!("enrollment stream done");
}

async fn enroll(node: &Node, req: EnrollRequest) -> Result<EnrollResponse, Refused> {
    let token = Token::parse(&req.token)
        .map_err(|e| Refused::new(RefusalCode::TokenInvalid, e.to_string()))?;
    let (role, cert_role) = match Role::try_from(req.role) {
        Ok(Role::Agent) => ("agent", CertRole::Agent),
        Ok(Role::Gateway) => ("gateway", CertRole::Gateway),
        _ => {
            return Err(Refused::new(
                RefusalCode::InvalidArgument,
                "only agents and gateways enroll with tokens",
            ));
        }
    };
    let inv = req.inventory.unwrap_or_default();
    let new = NewDevice {
        role: role.into(),
        machine_id: inv.machine_id.clone(),
        hostname: inv.hostname.clone(),
        os: inv.os.clone(),
        agent_version: inv.agent_version.clone(),
        addresses: outpost_proto::discovery::addresses_of(&inv),
    };
    let now = outpost_net::unix_now();
    let csr = req.csr_der;
    let certs = node.enrollment().certs();
    let live = |id: &str| node.sessions().registry().is_online(id) || node.gateways().is_up(id);
    let out = node
        .store()
        .enroll(&token, &new, now, &live, |id| {
            certs
                .issue_device(&csr, cert_role, id, now)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_refusal("enrollment failed in the store"))?;
    match &out.took_over_from {
        Some(old) => warn!(
            device = %out.device_id,
            role,
            token = %token,
            machine = %inv.machine_id,
            host = %inv.hostname,
            old_cert = %old,
            "device record taken over by a new enrollment of the same machine id (S7); see `admin notifications --kind device-taken-over`"
        ),
        None => info!(
            device = %out.device_id,
            role,
            token = %token,
            machine = %inv.machine_id,
            host = %inv.hostname,
            "device enrolled"
        ),
    }
    let trusted = certs.current().trusted_der();
    Ok(EnrollResponse {
        device_id: out.device_id,
        certificate_der: out.cert_der,
        ca_der: trusted.first().map(|c| c.to_vec()).unwrap_or_default(),
        trusted_ca_der: trusted.iter().map(|c| c.to_vec()).collect(),
        grant_public_key: node.licensing().grant_public_key(),
        group: out.group,
    })
}
