//! The gateway's certificate and trust at run time (S9): the office listener's and the
//! uplink's TLS configurations built from the identity, swapped in place (the office endpoint
//! and a DMZ listen endpoint get the new configuration for their next handshakes) when the
//! server sends a new CA set or a renewed certificate.

use std::sync::Arc;

use outpost_net::identity::DeviceIdentity;
use outpost_net::transport;
use outpost_proto::alpn;
use outpost_proto::pki::{self, ClientAuth};

use crate::config::GatewayConfig;
use crate::node::Node;

/// The identity and every TLS configuration made from it.
pub struct Tls {
    /// The identity.
    pub identity: DeviceIdentity,
    /// When the certificate is due for renewal (parsed once).
    pub renewal_due: i64,
    /// Hash of the trusted CA set, sent with every report.
    pub trust_sha256: [u8; 32],
    /// The office listener (agents, relayed enrollments).
    pub office: quinn::ServerConfig,
    /// The uplink dialling the server.
    pub uplink_client: quinn::ClientConfig,
    /// The listener of a gateway in a DMZ that the server dials (T4).
    pub listen: quinn::ServerConfig,
}

/// Builds the TLS configurations of an identity.
pub fn build(identity: DeviceIdentity, config: &GatewayConfig) -> Result<Tls, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let mut office_tls = pki::server_config(
        &identity.identity,
        &identity.cas,
        &[alpn::RELAY, alpn::ENROLL, alpn::FILES],
        ClientAuth::OptionalForEnrollment,
    )
    .map_err(|x| e(&x))?;
    office_tls.max_early_data_size = 0;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(office_tls))
        .map_err(|x| e(&x))?;
    let mut office = quinn::ServerConfig::with_crypto(Arc::new(quic));
    office.transport_config(transport::listener(
        config
            .uplink
            .idle_timeout
            .max(std::time::Duration::from_secs(30)),
    ));

    let up_tls = pki::client_config(
        Some(&identity.identity),
        &pki::Trust::Ca(identity.cas.clone()),
        &[alpn::GATEWAY],
    )
    .map_err(|x| e(&x))?;
    let mut uplink_client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(up_tls)).map_err(|x| e(&x))?,
    ));
    let u = &config.uplink;
    uplink_client.transport_config(transport::uplink(u.keep_alive, u.idle_timeout));

    let listen_tls = pki::server_config(
        &identity.identity,
        &identity.cas,
        &[alpn::GATEWAY],
        ClientAuth::Required,
    )
    .map_err(|x| e(&x))?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(listen_tls))
        .map_err(|x| e(&x))?;
    let mut listen = quinn::ServerConfig::with_crypto(Arc::new(quic));
    listen.transport_config(transport::uplink(u.keep_alive, u.idle_timeout));
    Ok(Tls {
        renewal_due: identity.renewal_due(),
        trust_sha256: identity.trust_sha256(),
        identity,
        office,
        uplink_client,
        listen,
    })
}

/// Swaps in a new identity: new handshakes on every endpoint use it.
pub fn swap(node: &Node, identity: DeviceIdentity) {
    match build(identity, node.config()) {
        Ok(t) => {
            node.set_tls(t);
            node.status_changed();
        }
        Err(e) => tracing::warn!(error = %e, "new certificates unusable; keeping the old ones"),
    }
}
