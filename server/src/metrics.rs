//! The server's Prometheus metrics (O7): what `admin status` shows, per key and per reason,
//! read at each scrape, plus two histograms the code fills as things happen (push latency,
//! licence-check commit time). Names follow Prometheus conventions (`outpost_` prefix, base
//! units, `_total` on counters); no label carries a device id (unbounded); key ids and
//! neighbour server names are bounded by what an administrator creates. README "Metrics" lists
//! every metric.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use outpost_net::metrics::{Gather, Labels, Metrics, Sample};
use prometheus_client::metrics::histogram::Histogram;

use crate::node::Node;
use crate::sessions::Stats;

/// The instruments the server fills as things happen.
#[derive(Debug, Clone)]
pub struct Instruments {
    /// From a push queued to its acknowledgement by the device.
    pub push_latency: Histogram,
    /// Commit time of the licence-check writer's transactions.
    pub store_commit: Histogram,
}

impl Instruments {
    /// Creates them and registers them in `metrics`.
    pub fn register(metrics: &Metrics, store_commit: Histogram) -> Instruments {
        let push_latency = Histogram::new(outpost_net::metrics::seconds_buckets());
        metrics.register(
            "outpost_push_latency_seconds",
            "Time from a push being queued to its acknowledgement by the device",
            push_latency.clone(),
        );
        metrics.register(
            "outpost_store_commit_seconds",
            "Commit time of the store transactions that record licence checks (batched)",
            store_commit.clone(),
        );
        Instruments {
            push_latency,
            store_commit,
        }
    }
}

