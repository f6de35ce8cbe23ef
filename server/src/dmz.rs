//! DMZ mode (T4): the server dials gateways that listen in a DMZ, instead of waiting for them
//! to dial in. Each configured gateway gets a task that keeps one connection up, re-dialling
//! with jittered exponential backoff; once connected, everything above the connection is the
//! same as for a gateway that dialled in (`uplink::serve`).

use std::sync::Arc;
use std::time::Duration;

use outpost_net::{endpoint, refuse, transport};
use outpost_proto::alpn;
use outpost_proto::backoff::{Backoff, BackoffConfig};
use outpost_proto::pki::{self, Identity, Trust};
use tokio::time::Instant;
use tracing::{Instrument, info, info_span, warn};

use crate::gateways::Direction;
use crate::node::Node;

/// The client configuration the server dials gateways with: its own certificate (which
/// carries the `outpost-server` name the gateway checks), the gateway verified as
/// `outpost-gateway` under the deployment CA.
pub fn client_config(
    identity: &Identity,
    ca: &rustls_pki_types::CertificateDer<'static>,
) -> Result<quinn::ClientConfig, String> {
    let tls = pki::client_config(Some(identity), &Trust::Ca(ca.clone()), &[alpn::GATEWAY])
        .map_err(|e| e.to_string())?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
        .map_err(|e| e.to_string())?;
    let mut c = quinn::ClientConfig::new(Arc::new(quic));
    c.transport_config(transport::uplink(
        Duration::from_secs(15),
        Duration::from_secs(45),
    ));
    Ok(c)
}

/// Keeps the connection to one DMZ gateway up until shutdown.
pub async fn run(
    node: Arc<Node>,
    ep: quinn::Endpoint,
    client: quinn::ClientConfig,
    target: String,
) {
    let mut backoff = Backoff::new(BackoffConfig::default());
    let span = info_span!("dmz", gateway = %target);
    async move {
        loop {
            if node.runtime().is_shutting_down() {
                return;
            }
            match dial(&ep, &client, &target).await {
                Ok(conn) => match crate::node::authenticate(&node, &conn, "gateway").await {
                    Some(dev) => {
                        info!(device = %dev.id, remote = %conn.remote_address(), "DMZ gateway connected");
                        backoff.on_connected(Instant::now().into_std());
                        tokio::select! {
                            _ = crate::uplink::serve(node.clone(), conn.clone(), dev, Direction::Dmz) => {}
                            _ = node.runtime().cancelled() => return,
                        }
                        warn!(reason = %conn.close_reason().map(|e| refuse::explain(&e)).unwrap_or_default(), "DMZ gateway connection ended");
                    }
                    None => warn!("DMZ gateway refused: its certificate is not a registered gateway"),
                },
                Err(e) => warn!(error = %e, "cannot reach the DMZ gateway"),
            }
            backoff.on_disconnected(Instant::now().into_std());
            let delay = backoff.next_delay(outpost_net::jitter_unit());
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = node.runtime().cancelled() => return,
            }
        }
    }
    .instrument(span)
    .await
}

async fn dial(
    ep: &quinn::Endpoint,
    client: &quinn::ClientConfig,
    target: &str,
) -> Result<quinn::Connection, String> {
    let addr = endpoint::resolve(target).await.map_err(|e| e.to_string())?;
    let connecting = ep
        .connect_with(client.clone(), addr, pki::GATEWAY_NAME)
        .map_err(|e| refuse::explain_connect(&e))?;
    connecting.await.map_err(|e| refuse::explain(&e))
}
