//! DMZ mode (T4): the gateway listens on `uplink.listen` and the server dials it; the newest
//! connection from the server replaces an older one. Everything above the connection is the
//! same as for a dialled uplink.

use std::sync::Arc;

use outpost_net::{endpoint, refuse};
use outpost_proto::error::{RefusalCode, Refused};
use outpost_proto::pki;
use tracing::{Instrument, info, info_span, warn};

use super::{serve_accepted, set_down, set_listen_addr};
use crate::node::Node;

/// Serves the DMZ listener until shutdown.
pub(super) async fn run(node: Arc<Node>) {
    let cfg = node.config();
    let server_cfg = match listen_config(&node) {
        Ok(c) => c,
        Err(why) => {
            warn!(error = %why, "cannot build the uplink listener");
            set_down(&node, why, 0);
            return;
        }
    };
    let ep = match endpoint::endpoint(cfg.uplink.listen, &cfg.socket, Some(server_cfg)) {
        Ok(e) => e,
        Err(e) => {
            let why = format!(
                "cannot listen for the server on udp {}: {e}",
                cfg.uplink.listen
            );
            warn!("{why}");
            set_down(&node, why, 0);
            return;
        }
    };
    node.set_listen_endpoint(Some(ep.clone()));
    info!(listen = %ep.local_addr().map(|a| a.to_string()).unwrap_or_default(), "waiting for the server to dial in (DMZ mode)");
    set_listen_addr(&node, ep.local_addr().ok());
    let mut current: Option<(tokio::task::JoinHandle<()>, quinn::Connection)> = None;
    loop {
        let incoming = tokio::select! {
            i = ep.accept() => match i { Some(i) => i, None => break },
            _ = node.runtime().cancelled() => break,
        };
        let conn = match incoming.await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %refuse::explain(&e), "server connection failed");
                continue;
            }
        };
        // Only the server may hold this gateway's uplink: its certificate (verified against the
        // CA during the handshake) must carry the server's name.
        let is_server =
            endpoint::peer_leaf(&conn).is_some_and(|c| pki::has_dns_name(&c, pki::SERVER_NAME));
        if !is_server {
            refuse::close(
                &conn,
                &Refused::new(
                    RefusalCode::WrongRole,
                    "only the server may connect to a gateway's uplink port",
                ),
            );
            continue;
        }
        if let Some((old, old_conn)) = current.take() {
            old_conn.close(
                quinn::VarInt::from_u32(0),
                b"replaced by a newer connection from the server",
            );
            old.abort();
        }
        let n = node.clone();
        let c = conn.clone();
        current = Some((
            tokio::spawn(
                async move { serve_accepted(&n, c).await }
                    .instrument(info_span!("uplink", mode = "listen")),
            ),
            conn,
        ));
    }
    if let Some((t, c)) = current {
        c.close(quinn::VarInt::from_u32(0), b"gateway shutting down");
        t.abort();
    }
    ep.close(quinn::VarInt::from_u32(0), b"gateway shutting down");
}

fn listen_config(node: &Node) -> Result<quinn::ServerConfig, String> {
    Ok(node.tls().listen.clone())
}
