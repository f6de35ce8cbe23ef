//! Renewal and notifications (SPEC §3 "Renewal": L11–L14) with a real licence authority
//! service: the three outcomes, renewals added by hand, no key files written, the notification
//! log, channels and the hook with its time limit.

use std::time::Duration;

use outpost_proto::pb::admin::{DeviceRef, KeyRef, admin_request::Op, admin_response::Result as R};
use outpost_server::store::Policy;
use outpost_tests::licensing::*;
use outpost_tests::*;

/// L11 outcome 1: no renewal at the authority → nothing happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l11_outcome_1_no_renewal_nothing_happens() {
    init_logs();
    let auth = Authority::new();
    let (svc, server) = with_authority(&auth, |_| {}).await;
    add_key(&server, &auth, "K-R1", 5, 30 * DAY, true).await;
    let before = server.key_info("K-R1").await;
    let reports = renew(&server).await;
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].outcome, "none");
    assert_eq!(key_ids(&server).await, ["K-R1"]);
    assert_eq!(server.key_info("K-R1").await, before);
    assert!(
        notices(&server, "")
            .await
            .iter()
            .all(|n| !n.kind.starts_with("key-"))
    );
    svc.shutdown().await;
}

/// L11 outcome 2: a renewal lacking a component, or with fewer seats, is added but not
/// distributed, and the admin is told why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l11_outcome_2_renewal_missing_component_or_seats_is_added_not_distributed() {
    init_logs();
    let auth = Authority::new();
    let (svc, server) = with_authority(&auth, |_| {}).await;
    for id in ["K-C", "K-S"] {
        import(
            &server,
            &issue(&auth, id, 5, 30 * DAY, AV_FW, false, None),
            false,
            true,
            false,
        )
        .await;
    }
    offer(
        &auth,
        &issue(
            &auth,
            "K-C2",
            5,
            400 * DAY,
            &["antivirus"],
            false,
            Some("K-C"),
        ),
    );
    offer(
        &auth,
        &issue(&auth, "K-S2", 3, 400 * DAY, AV_FW, false, Some("K-S")),
    );
    let mut reports = renew(&server).await;
    reports.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    assert_eq!(reports.len(), 2);
    assert_eq!(
        (reports[0].key_id.as_str(), reports[0].outcome.as_str()),
        ("K-C", "not-distributed")
    );
    assert!(
        reports[0].detail.contains("firewall"),
        "{}",
        reports[0].detail
    );
    assert_eq!(
        (reports[1].key_id.as_str(), reports[1].outcome.as_str()),
        ("K-S", "not-distributed")
    );
    assert!(
        reports[1].detail.contains("3 seat(s)"),
        "{}",
        reports[1].detail
    );
    let mut ids = key_ids(&server).await;
    ids.sort();
    assert_eq!(ids, ["K-C", "K-C2", "K-S", "K-S2"], "added, old keys kept");
    assert!(
        server.key_info("K-C2").await.objects.is_empty(),
        "not distributed"
    );
    assert_eq!(server.key_info("K-C").await.objects, ["everyone"]);
    let n = notices(&server, "key-cannot-renew").await;
    assert_eq!(n.len(), 2);
    assert!(
        n.iter()
            .any(|n| n.message.contains("K-C")
                && n.message.contains("cannot be renewed automatically")),
        "{n:?}"
    );
    svc.shutdown().await;
}

/// L11 outcome 3: a renewal with every component and as many seats is added, distributed to
/// every object of the old key, the old key removed, "key renewed automatically" notified;
/// agents move to the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l11_outcome_3_renewal_distributed_to_all_objects_and_old_key_removed() {
    init_logs();
    let auth = Authority::new();
    let (svc, server) = with_authority(&auth, |_| {}).await;
    group(&server, "everyone/hq").await;
    add_key(&server, &auth, "K-OLD", 5, 10 * DAY, true).await;
    assign(&server, "K-OLD", "group:everyone/hq").await;
    let mut a = agent(
        &server,
        &server.token_in("agent", "everyone/hq", 1).await,
        "l11",
    )
    .await;
    assert_eq!(a.wait_checked().await.licence.key, "K-OLD");
    let new = issue(
        &auth,
        "K-NEW",
        8,
        400 * DAY,
        &["antivirus", "firewall", "mail"],
        false,
        Some("K-OLD"),
    );
    offer(&auth, &new);
    let reports = renew(&server).await;
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].outcome, "renewed", "{:?}", reports[0]);
    assert_eq!(reports[0].renewal_key, "K-NEW");
    assert_eq!(key_ids(&server).await, ["K-NEW"], "old key removed");
    let mut objects = server.key_info("K-NEW").await.objects;
    objects.sort();
    assert_eq!(objects, ["everyone", "group:everyone/hq"]);
    let n = notices(&server, "key-renewed").await;
    assert_eq!(n.len(), 1);
    assert!(
        n[0].message.contains("renewed automatically"),
        "{}",
        n[0].message
    );
    assert_eq!(reconnect(&mut a).await.licence.key, "K-NEW");
    // Held until fetched: asking again finds nothing new.
    let again = renew(&server).await;
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].key_id.as_str(), again[0].outcome.as_str()),
        ("K-NEW", "none")
    );
    a.stop().await;
    svc.shutdown().await;
}

