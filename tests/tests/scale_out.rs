//! Scale-out on PostgreSQL (P2): several server instances on one database sharing one seat
//! count, waking each other, surviving a database restart (storage and `migrate-store`:
//! `scale_out_store.rs`). Needs the test cluster (`.ci/pg-cluster start`,
//! `OUTPOST_TEST_PG`); CI sets `OUTPOST_REQUIRE_PG=1`, so there a missing cluster fails.

use std::time::Duration;

use outpost_proto::pb::admin::{
    DeviceList, DeviceRef, PushRequest, admin_request::Op, admin_response::Result as R,
};
use outpost_server::config::ServerConfig;
use outpost_tests::hierarchy::{ServerProc, import};
use outpost_tests::licensing::{AV_FW, DAY, issue};
use outpost_tests::pg::{shared_store, spread_agents};
use outpost_tests::{Agent, Authority, init_logs, pg, until};

/// Three server instances on one PostgreSQL database, agents spread over them, twice as many as
/// a key has seats, all at once: exactly S licensed across all, seats consistent, and every
/// instance's device list says which instance holds each session. Then what is done through
/// one instance reaches sessions held by another: a push (A → C), a revocation (A → B), a new
/// key (B → A).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2_three_instances_share_seats_revocations_pushes_and_key_changes() {
    init_logs();
    let Some(base) =
        pg::required("p2_three_instances_share_seats_revocations_pushes_and_key_changes")
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
    let c = a.another_instance("instance-c");
    let instances = [&a, &b, &c];
    import(
        &a,
        &issue(&auth, "K-SHARED", S as u32, 30 * DAY, AV_FW, false, None),
    )
    .await;
    let mut agents = spread_agents(&instances, 2 * S, "p2").await;
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
        "exactly {S} of {} licensed across the instances",
        2 * S
    );
    let on = |n: usize| {
        agents
            .iter()
            .enumerate()
            .filter(|(i, x)| i % 3 == n && x.h().status().borrow().licence.state == "licensed")
            .count()
    };
    let split = [on(0), on(1), on(2)];
    assert_eq!(split.iter().sum::<usize>(), S);
    assert!(
        split.iter().filter(|n| **n > 0).count() >= 2,
        "several instances licensed devices: {split:?}"
    );
    for s in instances {
        let k = s.key("K-SHARED").await.unwrap();
        assert_eq!(k.seats_used as usize, S, "{}: {k:?}", s.name);
    }
    let store = shared_store(&url).await;
    assert!(store.audit_seats().await.unwrap().is_empty());
    store.close().await;
    // Which instance holds which session is in the database: C's device list names, for every
    // agent, the instance it is connected to.
    until("C's device list names each agent's instance", || async {
        let R::Devices(list) = c.admin(Op::DeviceList(DeviceList::default())).await else {
            return false;
        };
        agents.iter().enumerate().all(|(i, x)| {
            list.devices.iter().any(|d| {
                d.device_id == x.h().device_id()
                    && d.online
                    && d.instance == instances[i % 3].addr.to_string()
            })
        })
    })
    .await;

    // A push queued through A for an agent connected to C reaches it once, from the mailbox,
    // delivered by C; its acknowledgement empties the mailbox.
    let target = agents
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 == 2)
        .map(|(_, x)| x)
        .nth(1)
        .expect("a second agent on C");
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
        "the push reaches the agent on C",
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
        .find(|(i, x)| i % 3 == 1 && x.h().status().borrow().licence.state == "licensed")
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

    // A policy set through B reaches an agent connected to C at once (D5: C is woken and
    // tells its sessions to sync), not at C's next periodic sync (600 s here).
    let on_c = agents
        .iter()
        .enumerate()
        .find(|(i, x)| i % 3 == 2 && x.h().status().borrow().state == "connected")
        .map(|(_, x)| x)
        .expect("an agent on C");
    let started = std::time::Instant::now();
    b.admin(Op::PolicySet(outpost_proto::pb::admin::PolicySet {
        group: "everyone".into(),
        document: r#"{"set": "through B"}"#.into(),
    }))
    .await;
    outpost_tests::within(
        "the policy set through B reaches the agent on C",
        on_c.h()
            .wait_for(|s| s.policy == serde_json::json!({"set": "through B"})),
    )
    .await;
    let policy_in = started.elapsed();
    eprintln!(
        "p2: {S} of {} licensed, {split:?} through instances A/B/C; push through A reached \
         C's agent in {pushed_in:?}; revoked on B {revoked_in:?} after A; a key imported \
         through B licensed the waiting agents in {rechecked_in:?}; a policy set through B \
         reached C's agent in {policy_in:?}",
        2 * S
    );
}

