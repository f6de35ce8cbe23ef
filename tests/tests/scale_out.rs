//! Scale-out on PostgreSQL (P2): several server instances on one database sharing one seat
//! count, waking each other, surviving a database restart (storage and `migrate-store`:
//! `scale_out_store.rs`). Needs the test cluster (`.ci/pg-cluster start`,
//! `OUTPOST_TEST_PG`); CI sets `OUTPOST_REQUIRE_PG=1`, so there a missing cluster fails.

use std::time::Duration;

use outpost_proto::pb::admin::{
    DeviceRef, PushRequest, TokenCreate, admin_request::Op, admin_response::Result as R,
};
use outpost_server::config::ServerConfig;
use outpost_server::store::{Durability, Store};
use outpost_tests::hierarchy::{ServerProc, import};
use outpost_tests::licensing::{AV_FW, DAY, issue};
use outpost_tests::{Agent, Authority, init_logs, pg, test_agent_config, until};

/// Two server instances on one PostgreSQL database, agents split over them, twice as many as
/// a key has seats, all at once: exactly S licensed across both, seats consistent. Then what
/// is done through one instance reaches sessions held by the other: a push, a revocation, a
/// new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2_two_instances_share_seats_revocations_pushes_and_key_changes() {
    init_logs();
    let Some(base) =
        pg::required("p2_two_instances_share_seats_revocations_pushes_and_key_changes")
    else {
        return;
    };
    const S: usize = 15;
    let auth = Authority::new();
    let url = pg::fresh_database(&base);
    // A sync interval far longer than the test: what reaches sessions on the other instance
    // does so through the wake-ups, not a periodic sync.
    let on_pg = |c: &mut ServerConfig| {
        c.store.url = url.clone();
        c.timing.sync_interval = Duration::from_secs(600);
    };
    let a = ServerProc::start(&auth, "instance-a", on_pg).await;
    let b = a.another_instance("instance-b");
    import(
        &a,
        &issue(&auth, "K-SHARED", S as u32, 30 * DAY, AV_FW, false, None),
    )
    .await;
    let mut agents = spread_agents(&a, &b, 2 * S, "p2").await;
    for x in agents.iter_mut() {
        x.boot();
    }
    for x in &agents {
        x.wait_checked().await;
    }
    let licensed = || {
        agents
            .iter()
            .filter(|x| x.h().status().borrow().licence.state == "licensed")
            .count()
    };
    until("every agent checked", || async {
        agents
            .iter()
            .all(|x| !x.h().status().borrow().licence.state.is_empty())
    })
    .await;
    assert_eq!(
        licensed(),
        S,
        "exactly {S} of {} licensed across both instances",
        2 * S
    );
    let per = |port| {
        agents
            .iter()
            .enumerate()
            .filter(|(i, x)| {
                (if i % 2 == 0 { a.addr } else { b.addr }) == port
                    && x.h().status().borrow().licence.state == "licensed"
            })
            .count()
    };
    let (on_a, on_b) = (per(a.addr), per(b.addr));
    assert!(
        on_a > 0 && on_b > 0,
        "both instances licensed devices: {on_a} / {on_b}"
    );
    assert_eq!(on_a + on_b, S);
    for s in [&a, &b] {
        let k = s.key("K-SHARED").await.unwrap();
        assert_eq!(k.seats_used as usize, S, "{}: {k:?}", s.name);
    }
    let store = shared_store(&url).await;
    assert!(store.audit_seats().await.unwrap().is_empty());
    store.close().await;

    // A push queued through A for an agent connected to B reaches it once, from the mailbox,
    // delivered by B; its acknowledgement empties the mailbox.
    let target = agents
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, x)| x)
        .nth(1)
        .expect("a second agent on B");
    let before = target.h().status().borrow().pushes_received;
    let started = std::time::Instant::now();
    let r = a
        .admin(Op::Push(PushRequest {
            device_id: target.h().device_id().into(),
            kind: "message".into(),
            message: "through A".into(),
            wait_ms: 1,
            ..Default::default()
        }))
        .await;
    let R::Push(p) = r else { panic!("{r:?}") };
    assert_eq!(
        p.outcomes[0].state, "queued",
        "not connected to A: into the mailbox"
    );
    let st = outpost_tests::within(
        "the push reaches the agent on B",
        target.h().wait_for(|s| s.pushes_received > before),
    )
    .await;
    let pushed_in = started.elapsed();
    assert_eq!(st.last_push, "message: through A");
    let store = shared_store(&url).await;
    until("the acknowledged push left the mailbox", || async {
        store
            .pending_pushes(target.h().device_id(), outpost_net::unix_now())
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    store.close().await;
    assert_eq!(
        target.h().status().borrow().pushes_received,
        before + 1,
        "once"
    );

    // A device revoked through instance A loses its session on B within 2 s.
    let on_b_agent = agents
        .iter()
        .enumerate()
        .find(|(i, x)| i % 2 == 1 && x.h().status().borrow().licence.state == "licensed")
        .map(|(_, x)| x)
        .expect("a licensed agent on B");
    let started = std::time::Instant::now();
    a.admin(Op::DeviceRevoke(DeviceRef {
        device_id: on_b_agent.h().device_id().to_owned(),
        ..Default::default()
    }))
    .await;
    let st = outpost_tests::within(
        "the agent on B is told it is revoked",
        on_b_agent.h().wait_for(|s| s.licence.state == "unlicensed"),
    )
    .await;
    let revoked_in = started.elapsed();
    assert_eq!(st.licence.reason, "revoked");
    assert!(
        revoked_in < Duration::from_secs(2),
        "revoked on B {revoked_in:?} after A committed"
    );

    // A key imported through B licenses the unlicensed agents held by A within seconds: A's
    // sessions re-check when B's change wakes it (their sync interval is far longer).
    let started = std::time::Instant::now();
    import(
        &b,
        &issue(&auth, "K-MORE", S as u32, 30 * DAY, AV_FW, false, None),
    )
    .await;
    until("every agent but the revoked one licensed", || async {
        agents
            .iter()
            .filter(|x| x.h().status().borrow().licence.state == "licensed")
            .count()
            == 2 * S - 1
    })
    .await;
    let rechecked_in = started.elapsed();
    eprintln!(
        "p2: {S} of {} licensed, {on_a} through instance A and {on_b} through B; push through \
         A reached B's agent in {pushed_in:?}; revoked on B {revoked_in:?} after A; a key \
         imported through B licensed A's waiting agents in {rechecked_in:?}",
        2 * S
    );
}

/// PostgreSQL restarted under a running instance (every connection cut): the server does not
/// crash, nothing committed is lost, and it serves again by itself — admin requests, licence
/// checks, and the wake-ups (its listener reconnects).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2_postgres_restarted_under_a_running_instance_it_recovers_by_itself() {
    init_logs();
    if pg::required("p2_postgres_restarted").is_none() {
        return;
    }
    let cluster = pg::OwnCluster::start();
    let url = pg::fresh_database(&cluster.url);
    let auth = Authority::new();
    let mut s = ServerProc::start(&auth, "instance", |c| {
        c.store.url = url.clone();
        c.timing.sync_interval = Duration::from_secs(600);
    })
    .await;
    import(
        &s,
        &issue(&auth, "K-BEFORE", 2, 30 * DAY, AV_FW, false, None),
    )
    .await;
    let agents = outpost_tests::hierarchy::agents(&s, 4).await;
    until("2 of 4 agents licensed", || async {
        outpost_tests::hierarchy::licensed(&agents, "K-BEFORE") == 2
    })
    .await;

    cluster.restart();
    // The admin request is retried by the harness until the server answers again; the key it
    // imports reaches the waiting agents through the licence epoch.
    let started = std::time::Instant::now();
    import(
        &s,
        &issue(&auth, "K-AFTER", 2, 30 * DAY, AV_FW, false, None),
    )
    .await;
    until(
        "the 2 waiting agents licensed on the key imported after the restart",
        || async { outpost_tests::hierarchy::licensed(&agents, "K-AFTER") == 2 },
    )
    .await;
    let back = started.elapsed();
    assert!(
        s.running(),
        "the server process survived the database restart"
    );
    let k = s.key("K-BEFORE").await.unwrap();
    assert_eq!(k.seats_used, 2, "committed seats survived: {k:?}");
    eprintln!(
        "p2: after a PostgreSQL restart the server served a new key to waiting agents in {back:?}"
    );
    s.kill();
}

