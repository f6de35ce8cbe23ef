//! Crashes: an agent process killed with SIGKILL in the middle of draining its event queue
//! loses nothing and duplicates nothing after it restarts (S5, P4).

use std::collections::HashSet;
use std::time::Duration;

use outpost_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_agent_killed_with_events_queued_delivers_each_exactly_once() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |c| c.limits.max_events_per_sync = 50).await;
    let token = server.token("agent", 1).await;
    let mut cfg = test_agent_config(vec![], Some(server.addr()), "crash1");
    cfg.queue.batch = 50;
    let agent = Agent::enroll(cfg, &token).await;
    let device = outpost_net::identity::DeviceIdentity::load(&agent.data)
        .unwrap()
        .unwrap()
        .device_id;

    // Events queued through the CLI, as a product integrating the agent would.
    let mut ids = HashSet::new();
    for i in 0..5 {
        let (ok, out, err) = run_bin(
            "outpost-agent",
            &[
                "event",
                "--data-dir",
                agent.data.to_str().unwrap(),
                "--kind",
                "cli",
                "--payload",
                &format!("cli {i}"),
            ],
        )
        .unwrap();
        assert!(ok, "{err}");
        ids.insert(out.trim().to_owned());
    }
    let q = outpost_agent::queue::Queue::open(&agent.data, 100_000).unwrap();
    for i in 0..1500 {
        ids.insert(
            q.push(
                "bulk",
                format!("bulk {i}").as_bytes(),
                outpost_net::unix_now_ms(),
            )
            .unwrap(),
        );
    }
    let store = server.h().store().clone();

    // Kill the agent as soon as the server has some, not all, of the events.
    let mut child = spawn_agent_process(&agent.data);
    let d = device.clone();
    let s = store.clone();
    until("first events stored", || {
        let (s, d) = (s.clone(), d.clone());
        async move { s.event_count(&d).await.unwrap() > 0 }
    })
    .await;
    child.0.kill().expect("SIGKILL");
    child.0.wait().unwrap();
    let stored_at_kill = store.event_count(&device).await.unwrap();
    let left = q.len();
    println!("killed with {stored_at_kill} events stored, {left} still queued");
    assert!(left > 0, "the kill landed before the queue drained");

    // Restart: everything arrives, nothing twice.
    let mut child = spawn_agent_process(&agent.data);
    let (s, d) = (store.clone(), device.clone());
    let want = ids.len() as i64;
    until("all events stored", || {
        let (s, d) = (s.clone(), d.clone());
        async move { s.event_count(&d).await.unwrap() >= want }
    })
    .await;
    until("queue drained", || {
        let q = q.clone();
        async move { q.is_empty() }
    })
    .await;
    child.0.kill().ok();
    child.0.wait().ok();
    let stored = store.events_of(&device).await.unwrap();
    assert_eq!(stored.len(), ids.len(), "each event stored exactly once");
    let got: HashSet<String> = stored.into_iter().map(|e| e.id).collect();
    assert_eq!(got, ids);
    let _ = Duration::ZERO;
}

/// S5: the server committed a batch of events and acknowledged it, but the agent died before
/// it deleted them (the acknowledgement was lost): at its restart it sends them again, and the
/// server stores each exactly once — none lost, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_acknowledgement_lost_after_commit_duplicates_nothing() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    let token = server.token("agent", 1).await;
    let cfg = test_agent_config(vec![], Some(server.addr()), "ack-lost");
    let agent = Agent::enroll(cfg.clone(), &token).await;
    let device = outpost_net::identity::DeviceIdentity::load(&agent.data)
        .unwrap()
        .unwrap()
        .device_id;
    let q = outpost_agent::queue::Queue::open(&agent.data, 1000).unwrap();
    let mut ids = HashSet::new();
    for i in 0..10 {
        ids.insert(
            q.push(
                "e",
                format!("event {i}").as_bytes(),
                outpost_net::unix_now_ms(),
            )
            .unwrap(),
        );
    }
    let dying = outpost_agent::start(
        &agent.data,
        outpost_agent::StartOptions {
            config: Some(cfg.clone()),
            die_before_ack: true,
            ..Default::default()
        },
    )
    .unwrap();
    within(
        "the agent dies between the server's commit and its own deletion",
        dying.wait_for(|s| s.state == "crashed"),
    )
    .await;
    dying.shutdown().await;
    let store = server.h().store().clone();
    assert_eq!(store.event_count(&device).await.unwrap(), 10, "committed");
    assert_eq!(
        q.len(),
        10,
        "still queued: the acknowledgement never took effect"
    );

    let again = outpost_agent::start(
        &agent.data,
        outpost_agent::StartOptions {
            config: Some(cfg),
            ..Default::default()
        },
    )
    .unwrap();
    until("queue drained", || {
        let q = q.clone();
        async move { q.is_empty() }
    })
    .await;
    again.shutdown().await;
    let stored = store.events_of(&device).await.unwrap();
    assert_eq!(stored.len(), 10, "each event stored exactly once");
    let got: HashSet<String> = stored.into_iter().map(|e| e.id).collect();
    assert_eq!(got, ids, "none lost");
}