fn l(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// The scrape-time reader for `node`.
pub fn gather(node: Arc<Node>) -> Gather {
    Arc::new(move || {
        let node = node.clone();
        Box::pin(async move { sample(&node).await })
    })
}

async fn sample(node: &Node) -> Sample {
    let mut s = Sample::default();
    let stats = node.sessions().stats();
    s.gauges(
        "outpost_build_info",
        "Always 1; the version is in the label",
        [(l(&[("version", outpost_proto::SOFTWARE_VERSION)]), 1.0)],
    );
    s.gauge(
        "outpost_uptime_seconds",
        "Seconds since this server instance started",
        node.runtime().uptime().as_secs_f64(),
    );
    s.gauge(
        "outpost_sessions_active",
        "Agent sessions open on this instance (direct and relayed)",
        node.sessions().registry().online_count() as f64,
    );
    s.counter(
        "outpost_sessions_started",
        "Agent sessions admitted",
        Stats::get(&stats.sessions_started),
    );
    let mut refused: Vec<(Labels, u64)> = node
        .sessions()
        .refusals()
        .into_iter()
        .map(|(reason, n)| (vec![("reason", reason)], n))
        .collect();
    refused.push((
        l(&[("reason", "session-limit")]),
        Stats::get(&stats.sessions_refused),
    ));
    s.counters(
        "outpost_sessions_refused",
        "Connections or sessions refused, by reason (refusal code, or the session limit)",
        refused,
    );
    s.counter(
        "outpost_relayed_sessions",
        "Agent sessions relayed by gateways whose inner TLS handshake completed",
        Stats::get(&stats.relayed),
    );
    s.counter(
        "outpost_relayed_sessions_resumed",
        "Relayed sessions that resumed their inner TLS session with a ticket",
        Stats::get(&stats.relayed_resumed),
    );
    let gateways = node.gateways().infos();
    s.gauge(
        "outpost_uplinks_connected",
        "Gateway uplinks connected to this instance",
        gateways.len() as f64,
    );
    let sum = |f: fn(&outpost_proto::pb::admin::GatewayLinkInfo) -> u64| -> f64 {
        gateways.iter().map(f).sum::<u64>() as f64
    };
    s.gauges(
        "outpost_uplink_bytes",
        "UDP payload bytes on the uplinks connected now, by direction (resets when an uplink reconnects)",
        [
            (l(&[("direction", "down")]), sum(|g| g.bytes_down)),
            (l(&[("direction", "up")]), sum(|g| g.bytes_up)),
        ],
    );
    s.gauge(
        "outpost_uplink_agents_connected",
        "Agents connected through the gateways connected now",
        sum(|g| u64::from(g.agents_connected)),
    );
    s.gauges(
        "outpost_uplink_cache_blocks",
        "Update cache counters of the gateways connected now, as they last reported over their uplinks, summed",
        [
            (l(&[("event", "hit")]), sum(|g| g.cache_hits)),
            (l(&[("event", "miss")]), sum(|g| g.cache_misses)),
            (l(&[("event", "refused")]), sum(|g| g.cache_refused_blocks)),
        ],
    );
    s.gauge(
        "outpost_uplink_cache_upstream_bytes",
        "Bytes the caches of the gateways connected now fetched from the server, as they last reported",
        sum(|g| g.cache_upstream_bytes),
    );
    let files = node.file_stats().snapshot();
    s.counter(
        "outpost_files_requests",
        "Update block requests served",
        files.requests,
    );
    s.counter(
        "outpost_files_served_blocks",
        "Update blocks served",
        files.blocks,
    );
    s.counter(
        "outpost_files_served_bytes",
        "Update bytes served",
        files.bytes,
    );
    s.counters(
        "outpost_dropped",
        "Things dropped, by reason (each is counted where it happens; see the README)",
        [
            (l(&[("reason", "bad-frame")]), Stats::get(&stats.bad_frames)),
            (
                l(&[("reason", "notification-queue-full")]),
                node.store().notices_dropped(),
            ),
            (
                l(&[("reason", "push-queue-full")]),
                node.sessions()
                    .registry()
                    .dropped_queue_full
                    .load(Ordering::Relaxed),
            ),
            (
                l(&[("reason", "server-link-queue-full")]),
                node.peers().dropped(),
            ),
            (
                l(&[("reason", "gateway-directive-queue-full")]),
                node.gateways().dropped_directives.load(Ordering::Relaxed),
            ),
            (
                l(&[("reason", "held-queue-full")]),
                node.store().held_dropped(),
            ),
            (l(&[("reason", "unknown-block")]), files.unknown),
        ],
    );
    store_sample(node, &mut s).await;
    s
}

async fn store_sample(node: &Node, s: &mut Sample) {
    let store = node.store();
    let now = outpost_net::unix_now();
    if let Ok(keys) = store.keys().await {
        let held = store.held_seats().await.unwrap_or_default();
        let mut points = vec![];
        for k in &keys {
            let h = held.get(&k.id).map_or(0, |h| h.count);
            for (state, v) in [
                ("total", k.seats),
                ("used", k.seats_used),
                ("free", k.free()),
                ("leased-out", k.seats_leased_out),
                ("held-offline", h),
            ] {
                points.push((l(&[("key", &k.id), ("state", state)]), v as f64));
            }
        }
        s.gauges(
            "outpost_licence_seats",
            "Seats per licence key and state (held-offline: seats of devices that may still hold an unexpired grant offline, L15)",
            points,
        );
    }
    if let Ok(leases) = store.leases(now).await {
        let mut by: BTreeMap<(String, &'static str), f64> = BTreeMap::new();
        for x in leases.iter().filter(|x| !x.revoked) {
            *by.entry((x.server.clone(), x.direction)).or_default() += f64::from(x.seats);
        }
        s.gauges(
            "outpost_lease_seats",
            "Seats leased to (given) or from (received) each neighbour server",
            by.into_iter().map(|((server, dir), v)| {
                (vec![("server", server), ("direction", dir.to_owned())], v)
            }),
        );
    }
    if let Ok(counts) = store.device_counts().await {
        s.gauges(
            "outpost_devices",
            "Enrolled devices by role and state",
            counts
                .into_iter()
                .map(|(role, state, n)| (vec![("role", role), ("state", state)], n as f64)),
        );
    }
    if let Ok(hosts) = store.discovered_hosts().await {
        let managed = hosts.iter().filter(|h| !h.device_id.is_empty()).count();
        s.gauges(
            "outpost_discovered_hosts",
            "Hosts found by gateways' network discovery, with an agent (managed) or without",
            [
                (l(&[("state", "managed")]), managed as f64),
                (l(&[("state", "unmanaged")]), (hosts.len() - managed) as f64),
            ],
        );
    }
    if let Ok(rev) = store.newest_update_revision().await {
        s.gauge(
            "outpost_update_revision",
            "The newest update revision in the repository (0: none)",
            rev as f64,
        );
    }
}
