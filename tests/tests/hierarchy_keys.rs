//! Keys travelling down a tree of real `outpost-server` processes: a renewed key (L11 outcome
//! 3, neighbour part) reaches every server holding a lease of the old key, agents everywhere
//! move to it, and the old key is kept where a subordinate is offline until it reconnects;
//! leases that follow what each office needs (L4 `server:<name>`, L8, L9).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::time::{Duration, Instant};

use outpost_proto::pb::admin::{
    DeviceRef, Empty, KeyAssign, KeyImport, LeaseInfo, admin_request::Op,
    admin_response::Result as R,
};
use outpost_server::config::ServerConfig;
use outpost_tests::hierarchy::*;
use outpost_tests::licensing::{AV_FW, DAY, issue, offer};
use outpost_tests::{Authority, init_logs, until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l11_renewal_reaches_every_server_of_the_tree_and_the_old_key_waits_for_an_offline_office()
{
    init_logs();
    let _serial = one_at_a_time().await;
    let auth = Authority::new();
    let svc = outpost_server::authority::serve(auth.dir.path(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("authority serve");
    let (addr, pin) = (svc.addr.to_string(), svc.tls_sha256.clone());
    let hq = ServerProc::start(&auth, "hq", |c| {
        fast(c);
        c.licensing.authority = addr;
        c.licensing.authority_tls_sha256 = pin;
    })
    .await;
    let regional = ServerProc::start(&auth, "regional", fast).await;
    let mut office = ServerProc::start(&auth, "office", fast).await;
    import(
        &hq,
        &issue(&auth, "K-OLD", 50, 30 * DAY, AV_FW, false, None),
    )
    .await;
    relate(&hq, &regional).await;
    relate(&regional, &office).await;
    let end = outpost_net::unix_now() + 20 * DAY;
    hq.give("K-OLD", "regional", 30, end).await;
    regional.key_seats_become("K-OLD", 30).await;
    regional.give("K-OLD", "office", 10, end).await;
    office.key_seats_become("K-OLD", 10).await;
    let levels = Arc::new(vec![
        agents(&hq, 6).await,
        agents(&regional, 6).await,
        agents(&office, 4).await,
    ]);
    let counts = |key: &str| [0, 1, 2].map(|i| licensed(&levels[i], key));
    until("6 / 6 / 4 agents licensed on K-OLD", || async {
        counts("K-OLD") == [6, 6, 4]
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let mon_old = monitor(levels.clone(), "K-OLD", stop.clone());
    let mon_new = monitor(levels.clone(), "K-NEW", stop.clone());

    // The office goes offline; then the head office renews K-OLD with K-NEW (same components,
    // same seats, a year).
    office.kill();
    offer(
        &auth,
        &issue(&auth, "K-NEW", 50, 365 * DAY, AV_FW, false, Some("K-OLD")),
    );
    let R::Renewals(r) = hq.admin(Op::KeyRenew(Empty {})).await else {
        panic!("renewal report")
    };
    assert_eq!(r.reports[0].outcome, "renewed", "{:?}", r.reports);
    assert!(
        r.reports[0].detail.contains("kept until"),
        "the head office keeps K-OLD while the regional server holds a lease of it: {:?}",
        r.reports
    );

    // The regional server gets a lease of K-NEW (30 seats) beside the old one and takes the
    // renewal over; head-office and regional agents move to K-NEW.
    regional.key_seats_become("K-NEW", 30).await;
    until("head-office and regional agents on K-NEW", || async {
        let c = counts("K-NEW");
        c[0] == 6 && c[1] == 6
    })
    .await;
    until("regional notified the renewal", || async {
        notified(&regional, "key-renewed")
            .await
            .iter()
            .any(|m| m.contains("K-OLD renewed automatically by key K-NEW (from hq)"))
    })
    .await;
    // Once the regional server confirmed, the head office revoked the old lease; its seats
    // come back after the period promised, and then K-OLD leaves the head office.
    until("K-OLD removed at the head office", || async {
        hq.key("K-OLD").await.is_none()
    })
    .await;
    assert!(
        notified(&hq, "key-retired")
            .await
            .iter()
            .any(|m| m.contains("K-OLD removed")),
        "the head office notified the removal"
    );
    // The regional server still gave K-OLD to the office, which is offline: K-OLD stays there,
    // however long it takes (three periods here).
    tokio::time::sleep(PERIOD * 3).await;
    assert!(
        regional.key("K-OLD").await.is_some(),
        "K-OLD kept at the regional server until the offline office reconnects"
    );
    let k = hq.key("K-NEW").await.unwrap();
    assert_eq!(k.seats_leased_out, 30, "{k:?}");

    // The office comes back: it gets K-NEW, takes the renewal over, and K-OLD goes everywhere.
    office.spawn();
    office.key_seats_become("K-NEW", 10).await;
    until("office agents on K-NEW", || async {
        counts("K-NEW") == [6, 6, 4]
    })
    .await;
    until(
        "K-OLD removed at the regional server and the office",
        || async { regional.key("K-OLD").await.is_none() && office.key("K-OLD").await.is_none() },
    )
    .await;
    assert!(
        notified(&office, "key-renewed")
            .await
            .iter()
            .any(|m| m.contains("by key K-NEW (from regional)")),
        "the office notified the renewal"
    );
    stop.store(true, Ordering::Relaxed);
    let (old_max, _) = mon_old.await.unwrap();
    let (new_max, samples) = mon_new.await.unwrap();
    assert!(old_max <= 50 && new_max <= 50, "L15: {old_max} / {new_max}");
    for (s, used, out) in [(&hq, 6, 30), (&regional, 6, 10), (&office, 4, 0)] {
        let k = s.key("K-NEW").await.unwrap();
        assert_eq!(
            (k.seats_used, k.seats_leased_out),
            (used, out),
            "{}: {k:?}",
            s.name
        );
    }
    eprintln!(
        "renewal across the tree: 6/6/4 agents on K-NEW, monitor max {new_max} over {samples} samples"
    );
    svc.shutdown().await;
}

/// Seats of `key` on the open lease `hq` gives `server`, and what it follows.
async fn demand_lease(hq: &ServerProc, server: &str, key: &str) -> Option<LeaseInfo> {
    hq.leases()
        .await
        .into_iter()
        .find(|l| l.direction == "given" && l.server == server && l.key_id == key && !l.revoked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l8_l9_l4_leases_follow_what_each_office_needs_as_seats_free() {
    init_logs();
    let _serial = one_at_a_time().await;
    let auth = Authority::new();
    let quick = |c: &mut ServerConfig| {
        fast(c);
        c.hierarchy.demand_check = Duration::from_secs(2);
    };
    let hq = ServerProc::start(&auth, "hq", quick).await;
    let office_a = ServerProc::start(&auth, "office-a", quick).await;
    let office_b = ServerProc::start(&auth, "office-b", quick).await;
    let key = issue(&auth, "K-AUTO", 12, 30 * DAY, AV_FW, false, None);
    let r = hq
        .admin(Op::KeyImport(KeyImport {
            file_name: "K-AUTO.key".into(),
            content: key.file.clone(),
            auto_distribute: true,
            ..Default::default()
        }))
        .await;
    assert!(matches!(r, R::KeyImport(_)), "{r:?}");
    let k = issue(&auth, "K-ASSIGN", 6, 30 * DAY, AV_FW, false, None);
    let r = hq
        .admin(Op::KeyImport(KeyImport {
            file_name: "K-ASSIGN.key".into(),
            content: k.file.clone(),
            ..Default::default()
        }))
        .await;
    assert!(matches!(r, R::KeyImport(_)), "{r:?}");
    // Office B has a key of its own; office A has none.
    import(
        &office_b,
        &issue(&auth, "K-B", 5, 30 * DAY, AV_FW, false, None),
    )
    .await;
    let hq_agents = agents(&hq, 4).await;
    until("4 head-office agents on K-AUTO", || async {
        licensed(&hq_agents, "K-AUTO") == 4
    })
    .await;
    let mut a = agents(&office_a, 5).await;
    let b = agents(&office_b, 3).await;
    relate(&hq, &office_a).await;
    relate(&hq, &office_b).await;

    // L8: the auto-distributed key goes to the secondary without a key, sized to its devices.
    until("office A's 5 agents licensed on K-AUTO", || async {
        licensed(&a, "K-AUTO") == 5
    })
    .await;
    let l = demand_lease(&hq, "office-a", "K-AUTO").await.unwrap();
    assert_eq!((l.seats, l.follows.as_str()), (5, "auto"), "{l:?}");

    // L9: more devices at office A than seats free at the head office: the lease grows by what
    // is free (12 - 4 - 5 = 3), the rest wait.
    a.extend(agents(&office_a, 5).await);
    until("office A's lease grows to 8", || async {
        demand_lease(&hq, "office-a", "K-AUTO")
            .await
            .map(|l| l.seats)
            == Some(8)
    })
    .await;
    until("8 of office A's 10 agents licensed", || async {
        licensed(&a, "K-AUTO") == 8
    })
    .await;
    // Two head-office devices are revoked: their seats free, and office A gets them at the
    // next check — without an administrator.
    for agent in &hq_agents[..2] {
        hq.admin(Op::DeviceRevoke(DeviceRef {
            device_id: agent.h().device_id().to_owned(),
            ..Default::default()
        }))
        .await;
    }
    until(
        "the revoked devices' seats free at the head office",
        || async { hq.key("K-AUTO").await.unwrap().seats_used == 2 },
    )
    .await;
    let freed = Instant::now();
    until("all 10 office A agents licensed", || async {
        licensed(&a, "K-AUTO") == 10
    })
    .await;
    let took = freed.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "freed seats reached office A's devices in {took:?} (demand check every 2s)"
    );

    // Office B holds a key of its own: no auto-distributed lease for it (L8).
    assert!(demand_lease(&hq, "office-b", "K-AUTO").await.is_none());
    assert!(office_b.key("K-AUTO").await.is_none());

    // L4: K-ASSIGN assigned to office B; nothing is needed there yet, so nothing is given…
    let r = hq
        .admin(Op::KeyAssign(KeyAssign {
            key_id: "K-ASSIGN".into(),
            object: "server:office-b".into(),
        }))
        .await;
    assert!(matches!(r, R::Done(_)), "{r:?}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(demand_lease(&hq, "office-b", "K-ASSIGN").await.is_none());
    // …until office B has more devices than its own key has seats.
    let mut b = b;
    b.extend(agents(&office_b, 4).await);
    until(
        "office B's 7 agents licensed: 5 on K-B, 2 on K-ASSIGN",
        || async { licensed(&b, "K-B") == 5 && licensed(&b, "K-ASSIGN") == 2 },
    )
    .await;
    let l = demand_lease(&hq, "office-b", "K-ASSIGN").await.unwrap();
    assert_eq!((l.seats, l.follows.as_str()), (2, "assigned"), "{l:?}");
    let refused = hq
        .admin_refused(Op::KeyAssign(KeyAssign {
            key_id: "K-ASSIGN".into(),
            object: "server:nowhere".into(),
        }))
        .await;
    assert!(
        refused.contains("no server relation named nowhere"),
        "{refused}"
    );
    for s in [&hq, &office_a, &office_b] {
        for k in ["K-AUTO", "K-ASSIGN", "K-B"] {
            if let Some(k) = s.key(k).await {
                assert!(
                    k.seats_used + k.seats_leased_out <= k.seats_total,
                    "{}: {k:?}",
                    s.name
                );
            }
        }
    }
    eprintln!("demand: freed seats reached office A's devices in {took:?}");
}
