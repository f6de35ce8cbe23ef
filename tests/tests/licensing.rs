//! Licensing through the real connect path: offline grants (L7), one record per machine (S7),
//! the nearest assignment (L4), and the gateway's keep-alive (T3) on loopback.

use std::time::Duration;

use outpost_proto::pb::admin::{KeyAssign, admin_request::Op};
use outpost_tests::*;

const DAY: Duration = Duration::from_secs(86_400);

/// L7: the grant on disk keeps the agent licensed while the server is gone, until it expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_agent_stays_licensed_offline_until_grant_expires() {
    init_logs();
    let auth = Authority::new();
    let mut server = Server::start(&auth, |c| c.timing.grant_ttl = Duration::from_secs(4)).await;
    server
        .import_key(&auth.key("K-L7", 5, 30 * DAY), true)
        .await
        .unwrap();
    let token = server.token("agent", 1).await;
    let mut agent =
        Agent::start(test_agent_config(vec![], Some(server.addr()), "l7"), &token).await;
    let s = agent.wait_checked().await;
    assert_eq!(s.licence.state, "licensed");
    let expires = s.licence.expires_at;
    assert!(expires <= outpost_net::unix_now() + 4, "grant TTL applied");

    server.stop().await;
    let s = within(
        "agent offline",
        agent.h().wait_for(|s| s.state == "offline"),
    )
    .await;
    assert_eq!(
        s.licence.state, "licensed",
        "still licensed offline from its grant"
    );
    assert_eq!(s.licence.key, "K-L7");
    // The status command (another process) derives the same from disk.
    let (ok, out, err) = run_bin(
        "outpost-agent",
        &[
            "status",
            "--json",
            "--data-dir",
            agent.data.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["licence"]["state"], "licensed");

    // At expiry the agent becomes unlicensed by itself, without any connection.
    let s = within(
        "grant expiry offline",
        agent.h().wait_for(|s| s.licence.state == "unlicensed"),
    )
    .await;
    assert!(outpost_net::unix_now() >= expires);
    assert!(
        s.licence.reason.contains("grant for key K-L7 expired"),
        "{}",
        s.licence.reason
    );
    agent.stop().await;
}

/// S7: a re-imaged machine enrolling again takes over its record and its seat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_reenrolled_machine_takes_over_record_and_seat() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    server
        .import_key(&auth.key("K-S7", 1, 30 * DAY), true)
        .await
        .unwrap();
    let token = server.token("agent", 2).await;
    let mut first = Agent::start(
        test_agent_config(vec![], Some(server.addr()), "same-machine"),
        &token,
    )
    .await;
    let s1 = first.wait_checked().await;
    assert_eq!(s1.licence.state, "licensed");
    first.stop().await;

    // Same machine identity, fresh install (new data directory, new key pair).
    let mut second = Agent::start(
        test_agent_config(vec![], Some(server.addr()), "same-machine"),
        &token,
    )
    .await;
    let s2 = second.wait_checked().await;
    assert_eq!(s2.device_id, s1.device_id, "same record");
    assert_eq!(
        s2.licence.state, "licensed",
        "its seat came along; no second seat needed"
    );
    assert_eq!(server.key_info("K-S7").await.seats_used, 1);
    assert_eq!(
        server.agents().await.devices.len(),
        1,
        "no duplicate record"
    );
    // The old installation's certificate no longer opens a session.
    first.boot();
    let s = within(
        "old certificate refused",
        first
            .h()
            .wait_for(|s| s.state == "offline" && s.last_error.contains("not registered")),
    )
    .await;
    assert!(s.last_error.contains("enroll again"), "{}", s.last_error);
    first.stop().await;
    second.stop().await;
}

/// L4: a key assigned to the device beats the key assigned to everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_nearest_assignment_wins() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    server
        .import_key(&auth.key("K-ALL", 5, 30 * DAY), true)
        .await
        .unwrap();
    server
        .import_key(&auth.key("K-VIP", 1, 30 * DAY), false)
        .await
        .unwrap();
    let token = server.token("agent", 1).await;
    let mut agent = Agent::start(
        test_agent_config(vec![], Some(server.addr()), "vip"),
        &token,
    )
    .await;
    assert_eq!(agent.wait_checked().await.licence.key, "K-ALL");
    server
        .admin(Op::KeyAssign(KeyAssign {
            key_id: "K-VIP".into(),
            object: format!("device:{}", agent.h().device_id()),
        }))
        .await;
    agent.stop().await;
    agent.boot();
    let s = agent.wait_checked().await;
    assert_eq!(
        s.licence.key, "K-VIP",
        "device assignment is nearer than everyone"
    );
    // The farther seat is given back once the agent stored the nearer grant.
    server.seats_used_becomes("K-ALL", 0).await;
    assert_eq!(server.key_info("K-VIP").await.seats_used, 1);
    agent.stop().await;
}

/// T3: with keep-alives below the idle timeout the uplink stays one connection across idle
/// periods several times longer than the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t3_uplink_survives_idle_periods_with_keepalive() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |c| c.timing.idle_timeout = Duration::from_secs(2)).await;
    let gw = Gateway::start(&server, |_, c| {
        c.uplink.keep_alive = Duration::from_millis(300);
        c.uplink.idle_timeout = Duration::from_secs(2);
    })
    .await;
    let first = gw.h().uplink().borrow().conn.as_ref().unwrap().stable_id();
    // Idle for three idle timeouts: the behaviour under test is what happens over time.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let st = gw.h().status();
    assert_eq!(st.uplink, "up");
    assert_eq!(st.uplink_connects, 1, "never reconnected");
    assert_eq!(
        gw.h().uplink().borrow().conn.as_ref().unwrap().stable_id(),
        first
    );
}
