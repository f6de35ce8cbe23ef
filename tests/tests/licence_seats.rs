//! Objects, grants and seats (SPEC §3: L4, L5, L8, L9, L10) driven through the real server and
//! agents: nearest assignment, reserve keys taking over offline, automatic distribution, freed
//! seats, usage thresholds. Time-based rules use keys valid for seconds, or the store's
//! functions with a chosen "now", never long sleeps.

use std::time::Duration;

use outpost_proto::pb::admin::{
    DeviceMove, DeviceRef, GroupCreate, KeyAutoDistribute, KeyImport, KeyRef, admin_request::Op,
    admin_response::Result as R,
};
use outpost_server::store::Policy;
use outpost_tests::licensing::*;
use outpost_tests::*;

/// L4: groups form a tree; the nearest assignment wins: device, group, ancestors, everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_group_tree_nearest_assignment_wins() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    group(&server, "everyone/berlin").await;
    group(&server, "everyone/berlin/floor2").await;
    let e = refused(
        &server,
        Op::GroupCreate(GroupCreate {
            path: "everyone/nowhere/x".into(),
        }),
    )
    .await;
    assert!(
        e.contains("parent group \"everyone/nowhere\" does not exist"),
        "a group needs its parent: {e}"
    );
    for (id, obj) in [
        ("K-ALL", "everyone"),
        ("K-BER", "group:everyone/berlin"),
        ("K-F2", ""),
    ] {
        import(
            &server,
            &issue(&auth, id, 5, 30 * DAY, AV_FW, false, None),
            false,
            false,
            false,
        )
        .await;
        if !obj.is_empty() {
            assign(&server, id, obj).await;
        }
    }
    let token = server.token_in("agent", "everyone/berlin/floor2", 1).await;
    let mut a = agent(&server, &token, "l4").await;
    assert_eq!(
        a.wait_checked().await.licence.key,
        "K-BER",
        "the parent group is nearer than everyone"
    );
    assign(&server, "K-F2", "group:everyone/berlin/floor2").await;
    assert_eq!(reconnect(&mut a).await.licence.key, "K-F2", "own group");
    server.seats_used_becomes("K-BER", 0).await;
    let id = a.h().device_id().to_owned();
    let r = server
        .admin(Op::DeviceMove(DeviceMove {
            device_id: id,
            group: "everyone".into(),
        }))
        .await;
    assert!(matches!(r, R::Done(_)), "{r:?}");
    assert_eq!(
        reconnect(&mut a).await.licence.key,
        "K-ALL",
        "moved to the root"
    );
    server.seats_used_becomes("K-F2", 0).await;
    assert_eq!(server.key_info("K-ALL").await.seats_used, 1);
    a.stop().await;
}

