//! The agent's certificate and trust at run time (S9): the TLS configurations built from the
//! identity, swapped when the server sends a new CA set or a renewed certificate, and the
//! renewal decision (two thirds of the lifetime, or a certificate the issuing CA did not issue).

use std::sync::{Arc, RwLock};

use outpost_net::identity::DeviceIdentity;
use outpost_net::transport;
use outpost_proto::alpn;
use outpost_proto::pb::v1::{CertRenewed, TrustUpdate};
use outpost_proto::pki::{self, Trust};
use tracing::warn;

use crate::config::AgentConfig;
use crate::node::Shared;

/// The identity and every TLS configuration made from it.
pub(crate) struct Tls {
    pub(crate) identity: DeviceIdentity,
    /// When the certificate is due for renewal (parsed once, not per session turn).
    pub(crate) renewal_due: i64,
    /// Hash of the trusted CA set, sent with every sync.
    pub(crate) trust_sha256: [u8; 32],
    pub(crate) relay_client: quinn::ClientConfig,
    pub(crate) direct_client: quinn::ClientConfig,
    /// Update downloads (D2), from a gateway or the server.
    pub(crate) files_client: quinn::ClientConfig,
    pub(crate) inner_tls: tokio_rustls::TlsConnector,
}

/// Builds the TLS configurations of an identity.
pub(crate) fn build(identity: DeviceIdentity, config: &AgentConfig) -> Result<Tls, String> {
    let trust = Trust::Ca(identity.cas.clone());
    let client_with = |alpn: &[u8], transport| -> Result<quinn::ClientConfig, String> {
        let tls = pki::client_config(Some(&identity.identity), &trust, &[alpn])
            .map_err(|e| e.to_string())?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
            .map_err(|e| e.to_string())?;
        let mut c = quinn::ClientConfig::new(Arc::new(quic));
        c.transport_config(transport);
        Ok(c)
    };
    let (ka, idle) = (config.connect.keep_alive, config.connect.idle_timeout);
    let relay_client = client_with(alpn::RELAY, transport::agent(ka, idle))?;
    let direct_client = client_with(alpn::AGENT, transport::agent(ka, idle))?;
    let files_client = client_with(alpn::FILES, transport::files_client(ka, idle))?;
    let inner = pki::client_config(Some(&identity.identity), &trust, &[alpn::INNER_SESSION])
        .map_err(|e| e.to_string())?;
    Ok(Tls {
        renewal_due: identity.renewal_due(),
        trust_sha256: identity.trust_sha256(),
        identity,
        relay_client,
        direct_client,
        files_client,
        inner_tls: tokio_rustls::TlsConnector::from(Arc::new(inner)),
    })
}

/// The swappable TLS state.
pub(crate) type Current = RwLock<Arc<Tls>>;

fn swap(shared: &Shared, identity: DeviceIdentity) {
    match build(identity, &shared.config) {
        Ok(t) => {
            let expires = t.identity.expires_at();
            *shared.tls.write().expect("tls lock") = Arc::new(t);
            shared.status.send_modify(|s| s.cert_expires_at = expires);
        }
        Err(e) => warn!(error = %e, "new certificates unusable; keeping the old ones"),
    }
}

/// A trust update from the server: stores the CA set, used from the next connection on.
pub(crate) fn on_trust(shared: &Shared, t: TrustUpdate) {
    if let Some(next) = outpost_net::renewal::with_trust(&shared.tls().identity, &shared.data, t) {
        swap(shared, next);
    }
}

/// A renewal in flight over the agent's session.
#[derive(Default)]
pub(crate) struct Renewal(outpost_net::renewal::Renewal);

impl Renewal {
    /// A CSR for a new key pair when the certificate is due for renewal and none is asked for.
    pub(crate) fn request_if_due(&mut self, shared: &Shared, now: i64) -> Option<Vec<u8>> {
        self.0
            .request_if_due(shared.tls().renewal_due, &shared.inventory.hostname, now)
    }

    /// The server issued the renewed certificate: stored and used from the next connection.
    pub(crate) fn done(&mut self, shared: &Shared, r: CertRenewed) {
        if let Some(next) = self.0.done(&shared.tls().identity, &shared.data, r) {
            swap(shared, next);
        }
    }

    /// When to look again (Unix seconds).
    pub(crate) fn next_check(&self, shared: &Shared) -> Option<i64> {
        self.0.next_check(shared.tls().renewal_due)
    }
}

/// Why this device cannot connect with its certificate, if it has expired: the fix included.
pub(crate) fn expired(shared: &Shared, now: i64) -> Option<String> {
    let until = shared.tls().identity.expires_at();
    (until > 0 && until <= now).then(|| {
        format!(
            "this device's certificate expired at {} (it was not connected while it was due for \
             renewal): start the agent once with `--token <new token>` (create one with \
             `outpost-server admin token create --role agent`); it enrolls again and keeps its \
             device record",
            outpost_proto::licence::key::format_time(until)
        )
    })
}
