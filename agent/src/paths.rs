//! Returning to a preferred path (T8): an agent whose session runs on a fallback path (a
//! later gateway, or the server directly after its gateway failed) keeps checking, every
//! `connect.return_check` (jittered, so an office does not probe in step), whether a path it
//! prefers answers again — end to end: the gateway, and the server through it. When one does,
//! the session ends and the agent reconnects from its first path, so a WAN blip does not leave
//! an office's agents bypassing their gateway for good.

use std::sync::Arc;
use std::time::Duration;

use outpost_net::stream;
use outpost_proto::pki;
use rustls_pki_types::ServerName;
use tracing::debug;

use crate::connect::{Via, dial, hang_up};
use crate::node::Shared;

/// Probes the `preferred` paths until one answers; returns its label. Runs as long as the
/// session on the fallback path does (the caller aborts it).
pub(crate) async fn probe_preferred(shared: Arc<Shared>, preferred: Vec<(Via, String)>) -> String {
    let every = shared.config.connect.return_check;
    loop {
        tokio::time::sleep(outpost_net::jittered(every / 2, every / 2)).await;
        for (via, target) in &preferred {
            if let Some(label) = probe(&shared, *via, target).await {
                return label;
            }
        }
    }
}

/// Whether a path answers end to end: dialled, and through a gateway an inner TLS handshake
/// with the server completes (the gateway's uplink is up).
async fn probe(shared: &Arc<Shared>, via: Via, target: &str) -> Option<String> {
    let d = match dial(shared, via, target).await {
        Ok(d) => d,
        Err(crate::connect::Attempt::Unreachable(why)) => {
            debug!(%target, %why, "preferred path still unreachable");
            return None;
        }
        Err(_) => {
            debug!(%target, "preferred path refuses this agent");
            return None;
        }
    };
    let ok = match via {
        Via::Server => true,
        Via::Gateway => {
            let inner = async {
                let (send, recv) = d.conn.open_bi().await.ok()?;
                let sni = ServerName::try_from(pki::SERVER_NAME).expect("static name");
                let tls = shared.tls().inner_tls.clone();
                tls.connect(sni, stream::bi(send, recv)).await.ok()
            };
            let wait = shared
                .config
                .connect
                .dial_timeout
                .max(Duration::from_secs(5));
            matches!(tokio::time::timeout(wait, inner).await, Ok(Some(_)))
        }
    };
    let label = d.label.clone();
    debug!(path = %label, answers = ok, "preferred path probed");
    hang_up(shared, d, b"probe").await;
    ok.then_some(label)
}
