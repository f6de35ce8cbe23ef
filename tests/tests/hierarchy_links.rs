//! Server links (H1, H2, H3, H7, H8) with real `outpost-server` processes: certificate files
//! and pins, the DMZ direction, peers' send/receive flags, periodic relations with early
//! renewal, and the sync that lets the giver's figures win.

use std::time::Duration;

use outpost_proto::pb::admin::{ServerAdd, admin_request::Op};
use outpost_tests::hierarchy::*;
use outpost_tests::licensing::{AV_FW, DAY, issue};
use outpost_tests::{Authority, init_logs, until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_offline_addition_with_certificate_files_dmz_direction_and_wrong_certificates_refused() {
    init_logs();
    let _serial = one_at_a_time().await;
    let auth = Authority::new();
    let hq = ServerProc::start(&auth, "hq", fast).await;
    let dmz = ServerProc::start(&auth, "dmz", fast).await;
    let impostor = ServerProc::start(&auth, "impostor", fast).await;
    let files = tempfile::tempdir().unwrap();
    let file = |n: &str| files.path().join(n).to_string_lossy().into_owned();
    // Offline: each administrator exports a file and carries it to the other side.
    hq.admin(Op::KeyList(outpost_proto::pb::admin::Empty {}))
        .await;
    dmz.admin(Op::KeyList(outpost_proto::pb::admin::Empty {}))
        .await;
    let out = cli(&hq, &["server", "export-cert", "--out", &file("hq.pem")]);
    assert!(out.contains("sha256"), "{out}");
    cli(&dmz, &["server", "export-cert", "--out", &file("dmz.pem")]);
    cli(
        &impostor,
        &["server", "export-cert", "--out", &file("impostor.pem")],
    );
    // The secondary sits in a DMZ: the primary dials it; the secondary has no address for it.
    let dmz_addr = dmz.addr.to_string();
    cli(
        &hq,
        &[
            "server",
            "add-secondary",
            "dmz",
            "--cert",
            &file("dmz.pem"),
            "--address",
            &dmz_addr,
            "--dial",
        ],
    );
    cli(
        &dmz,
        &["server", "set-primary", "hq", "--cert", &file("hq.pem")],
    );
    hq.wait_connected("dmz").await;
    dmz.wait_connected("hq").await;
    let list = cli(&hq, &["--json", "server", "list"]);
    assert!(
        list.contains("\"dials\": true") && list.contains("connected"),
        "{list}"
    );
    let key = issue(&auth, "K-DMZ", 10, 30 * DAY, AV_FW, false, None);
    import(&hq, &key).await;
    let end = outpost_net::unix_now() + 10 * DAY;
    let out = cli(
        &hq,
        &[
            "lease",
            "give",
            "K-DMZ",
            "dmz",
            "--seats",
            "4",
            "--until",
            &outpost_proto::licence::key::format_time(end),
        ],
    );
    assert!(out.contains("sent now"), "{out}");
    dmz.key_seats_become("K-DMZ", 4).await;

    // Someone else answers where a relation's server should be: refused, naming both.
    let (_, hq_fp) = hq.link_cert().await;
    let (_, impostor_fp) = impostor.link_cert().await;
    let branch = ServerProc::start(&auth, "branch", fast).await;
    let impostor_addr = impostor.addr.to_string();
    cli(
        &branch,
        &[
            "server",
            "set-primary",
            "hq",
            "--cert",
            &file("hq.pem"),
            "--address",
            &impostor_addr,
        ],
    );
    until("branch refuses the impostor", || async {
        branch.servers().await[0].state.contains(&impostor_fp)
    })
    .await;
    let state = branch.servers().await[0].state.clone();
    assert!(
        state.contains(&impostor_fp) && state.contains(&hq_fp) && state.contains("pinned"),
        "{state}"
    );
    // A server nobody pinned dials the head office: refused at the handshake, logged there
    // with its fingerprint; the real link is untouched.
    let hq_addr = hq.addr.to_string();
    cli(
        &impostor,
        &[
            "server",
            "set-primary",
            "hq",
            "--cert",
            &file("hq.pem"),
            "--address",
            &hq_addr,
        ],
    );
    until("the head office logs the refusal", || async {
        hq.log().contains(&impostor_fp)
    })
    .await;
    assert!(
        hq.log().contains("not pinned for any server relation"),
        "{}",
        hq.log()
    );
    assert!(!impostor.servers().await[0].state.contains("connected"));
    let r = hq
        .admin_refused(Op::ServerAdd(ServerAdd {
            name: "again".into(),
            kind: "secondary".into(),
            cert_pem: std::fs::read_to_string(file("dmz.pem")).unwrap(),
            ..Default::default()
        }))
        .await;
    assert!(
        r.contains("already a relation"),
        "the same certificate twice: {r}"
    );
    let r = hq
        .admin_refused(Op::ServerAdd(ServerAdd {
            name: "garbage".into(),
            kind: "secondary".into(),
            cert_pem: "not a certificate".into(),
            ..Default::default()
        }))
        .await;
    assert!(r.contains("export-cert"), "a bad file names the fix: {r}");
    dmz.wait_connected("hq").await;
    assert_eq!(dmz.key("K-DMZ").await.unwrap().seats_total, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h8_a_receiver_claiming_more_seats_than_given_is_notified_and_the_givers_figure_wins() {
    init_logs();
    let _serial = one_at_a_time().await;
    let auth = Authority::new();
    let hq = ServerProc::start(&auth, "hq", fast).await;
    let mut regional = ServerProc::start(&auth, "regional", fast).await;
    import(
        &hq,
        &issue(&auth, "K-SYNC", 50, 30 * DAY, AV_FW, false, None),
    )
    .await;
    relate(&hq, &regional).await;
    hq.give("K-SYNC", "regional", 12, outpost_net::unix_now() + 20 * DAY)
        .await;
    regional.key_seats_become("K-SYNC", 12).await;
    regional.kill();
    forge(&regional, "K-SYNC", 40).await;
    regional.spawn();
    // On connect both sides compare (H8): the giver notices, and its figure wins.
    let says = |m: &String| m.contains("the giver says 12") && m.contains("the receiver 40");
    until("the giver notified the mismatch", || async {
        notified(&hq, "lease-sync-mismatch")
            .await
            .iter()
            .any(|m| !m.starts_with('[') && says(m))
    })
    .await;
    regional.key_seats_become("K-SYNC", 12).await;
    assert!(
        notified(&regional, "lease-sync-mismatch")
            .await
            .iter()
            .any(says),
        "the receiver notifies too, with the same figures"
    );
    // … and its notification reaches the head office, tagged (H4).
    until("the receiver's notification at the giver", || async {
        notified(&hq, "lease-sync-mismatch")
            .await
            .iter()
            .any(|m| m.starts_with("[regional] ") && says(m))
    })
    .await;
    let hq_key = hq.key("K-SYNC").await.unwrap();
    assert_eq!(hq_key.seats_leased_out, 12, "{hq_key:?}");

    // Ending the relation: refused while the lease holds seats; revoked, the seats come back
    // at the end of the period granted (notified), then the relation goes and its link ends.
    let remove = Op::ServerRemove(outpost_proto::pb::admin::ServerRef {
        name: "regional".into(),
    });
    let e = hq.admin_refused(remove.clone()).await;
    assert!(e.contains("still holds 12 seat(s)"), "{e}");
    let lease = hq.leases().await[0].lease_id.clone();
    hq.admin(Op::LeaseRevoke(outpost_proto::pb::admin::LeaseRef {
        lease_id: lease,
    }))
    .await;
    until("the revoked seats back", || async {
        hq.key("K-SYNC").await.unwrap().seats_leased_out == 0
    })
    .await;
    assert!(!notified(&hq, "lease-returned").await.is_empty());
    regional.key_seats_become("K-SYNC", 0).await;
    hq.admin(remove).await;
    until("the link ended at the regional server", || async {
        regional.servers().await[0].state != "connected"
    })
    .await;
    assert!(hq.servers().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_peers_transfer_seats_only_where_the_sender_sends_and_the_receiver_receives() {
    init_logs();
    let _serial = one_at_a_time().await;
    let auth = Authority::new();
    let a = ServerProc::start(&auth, "a", fast).await;
    import(
        &a,
        &issue(&auth, "K-PEER", 40, 30 * DAY, AV_FW, false, None),
    )
    .await;
    let (a_pem, _) = a.link_cert().await;
    let end = outpost_net::unix_now() + 20 * DAY;
    let mut outcomes = vec![];
    for (send, receive) in [(true, true), (true, false), (false, true), (false, false)] {
        let name = format!("b-{}-{}", send as u8, receive as u8);
        let b = ServerProc::start(&auth, &name, fast).await;
        let (b_pem, _) = b.link_cert().await;
        let add = |name: &str, pem: &str, address: String, send, receive| {
            Op::ServerAdd(ServerAdd {
                name: name.into(),
                kind: "peer".into(),
                cert_pem: pem.into(),
                dial: !address.is_empty(),
                address,
                send,
                receive,
                periodic_secs: 0,
            })
        };
        // Each side sets its own flags; the other side's flags are the opposite direction.
        a.admin(add(&name, &b_pem, String::new(), send, false))
            .await;
        b.admin(add("a", &a_pem, a.addr.to_string(), false, receive))
            .await;
        a.wait_connected(&name).await;
        b.wait_connected("a").await;
        let give = Op::LeaseGive(outpost_proto::pb::admin::LeaseGive {
            server: name.clone(),
            key_id: "K-PEER".into(),
            seats: 5,
            end_at: end,
            period_secs: 0,
        });
        if !send {
            let e = a.admin_refused(give).await;
            assert!(e.contains("does not send"), "{e}");
            assert!(b.key("K-PEER").await.is_none());
            outcomes.push((send, receive, 0));
            continue;
        }
        a.admin(give).await;
        if receive {
            b.key_seats_become("K-PEER", 5).await;
        } else {
            // The grant arrives and is ignored, said in the log.
            until("the grant refused by the peer", || async {
                b.log().contains("does not receive licences")
            })
            .await;
            assert!(
                b.leases().await.is_empty(),
                "a peer that does not receive holds no lease"
            );
            assert!(b.key("K-PEER").await.is_none());
        }
        let seats = b.key("K-PEER").await.map(|k| k.seats_total).unwrap_or(0);
        outcomes.push((send, receive, seats));
    }
    assert_eq!(
        outcomes,
        vec![
            (true, true, 5),
            (true, false, 0),
            (false, true, 0),
            (false, false, 0)
        ]
    );
}

/// H3 + H7: a periodic relation whose interval (15 s) is longer than the lease period (6 s).
/// With early renewal (3 s) the receiver connects before each lease runs out and its agents
/// stay licensed; with early renewal off the lease lapses between contacts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h7_periodic_relation_renews_early_and_lapses_without_early_renewal() {
    init_logs();
    let _serial = one_at_a_time().await;
    let auth = Authority::new();
    let hq = ServerProc::start(&auth, "hq", |c| {
        fast(c);
        c.hierarchy.lease_period = Duration::from_secs(6);
    })
    .await;
    let mut regional = ServerProc::start(&auth, "regional", |c| {
        fast(c);
        c.hierarchy.early_renewal = Duration::from_secs(3);
    })
    .await;
    import(
        &hq,
        &issue(&auth, "K-PERIODIC", 20, 30 * DAY, AV_FW, false, None),
    )
    .await;
    let (hq_pem, _) = hq.link_cert().await;
    let (regional_pem, _) = regional.link_cert().await;
    hq.admin(Op::ServerAdd(ServerAdd {
        name: "regional".into(),
        kind: "secondary".into(),
        cert_pem: regional_pem,
        ..Default::default()
    }))
    .await;
    regional
        .admin(Op::ServerAdd(ServerAdd {
            name: "hq".into(),
            kind: "primary".into(),
            cert_pem: hq_pem,
            address: hq.addr.to_string(),
            dial: true,
            periodic_secs: 15,
            ..Default::default()
        }))
        .await;
    hq.give(
        "K-PERIODIC",
        "regional",
        5,
        outpost_net::unix_now() + 20 * DAY,
    )
    .await;
    regional.key_seats_become("K-PERIODIC", 5).await;
    let agents = agents(&regional, 3).await;
    until("regional agents licensed", || async {
        licensed(&agents, "K-PERIODIC") == 3
    })
    .await;
    let state = regional.servers().await[0].state.clone();
    assert!(state.contains("periodic: next contact"), "{state}");
    // 30 s: two intervals, five periods. Never a gap.
    let seq = |ls: Vec<outpost_proto::pb::admin::LeaseInfo>| ls[0].seq;
    let first = seq(hq.leases().await);
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        assert_eq!(
            licensed(&agents, "K-PERIODIC"),
            3,
            "licensed all along ({:?} in)",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let renewals = seq(hq.leases().await) - first;
    assert!(renewals >= 5, "renewed at each early contact ({renewals})");

    // Early renewal off: the next contact is an interval away, past the lease's end.
    regional.kill();
    regional.edit_config(|c| c.hierarchy.early_renewal = Duration::ZERO);
    regional.spawn();
    until("the lease lapsed between two contacts", || async {
        licensed(&agents, "K-PERIODIC") == 0
    })
    .await;
    until("its seats back at the head office", || async {
        hq.key("K-PERIODIC").await.unwrap().seats_leased_out == 0
    })
    .await;
    eprintln!("periodic: {renewals} renewals in 30 s with a 15 s interval and a 6 s period");
}