/// A storm of 2 × S agents over two instances, one instance SIGKILLed mid-storm and restarted:
/// exactly S licensed in the end (counting grants the agents hold), and the seat audit clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2_instance_killed_mid_storm_still_exactly_s_licensed() {
    init_logs();
    let Some(base) = pg::required("p2_instance_killed_mid_storm") else {
        return;
    };
    const S: usize = 20;
    let auth = Authority::new();
    let url = pg::fresh_database(&base);
    let a = ServerProc::start(&auth, "storm-a", |c| c.store.url = url.clone()).await;
    let mut b = a.another_instance("storm-b");
    import(
        &a,
        &issue(&auth, "K-STORM", S as u32, 30 * DAY, AV_FW, false, None),
    )
    .await;
    let mut agents = spread_agents(&a, &b, 2 * S, "ks").await;
    let count = |agents: &[Agent]| {
        let now = outpost_net::unix_now();
        agents
            .iter()
            .filter(|x| {
                let s = x.h().status().borrow().clone();
                s.licence.state == "licensed" && s.licence.expires_at > now
            })
            .count()
    };
    for x in agents.iter_mut() {
        x.boot();
    }
    // Kill B while the storm is under way.
    until("the storm under way", || async { count(&agents) >= 2 }).await;
    b.kill();
    let at_kill = count(&agents);
    b.spawn();
    until("exactly S licensed once B is back", || async {
        count(&agents) == S
            && agents
                .iter()
                .all(|x| !x.h().status().borrow().licence.state.is_empty())
    })
    .await;
    // Held for a while: nothing more is handed out.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(count(&agents) <= S, "over-allocated: {}", count(&agents));
    }
    let store = shared_store(&url).await;
    assert!(store.audit_seats().await.unwrap().is_empty());
    store.close().await;
    let k = a.key("K-STORM").await.unwrap();
    assert_eq!(k.seats_used as usize, S, "{k:?}");
    eprintln!(
        "p2 storm: {} agents, B killed with {at_kill} licensed, {S} licensed after",
        2 * S
    );
}

/// Enrolls `n` agents with a token made through `b` (good on every instance: one database),
/// alternately pointed at `a` and `b`.
async fn spread_agents(a: &ServerProc, b: &ServerProc, n: usize, prefix: &str) -> Vec<Agent> {
    let R::TokenCreated(t) = b
        .admin(Op::TokenCreate(TokenCreate {
            role: "agent".into(),
            uses: n as u32,
            ttl_secs: 3600,
            ..Default::default()
        }))
        .await
    else {
        panic!("token")
    };
    let mut agents = vec![];
    for i in 0..n {
        let to = if i % 2 == 0 { a.addr } else { b.addr };
        let config = test_agent_config(vec![], Some(to), &format!("{prefix}-{i}"));
        agents.push(Agent::enroll(config, &t.token).await);
    }
    agents
}

/// The shared database's store, opened beside the instances (audits, mailbox).
async fn shared_store(url: &str) -> Store {
    let nowhere = std::path::Path::new("/nonexistent");
    Store::open_configured(nowhere, url, Durability::Normal)
        .await
        .unwrap()
}
