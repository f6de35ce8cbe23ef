//! The connect path end to end on loopback: agents through a gateway to the server, licence
//! checked at every connect, synced, pushed to.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use outpost_proto::pb::admin::{
    DeviceRef, PushRequest, admin_request::Op, admin_response::Result as R,
};
use outpost_tests::*;

const DAY: Duration = Duration::from_secs(86_400);

/// L6 at scale: 50 agents connect at once through one gateway against a key of 40 seats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l6_fifty_agents_through_one_gateway_forty_seats() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    server
        .import_key(&auth.key("K-40", 40, 30 * DAY), true)
        .await
        .unwrap();
    let gw = Gateway::start(&server, |_, _| {}).await;
    let token = server.token("agent", 50).await;

    // Enroll first, then connect all 50 at the same moment.
    let mut agents = Vec::new();
    for i in 0..50 {
        agents.push(
            Agent::enroll(
                test_agent_config(vec![gw.addr().to_string()], None, &format!("m{i}")),
                &token,
            )
            .await,
        );
    }
    let started = Instant::now();
    for a in agents.iter_mut() {
        a.boot();
    }
    let mut statuses = Vec::new();
    for a in &agents {
        statuses.push(a.wait_checked().await);
    }
    let elapsed = started.elapsed();
    println!("50 agents connected, licence-checked and synced through one gateway in {elapsed:?}");

    let licensed = statuses
        .iter()
        .filter(|s| s.licence.state == "licensed")
        .count();
    let unlicensed: Vec<_> = statuses
        .iter()
        .filter(|s| s.licence.state == "unlicensed")
        .collect();
    assert_eq!(licensed, 40, "exactly the key's seats are licensed");
    assert_eq!(unlicensed.len(), 10);
    for s in &unlicensed {
        assert_eq!(s.licence.reason, "no free seat on key K-40, 40 of 40 used");
        assert!(s.path.starts_with("gateway "), "{}", s.path);
    }
    let key = server.key_info("K-40").await;
    assert_eq!((key.seats_used, key.seats_free), (40, 0));
    assert!(server.h().store().audit_seats().await.unwrap().is_empty());

    // S8, L9, L15: revoking a licensed online device ends its session with "revoked"; the
    // agent drops its grant at once and confirms, so its seat returns, and an unlicensed online
    // agent gets it within seconds, without reconnecting.
    let holder = statuses
        .iter()
        .find(|s| s.licence.state == "licensed")
        .unwrap()
        .device_id
        .clone();
    server
        .admin(Op::DeviceRevoke(DeviceRef {
            device_id: holder.clone(),
            ..Default::default()
        }))
        .await;
    let by_id = |id: &str| agents.iter().find(|a| a.h().device_id() == id).unwrap();
    let revoked = within(
        "the revoked agent drops its grant",
        by_id(&holder)
            .h()
            .wait_for(|s| s.licence.state == "unlicensed"),
    )
    .await;
    assert_eq!(revoked.licence.reason, "revoked", "the agent shows why");
    let licensed_now = |agents: &[Agent]| {
        agents
            .iter()
            .filter(|a| a.h().status().borrow().licence.state == "licensed")
            .count()
    };
    until(
        "the freed seat goes to an unlicensed online agent",
        || async { licensed_now(&agents) == 40 },
    )
    .await;
    assert_eq!(server.key_info("K-40").await.seats_used, 40);
    assert!(server.h().store().audit_seats().await.unwrap().is_empty());

    // Removing a device frees its seat the same way ("removed").
    let holder2 = agents
        .iter()
        .find(|a| {
            a.h().device_id() != holder && a.h().status().borrow().licence.state == "licensed"
        })
        .unwrap()
        .h()
        .device_id()
        .to_owned();
    server
        .admin(Op::DeviceRemove(DeviceRef {
            device_id: holder2.clone(),
            ..Default::default()
        }))
        .await;
    let removed = within(
        "the removed agent drops its grant",
        by_id(&holder2)
            .h()
            .wait_for(|s| s.licence.state == "unlicensed"),
    )
    .await;
    assert_eq!(removed.licence.reason, "removed");
    until(
        "the seat of the removed device goes to an unlicensed agent",
        || async { licensed_now(&agents) == 40 },
    )
    .await;
    assert_eq!(server.key_info("K-40").await.seats_used, 40);
    assert!(server.h().store().audit_seats().await.unwrap().is_empty());
    for a in agents.iter_mut() {
        a.stop().await;
    }
}

