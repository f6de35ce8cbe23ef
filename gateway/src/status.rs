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
    /// The update cache (D2): newest revision held, bytes and blocks stored.
    #[serde(default)]
    pub cache_revision: u64,
    /// See `cache_revision`.
    #[serde(default)]
    pub cache_bytes: u64,
    /// See `cache_revision`.
    #[serde(default)]
    pub cache_blocks: u64,
    /// Blocks served from disk.
    #[serde(default)]
    pub cache_hits: u64,
    /// Blocks served that had to be fetched first (joined or started).
    #[serde(default)]
    pub cache_misses: u64,
    /// Bytes fetched from the server.
    #[serde(default)]
    pub cache_upstream_bytes: u64,
    /// Blocks taken from a configured source.
    #[serde(default)]
    pub cache_source_blocks: u64,
    /// Blocks refused because they did not match their hash.
    #[serde(default)]
    pub cache_refused_blocks: u64,
    /// Blocks evicted to keep the bound.
    #[serde(default)]
    pub cache_evicted: u64,
    /// Why the last manifest offered was refused ("" when accepted).
    #[serde(default)]
    pub cache_error: String,
    /// Network scans done since start (D3).
    #[serde(default)]
    pub discovery_scans: u64,
    /// Hosts that answered the last scan.
    #[serde(default)]
    pub discovery_hosts: u64,
    /// Queues (O4): broadcasts being fanned out now (at most 8), and those dropped because 8
    /// were running (the server then sends them in each agent's session).
    #[serde(default)]
    pub broadcasts_running: u64,
    /// See `broadcasts_running`.
    #[serde(default)]
    pub broadcasts_dropped_busy: u64,
    /// Scan reports waiting for the uplink (at most 4), and those dropped because the queue
    /// was full (the next report after a reconnect carries every host known).
    #[serde(default)]
    pub discovery_reports_queued: u64,
    /// See `discovery_reports_queued`.
    #[serde(default)]
    pub discovery_reports_dropped: u64,
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

fn cache_line(s: &GatewayStatus) -> String {
    let mut l = if s.cache_revision == 0 {
        "no revision yet".to_owned()
    } else {
        format!(
            "revision {}, cache {} MiB in {} blocks: {} hits, {} misses, {} MiB from the server, {} blocks from sources, {} refused (bad hash), {} evicted",
            s.cache_revision,
            s.cache_bytes >> 20,
            s.cache_blocks,
            s.cache_hits,
            s.cache_misses,
            s.cache_upstream_bytes >> 20,
            s.cache_source_blocks,
            s.cache_refused_blocks,
            s.cache_evicted
        )
    };
    if !s.cache_error.is_empty() {
        l.push_str(&format!("; last manifest refused: {}", s.cache_error));
    }
    l
}

fn queues_line(s: &GatewayStatus) -> String {
    format!(
        "broadcasts {} of {} fanning out, {} dropped (all busy); discovery reports {} of {} waiting for the uplink, {} dropped (queue full)",
        s.broadcasts_running,
        crate::uplink::MAX_FANOUTS,
        s.broadcasts_dropped_busy,
        s.discovery_reports_queued,
        crate::discovery::REPORT_QUEUE,
        s.discovery_reports_dropped,
    )
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
        "gateway {}  ({})\nserver      {}\nuplink      {}{}\nlisten      {}\nagents      {} connected, {} sessions relayed now, {} since start\nrefused     {} (uplink down), {} (limits)\nbytes       {} up, {} down\nbroadcasts  {} fanned out: {} delivered, {} refused by agents, {} failed\nqueues      {}\nupdates     {}\ndiscovery   {} scan(s), {} host(s) answered the last\ncertificate {} (expiry; renewed by itself over the uplink)\nupdated     {}\n",
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
        queues_line(s),
        cache_line(s),
        s.discovery_scans,
        s.discovery_hosts,
        when(s.cert_expires_at),
        when(s.updated_at),
    )
}
