//! WAN outages, server restarts and process crashes (T6, P3).

use super::*;

/// T6 + S5 + L7: the WAN is down longer than the uplink idle timeout; agents stay licensed from
/// their grants and keep queuing events; when the link returns the gateway reconnects with
/// backoff and every event arrives exactly once.
#[test]
fn t6_wan_outage_reconnects_and_delivers_queued_events_once() {
    let Some(o) = Office::new(
        "t6_wan_outage_reconnects_and_delivers_queued_events_once",
        BedOptions {
            agent_hosts: 2,
            ..Default::default()
        },
        5,
        |_| {},
    ) else {
        return;
    };
    let gw = o.start_gateway(|c| {
        c.uplink.keep_alive = Duration::from_secs(2);
        c.uplink.idle_timeout = Duration::from_secs(6);
    });
    o.wait_uplink_up(&gw);
    let agents: Vec<PathBuf> = (0..2)
        .map(|n| o.start_agent(n, n, &format!("{GW_IP}:4701"), |_| {}))
        .collect();
    for a in &agents {
        o.wait_agent("agent connected", a, Duration::from_secs(60), connected);
    }
    o.bed.wan(false).unwrap();
    let cut = Instant::now();
    o.wait_uplink_down(&gw);
    println!("uplink declared down {:?} after the cut", cut.elapsed());
    // While cut off: events queue, licences hold.
    let mut queued = vec![];
    for a in &agents {
        for i in 0..20 {
            let (ok, out, err) = outpost_tests::run_bin(
                "outpost-agent",
                &[
                    "event",
                    "--data-dir",
                    a.to_str().unwrap(),
                    "--kind",
                    "offline",
                    "--payload",
                    &format!("e{i}"),
                ],
            )
            .unwrap();
            assert!(ok, "{err}");
            queued.push(out.trim().to_owned());
        }
        let s = o.wait_agent("agent offline", a, Duration::from_secs(30), |s| {
            s["state"] != "connected"
        });
        assert_eq!(
            s["licence"]["state"], "licensed",
            "licensed from its grant while cut off: {s}"
        );
        assert_eq!(s["queue_depth"], 20);
    }
    while cut.elapsed() < Duration::from_secs(12) {
        std::thread::sleep(Duration::from_millis(200));
    }
    o.bed.wan(true).unwrap();
    let back = Instant::now();
    let gs = o.wait_uplink_up(&gw);
    println!(
        "uplink back {:?} after the link returned ({} connects)",
        back.elapsed(),
        gs["uplink_connects"]
    );
    assert_eq!(gs["uplink_connects"], 2);
    for a in &agents {
        let s = o.wait_agent("queue drained", a, Duration::from_secs(60), |s| {
            connected(s) && s["queue_depth"] == 0
        });
        println!("agent back {:?} after the link returned", back.elapsed());
        assert_eq!(s["licence"]["state"], "licensed");
    }
    let devs = o.devices();
    for a in &agents {
        let d = &devs[&Office::device_id(a)];
        // Agents may queue their own events too; these 20 arrived exactly once each.
        assert_eq!(d["events_stored"], 20, "{d}");
    }
    assert_eq!(queued.len(), 40);
}

impl Office {
    fn wait_uplink_down(&self, gw: &std::path::Path) {
        wait("uplink declared down", Duration::from_secs(60), || {
            self.gateway_status(gw).filter(|s| s["uplink"] == "down")
        });
    }
}