/// L6 and P3: reconnecting keeps the seat; a server restart keeps every count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l6_reconnect_keeps_seat_and_p3_restart_keeps_counts() {
    init_logs();
    let auth = Authority::new();
    let mut server = Server::start(&auth, |_| {}).await;
    server
        .import_key(&auth.key("K-3", 3, 30 * DAY), true)
        .await
        .unwrap();
    let mut gw = Gateway::start(&server, |_, _| {}).await;
    let token = server.token("agent", 5).await;
    let mut agents = Vec::new();
    for i in 0..5 {
        agents.push(
            Agent::start(
                test_agent_config(vec![gw.addr().to_string()], None, &format!("r{i}")),
                &token,
            )
            .await,
        );
    }
    let mut licensed_before = HashSet::new();
    for a in &agents {
        let s = a.wait_checked().await;
        if s.licence.state == "licensed" {
            licensed_before.insert(s.device_id.clone());
        }
    }
    assert_eq!(licensed_before.len(), 3);

    // Every agent reconnects: no seat is counted twice, the same devices hold them.
    for a in agents.iter_mut() {
        a.stop().await;
        a.boot();
    }
    let mut licensed_after = HashSet::new();
    for a in &agents {
        let s = a.wait_checked().await;
        if s.licence.state == "licensed" {
            licensed_after.insert(s.device_id.clone());
        }
    }
    assert_eq!(licensed_after, licensed_before, "holders keep their seats");
    assert_eq!(server.key_info("K-3").await.seats_used, 3);

    // Restart the server with everything connected: counts and holders survive.
    let sessions_before: Vec<u64> = agents
        .iter()
        .map(|a| a.h().status().borrow().sessions)
        .collect();
    server.restart().await;
    assert_eq!(server.key_info("K-3").await.seats_used, 3);
    for (a, before) in agents.iter().zip(sessions_before) {
        // Each agent comes back on its own after the restart, in a new session.
        within(
            "agent back after server restart",
            a.h()
                .wait_for(|s| s.sessions > before && s.state == "connected" && s.last_sync > 0),
        )
        .await;
    }
    let mut licensed_restart = HashSet::new();
    for a in &agents {
        let s = a.wait_checked().await;
        if s.licence.state == "licensed" {
            licensed_restart.insert(s.device_id.clone());
        }
    }
    assert_eq!(licensed_restart, licensed_before);
    assert_eq!(server.key_info("K-3").await.seats_used, 3);
    assert!(server.h().store().audit_seats().await.unwrap().is_empty());
    for a in agents.iter_mut() {
        a.stop().await;
    }
    gw.stop().await;
    server.stop().await;
}

/// T7: a push from the server reaches an agent behind the gateway and is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t7_push_reaches_agent_behind_gateway() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    server
        .import_key(&auth.key("K-1", 5, 30 * DAY), true)
        .await
        .unwrap();
    let gw = Gateway::start(&server, |_, _| {}).await;
    let token = server.token("agent", 1).await;
    let agent = Agent::start(
        test_agent_config(vec![gw.addr().to_string()], None, "p1"),
        &token,
    )
    .await;
    agent.wait_checked().await;
    let mut events = agent.h().events();
    let r = server
        .admin(Op::Push(PushRequest {
            device_id: agent.h().device_id().into(),
            kind: "message".into(),
            message: "reboot tonight".into(),
            ..Default::default()
        }))
        .await;
    let R::Push(p) = r else { panic!("{r:?}") };
    assert_eq!(p.outcomes.len(), 1);
    assert_eq!(
        p.outcomes[0].state, "acked",
        "delivered and acknowledged through the gateway"
    );
    let got = within("push event at the agent", async {
        loop {
            if let Ok(outpost_agent::AgentEvent::Push(p)) = events.recv().await {
                return p;
            }
        }
    })
    .await;
    assert_eq!(got.payload, b"reboot tonight");
    let s = within(
        "status shows the push",
        agent.h().wait_for(|s| s.pushes_received == 1),
    )
    .await;
    assert_eq!(s.last_push, "message: reboot tonight");

    // A push to an offline agent waits for its next connect.
    let mut agent = agent;
    agent.stop().await;
    let r = server
        .admin(Op::Push(PushRequest {
            device_id: agent_id(&agent),
            kind: "message".into(),
            message: "while you were away".into(),
            ..Default::default()
        }))
        .await;
    let R::Push(p) = r else { panic!("{r:?}") };
    assert_eq!(p.outcomes[0].state, "queued");
    agent.boot();
    let s = within(
        "queued push delivered at reconnect",
        agent.h().wait_for(|s| s.pushes_received >= 1),
    )
    .await;
    assert_eq!(s.last_push, "message: while you were away");
    agent.stop().await;
}

