//! Prometheus metrics (O7): a server and a gateway with `metrics.listen` set, scraped over
//! real HTTP while agents connect through the gateway, one is revoked and comes back, a push
//! is acknowledged. The figures must follow what happened; the text must be well-formed
//! OpenMetrics with Prometheus naming (prefix, `_total` counters, no device ids as labels).

use std::collections::BTreeMap;
use std::time::Duration;

use outpost_proto::pb::admin::{DeviceRef, PushRequest, admin_request::Op};
use outpost_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET `path` over HTTP/1.1 (no client crate: the request is one line); (head, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.to_owned(), body.to_owned())
}

/// The samples of a scrape: `name{labels}` → value.
fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("name value");
            (k.to_owned(), v.parse().expect("a number"))
        })
        .collect()
}

/// Checks the conventions every scrape must follow.
fn well_formed(body: &str, prefix: &str) {
    assert!(body.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    let mut counters = vec![];
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(name.starts_with(prefix), "{name}: prefix {prefix}");
            if kind == "counter" {
                counters.push(name.to_owned());
            }
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(name.starts_with(prefix), "{line}");
            if let Some((_, labels)) = line.split_once('{') {
                let labels = labels.split('}').next().unwrap();
                for pair in labels.split(',') {
                    let key = pair.split('=').next().unwrap();
                    assert!(!key.contains("device"), "no device ids as labels: {line}");
                }
            }
            if counters.iter().any(|c| name.starts_with(c.as_str())) {
                assert!(
                    name.ends_with("_total") || name.ends_with("_created"),
                    "counter sample {name} ends in _total"
                );
            }
        }
    }
    assert!(!counters.is_empty());
}