/// L11: only keys this server owns are renewed; a renewal whose signature fails is refused
/// and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l11_only_owned_keys_renewed_and_bad_signature_refused() {
    init_logs();
    let auth = Authority::new();
    let (svc, server) = with_authority(&auth, |_| {}).await;
    // A key received from a neighbour server (H5) is not this server's to renew.
    let from_neighbour = issue(&auth, "K-NB", 5, 30 * DAY, AV_FW, false, None);
    server
        .h()
        .store()
        .insert_keys(
            &[("K-NB.key".into(), from_neighbour)],
            false,
            false,
            "neighbour",
            outpost_net::unix_now(),
        )
        .await
        .unwrap();
    offer(
        &auth,
        &issue(&auth, "K-NB2", 5, 400 * DAY, AV_FW, false, Some("K-NB")),
    );
    // An owned key whose renewal file was tampered with on the way.
    add_key(&server, &auth, "K-OWN", 5, 30 * DAY, true).await;
    let good = issue(&auth, "K-OWN2", 9, 400 * DAY, AV_FW, false, Some("K-OWN"));
    let tampered = String::from_utf8(good.file.clone())
        .unwrap()
        .replace("seats = 9", "seats = 900");
    assert_ne!(tampered.as_bytes(), good.file.as_slice());
    let held = auth.dir.path().join("renewals");
    std::fs::create_dir_all(&held).unwrap();
    std::fs::write(held.join("K-OWN2.key"), tampered).unwrap();

    let reports = renew(&server).await;
    assert!(
        reports.iter().all(|r| r.key_id != "K-NB"),
        "neighbour key not renewed: {reports:?}"
    );
    let own: Vec<_> = reports.iter().filter(|r| r.key_id == "K-OWN").collect();
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].outcome, "refused");
    assert!(own[0].detail.contains("signature"), "{}", own[0].detail);
    let mut ids = key_ids(&server).await;
    ids.sort();
    assert_eq!(ids, ["K-NB", "K-OWN"], "nothing stored");
    assert_eq!(server.key_info("K-OWN").await.objects, ["everyone"]);
    assert_eq!(notices(&server, "renewal-refused").await.len(), 1);
    assert!(
        held.join("K-NB2.key").exists(),
        "the neighbour's renewal stays at the authority"
    );
    svc.shutdown().await;
}

/// L12 (a): the renewal key was added by hand and is already on every object of the old key:
/// the task changes nothing but removing the old key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l12_a_renewal_added_by_hand_on_all_objects_no_change() {
    init_logs();
    let auth = Authority::new();
    let (svc, server) = with_authority(&auth, |_| {}).await;
    add_key(&server, &auth, "K-OLD", 5, 10 * DAY, true).await;
    let new = issue(&auth, "K-NEW", 5, 400 * DAY, AV_FW, false, Some("K-OLD"));
    import(&server, &new, false, true, false).await;
    offer(&auth, &new);
    let reports = renew(&server).await;
    assert_eq!(reports.len(), 2, "{reports:?}");
    let old: Vec<_> = reports.iter().filter(|r| r.key_id == "K-OLD").collect();
    assert_eq!(old[0].outcome, "distributed");
    assert!(
        old[0].detail.contains("already on every object"),
        "{}",
        old[0].detail
    );
    assert_eq!(key_ids(&server).await, ["K-NEW"]);
    assert_eq!(server.key_info("K-NEW").await.objects, ["everyone"]);
    svc.shutdown().await;
}