fn agent_id(a: &Agent) -> String {
    outpost_net::identity::DeviceIdentity::load(&a.data)
        .unwrap()
        .unwrap()
        .device_id
}

/// S1: the gateway relays only ciphertext — a tap on every relayed byte never sees the
/// plaintext of an event the server did receive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_gateway_relays_only_ciphertext() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    server
        .import_key(&auth.key("K-1", 5, 30 * DAY), true)
        .await
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let tap_buf = seen.clone();
    let gw = Gateway::start(&server, move |o, _| {
        o.tap = Some(std::sync::Arc::new(move |_, chunk: &bytes::Bytes| {
            tap_buf.lock().unwrap().extend_from_slice(chunk);
        }));
    })
    .await;
    let token = server.token("agent", 1).await;
    let agent = Agent::start(
        test_agent_config(vec![gw.addr().to_string()], None, "c1"),
        &token,
    )
    .await;
    agent.wait_checked().await;
    let marker = "TOP-SECRET-PAYLOAD-7f3a9c";
    let id = agent.h().queue_event("audit", marker.as_bytes()).unwrap();
    let device = agent.h().device_id().to_owned();
    let store = server.h().store().clone();
    until("event stored at the server", || {
        let store = store.clone();
        let device = device.clone();
        let id = id.clone();
        async move {
            store
                .events_of(&device)
                .await
                .unwrap()
                .iter()
                .any(|e| e.id == id)
        }
    })
    .await;
    let stored = store.events_of(&device).await.unwrap();
    assert_eq!(
        stored.iter().find(|e| e.id == id).unwrap().payload,
        marker.as_bytes()
    );
    let relayed = seen.lock().unwrap().clone();
    assert!(
        relayed.len() > 1000,
        "the tap saw the session ({} bytes)",
        relayed.len()
    );
    let hay = String::from_utf8_lossy(&relayed);
    assert!(
        !hay.contains(marker),
        "plaintext event payload crossed the gateway"
    );
    assert!(!hay.contains(&id), "plaintext event id crossed the gateway");
    assert!(
        !hay.contains("host-c1"),
        "plaintext inventory crossed the gateway"
    );
}

/// S5: events queued while offline arrive once each; acknowledged ones leave the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_events_arrive_once_and_leave_the_queue() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    let token = server.token("agent", 1).await;
    let mut agent =
        Agent::enroll(test_agent_config(vec![], Some(server.addr()), "e1"), &token).await;
    let q = outpost_agent::queue::Queue::open(&agent.data, 1000).unwrap();
    let ids: Vec<String> = (0..450)
        .map(|i| q.push("k", format!("event {i}").as_bytes(), i).unwrap())
        .collect();
    agent.boot();
    let s = within(
        "queue drained",
        agent
            .h()
            .wait_for(|s| s.queue_depth == 0 && s.last_sync > 0),
    )
    .await;
    assert!(s.path.contains("direct"), "{}", s.path);
    let stored = server
        .h()
        .store()
        .events_of(agent.h().device_id())
        .await
        .unwrap();
    assert_eq!(stored.len(), ids.len());
    let got: HashSet<_> = stored.iter().map(|e| e.id.clone()).collect();
    assert_eq!(got, ids.into_iter().collect::<HashSet<_>>());
    agent.stop().await;
}