/// L5: a device holds an active and a reserve grant; when the active key expires the reserve
/// takes over on the server (licence clock) and on the agent (from its grants on disk), with
/// no connection at that moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l5_reserve_takes_over_on_server_and_agent_without_connection() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |c| {
        c.licensing.check_interval = Duration::from_millis(300);
    })
    .await;
    group(&server, "everyone/l5").await;
    let old = issue(&auth, "K-OLD", 5, 8, AV_FW, false, None);
    import(&server, &old, false, false, false).await;
    assign(&server, "K-OLD", "group:everyone/l5").await;
    add_key(&server, &auth, "K-NEXT", 5, 30 * DAY, true).await;
    let token = server.token_in("agent", "everyone/l5", 2).await;
    let mut a = agent(&server, &token, "l5a").await;
    let mut b = agent(&server, &token, "l5b").await;
    for x in [&a, &b] {
        let s = x.wait_checked().await;
        assert_eq!(s.licence.key, "K-OLD", "nearest key is active");
        assert_eq!(
            s.licence.reserve_key, "K-NEXT",
            "reserve while K-OLD expires soon"
        );
    }
    assert_eq!(
        server.key_info("K-NEXT").await.seats_used,
        2,
        "a reserve is a real seat"
    );
    let ids = [a.h().device_id().to_owned(), b.h().device_id().to_owned()];
    a.stop().await;
    b.stop().await;
    assert!(
        outpost_net::unix_now() < old.body.expires_at,
        "test too slow"
    );

    // The server: its licence clock moves the records once K-OLD expires.
    until("server promoted the reserve", || async {
        let list = server.agents().await;
        ids.iter()
            .all(|id| device_row(&list, id) == ("licensed".into(), "K-NEXT".into()))
    })
    .await;
    assert!(outpost_net::unix_now() >= old.body.expires_at);
    assert_eq!(server.key_info("K-OLD").await.seats_used, 0);
    assert_eq!(
        server.key_info("K-NEXT").await.seats_used,
        2,
        "no seat taken twice"
    );

    // The agent, not running and never reconnected: its grants on disk say the same.
    let (ok, out, err) = run_bin(
        "outpost-agent",
        &["status", "--json", "--data-dir", a.data.to_str().unwrap()],
    )
    .unwrap();
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["licence"]["state"], "licensed");
    assert_eq!(v["licence"]["key"], "K-NEXT");
    assert_eq!(v["licence"]["promoted_reserve"], true);

    // A running agent cut off from the server switches by itself at expiry too.
    let server2 = Server::start(&auth, |_| {}).await;
    let short = issue(&auth, "K-SHORT", 1, 5, AV_FW, false, None);
    import(&server2, &short, false, false, false).await;
    add_key(&server2, &auth, "K-LONG", 1, 30 * DAY, true).await;
    group(&server2, "everyone/short").await;
    assign(&server2, "K-SHORT", "group:everyone/short").await;
    let token = server2.token_in("agent", "everyone/short", 1).await;
    let mut c = agent(&server2, &token, "l5c").await;
    assert_eq!(c.wait_checked().await.licence.reserve_key, "K-LONG");
    let mut server2 = server2;
    server2.stop().await;
    let s = within(
        "offline agent promotes its reserve",
        c.h()
            .wait_for(|s| s.state == "offline" && s.licence.key == "K-LONG"),
    )
    .await;
    assert!(s.licence.promoted_reserve);
    assert!(outpost_net::unix_now() >= short.body.expires_at);
    c.stop().await;
}

