//! A renewed key across a tree of real `outpost-server` processes (L11 outcome 3, neighbour
//! part): the renewal reaches every server holding a lease of the old key, agents everywhere
//! move to it, and the old key is kept where a subordinate is offline until it reconnects.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use outpost_proto::pb::admin::{Empty, admin_request::Op, admin_response::Result as R};
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