/// PostgreSQL restarted under a running instance (every connection cut): the server does not
/// crash, nothing committed is lost, and it serves again by itself — admin requests, licence
/// checks, and the wake-ups (its listener reconnects). Then PostgreSQL down for a while: a
/// device connecting meanwhile is refused with a retry-after naming the database (not an
/// internal error), and is licensed by itself once the database is back.
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
    let mut late = spread_agents(&[&s], 1, "late").await.remove(0);

    // Two pushes in an online agent's mailbox whose wake-ups never came: one it already had
    // (as if its acknowledgement had not been committed) and a new one. The catch-up after the
    // restart delivers both; the agent acts on the new one only.
    let target = &agents[0];
    let before = target.h().status().borrow().pushes_received;
    let R::Push(first) = s
        .admin(Op::Push(PushRequest {
            device_id: target.h().device_id().into(),
            kind: "message".into(),
            message: "first".into(),
            wait_ms: 5_000,
            ..Default::default()
        }))
        .await
    else {
        panic!("push")
    };
    assert_eq!(first.outcomes[0].state, "acked");
    let store = shared_store(&url).await;
    let push = |id: &str, text: &str| outpost_proto::pb::v1::Push {
        id: id.into(),
        kind: outpost_proto::pb::v1::PushKind::Message as i32,
        payload: text.as_bytes().to_vec(),
        created_at_ms: outpost_net::unix_now_ms(),
    };
    let device = [target.h().device_id().to_owned()];
    let later = outpost_net::unix_now() + 3600;
    store
        .queue_push(&device, &push(&first.push_id, "first"), later)
        .await
        .unwrap();
    store
        .queue_push(&device, &push("p-missed", "missed wake-up"), later)
        .await
        .unwrap();
    store.close().await;

    cluster.restart();
    // The admin request is retried by the harness until the server answers again; the key it
    // imports reaches the waiting agents through the licence epoch.
    let started = std::time::Instant::now();
    import(
        &s,
        &issue(&auth, "K-AFTER", 3, 30 * DAY, AV_FW, false, None),
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
    let st = outpost_tests::within(
        "the push whose wake-up was missed delivered by the catch-up",
        target
            .h()
            .wait_for(|st| st.last_push == "message: missed wake-up"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        target.h().status().borrow().pushes_received,
        before + 2,
        "\"first\" acted on once, \"missed wake-up\" once: {st:?}"
    );

    // Down for a while: a device connecting now is told to come back later.
    cluster.pause();
    late.boot();
    let st = outpost_tests::within(
        "the late agent refused while the database is down",
        late.h().wait_for(|st| st.last_error.contains("database")),
    )
    .await;
    assert!(
        st.last_error.contains("come back later") && !st.last_error.contains("incident"),
        "a retry-after naming the database, not an internal error: {}",
        st.last_error
    );
    assert!(s.running(), "the server process survived the outage");
    let down = std::time::Instant::now();
    cluster.resume();
    outpost_tests::within(
        "the late agent licensed by itself once the database is back",
        late.h().wait_for(|st| st.licence.state == "licensed"),
    )
    .await;
    eprintln!(
        "p2: after a PostgreSQL restart the server served a new key to waiting agents in \
         {back:?}; a device refused during an outage ({}) was licensed {:?} after the database \
         came back",
        st.last_error,
        down.elapsed()
    );
    s.kill();
}

/// A storm of 2 × S agents over three instances — a quarter behind a gateway that knows all
/// three, the rest direct with the whole address list — one instance SIGKILLed mid-storm and
/// restarted: exactly S licensed in the end (counting grants the agents hold, L15), and the
/// seat audit clean.
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
    let b = a.another_instance("storm-b");
    let mut c = a.another_instance("storm-c");
    let addrs = [a.addr, b.addr, c.addr];
    import(
        &a,
        &issue(&auth, "K-STORM", S as u32, 30 * DAY, AV_FW, false, None),
    )
    .await;
    let gw = outpost_tests::Gateway::start_at(&addrs, &b.token("gateway", 1).await, |_, g| {
        g.uplink.keep_alive = Duration::from_millis(500);
        g.uplink.idle_timeout = Duration::from_secs(2);
    })
    .await;
    let mut agents = spread_agents(&[&a, &b, &c], 2 * S, "ks").await;
    for (i, x) in agents.iter_mut().enumerate() {
        x.config.server =
            outpost_net::config::Addresses(addrs.iter().map(|a| a.to_string()).collect());
        if i % 4 == 0 {
            x.config.gateways = vec![gw.addr().to_string()];
        }
    }
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
    // Kill C while the storm is under way.
    until("the storm under way", || async { count(&agents) >= 2 }).await;
    c.kill();
    let at_kill = count(&agents);
    c.spawn();
    until("exactly S licensed once C is back", || async {
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
    let via_gateway = agents
        .iter()
        .filter(|x| x.h().status().borrow().path.starts_with("gateway"))
        .count();
    let store = shared_store(&url).await;
    assert!(store.audit_seats().await.unwrap().is_empty());
    store.close().await;
    let k = a.key("K-STORM").await.unwrap();
    assert_eq!(k.seats_used as usize, S, "{k:?}");
    eprintln!(
        "p2 storm: {} agents over three instances ({via_gateway} through the gateway at the end), \
         C killed with {at_kill} licensed, {S} licensed after",
        2 * S
    );
}
