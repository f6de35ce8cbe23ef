//! `status.json` in the data directory: written by the running gateway on every change (and
//! at least every few seconds), read by `outpost-gateway status` (O4).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use outpost_net::status_file::{self, StatusError};
use serde::{Deserialize, Serialize};

use crate::node::Node;

/// What `outpost-gateway status` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GatewayStatus {
    /// Device id.
    pub device_id: String,
    /// Unix seconds at which this gateway's certificate expires (S9; renewed before).
    #[serde(default)]
    pub cert_expires_at: i64,
    /// Process id of the running gateway.
    pub pid: u32,
    /// Unix seconds of this snapshot.
    pub updated_at: i64,
    /// Configured server.
    pub server: String,
    /// Office-side listen address.
    pub listen: String,
    /// "up" or "down".
    pub uplink: String,
    /// Unix seconds since the uplink is up.
    pub uplink_since: i64,
    /// Server address the uplink reaches.
    pub uplink_remote: String,
    /// Round-trip time of the uplink.
    pub uplink_rtt_ms: u64,
    /// The id the server knows the uplink by (its `admin status` shows the same).
    #[serde(default)]
    pub uplink_connection_id: u64,
    /// Why it went down last.
    pub uplink_last_error: String,
    /// Uplink connections established since start.
    pub uplink_connects: u64,
    /// Agent connections now.
    pub agents_connected: u32,
    /// Relayed sessions now.
    pub sessions_active: u32,
    /// Relayed sessions since start.
    pub sessions_total: u64,
    /// Agent streams refused while the uplink was down.
    pub refused_no_uplink: u64,
    /// Refused by limits.
    pub refused_overload: u64,
    /// Bytes agent → server.
    pub bytes_up: u64,
    /// Bytes server → agent.
    pub bytes_down: u64,
    /// Broadcast pushes fanned out (D4): received, and deliveries acknowledged, refused by
    /// agents, failed.
    #[serde(default)]
    pub broadcasts: u64,
    /// See `broadcasts`.
    #[serde(default)]
    pub broadcast_acked: u64,
    /// See `broadcasts`.
    #[serde(default)]
    pub broadcast_declined: u64,
    /// See `broadcasts`.
    #[serde(default)]
    pub broadcast_failed: u64,
}

/// Writes the status file until shutdown.
pub async fn writer(node: Arc<Node>) {
    loop {
        status_file::write(node.data(), &node.status());
        tokio::select! {
            _ = node.status_notified() => {
                // Coalesce bursts of changes.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = node.runtime().cancelled() => {
                let mut s = node.status();
                s.uplink = "stopped".into();
                status_file::write(node.data(), &s);
                return;
            }
        }
    }
}

/// Reads the status file; says whether the gateway process is still running.
pub fn read(data: &Path) -> Result<(GatewayStatus, bool), StatusError> {
    let s: GatewayStatus = status_file::read(data, "gateway")?;
    let running = status_file::process_running(s.pid) && s.uplink != "stopped";
    Ok((s, running))
}

/// Human form.
pub fn human(s: &GatewayStatus, running: bool) -> String {
    let when = |t: i64| {
        if t > 0 {
            outpost_proto::licence::key::format_time(t)
        } else {
            "-".into()
        }
    };
    format!(
        "gateway {}  ({})\nserver      {}\nuplink      {}{}\nlisten      {}\nagents      {} connected, {} sessions relayed now, {} since start\nrefused     {} (uplink down), {} (limits)\nbytes       {} up, {} down\nbroadcasts  {} fanned out: {} delivered, {} refused by agents, {} failed\ncertificate {} (expiry; renewed by itself over the uplink)\nupdated     {}\n",
        s.device_id,
        if running {
            format!("running, pid {}", s.pid)
        } else {
            "not running".into()
        },
        s.server,
        s.uplink,
        if s.uplink == "up" {
            format!(
                " to {} since {}, rtt {} ms, connection id {}, {} connect(s)",
                s.uplink_remote,
                when(s.uplink_since),
                s.uplink_rtt_ms,
                s.uplink_connection_id,
                s.uplink_connects
            )
        } else if !s.uplink_last_error.is_empty() {
            format!(" ({})", s.uplink_last_error)
        } else {
            String::new()
        },
        s.listen,
        s.agents_connected,
        s.sessions_active,
        s.sessions_total,
        s.refused_no_uplink,
        s.refused_overload,
        s.bytes_up,
        s.bytes_down,
        s.broadcasts,
        s.broadcast_acked,
        s.broadcast_declined,
        s.broadcast_failed,
        when(s.cert_expires_at),
        when(s.updated_at),
    )
}