async fn scrape(addr: std::net::SocketAddr, prefix: &str) -> BTreeMap<String, f64> {
    let (head, body) = get(addr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    well_formed(&body, prefix);
    samples(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o7_server_and_gateway_metrics_follow_sessions_seats_refusals_pushes_and_uplinks() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |c| {
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let maddr = server.h().metrics_addr().expect("metrics served");
    server
        .import_key(
            &auth.key("K-MET", 10, Duration::from_secs(86_400 * 30)),
            true,
        )
        .await
        .unwrap();
    let gw = Gateway::start(&server, |_, c| {
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let gaddr = gw.h().metrics_addr().expect("gateway metrics served");
    let token = server.token("agent", 4).await;
    let mut agents = vec![];
    for i in 0..3 {
        let cfg = test_agent_config(
            vec![gw.h().addr().to_string()],
            Some(server.addr()),
            &format!("met-{i}"),
        );
        agents.push(Agent::start(cfg, &token).await);
    }
    let mut direct = Agent::start(
        test_agent_config(vec![], Some(server.addr()), "met-direct"),
        &token,
    )
    .await;
    for a in agents.iter().chain([&direct]) {
        within(
            "licensed",
            a.h().wait_for(|s| s.licence.state == "licensed"),
        )
        .await;
    }

    let m = scrape(maddr, "outpost_").await;
    assert_eq!(m["outpost_sessions_active"], 4.0, "{m:#?}");
    assert_eq!(m["outpost_uplinks_connected"], 1.0);
    assert!(m["outpost_relayed_sessions_total"] >= 3.0);
    assert_eq!(
        m[r#"outpost_licence_seats{key="K-MET",state="total"}"#],
        10.0
    );
    assert_eq!(m[r#"outpost_licence_seats{key="K-MET",state="used"}"#], 4.0);
    assert_eq!(m[r#"outpost_licence_seats{key="K-MET",state="free"}"#], 6.0);
    assert_eq!(m[r#"outpost_devices{role="agent",state="active"}"#], 4.0);
    assert_eq!(m[r#"outpost_devices{role="gateway",state="active"}"#], 1.0);
    assert!(
        m["outpost_store_commit_seconds_count"] >= 1.0,
        "licence checks committed"
    );
    assert_eq!(
        m[r#"outpost_sessions_refused_total{reason="session-limit"}"#],
        0.0
    );

    until("the gateway reported its agents", || async {
        scrape(maddr, "outpost_").await["outpost_uplink_agents_connected"] == 3.0
    })
    .await;

    // A push acknowledged: one observation of its latency.
    server
        .admin(Op::Push(PushRequest {
            device_id: direct.h().device_id().into(),
            kind: "sync-now".into(),
            wait_ms: 5_000,
            ..Default::default()
        }))
        .await;
    let m = scrape(maddr, "outpost_").await;
    assert_eq!(m["outpost_push_latency_seconds_count"], 1.0);
    assert!(m["outpost_push_latency_seconds_sum"] > 0.0);

    // Revoked while away, it comes back and is refused on its session: counted by reason.
    let id = direct.h().device_id().to_owned();
    direct.stop().await;
    server
        .admin(Op::DeviceRevoke(DeviceRef {
            device_id: id,
            free_seat_now: true,
        }))
        .await;
    direct.boot();
    within(
        "the revoked agent was told",
        direct.h().wait_for(|s| s.licence.state != "licensed"),
    )
    .await;
    until("the refusal is counted", || async {
        scrape(maddr, "outpost_")
            .await
            .get(r#"outpost_sessions_refused_total{reason="revoked"}"#)
            == Some(&1.0)
    })
    .await;
    let m = scrape(maddr, "outpost_").await;
    assert_eq!(m[r#"outpost_devices{role="agent",state="revoked"}"#], 1.0);
    assert_eq!(m[r#"outpost_licence_seats{key="K-MET",state="used"}"#], 3.0);

    // The gateway's view.
    let g = scrape(gaddr, "outpost_gateway_").await;
    assert_eq!(g["outpost_gateway_uplink_connected"], 1.0, "{g:#?}");
    assert_eq!(g["outpost_gateway_agents_connected"], 3.0);
    assert!(g["outpost_gateway_sessions_relayed_total"] >= 3.0);
    assert!(g[r#"outpost_gateway_relayed_bytes_total{direction="up"}"#] > 0.0);

    // The shipped Grafana dashboard asks only for metrics that exist.
    // (A family with no points yet, such as leases on a server without neighbours, shows
    // in its `# TYPE` line.)
    let bodies = [
        get(maddr, "/metrics").await.1,
        get(gaddr, "/metrics").await.1,
    ];
    let known: std::collections::HashSet<&str> = bodies
        .iter()
        .flat_map(|b| b.lines())
        .map(|l| l.strip_prefix("# TYPE ").unwrap_or(l))
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    let dash = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/grafana/outpost.json"
    ))
    .unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dash).unwrap();
    let mut asked = 0;
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("outpost_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                assert!(
                    known.contains(name.as_str()),
                    "dashboard asks for {name}: {expr}"
                );
                asked += 1;
            }
        }
    }
    assert!(asked >= 16, "{asked}");

    // Anything but GET /metrics is not found.
    let (head, _) = get(maddr, "/").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

/// A metrics address that cannot be bound stops the start with a message naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o7_a_metrics_address_in_use_is_refused_at_start_naming_the_setting() {
    init_logs();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = taken.local_addr().unwrap();
    let auth = Authority::new();
    let mut server = Server::start(&auth, |_| {}).await;
    assert_eq!(server.h().metrics_addr(), None, "off unless configured");
    server.stop().await;
    server.edit_config(|c| c.metrics.listen = Some(at));
    let e = outpost_server::start(outpost_server::DataDir::new(&server.data))
        .await
        .expect_err("address in use")
        .to_string();
    assert!(
        e.contains("metrics.listen") && e.contains(&at.to_string()),
        "{e}"
    );
}

/// O4 and O7 on the gateway's bounded queue of scan reports (D3): while the uplink is down the
/// reports wait, at most 4, and the next ones are dropped and counted — in `outpost-gateway
/// status` (both forms) and in the metrics; with the uplink back the queue drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o4_gateway_status_and_metrics_show_scan_reports_queued_and_dropped_while_the_uplink_is_down()
 {
    init_logs();
    let auth = Authority::new();
    let mut server = Server::start(&auth, |_| {}).await;
    let gw = Gateway::start(&server, |_, c| {
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
        c.discovery.ranges = vec!["127.0.0.1/32".into()];
        c.discovery.interval = Duration::from_secs(1);
    })
    .await;
    let gaddr = gw.h().metrics_addr().expect("gateway metrics served");
    let addr = server.addr();
    server.stop().await;
    until("4 reports waiting and one dropped", || async {
        let s = gw.h().status();
        s.uplink != "up" && s.discovery_reports_queued == 4 && s.discovery_reports_dropped >= 1
    })
    .await;
    let g = scrape(gaddr, "outpost_gateway_").await;
    assert_eq!(
        g[r#"outpost_gateway_queue_depth{queue="discovery-reports"}"#],
        4.0
    );
    assert!(
        g[r#"outpost_gateway_dropped_total{reason="discovery-report-queue-full"}"#] >= 1.0,
        "{g:#?}"
    );
    assert_eq!(
        g[r#"outpost_gateway_queue_depth{queue="broadcast-fanouts"}"#],
        0.0
    );
    assert_eq!(
        g[r#"outpost_gateway_dropped_total{reason="broadcast-busy"}"#],
        0.0
    );
    let s = gw.h().status();
    assert!(
        s.uplink_last_error.contains("shutting down")
            || s.uplink_last_error.contains("cannot reach"),
        "the gateway says why its uplink is down: {}",
        s.uplink_last_error
    );
    // The status command shows the same (from the status file the gateway keeps, rewritten
    // within a moment of each change).
    let (v, human) = status_until(
        "the status file shows the full queue",
        "outpost-gateway",
        &gw.data,
        |v| {
            v["discovery_reports_queued"] == 4 && v["discovery_reports_dropped"].as_u64() >= Some(1)
        },
    )
    .await;
    assert_eq!(v["broadcasts_running"], 0);
    assert!(
        human.contains("queues      broadcasts 0 of 8 fanning out, 0 dropped (all busy); discovery reports 4 of 4 waiting for the uplink, "),
        "{human}"
    );
    assert!(!human.contains(", 0 dropped (queue full)"), "{human}");

    // The server back on its address: the uplink takes the queue.
    server.pin_listen(addr);
    server.boot().await;
    until("the queue drained over the uplink", || async {
        let s = gw.h().status();
        s.uplink == "up" && s.discovery_reports_queued == 0
    })
    .await;
}
