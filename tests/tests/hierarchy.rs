//! The server hierarchy (H5, H6, H9) with real `outpost-server` processes linked over QUIC:
//! leases down a chain of three servers with agents on every level and a monitor asserting
//! L15 across the whole tree, a regional server killed, usage reports up the tree, and the
//! README walk-through. Links themselves (pins, peers, periodic relations, sync) are in
//! `hierarchy_links.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use outpost_proto::pb::admin::{admin_request::Op, admin_response::Result as R};
use outpost_server::config::ServerConfig;
use outpost_tests::hierarchy::*;
use outpost_tests::licensing::{AV_FW, DAY, issue};
use outpost_tests::{Authority, init_logs, run_bin, until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h5_a_chain_of_three_servers_leases_30_then_10_and_l15_holds_across_the_tree() {
    init_logs();
    let _serial = one_at_a_time().await;
    let auth = Authority::new();
    let hq = ServerProc::start(&auth, "hq", fast).await;
    let regional = ServerProc::start(&auth, "regional", fast).await;
    let office = ServerProc::start(&auth, "office", fast).await;
    let key = issue(&auth, "K-TREE", 50, 30 * DAY, AV_FW, false, None);
    import(&hq, &key).await;
    relate(&hq, &regional).await;
    relate(&regional, &office).await;

    // The head office gives 30 of its 50 seats to the regional server, which passes 10 on.
    let end = outpost_net::unix_now() + 20 * DAY;
    let refused = hq
        .admin_refused(Op::LeaseGive(outpost_proto::pb::admin::LeaseGive {
            server: "regional".into(),
            key_id: "K-TREE".into(),
            seats: 51,
            end_at: end,
            period_secs: 0,
        }))
        .await;
    assert!(refused.contains("only 50 free"), "{refused}");
    hq.give("K-TREE", "regional", 30, end).await;
    regional.key_seats_become("K-TREE", 30).await;
    let refused = regional
        .admin_refused(Op::LeaseGive(outpost_proto::pb::admin::LeaseGive {
            server: "office".into(),
            key_id: "K-TREE".into(),
            seats: 10,
            end_at: end + DAY,
            period_secs: 0,
        }))
        .await;
    assert!(
        refused.contains("after"),
        "a chain cannot outlast its own lease: {refused}"
    );
    regional.give("K-TREE", "office", 10, end).await;
    office.key_seats_become("K-TREE", 10).await;
    let k = hq.key("K-TREE").await.unwrap();
    assert_eq!((k.seats_leased_out, k.seats_free), (30, 20), "{k:?}");

    // Agents on every level, more than each level may license; a monitor counts unexpired
    // grants on the key across the whole tree all along.
    let levels = Arc::new(vec![
        agents(&hq, 22).await,
        agents(&regional, 22).await,
        agents(&office, 12).await,
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let mon = monitor(levels.clone(), "K-TREE", stop.clone());
    let counts = || [0, 1, 2].map(|i| licensed(&levels[i], "K-TREE"));
    until("20 / 20 / 10 agents licensed", || async {
        counts() == [20, 20, 10]
    })
    .await;

    // Three auto-renewal periods later nothing moved: the leases were renewed under the
    // devices, whose grants end with each period (L7) and were renewed with it.
    let started = std::time::Instant::now();
    let mut renewed = 0;
    let first = regional.leases().await[0].period_end;
    while started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(counts(), [20, 20, 10], "after {:?}", started.elapsed());
        renewed = regional
            .leases()
            .await
            .iter()
            .find(|l| l.direction == "received")
            .map(|l| l.period_end - first)
            .unwrap_or(0);
    }
    assert!(
        renewed >= 12,
        "the regional lease was renewed ({renewed}s further)"
    );
    let office_grant = levels[2]
        .iter()
        .map(|a| a.h().status().borrow().licence.expires_at)
        .max()
        .unwrap();
    let office_lease = office.leases().await[0].period_end;
    assert!(
        office_grant <= office_lease,
        "office grants end with the office lease's period (L7): {office_grant} > {office_lease}"
    );
    stop.store(true, Ordering::Relaxed);
    let (max, samples) = mon.await.unwrap();
    assert!(max <= 50, "L15: {max} devices held grants on 50 seats");
    assert!(samples > 100, "the monitor sampled ({samples})");
    for s in [&hq, &regional, &office] {
        let k = s.key("K-TREE").await.unwrap();
        assert!(
            k.seats_used + k.seats_leased_out <= k.seats_total,
            "{}: {k:?}",
            s.name
        );
    }
    eprintln!(
        "chain: 20/20/10 licensed of 22/22/12; lease renewed {renewed}s further over 20s; \
         monitor max {max} over {samples} samples"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h6_regional_server_killed_after_a_renewal_gives_the_seats_back_within_one_period() {
    init_logs();
    let _serial = one_at_a_time().await;
    let auth = Authority::new();
    let hq = ServerProc::start(&auth, "hq", fast).await;
    let mut regional = ServerProc::start(&auth, "regional", fast).await;
    let office = ServerProc::start(&auth, "office", fast).await;
    let key = issue(&auth, "K-KILL", 50, 30 * DAY, AV_FW, false, None);
    import(&hq, &key).await;
    relate(&hq, &regional).await;
    relate(&regional, &office).await;
    let end = outpost_net::unix_now() + 20 * DAY;
    hq.give("K-KILL", "regional", 30, end).await;
    regional.key_seats_become("K-KILL", 30).await;
    regional.give("K-KILL", "office", 10, end).await;
    office.key_seats_become("K-KILL", 10).await;
    let levels = Arc::new(vec![
        agents(&hq, 20).await,
        agents(&regional, 20).await,
        agents(&office, 10).await,
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let mon = monitor(levels.clone(), "K-KILL", stop.clone());
    let counts = || [0, 1, 2].map(|i| licensed(&levels[i], "K-KILL"));
    until("20 / 20 / 10 agents licensed", || async {
        counts() == [20, 20, 10]
    })
    .await;

    // Kill the regional server right after the head office renewed its lease.
    let given = |ls: Vec<outpost_proto::pb::admin::LeaseInfo>| {
        ls.into_iter()
            .find(|l| l.direction == "given")
            .expect("lease")
    };
    let seq = given(hq.leases().await).seq;
    until("a renewal", || async { given(hq.leases().await).seq > seq }).await;
    regional.kill();
    let killed = outpost_net::unix_now();
    let promised = given(hq.leases().await).period_end;
    let office_grants = levels[2]
        .iter()
        .map(|a| a.h().status().borrow().licence.expires_at)
        .max()
        .unwrap();
    assert!(
        office_grants <= promised,
        "office grants ({office_grants}) end no later than the period the head office promised ({promised})"
    );

    // Within one period the head office has its seats back.
    until("the 30 seats back at the head office", || async {
        hq.key("K-KILL").await.unwrap().seats_leased_out == 0
    })
    .await;
    let back = outpost_net::unix_now();
    assert!(
        back <= promised + 2 && back - killed <= PERIOD.as_secs() as i64 + 2,
        "seats back {}s after the kill (promised until +{}s, period {PERIOD:?})",
        back - killed,
        promised - killed
    );
    until("office agents unlicensed", || async { counts()[2] == 0 }).await;
    let office_lost = outpost_net::unix_now();
    assert!(
        office_lost <= promised + 2,
        "office agents lost their licence {}s after the kill, when the period promised above \
         them ended (+{}s)",
        office_lost - killed,
        promised - killed
    );

    // The regional server comes back: the lease resumes, nothing is counted twice.
    regional.spawn();
    until("20 / 20 / 10 agents licensed again", || async {
        counts() == [20, 20, 10]
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (max, samples) = mon.await.unwrap();
    assert!(max <= 50, "L15: {max} devices held grants on 50 seats");
    for (s, n) in [(&hq, 20), (&regional, 20), (&office, 10)] {
        let k = s.key("K-KILL").await.unwrap();
        assert_eq!(k.seats_used, n, "{}: {k:?}", s.name);
        assert!(
            k.seats_used + k.seats_leased_out <= k.seats_total,
            "{}: {k:?}",
            s.name
        );
    }
    eprintln!(
        "kill: seats back at the head office {}s after the SIGKILL, office agents unlicensed \
         after {}s (period {PERIOD:?}); monitor max {max} over {samples} samples",
        back - killed,
        office_lost - killed
    );
}

/// The README's "A hierarchy of servers", run line by line as written against three server
/// processes. A line that needs a link or a lease that is still on its way is retried, as an
/// administrator would run it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h5_readme_hierarchy_walk_through_runs_as_written() {
    init_logs();
    let _serial = one_at_a_time().await;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let section = &readme[readme.find("### A hierarchy of servers").expect("section")..];
    let block = &section[section.find("```sh\n").expect("sh block") + 6..];
    let block = &block[..block.find("```").expect("end of block")];
    let auth = Authority::new();
    let hq = ServerProc::start(&auth, "hq", fast).await;
    let regional = ServerProc::start(&auth, "regional", fast).await;
    let office = ServerProc::start(&auth, "office", fast).await;
    for s in [&hq, &regional, &office] {
        s.servers().await;
    }
    let work = tempfile::tempdir().unwrap();
    let server = outpost_tests::bin("outpost-server");
    let run = |cmd: &str| -> Result<String, String> {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd.replacen("outpost-server", &server.to_string_lossy(), 1))
            .current_dir(work.path())
            .env("A", auth.dir.path())
            .env("HQ", &hq.data)
            .env("REGIONAL", &regional.data)
            .env("OFFICE", &office.data)
            .env("HQ_ADDR", hq.addr.to_string())
            .env("REGIONAL_ADDR", regional.addr.to_string())
            .output()
            .expect("sh");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    };
    let mut ran = 0;
    for line in block.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        assert!(
            line.starts_with("outpost-server "),
            "not understood: {line}"
        );
        let started = std::time::Instant::now();
        loop {
            match run(line) {
                Ok(_) => break,
                Err(e) if started.elapsed() < Duration::from_secs(30) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("`{line}` failed:\n{e}"),
            }
        }
        ran += 1;
    }
    assert_eq!(ran, 16, "every line ran");
    office.key_seats_become("K-ORG", 10).await;
    let k = hq.key("K-ORG").await.unwrap();
    assert_eq!((k.seats_total, k.seats_leased_out), (50, 30), "{k:?}");
    let k = regional.key("K-ORG").await.unwrap();
    assert_eq!((k.seats_total, k.seats_leased_out), (30, 10), "{k:?}");
    let listed = run("outpost-server admin --data-dir $REGIONAL lease list").unwrap();
    assert!(
        listed.contains("given") && listed.contains("received"),
        "{listed}"
    );
}

/// H9 (and the device summaries and notifications of H4): reports travel up the tree on
/// connect, when a report arrives from below and when the seats given change — here with a
/// report period of an hour, so nothing below is periodic; notifications follow, tagged with
/// the server they come from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h9_usage_reports_travel_up_the_tree_on_connect_and_when_seats_change() {
    init_logs();
    let _serial = one_at_a_time().await;
    let auth = Authority::new();
    let hourly = |c: &mut ServerConfig| {
        fast(c);
        c.hierarchy.report_period = Duration::from_secs(3600);
    };
    let hq = ServerProc::start(&auth, "hq", hourly).await;
    let regional = ServerProc::start(&auth, "regional", hourly).await;
    let office = ServerProc::start(&auth, "office", hourly).await;
    import(
        &hq,
        &issue(&auth, "K-REP", 40, 30 * DAY, AV_FW, false, None),
    )
    .await;
    relate(&hq, &regional).await;
    relate(&regional, &office).await;
    let end = outpost_net::unix_now() + 20 * DAY;
    let lease = hq.give("K-REP", "regional", 20, end).await;
    regional.key_seats_become("K-REP", 20).await;
    regional.give("K-REP", "office", 5, end).await;
    office.key_seats_become("K-REP", 5).await;
    let _a = agents(&regional, 4).await;
    let _b = agents(&office, 3).await;
    // Agents checked in after the last report: a lease change below triggers a new one.
    until("agents licensed", || async {
        licensed(&_a, "K-REP") == 4 && licensed(&_b, "K-REP") == 3
    })
    .await;
    let r = hq
        .admin(Op::LeaseChange(outpost_proto::pb::admin::LeaseChange {
            lease_id: lease.clone(),
            seats: 18,
            end_at: 0,
        }))
        .await;
    assert!(matches!(r, R::Done(_)), "{r:?}");
    regional.key_seats_become("K-REP", 18).await;
    // The office's report reaches the head office through the regional server.
    regional.give("K-REP", "office", 1, end).await;
    until("the tree's usage at the head office", || async {
        let rows = report(&hq).await;
        usage(&rows, "regional", "K-REP") == Some((18, 6, 4))
            && usage(&rows, "regional/office", "K-REP") == Some((6, 0, 3))
    })
    .await;
    // Lowered to 18: the 2 come back at the head office when the period granted ends.
    until("the head office's own row", || async {
        usage(&report(&hq).await, "(this server)", "K-REP") == Some((40, 18, 0))
    })
    .await;
    let rows = report(&hq).await;
    let office_row = rows.iter().find(|u| u.path == "regional/office").unwrap();
    let summary = office_row.report.as_ref().unwrap();
    assert_eq!(
        (summary.devices, summary.devices_licensed),
        (3, 3),
        "{summary:?}"
    );
    // The CLI shows the same tree.
    let data = hq.data.to_string_lossy().into_owned();
    let (ok, out, err) =
        run_bin("outpost-server", &["admin", "--data-dir", &data, "report"]).unwrap();
    assert!(ok, "{err}");
    assert!(
        out.contains("regional/office") && out.contains("K-REP"),
        "{out}"
    );

    // H4: notifications travel up too, tagged with the path they came along — here the
    // office's own "regional is online", relayed by the regional server to the head office.
    until("the office's notification at the head office", || async {
        notified(&hq, "neighbour-online")
            .await
            .iter()
            .any(|m| m == "[regional/office] server regional is online")
    })
    .await;
    let once = notified(&hq, "neighbour-online")
        .await
        .iter()
        .filter(|m| m.starts_with("[regional/office]"))
        .count();
    assert_eq!(once, 1, "stored once");
}