/// L12 (b): added by hand on some objects → given to the rest; objects given the new key by
/// hand keep it; when seats do not suffice the leftover devices stay unlicensed, the old key
/// goes all the same, and they get seats as seats free (L9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l12_b_renewal_added_by_hand_given_to_remaining_objects_leftovers_unlicensed() {
    init_logs();
    let auth = Authority::new();
    let (svc, server) = with_authority(&auth, |_| {}).await;
    group(&server, "everyone/g1").await;
    group(&server, "everyone/g2").await;
    add_key(&server, &auth, "K-OLD", 3, 10 * DAY, false).await;
    assign(&server, "K-OLD", "group:everyone/g1").await;
    let token = server.token_in("agent", "everyone/g1", 3).await;
    let mut agents = vec![];
    for m in ["l12-1", "l12-2", "l12-3"] {
        let a = agent(&server, &token, m).await;
        assert_eq!(a.wait_checked().await.licence.key, "K-OLD");
        agents.push(a);
    }
    // Bought with fewer seats, added by hand, assigned by hand to a group the old key was not on.
    let new = issue(&auth, "K-NEW", 2, 400 * DAY, AV_FW, false, Some("K-OLD"));
    import(&server, &new, false, false, false).await;
    assign(&server, "K-NEW", "group:everyone/g2").await;
    offer(&auth, &new);
    let reports = renew(&server).await;
    let old: Vec<_> = reports.iter().filter(|r| r.key_id == "K-OLD").collect();
    assert_eq!(old[0].outcome, "distributed", "{reports:?}");
    assert!(old[0].detail.contains("1 more object"), "{}", old[0].detail);
    assert_eq!(
        key_ids(&server).await,
        ["K-NEW"],
        "old key removed all the same"
    );
    let mut objects = server.key_info("K-NEW").await.objects;
    objects.sort();
    assert_eq!(
        objects,
        ["group:everyone/g1", "group:everyone/g2"],
        "g2 kept"
    );

    let mut licensed = 0;
    for a in agents.iter_mut() {
        let s = reconnect(a).await;
        if s.licence.state == "licensed" {
            assert_eq!(s.licence.key, "K-NEW");
            licensed += 1;
        } else {
            assert!(
                s.licence
                    .reason
                    .contains("no free seat on key K-NEW, 2 of 2 used"),
                "{}",
                s.licence.reason
            );
        }
    }
    assert_eq!(licensed, 2, "seats do not suffice for all");
    // A seat frees: the leftover device gets it at its next connect.
    let mut left = vec![];
    let mut gone = None;
    for a in agents {
        if a.h().status().borrow().licence.state == "licensed" && gone.is_none() {
            gone = Some(a);
        } else {
            left.push(a);
        }
    }
    let mut gone = gone.unwrap();
    let id = gone.h().device_id().to_owned();
    gone.stop().await;
    // Removed while offline, its seat would be held for its grant (L15): free it now.
    server
        .admin(Op::DeviceRemove(DeviceRef {
            device_id: id,
            free_seat_now: true,
        }))
        .await;
    for a in left.iter_mut() {
        assert_eq!(reconnect(a).await.licence.state, "licensed");
    }
    for mut a in left {
        a.stop().await;
    }
    svc.shutdown().await;
}

/// L13 with L11 (b) and L14: the scheduled repository-update task renews by itself; auto
/// renewal writes no key file; export produces a byte-identical one, and the hook gets the
/// event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l13_scheduled_renewal_creates_no_key_file_export_and_hook_do() {
    init_logs();
    let auth = Authority::new();
    let hooks = tempfile::tempdir().unwrap();
    let got = hooks.path().join("events.jsonl");
    let hook = write_hook(
        hooks.path(),
        "hook.sh",
        &format!("cat >> {}\necho >> {}", got.display(), got.display()),
    );
    let (svc, server) = with_authority(&auth, |c| {
        c.licensing.update_licence_keys = true;
        c.licensing.repository_update_interval = Duration::from_millis(200);
        c.licensing.check_interval = Duration::from_millis(200);
        c.notifications.hook = hook;
    })
    .await;
    add_key(&server, &auth, "K-OLD", 5, 10 * DAY, true).await;
    let new = issue(&auth, "K-NEW", 5, 400 * DAY, AV_FW, false, Some("K-OLD"));
    offer(&auth, &new);
    until("scheduled renewal", || async {
        key_ids(&server).await == ["K-NEW"]
    })
    .await;
    assert!(
        !server.data.join("keys").join("K-NEW.key").exists(),
        "auto-renewal writes no key file"
    );
    assert!(server.data.join("keys").join("K-OLD.key").exists());
    let R::KeyFile(f) = server
        .admin(Op::KeyExport(KeyRef {
            key_id: "K-NEW".into(),
        }))
        .await
    else {
        panic!("export refused")
    };
    assert_eq!(f.content, new.file, "export gives the signed file");
    until("hook saw the renewal", || async {
        std::fs::read_to_string(&got).is_ok_and(|t| t.contains("key-renewed"))
    })
    .await;
    let line = std::fs::read_to_string(&got)
        .unwrap()
        .lines()
        .find(|l| l.contains("key-renewed"))
        .unwrap()
        .to_owned();
    let v: serde_json::Value = serde_json::from_str(&line).expect("hook input is JSON");
    assert_eq!(v["kind"], "key-renewed");
    assert_eq!(v["key_id"], "K-NEW");
    assert_eq!(v["details"]["old"], "K-OLD");
    svc.shutdown().await;
}

