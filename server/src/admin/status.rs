//! `admin status`: sessions, gateways, devices, uptime, refusals.

use outpost_proto::pb::admin::{
    AdminResponse, InstanceInfo, ServerStatusResult, admin_response::Result as R,
};

use super::ok;
use crate::node::Node;
use crate::sessions::Stats;
use crate::store::StoreError;

pub(super) async fn status(node: &Node) -> Result<AdminResponse, StoreError> {
    let gateways = node.gateways().infos();
    let devices = node.store().devices(None).await?.len() as u64;
    let instances = node
        .store()
        .instances(outpost_net::unix_now())
        .await?
        .into_iter()
        .map(|i| InstanceInfo {
            name: i.name,
            started_at: i.started_at,
            seen_at: i.seen_at,
            held: i.held.max(0) as u64,
        })
        .collect();
    Ok(ok(R::ServerStatus(ServerStatusResult {
        software: format!("outpost-server {}", outpost_proto::SOFTWARE_VERSION),
        listen: node.local_addr().to_string(),
        sessions: node.sessions().registry().online_count() as u32,
        gateways_connected: gateways.len() as u32,
        devices,
        uptime_secs: node.runtime().uptime().as_secs(),
        sessions_refused: Stats::get(&node.sessions().stats().sessions_refused),
        connections_refused: Stats::get(&node.sessions().stats().connections_refused),
        bad_frames: Stats::get(&node.sessions().stats().bad_frames),
        relayed_sessions: Stats::get(&node.sessions().stats().relayed),
        relayed_sessions_resumed: Stats::get(&node.sessions().stats().relayed_resumed),
        notifications_dropped: node.store().notices_dropped(),
        certificates: Some(super::certs::status(node).await?),
        gateways,
        instances,
        instance: node.client_address(),
        files: Some(node.file_stats().snapshot()),
    })))
}
