//! The gateway's Prometheus metrics (O7): the counters of `outpost-gateway status`, read at
//! each scrape. Names follow Prometheus conventions (`outpost_gateway_` prefix, base units,
//! `_total` on counters); no label carries a device id. README "Metrics" lists every metric.

use std::sync::Arc;

use outpost_net::metrics::{Gather, Labels, Sample};

use crate::node::Node;

fn l(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// The scrape-time reader for `node`.
pub fn gather(node: Arc<Node>) -> Gather {
    Arc::new(move || {
        let s = sample(&node.status());
        Box::pin(async move { s })
    })
}

fn sample(st: &crate::status::GatewayStatus) -> Sample {
    let mut s = Sample::default();
    s.gauges(
        "outpost_gateway_build_info",
        "Always 1; the version is in the label",
        [(l(&[("version", outpost_proto::SOFTWARE_VERSION)]), 1.0)],
    );
    s.gauge(
        "outpost_gateway_uplink_connected",
        "1 while the uplink to the server is up",
        f64::from(u8::from(st.uplink == "up")),
    );
    s.counter(
        "outpost_gateway_uplink_connects",
        "Uplink connections made since start",
        st.uplink_connects,
    );
    s.gauge(
        "outpost_gateway_uplink_rtt_seconds",
        "Round-trip time of the uplink as QUIC measures it",
        st.uplink_rtt_ms as f64 / 1000.0,
    );
    s.gauge(
        "outpost_gateway_agents_connected",
        "Agents connected to this gateway",
        f64::from(st.agents_connected),
    );
    s.gauge(
        "outpost_gateway_sessions_active",
        "Agent sessions relayed now",
        f64::from(st.sessions_active),
    );
    s.counter(
        "outpost_gateway_sessions_relayed",
        "Agent sessions relayed since start",
        st.sessions_total,
    );
    s.counters(
        "outpost_gateway_sessions_refused",
        "Agent sessions refused, by reason",
        [
            (l(&[("reason", "uplink-down")]), st.refused_no_uplink),
            (l(&[("reason", "limit")]), st.refused_overload),
        ],
    );
    s.counters(
        "outpost_gateway_relayed_bytes",
        "Bytes relayed between agents and the server, by direction",
        [
            (l(&[("direction", "up")]), st.bytes_up),
            (l(&[("direction", "down")]), st.bytes_down),
        ],
    );
    s.counters(
        "outpost_gateway_broadcasts",
        "Signed broadcasts fanned out to agents (D4), by outcome",
        [
            (l(&[("outcome", "fanned-out")]), st.broadcasts),
            (l(&[("outcome", "acked")]), st.broadcast_acked),
            (l(&[("outcome", "refused")]), st.broadcast_declined),
            (l(&[("outcome", "failed")]), st.broadcast_failed),
        ],
    );
    s.gauge(
        "outpost_gateway_cache_revision",
        "Update revision the cache holds (0: none)",
        st.cache_revision as f64,
    );
    s.gauge(
        "outpost_gateway_cache_bytes",
        "Bytes in the update cache",
        st.cache_bytes as f64,
    );
    s.gauge(
        "outpost_gateway_cache_blocks",
        "Blocks in the update cache",
        st.cache_blocks as f64,
    );
    s.counters(
        "outpost_gateway_cache_requests",
        "Blocks agents asked for, by whether the cache held them",
        [
            (l(&[("result", "hit")]), st.cache_hits),
            (l(&[("result", "miss")]), st.cache_misses),
        ],
    );
    s.counter(
        "outpost_gateway_cache_upstream_bytes",
        "Bytes the cache fetched from the server",
        st.cache_upstream_bytes,
    );
    s.counter(
        "outpost_gateway_cache_source_blocks",
        "Blocks the cache took from its other sources",
        st.cache_source_blocks,
    );
    s.counters(
        "outpost_gateway_dropped",
        "Things dropped, by reason",
        [
            (l(&[("reason", "block-bad-hash")]), st.cache_refused_blocks),
            (l(&[("reason", "cache-evicted")]), st.cache_evicted),
            (
                l(&[("reason", "broadcast-busy")]),
                st.broadcasts_dropped_busy,
            ),
            (
                l(&[("reason", "discovery-report-queue-full")]),
                st.discovery_reports_dropped,
            ),
        ],
    );
    s.gauges(
        "outpost_gateway_queue_depth",
        "Work waiting or running in the gateway's bounded queues, by queue",
        [
            (
                l(&[("queue", "broadcast-fanouts")]),
                st.broadcasts_running as f64,
            ),
            (
                l(&[("queue", "discovery-reports")]),
                st.discovery_reports_queued as f64,
            ),
        ],
    );
    s.counter(
        "outpost_gateway_discovery_scans",
        "Network discovery scans done (D3)",
        st.discovery_scans,
    );
    s.gauges(
        "outpost_gateway_discovery_hosts",
        "Hosts that answered the last scan",
        [(l(&[("state", "answered")]), st.discovery_hosts as f64)],
    );
    s
}