/// T6 storm: the server restarts with every agent connected; they come back spread out, every
/// one licensed as before, seat counts unchanged.
#[test]
fn t6_server_restart_storm_comes_back_spread_out() {
    let Some(o) = Office::new(
        "t6_server_restart_storm_comes_back_spread_out",
        BedOptions {
            agent_hosts: 3,
            ..Default::default()
        },
        20,
        |_| {},
    ) else {
        return;
    };
    let gw = o.start_gateway(|c| c.uplink.reconnect_initial = Duration::from_millis(500));
    o.wait_uplink_up(&gw);
    let agents: Vec<PathBuf> = (0..30)
        .map(|n| o.start_agent(n, n % 3, &format!("{GW_IP}:4701"), |_| {}))
        .collect();
    let mut licensed_before = std::collections::HashSet::new();
    for a in &agents {
        let s = o.wait_agent("agent connected", a, Duration::from_secs(120), connected);
        if s["licence"]["state"] == "licensed" {
            licensed_before.insert(Office::device_id(a));
        }
    }
    assert_eq!(licensed_before.len(), 20);
    let key_before = o.admin(&["key", "list"])["keys"][0]["seats_used"].clone();
    let sessions_before: Vec<i64> = agents
        .iter()
        .map(|a| o.agent_status(a).unwrap()["sessions"].as_i64().unwrap())
        .collect();

    o.bed.stop("server");
    let restarted = Instant::now();
    o.start_server();
    // Watch every agent come back.
    let mut back: Vec<Option<Duration>> = vec![None; agents.len()];
    wait("every agent back", Duration::from_secs(120), || {
        for (i, a) in agents.iter().enumerate() {
            if back[i].is_none()
                && let Some(s) = o.agent_status(a)
                && s["sessions"].as_i64().unwrap_or(0) > sessions_before[i]
                && connected(&s)
            {
                back[i] = Some(restarted.elapsed());
            }
        }
        back.iter().all(Option::is_some).then_some(())
    });
    let mut times: Vec<f64> = back.iter().map(|d| d.unwrap().as_secs_f64()).collect();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let spread = times.last().unwrap() - times.first().unwrap();
    println!(
        "30 agents back after the server restart: first {:.2} s, median {:.2} s, last {:.2} s (spread {:.2} s)",
        times[0],
        times[times.len() / 2],
        times[times.len() - 1],
        spread
    );
    assert!(spread >= 0.5, "agents came back as one spike: {times:?}");
    let mut licensed_after = std::collections::HashSet::new();
    for a in &agents {
        if o.agent_status(a).unwrap()["licence"]["state"] == "licensed" {
            licensed_after.insert(Office::device_id(a));
        }
    }
    assert_eq!(
        licensed_after, licensed_before,
        "every seat holder licensed again, no one else"
    );
    assert_eq!(
        o.admin(&["key", "list"])["keys"][0]["seats_used"],
        key_before
    );
}

/// P3: the gateway and, separately, the server are killed with SIGKILL while agents drain
/// their event queues; after restarts nothing is lost or duplicated and seat counts are right.
#[test]
fn p3_kill_gateway_then_server_mid_sync_loses_and_duplicates_nothing() {
    let Some(o) = Office::new(
        "p3_kill_gateway_then_server_mid_sync_loses_and_duplicates_nothing",
        BedOptions {
            agent_hosts: 2,
            ..Default::default()
        },
        3,
        |c| {
            c.limits.max_events_per_sync = 20;
        },
    ) else {
        return;
    };
    let gw = o.start_gateway(|c| c.uplink.reconnect_initial = Duration::from_millis(300));
    o.wait_uplink_up(&gw);
    let agents: Vec<PathBuf> = (0..2)
        .map(|n| {
            o.start_agent(n, n, &format!("{GW_IP}:4701"), |c| {
                c.queue.batch = 20;
                c.connect.reconnect_initial = Duration::from_millis(300);
            })
        })
        .collect();
    for a in &agents {
        o.wait_agent("agent connected", a, Duration::from_secs(60), connected);
    }
    // Fill the queues while the agents are stopped, so the drain starts on restart.
    for (n, a) in agents.iter().enumerate() {
        o.bed.stop(&format!("agent{n}"));
        let q = outpost_agent::queue::Queue::open(a, 1_000_000).unwrap();
        for i in 0..1500 {
            q.push(
                "bulk",
                format!("bulk {i}").as_bytes(),
                outpost_net::unix_now_ms(),
            )
            .unwrap();
        }
    }
    let ids: Vec<String> = agents.iter().map(|a| Office::device_id(a)).collect();
    let stored = |o: &Office| -> i64 {
        let d = o.devices();
        ids.iter()
            .map(|i| d[i]["events_stored"].as_i64().unwrap())
            .sum()
    };
    let base = stored(&o);
    for (n, a) in agents.iter().enumerate() {
        o.restart_agent(n, n, a, None);
    }
    // Kill the gateway mid-drain.
    wait("drain under way", Duration::from_secs(60), || {
        (stored(&o) > base + 100).then_some(())
    });
    let t0 = Instant::now();
    o.bed.kill("gateway");
    println!(
        "gateway killed with {} of 3000 events stored",
        stored(&o) - base
    );
    o.restart_gateway(&gw, "gw");
    // Kill the server mid-drain.
    let mark = stored(&o);
    wait("drain resumed", Duration::from_secs(60), || {
        o.try_admin(&["device", "list"])
            .ok()
            .and_then(|_| (stored(&o) > mark + 100).then_some(()))
    });
    println!(
        "drain resumed {:?} after the gateway was killed",
        t0.elapsed()
    );
    let t1 = Instant::now();
    o.bed.kill("server");
    o.start_server();
    println!(
        "server killed and restarted with {} of 3000 events stored",
        stored(&o) - base
    );
    for a in &agents {
        o.wait_agent("queue drained", a, Duration::from_secs(120), |s| {
            connected(s) && s["queue_depth"] == 0
        });
    }
    println!(
        "queues drained {:?} after the server was killed",
        t1.elapsed()
    );
    assert_eq!(stored(&o) - base, 3000, "every event stored exactly once");
    let key = &o.admin(&["key", "list"])["keys"][0];
    assert_eq!(key["seats_used"], 2, "{key}");
}