/// L8: an auto-distributed key goes as active to devices without a valid active key and as
/// reserve to devices whose key expires within the window; an activation-code reserve key is
/// never distributed; devices keep an auto key after it is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l8_auto_distribution_window_activation_reserve_and_kept_after_removal() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |c| {
        c.licensing.expiring_soon = Duration::from_secs(3600);
    })
    .await;
    import(
        &server,
        &issue(&auth, "K-AUTO", 10, 30 * DAY, AV_FW, false, None),
        true,
        false,
        false,
    )
    .await;
    let act = issue(&auth, "K-ACT", 10, 60 * DAY, AV_FW, false, None);
    import(&server, &act, false, false, true).await;
    group(&server, "everyone/soon").await;
    group(&server, "everyone/later").await;
    add_key(&server, &auth, "K-SOON", 5, 1800, false).await;
    assign(&server, "K-SOON", "group:everyone/soon").await;
    add_key(&server, &auth, "K-LATER", 5, 2 * 3600, false).await;
    assign(&server, "K-LATER", "group:everyone/later").await;

    // No key assigned: the auto key becomes active (a newly connecting device).
    let mut x = agent(&server, &server.token("agent", 1).await, "l8x").await;
    let s = x.wait_checked().await;
    assert_eq!(
        (s.licence.key.as_str(), s.licence.reserve_key.as_str()),
        ("K-AUTO", "")
    );
    // Active key expires within the window: the auto key becomes its reserve.
    let mut y = agent(
        &server,
        &server.token_in("agent", "everyone/soon", 1).await,
        "l8y",
    )
    .await;
    let s = y.wait_checked().await;
    assert_eq!(
        (s.licence.key.as_str(), s.licence.reserve_key.as_str()),
        ("K-SOON", "K-AUTO")
    );
    // Outside the window: no reserve.
    let z = agent(
        &server,
        &server.token_in("agent", "everyone/later", 1).await,
        "l8z",
    )
    .await;
    let s = z.wait_checked().await;
    assert_eq!(
        (s.licence.key.as_str(), s.licence.reserve_key.as_str()),
        ("K-LATER", "")
    );
    assert_eq!(server.key_info("K-AUTO").await.seats_used, 2);

    // The activation-code reserve key is never distributed, and cannot be made so.
    assert_eq!(server.key_info("K-ACT").await.seats_used, 0);
    let e = refused(
        &server,
        Op::KeyAutoDistribute(KeyAutoDistribute {
            key_id: "K-ACT".into(),
            on: true,
        }),
    )
    .await;
    assert!(e.contains("activation code"), "{e}");
    let again = issue(&auth, "K-ACT2", 10, 60 * DAY, AV_FW, false, None);
    let e = refused(
        &server,
        Op::KeyImport(KeyImport {
            file_name: "K-ACT2.key".into(),
            content: again.file.clone(),
            auto_distribute: true,
            assign_everyone: false,
            activation_reserve: true,
        }),
    )
    .await;
    assert!(e.contains("activation code"), "{e}");
    assert!(
        !key_ids(&server).await.contains(&"K-ACT2".to_owned()),
        "nothing stored"
    );

    // Removing the auto key: the device that received it keeps it.
    server
        .admin(Op::KeyRemove(KeyRef {
            key_id: "K-AUTO".into(),
        }))
        .await;
    let s = reconnect(&mut x).await;
    assert_eq!(s.licence.state, "licensed");
    assert_eq!(s.licence.key, "K-AUTO", "kept after removal");
    let list = server.agents().await;
    assert_eq!(
        device_row(&list, x.h().device_id()),
        ("licensed".into(), "K-AUTO".into())
    );
    // Only as its active key: y's reserve is gone with the key.
    let s = reconnect(&mut y).await;
    assert_eq!(
        (s.licence.key.as_str(), s.licence.reserve_key.as_str()),
        ("K-SOON", "")
    );
    for mut a in [x, y, z] {
        a.stop().await;
    }
}