/// T8: the agent uses the first gateway that answers, falls back to the next, then to the
/// server directly; status shows the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t8_path_falls_back_gateway_then_server_and_returns_to_the_gateway() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    let mut gw = Gateway::start(&server, |_, _| {}).await;
    // A port where nothing answers.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let token = server.token("agent", 1).await;
    let mut agent =
        Agent::enroll(test_agent_config(vec![], Some(server.addr()), "f1"), &token).await;
    let mut cfg = test_agent_config(
        vec![dead_addr.to_string(), gw.addr().to_string()],
        Some(server.addr()),
        "f1",
    );
    cfg.connect.dial_timeout = Duration::from_millis(500);
    cfg.connect.return_check = Duration::from_secs(1);
    agent.config = cfg;
    agent.boot();
    let s = agent.wait_checked().await;
    assert_eq!(s.path, format!("gateway {}", gw.addr()));
    gw.stop().await;
    let s = within(
        "fallback to the server",
        agent
            .h()
            .wait_for(|s| s.state == "connected" && s.path.contains("direct")),
    )
    .await;
    assert_eq!(s.path, format!("server {} (direct)", server.addr()));
    let sessions = s.sessions;
    // The gateway is back: the agent notices by itself (it re-tries the paths it prefers) and
    // moves back behind it, so the office's agents do not bypass it for good.
    gw.boot(server.addr()).await;
    let s = within(
        "back behind the gateway",
        agent
            .h()
            .wait_for(|s| s.state == "connected" && s.path.starts_with("gateway")),
    )
    .await;
    assert_eq!(s.path, format!("gateway {}", gw.addr()));
    assert_eq!(s.sessions, sessions + 1, "one move, no flapping");
    assert_eq!(s.licence.state, agent.h().status().borrow().licence.state);
    agent.stop().await;
    gw.stop().await;
}

/// S1, S3: a running agent that reconnects through its gateway resumes its inner TLS session
/// (a ticket it kept; no certificate signatures) and is licensed and synced again; the server
/// still consults its registry on a resumed session, so a revoked device is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_reconnect_resumes_the_inner_session_and_the_registry_still_decides() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    server
        .import_key(&auth.key("K-R", 5, 30 * DAY), true)
        .await
        .unwrap();
    let gw = Gateway::start(&server, |_, _| {}).await;
    let token = server.token("agent", 1).await;
    let agent = Agent::start(
        test_agent_config(vec![gw.addr().to_string()], None, "res"),
        &token,
    )
    .await;
    agent.wait_checked().await;
    let status = async || match server.admin(Op::ServerStatus(Default::default())).await {
        R::ServerStatus(s) => (s.relayed_sessions, s.relayed_sessions_resumed),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(
        status().await,
        (1, 0),
        "the first session is a full handshake"
    );
    for round in 1..=3u64 {
        let before = agent.h().status().borrow().sessions;
        let mut events = agent.h().events();
        agent.h().reconnect();
        within("the reconnected session synced", async {
            loop {
                if let Ok(outpost_agent::AgentEvent::Synced { .. }) = events.recv().await
                    && agent.h().status().borrow().sessions > before
                {
                    return;
                }
            }
        })
        .await;
        let s = agent.h().status().borrow().clone();
        assert_eq!(
            (s.state.as_str(), s.licence.state.as_str()),
            ("connected", "licensed")
        );
        assert_eq!(
            status().await,
            (1 + round, round),
            "reconnect {round} resumed"
        );
    }
    // A resumed handshake proves nothing about the registry: revocation still ends it.
    let id = agent.h().device_id().to_owned();
    let r = server
        .admin(Op::DeviceRevoke(DeviceRef {
            device_id: id,
            ..Default::default()
        }))
        .await;
    assert!(matches!(r, R::Done(_)), "{r:?}");
    let s = agent
        .h()
        .wait_for(|s| s.licence.state == "unlicensed")
        .await;
    assert!(s.licence.reason.contains("revoked"), "{}", s.licence.reason);
    // The agent comes back by itself (after its backoff) with a ticket from the last session.
    until(
        "the revoked device came back and was refused on a resumed session",
        || async {
            let (all, resumed) = status().await;
            resumed >= 4 && all >= 5
        },
    )
    .await;
    assert_eq!(
        agent.h().status().borrow().licence.state,
        "unlicensed",
        "still refused"
    );
}
