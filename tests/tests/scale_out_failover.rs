//! Failing over between server instances on one PostgreSQL database (P2): a gateway that
//! loses the instance holding its uplink re-attaches to another, its agents' sessions resume
//! through it, and nothing they queued is lost or stored twice.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use outpost_proto::pb::admin::{DeviceList, admin_request::Op, admin_response::Result as R};
use outpost_tests::hierarchy::{ServerProc, import};
use outpost_tests::licensing::{AV_FW, DAY, issue};
use outpost_tests::pg::shared_store;
use outpost_tests::{Agent, Authority, Gateway, init_logs, pg, test_agent_config, within};

/// The instance holding a device's connection, as the device list of `via` says.
async fn holder(via: &ServerProc, device: &str) -> String {
    let R::Devices(list) = via.admin(Op::DeviceList(DeviceList::default())).await else {
        panic!("device list")
    };
    list.devices
        .into_iter()
        .find(|d| d.device_id == device)
        .map(|d| d.instance)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2_gateway_moves_to_another_instance_within_seconds_and_loses_no_event() {
    init_logs();
    let Some(base) = pg::required("p2_gateway_moves_to_another_instance") else {
        return;
    };
    const AGENTS: usize = 6;
    const EVENTS: usize = 20;
    let auth = Authority::new();
    let url = pg::fresh_database(&base);
    let a = ServerProc::start(&auth, "fo-a", |c| c.store.url = url.clone()).await;
    let b = a.another_instance("fo-b");
    let c = a.another_instance("fo-c");
    let mut instances = [a, b, c];
    import(
        &instances[0],
        &issue(&auth, "K-FO", AGENTS as u32, 30 * DAY, AV_FW, false, None),
    )
    .await;
    let addrs: Vec<_> = instances.iter().map(|s| s.addr).collect();
    // An uplink that notices a dead server within 2 s (keep-alives every 500 ms).
    let gw = Gateway::start_at(&addrs, &instances[1].token("gateway", 1).await, |_, g| {
        g.uplink.keep_alive = Duration::from_millis(500);
        g.uplink.idle_timeout = Duration::from_secs(2);
    })
    .await;
    let agent_token = instances[1].token("agent", AGENTS).await;
    let mut agents = vec![];
    for i in 0..AGENTS {
        // Through the gateway only: they come back when it does.
        let cfg = test_agent_config(vec![gw.addr().to_string()], None, &format!("fo-{i}"));
        let mut x = Agent::enroll(cfg, &agent_token).await;
        x.boot();
        agents.push(x);
    }
    for x in &agents {
        within(
            "agent licensed through the gateway",
            x.h().wait_for(|s| s.licence.state == "licensed"),
        )
        .await;
    }
    let gw_id = gw.h().status().device_id;
    let held_by = within("the gateway's instance recorded", async {
        loop {
            let h = holder(&instances[0], &gw_id).await;
            if !h.is_empty() {
                break h;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let victim = instances
        .iter()
        .position(|s| s.addr.to_string() == held_by)
        .expect("the holder is one of the instances");

    // Events queued before and during the outage.
    let mut queued = HashSet::new();
    for (i, x) in agents.iter().enumerate() {
        for n in 0..EVENTS / 2 {
            queued.insert(
                x.h()
                    .queue_event("fo", format!("{i} before {n}").as_bytes())
                    .unwrap(),
            );
        }
    }
    let killed = Instant::now();
    instances[victim].kill();
    for (i, x) in agents.iter().enumerate() {
        for n in 0..EVENTS / 2 {
            queued.insert(
                x.h()
                    .queue_event("fo", format!("{i} during {n}").as_bytes())
                    .unwrap(),
            );
        }
    }
    let mut uplink = gw.h().uplink();
    within(
        "the gateway's uplink up on another instance",
        uplink.wait_for(|u| {
            u.conn
                .as_ref()
                .is_some_and(|c| c.remote_address().to_string() != held_by)
        }),
    )
    .await
    .expect("gateway running");
    let moved_in = killed.elapsed();
    let survivor = &instances[(victim + 1) % 3];
    let now_held_by = within("the new holder recorded", async {
        loop {
            let h = holder(survivor, &gw_id).await;
            if !h.is_empty() && h != held_by {
                break h;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    for x in &agents {
        within(
            "every agent's queue drained through the gateway again",
            x.h()
                .wait_for(|s| s.queue_depth == 0 && s.state == "connected"),
        )
        .await;
    }
    let resumed_in = killed.elapsed();
    let store = shared_store(&url).await;
    let mut stored = vec![];
    for x in &agents {
        stored.extend(store.events_of(x.h().device_id()).await.unwrap());
    }
    let ids: HashSet<String> = stored.iter().map(|e| e.id.clone()).collect();
    assert_eq!(stored.len(), ids.len(), "no event stored twice");
    assert_eq!(ids, queued, "every queued event stored");
    assert!(store.audit_seats().await.unwrap().is_empty());
    store.close().await;
    for x in &agents {
        assert_eq!(x.h().status().borrow().licence.state, "licensed");
    }
    assert!(
        moved_in < Duration::from_secs(5),
        "the gateway re-attached {moved_in:?} after its instance was killed"
    );
    eprintln!(
        "p2 failover: instance {held_by} killed; gateway up on {now_held_by} {moved_in:?} later \
         (uplink idle time-out 2 s), its {AGENTS} agents' {} events all stored once, every queue \
         drained {resumed_in:?} after the kill",
        queued.len()
    );
    instances[victim].spawn();
}
