//! DMZ mode (T4): the server dials gateways that listen in a DMZ, instead of waiting for them
//! to dial in. Each target gets a dialler task that keeps one connection up, re-dialling with
//! jittered exponential backoff; once connected, everything above the connection is the same
//! as for a gateway that dialled in (`uplink::serve`).
//!
//! Targets come from `server.toml` (`dmz_gateways`) and from `admin gateway dmz add` (kept in
//! the store); added and removed at run time, no restart. Shutdown stops every dialler first —
//! a dial in progress is abandoned at once — and every connection closes with a reason.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_net::{endpoint, refuse, transport};
use outpost_proto::alpn;
use outpost_proto::backoff::{Backoff, BackoffConfig};
use outpost_proto::error::{RefusalCode, Refused};
use outpost_proto::pki::{self, Identity, Trust};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::gateways::Direction;
use crate::node::Node;

/// The client configuration the server dials gateways with: its own certificate (which
/// carries the `outpost-server` name the gateway checks), the gateway verified as
/// `outpost-gateway` under the deployment CA.
pub fn client_config(
    identity: &Identity,
    cas: &[rustls_pki_types::CertificateDer<'static>],
) -> Result<quinn::ClientConfig, String> {
    let tls = pki::client_config(Some(identity), &Trust::Ca(cas.to_vec()), &[alpn::GATEWAY])
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

/// Where a target came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `dmz_gateways` in `server.toml`.
    Config,
    /// `admin gateway dmz add`.
    Admin,
}

struct Dialler {
    source: Source,
    stop: CancellationToken,
    /// "connected to g-…" or the last error; written by the dialler task.
    state: Arc<Mutex<String>>,
}

/// The DMZ diallers of a server. Targets are added and removed at run time.
pub struct Dmz {
    ep: quinn::Endpoint,
    diallers: Mutex<BTreeMap<String, Dialler>>,
}

impl std::fmt::Debug for Dmz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dmz").finish_non_exhaustive()
    }
}

impl Dmz {
    /// Diallers that dial from `ep` with the server's current certificates.
    pub fn new(ep: quinn::Endpoint) -> Dmz {
        Dmz {
            ep,
            diallers: Mutex::new(BTreeMap::new()),
        }
    }

    /// Starts dialling `target` unless already dialling it. Returns whether it started.
    pub fn add(&self, node: &Arc<Node>, target: &str, source: Source) -> bool {
        let mut diallers = self.diallers.lock().expect("dmz lock");
        if diallers.contains_key(target) {
            return false;
        }
        let stop = node.runtime().child_token();
        let state = Arc::new(Mutex::new("dialling".to_owned()));
        node.runtime().spawn(run(
            node.clone(),
            self.ep.clone(),
            target.to_owned(),
            stop.clone(),
            state.clone(),
        ));
        diallers.insert(
            target.to_owned(),
            Dialler {
                source,
                stop,
                state,
            },
        );
        true
    }

    /// Stops dialling `target` and closes its connection. Returns whether it was dialled.
    pub fn remove(&self, target: &str) -> bool {
        match self.diallers.lock().expect("dmz lock").remove(target) {
            Some(d) => {
                d.stop.cancel();
                true
            }
            None => false,
        }
    }

    /// Every target: (address, source, state).
    pub fn list(&self) -> Vec<(String, Source, String)> {
        self.diallers
            .lock()
            .expect("dmz lock")
            .iter()
            .map(|(a, d)| {
                let state = d.state.lock().expect("dmz state lock").clone();
                (a.clone(), d.source, state)
            })
            .collect()
    }
}

fn set(state: &Mutex<String>, s: String) {
    *state.lock().expect("dmz state lock") = s;
}

/// Keeps the connection to one DMZ gateway up until `stop` (removal or shutdown).
async fn run(
    node: Arc<Node>,
    ep: quinn::Endpoint,
    target: String,
    stop: CancellationToken,
    state: Arc<Mutex<String>>,
) {
    let mut backoff = Backoff::new(BackoffConfig::default());
    let span = info_span!("dmz", gateway = %target);
    let bye = || {
        Refused::new(
            RefusalCode::ShuttingDown,
            "the server stopped dialling this gateway",
        )
    };
    async move {
        loop {
            // The configuration of the moment: a rotated server certificate is used from the
            // next dial on.
            let client = node.enrollment().certs().current().dmz_client.clone();
            let conn = tokio::select! {
                c = dial(&ep, &client, &target) => c,
                _ = stop.cancelled() => return,
            };
            match conn {
                Ok(conn) => match crate::node::authenticate(&node, &conn, "gateway").await {
                    Some(dev) => {
                        info!(device = %dev.id, remote = %conn.remote_address(), "DMZ gateway connected");
                        set(&state, format!("connected to {}", dev.id));
                        backoff.on_connected(Instant::now().into_std());
                        tokio::select! {
                            _ = crate::uplink::serve(node.clone(), conn.clone(), dev, Direction::Dmz) => {}
                            _ = stop.cancelled() => {
                                refuse::close(&conn, &bye());
                                return;
                            }
                        }
                        let why = conn
                            .close_reason()
                            .map(|e| refuse::explain(&e))
                            .unwrap_or_else(|| "closed".into());
                        warn!(reason = %why, "DMZ gateway connection ended");
                        set(&state, format!("connection ended: {why}"));
                    }
                    None => {
                        warn!("DMZ gateway refused: its certificate is not a registered gateway");
                        set(&state, "refused: not a registered gateway".into());
                    }
                },
                Err(e) => {
                    warn!(error = %e, "cannot reach the DMZ gateway");
                    set(&state, format!("cannot reach it: {e}"));
                }
            }
            backoff.on_disconnected(Instant::now().into_std());
            let delay = backoff.next_delay(outpost_net::jitter_unit());
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return,
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
