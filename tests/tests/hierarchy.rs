//! The server hierarchy (H1–H8) with real `outpost-server` processes linked over QUIC: leases
//! down a chain of three servers, with agents on every level and a monitor asserting L15
//! across the whole tree; a regional server killed; pinned certificates.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use outpost_proto::pb::admin::{
    KeyImport, ServerAdd, TokenCreate, admin_request::Op, admin_response::Result as R,
};
use outpost_server::config::ServerConfig;
use outpost_tests::hierarchy::{ServerProc, relate};
use outpost_tests::licensing::{AV_FW, DAY, issue};
use outpost_tests::{Agent, Authority, init_logs, run_bin, test_agent_config, until};

/// Short periods so renewals happen many times in a test.
fn fast(c: &mut ServerConfig) {
    c.hierarchy.lease_period = Duration::from_secs(6);
    c.hierarchy.sync_period = Duration::from_secs(2);
    c.timing.sync_interval = Duration::from_secs(1);
}

async fn agents(server: &ServerProc, n: usize) -> Vec<Agent> {
    let R::TokenCreated(t) = server
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
    let mut out = vec![];
    for i in 0..n {
        let name = format!("{}-{i}", server.name);
        out.push(
            Agent::start(
                test_agent_config(vec![], Some(server.addr), &name),
                &t.token,
            )
            .await,
        );
    }
    out
}

fn licensed(agents: &[Agent], key: &str) -> usize {
    let now = outpost_net::unix_now();
    agents
        .iter()
        .filter(|a| {
            let s = a.h().status().borrow().clone();
            s.licence.state == "licensed" && s.licence.key == key && s.licence.expires_at > now
        })
        .count()
}

/// Samples every agent's grant on `key` across the tree until stopped; returns the highest
/// count seen and the number of samples.
fn monitor(
    all: Arc<Vec<Vec<Agent>>>,
    key: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize)> {
    let max = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        let mut samples = 0;
        while !stop.load(Ordering::Relaxed) {
            let n: usize = all.iter().map(|level| licensed(level, key)).sum();
            max.fetch_max(n, Ordering::Relaxed);
            samples += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (max.load(Ordering::Relaxed), samples)
    })
}

async fn import(server: &ServerProc, key: &outpost_proto::licence::LicenceKey) {
    let r = server
        .admin(Op::KeyImport(KeyImport {
            file_name: format!("{}.key", key.body.key_id),
            content: key.file.clone(),
            assign_everyone: true,
            ..Default::default()
        }))
        .await;
    assert!(matches!(r, R::KeyImport(_)), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h5_a_chain_of_three_servers_leases_30_then_10_and_l15_holds_across_the_tree() {
    init_logs();
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
        back <= promised + 2 && back - killed <= 6 + 2,
        "seats back {}s after the kill (promised until +{}s, period 6s)",
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
         after {}s (period 6s); monitor max {max} over {samples} samples",
        back - killed,
        office_lost - killed
    );
}

fn cli(server: &ServerProc, args: &[&str]) -> String {
    let data = server.data.to_string_lossy().into_owned();
    let mut all = vec!["admin", "--data-dir", data.as_str()];
    all.extend_from_slice(args);
    let (ok, out, err) = run_bin("outpost-server", &all).expect("run outpost-server admin");
    assert!(ok, "outpost-server {all:?} failed: {err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_offline_addition_with_certificate_files_dmz_direction_and_wrong_certificates_refused() {
    init_logs();
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

/// Rewrites the receiver's record of a lease while it is stopped (a damaged or forged
/// database): it claims `seats` where fewer were given.
async fn forge(server: &ServerProc, key: &str, seats: i64) {
    use sqlx::Connection;
    let url = format!("sqlite://{}", server.data.join("outpost.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("UPDATE leases_received SET seats = $1 WHERE key_id = $2")
        .bind(seats)
        .bind(key)
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("UPDATE licence_keys SET seats = $1 WHERE id = $2")
        .bind(seats)
        .bind(key)
        .execute(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();
}

async fn notified(server: &ServerProc, kind: &str) -> Vec<String> {
    match server
        .admin(Op::NotificationList(
            outpost_proto::pb::admin::NotificationList {
                kind: kind.into(),
                limit: 50,
            },
        ))
        .await
    {
        R::Notifications(n) => n.notifications.into_iter().map(|n| n.message).collect(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h8_a_receiver_claiming_more_seats_than_given_is_notified_and_the_givers_figure_wins() {
    init_logs();
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
    until("the giver notified the mismatch", || async {
        !notified(&hq, "lease-sync-mismatch").await.is_empty()
    })
    .await;
    let msg = &notified(&hq, "lease-sync-mismatch").await[0];
    assert!(
        msg.contains("the giver says 12") && msg.contains("the receiver 40"),
        "{msg}"
    );
    regional.key_seats_become("K-SYNC", 12).await;
    assert!(
        !notified(&regional, "lease-sync-mismatch").await.is_empty(),
        "the receiver notifies too"
    );
    let hq_key = hq.key("K-SYNC").await.unwrap();
    assert_eq!(hq_key.seats_leased_out, 12, "{hq_key:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_peers_transfer_seats_only_where_the_sender_sends_and_the_receiver_receives() {
    init_logs();
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

/// The README's "A hierarchy of servers", run line by line as written against three server
/// processes. A line that needs a link or a lease that is still on its way is retried, as an
/// administrator would run it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h5_readme_hierarchy_walk_through_runs_as_written() {
    init_logs();
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

/// H3 + H7: a periodic relation whose interval (10 s) is longer than the lease period (4 s).
/// With early renewal (2 s) the receiver connects before each lease runs out and its agents
/// stay licensed; with early renewal off the lease lapses between contacts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h7_periodic_relation_renews_early_and_lapses_without_early_renewal() {
    init_logs();
    let auth = Authority::new();
    let hq = ServerProc::start(&auth, "hq", |c| {
        fast(c);
        c.hierarchy.lease_period = Duration::from_secs(4);
    })
    .await;
    let mut regional = ServerProc::start(&auth, "regional", |c| {
        fast(c);
        c.hierarchy.early_renewal = Duration::from_secs(2);
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
            periodic_secs: 10,
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
    // 25 s: two and a half intervals, six periods. Never a gap.
    let seq = |ls: Vec<outpost_proto::pb::admin::LeaseInfo>| ls[0].seq;
    let first = seq(hq.leases().await);
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(25) {
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
    eprintln!("periodic: {renewals} renewals in 25 s with a 10 s interval and a 4 s period");
}

async fn report(server: &ServerProc) -> Vec<outpost_proto::pb::admin::ServerUsage> {
    match server
        .admin(Op::Report(
            outpost_proto::pb::admin::ReportRequest::default(),
        ))
        .await
    {
        R::Report(r) => r.servers,
        other => panic!("{other:?}"),
    }
}

/// (seats, leased out, active licensed) of `key` in the report of the server at `path`.
fn usage(
    rows: &[outpost_proto::pb::admin::ServerUsage],
    path: &str,
    key: &str,
) -> Option<(u32, u32, u32)> {
    let r = rows.iter().find(|u| u.path == path)?.report.as_ref()?;
    let k = r.keys.iter().find(|k| k.key_id == key)?;
    Some((k.seats, k.seats_leased_out, k.active_licensed))
}

/// H9 (and the device summaries of H4): reports travel up the tree on connect, when a
/// report arrives from below and when the seats given change — here with a report period of
/// an hour, so nothing below is periodic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h9_usage_reports_travel_up_the_tree_on_connect_and_when_seats_change() {
    init_logs();
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
}