/// L14: every notification is logged on the server and goes to its channels; the hook gets
/// each as JSON on stdin; a hook that fails or hangs is logged, killed at its limit, and the
/// server carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l14_notification_log_channels_and_hook_killed_at_time_limit() {
    init_logs();
    let auth = Authority::new();
    let hooks = tempfile::tempdir().unwrap();
    let got = hooks.path().join("seen");
    let pids = hooks.path().join("pids");
    // Records the event, then hangs for the "expiring soon" one.
    let hook = write_hook(
        hooks.path(),
        "hook.sh",
        &format!(
            "IN=$(cat)\necho \"$IN\" >> {got}\ncase \"$IN\" in *key-expiring-soon*) echo $$ >> {pids}; exec sleep 600;; esac",
            got = got.display(),
            pids = pids.display()
        ),
    );
    let mut server = Server::start(&auth, |c| {
        c.licensing.check_interval = Duration::from_millis(200);
        c.licensing.expiring_soon = Duration::from_secs(3600);
        c.notifications.hook = hook;
        c.notifications.hook_timeout = Duration::from_millis(700);
        c.notifications
            .channels
            .insert("usage-100".into(), vec!["log".into()]);
    })
    .await;
    // A key expiring within the window (hook hangs), then a full key (usage-100: log only),
    // then one more check attempt over the limit (usage-110: log and hook).
    add_key(&server, &auth, "K-SOON", 1, 1800, true).await;
    until("expiring-soon notified", || async {
        !notices(&server, "key-expiring-soon").await.is_empty()
    })
    .await;
    let store = server.h().store().clone();
    let policy = Policy {
        grant_ttl: DAY,
        expiring_soon: 3600,
    };
    let now = outpost_net::unix_now();
    for d in ["l14-a", "l14-b"] {
        store.insert_local_device(d, "agent", d, now).await.unwrap();
        store.check_licence(d, now, &policy).await.unwrap();
    }
    until("usage-110 reached the hook", || async {
        std::fs::read_to_string(&got).is_ok_and(|t| t.contains("usage-110"))
    })
    .await;
    let seen = std::fs::read_to_string(&got).unwrap();
    assert!(seen.contains("key-expiring-soon"));
    assert!(
        !seen.contains("usage-100"),
        "usage-100 goes to the log only"
    );
    let all = notices(&server, "").await;
    for kind in ["key-expiring-soon", "usage-100", "usage-110"] {
        assert!(all.iter().any(|n| n.kind == kind), "{kind} logged: {all:?}");
    }
    // The hanging hook was killed.
    let pid: i32 = std::fs::read_to_string(&pids)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    until("hanging hook killed", || async {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
    })
    .await;
    // A hook that cannot even start is not fatal either.
    server.stop().await;
    server.edit_config(|c| c.notifications.hook = "/nonexistent/hook".into());
    server.boot().await;
    let now = outpost_net::unix_now();
    store_notify(&server, now).await;
    let token = server.token("agent", 1).await;
    assert!(!token.is_empty(), "server still serving");
}

async fn store_notify(server: &Server, now: i64) {
    server
        .h()
        .store()
        .notify(
            "test",
            None,
            &format!("notification at {now}"),
            serde_json::json!({}),
        )
        .await
        .unwrap();
    until("notification stored", || async {
        notices(server, "test").await.len() == 1
    })
    .await;
}