/// L9 (and S8, L15): seats freed by removal or revocation of an online device, or by
/// reclaiming an inactive one once its grant expired, go to online unlicensed devices within
/// seconds, without their reconnecting; a stale device coming back finds the seat taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l9_freed_seats_go_to_online_unlicensed_devices_within_seconds() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    add_key(&server, &auth, "K-L9", 1, 30 * DAY, true).await;
    let token = server.token("agent", 4).await;
    let holder = agent(&server, &token, "l9-a").await;
    assert_eq!(holder.wait_checked().await.licence.state, "licensed");
    let mut waiting = vec![];
    for m in ["l9-b", "l9-c", "l9-d"] {
        let a = agent(&server, &token, m).await;
        let s = a.wait_checked().await;
        assert_eq!(s.licence.state, "unlicensed");
        assert!(
            s.licence
                .reason
                .contains("no free seat on key K-L9, 1 of 1 used"),
            "{}",
            s.licence.reason
        );
        waiting.push(a);
    }
    let licensed = |a: &Agent| a.h().status().borrow().licence.state == "licensed";

    // Removal of an online device: it drops its grant, its seat goes to a waiting agent.
    let id = holder.h().device_id().to_owned();
    server
        .admin(Op::DeviceRemove(DeviceRef {
            device_id: id,
            ..Default::default()
        }))
        .await;
    until("a waiting agent gets the removed device's seat", || async {
        waiting.iter().filter(|a| licensed(a)).count() == 1
    })
    .await;
    let b = waiting.remove(waiting.iter().position(licensed).unwrap());
    assert_eq!(
        holder.h().status().borrow().licence.reason,
        "removed",
        "the removed agent dropped its grant"
    );

    // Revocation (S8) of an online device: the same.
    let id = b.h().device_id().to_owned();
    server
        .admin(Op::DeviceRevoke(DeviceRef {
            device_id: id,
            ..Default::default()
        }))
        .await;
    until("a waiting agent gets the revoked device's seat", || async {
        waiting.iter().filter(|a| licensed(a)).count() == 1
    })
    .await;
    let mut c = waiting.remove(waiting.iter().position(licensed).unwrap());

    // Inactivity: c goes quiet; the licence clock at a "now" past the reclaim period takes
    // its seat, but holds it while c's grant may still be valid offline (L15); once that grant
    // has expired (virtual clock) the seat goes to the waiting agent.
    let c_id = c.h().device_id().to_owned();
    c.stop().await;
    let now = outpost_net::unix_now();
    let freed = server.h().reclaim(now + 1, now).await.unwrap();
    assert_eq!(freed, 1);
    assert_eq!(
        server.key_info("K-L9").await.seats_used,
        1,
        "held for c's grant"
    );
    let (state, _) = device_row(&server.agents().await, &c_id);
    assert_eq!(state, "unlicensed");
    assert_eq!(notices(&server, "seats-reclaimed").await.len(), 1);
    let returned = server
        .h()
        .store()
        .expire_holds(now + 8 * DAY)
        .await
        .unwrap();
    assert_eq!(returned.len(), 1);
    let d = waiting.remove(0);
    within(
        "the waiting agent gets the reclaimed seat",
        d.h().wait_for(|s| s.licence.state == "licensed"),
    )
    .await;
    // The stale device coming back finds the seat taken.
    let s = reconnect(&mut c).await;
    assert_eq!(s.licence.state, "unlicensed");
    assert_eq!(server.key_info("K-L9").await.seats_used, 1);
    assert!(server.h().store().audit_seats().await.unwrap().is_empty());
    for mut a in [holder, b, c, d] {
        a.stop().await;
    }
}

/// L10: notifications at 90 %, 100 % and 110 % (attempted) usage, each once per crossing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l10_usage_thresholds_notify_at_90_100_and_110_percent() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    add_key(&server, &auth, "K-L10", 10, 30 * DAY, true).await;
    let store = server.h().store();
    let policy = Policy {
        grant_ttl: DAY,
        expiring_soon: 14 * DAY,
    };
    let now = outpost_net::unix_now();
    let check = async |n: usize| {
        let d = format!("l10-{n}");
        store
            .insert_local_device(&d, "agent", &d, now)
            .await
            .unwrap();
        store.check_licence(&d, now, &policy).await.unwrap()
    };
    for n in 0..8 {
        check(n).await;
    }
    assert!(
        notices(&server, "")
            .await
            .iter()
            .all(|n| !n.kind.starts_with("usage"))
    );
    check(8).await; // 9 of 10
    let n90 = notices(&server, "usage-90").await;
    assert_eq!(n90.len(), 1);
    assert!(n90[0].message.contains("K-L10"), "{}", n90[0].message);
    check(9).await; // 10 of 10
    assert_eq!(notices(&server, "usage-100").await.len(), 1);
    check(10).await; // the 11th is refused: 110 % attempted
    assert_eq!(notices(&server, "usage-110").await.len(), 1);
    // Checking the same devices again notifies nothing new.
    for n in 0..11 {
        let d = format!("l10-{n}");
        store.check_licence(&d, now, &policy).await.unwrap();
    }
    assert_eq!(notices(&server, "usage-90").await.len(), 1);
    assert_eq!(notices(&server, "usage-100").await.len(), 1);
    assert_eq!(notices(&server, "usage-110").await.len(), 1);
    assert_eq!(server.key_info("K-L10").await.seats_used, 10);
}
