//! L6 under load: a storm of twice as many agents as seats, and the server killed (SIGKILL)
//! in the middle of one.

use std::time::Duration;

use outpost_proto::pb::admin::{
    Empty, KeyImport, KeyRef, TokenCreate, admin_request::Op, admin_response::Result as R,
};
use outpost_tests::licensing::*;
use outpost_tests::*;

/// L6 under a storm: 2 × S agents connect at once to a key of S seats → exactly S licensed;
/// again with a fresh key while the server process is killed (SIGKILL) mid-storm and
/// restarted → still exactly S, no seat lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l6_storm_of_twice_the_seats_and_server_killed_mid_storm() {
    init_logs();
    const S: u32 = 20;
    let auth = Authority::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cfg = test_server_config();
    cfg.listen = port;
    outpost_server::DataDir::new(&data)
        .init(&outpost_server::InitOptions {
            authority_public_key: auth.public_text.clone(),
            base: Some(cfg),
            ..Default::default()
        })
        .await
        .unwrap();
    let spawn = || {
        std::process::Command::new(bin("outpost-server"))
            .args(["run", "--data-dir"])
            .arg(&data)
            .env(
                "RUST_LOG",
                std::env::var("STORM_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(std::process::Stdio::null())
            .spawn()
            .map(outpost_tests::KillOnDrop)
            .expect("spawn outpost-server")
    };
    let admin = async |op: Op| -> R {
        within("admin", async {
            loop {
                if let Ok(c) =
                    outpost_admin::AdminClient::from_bundle(&data.join("admin"), None).await
                    && let Ok(r) = c.request(op.clone()).await
                {
                    c.close();
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
    };
    let used = async |key: &str| -> u32 {
        match admin(Op::KeyList(Empty {})).await {
            R::Keys(k) => k
                .keys
                .iter()
                .find(|k| k.key_id == key)
                .map(|k| k.seats_used)
                .unwrap_or(0),
            other => panic!("{other:?}"),
        }
    };
    let mut child = spawn();
    let k1 = issue(&auth, "K-STORM1", S, 30 * DAY, AV_FW, false, None);
    let r = admin(Op::KeyImport(KeyImport {
        file_name: "K-STORM1.key".into(),
        content: k1.file.clone(),
        assign_everyone: true,
        ..Default::default()
    }))
    .await;
    assert!(matches!(r, R::KeyImport(_)), "{r:?}");
    let R::TokenCreated(t) = admin(Op::TokenCreate(TokenCreate {
        role: "agent".into(),
        uses: 2 * S,
        ttl_secs: 3600,
        ..Default::default()
    }))
    .await
    else {
        panic!("token")
    };
    let mut agents = vec![];
    for i in 0..2 * S {
        agents.push(
            Agent::enroll(
                test_agent_config(vec![], Some(port), &format!("storm-{i}")),
                &t.token,
            )
            .await,
        );
    }
    let count = |agents: &[Agent], key: &str| {
        agents
            .iter()
            .filter(|a| {
                let s = a.h().status().borrow().clone();
                s.licence.state == "licensed" && s.licence.key == key
            })
            .count()
    };

    // Storm 1: everyone at once.
    for a in agents.iter_mut() {
        a.boot();
    }
    for a in &agents {
        a.wait_checked().await;
    }
    assert_eq!(count(&agents, "K-STORM1"), S as usize);
    assert_eq!(used("K-STORM1").await, S);

    // Storm 2 on a fresh key, the server killed mid-storm.
    for a in agents.iter_mut() {
        a.stop().await;
    }
    admin(Op::KeyRemove(KeyRef {
        key_id: "K-STORM1".into(),
    }))
    .await;
    let k2 = issue(&auth, "K-STORM2", S, 30 * DAY, AV_FW, false, None);
    let r = admin(Op::KeyImport(KeyImport {
        file_name: "K-STORM2.key".into(),
        content: k2.file.clone(),
        assign_everyone: true,
        ..Default::default()
    }))
    .await;
    assert!(matches!(r, R::KeyImport(_)), "{r:?}");
    // Half the agents storm in; the server is killed as soon as the first of them holds a
    // seat on the fresh key (agents report instantly); the other half arrives while it is
    // down and restarting. So the kill lands with the storm under way: at least one seat
    // granted, not every agent checked.
    let checked = |agents: &[Agent]| {
        agents
            .iter()
            .filter(|a| {
                let s = a.h().status().borrow().clone();
                s.licence.key == "K-STORM2" || s.licence.reason.contains("K-STORM2")
            })
            .count()
    };
    let (first, second) = agents.split_at_mut(S as usize);
    for a in first.iter_mut() {
        a.boot();
    }
    within("first seat of storm 2", async {
        while count(first, "K-STORM2") == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let (granted, done) = (count(first, "K-STORM2"), checked(first));
    println!(
        "server killed with {granted} of {S} seats granted, {done} of {} agents checked",
        2 * S
    );
    assert!(
        granted >= 1 && done < 2 * S as usize,
        "the kill landed mid-storm ({granted} granted, {done} checked)"
    );
    for a in second.iter_mut() {
        a.boot();
    }
    let mut child = spawn();
    // Every agent reconnects and is checked against the fresh key. (Seen once in a loaded full
    // run: not every agent got there within 60 s; the devices still missing are printed, with
    // what each agent says, to tell a device offline from one never re-checked.)
    let missing = std::sync::Mutex::new(String::new());
    let wait = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let list = match admin(Op::DeviceList(outpost_proto::pb::admin::DeviceList {
                role: "agent".into(),
            }))
            .await
            {
                R::Devices(d) => d.devices,
                _ => vec![],
            };
            let bad: Vec<String> = list
                .iter()
                .filter(|d| !d.online || d.licence_state == "unknown")
                .map(|d| {
                    let agent = agents
                        .iter()
                        .find(|a| a.h().device_id() == d.device_id)
                        .map(|a| {
                            let s = a.h().status().borrow().clone();
                            format!(
                                "agent: {} {} {:?}",
                                s.state, s.licence.state, s.licence.reason
                            )
                        })
                        .unwrap_or_default();
                    format!(
                        "{} online={} state={} ({agent})",
                        d.device_id, d.online, d.licence_state
                    )
                })
                .collect();
            if list.len() == 2 * S as usize && bad.is_empty() {
                return;
            }
            *missing.lock().unwrap() = format!("{} listed; {}", list.len(), bad.join("; "));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        wait.is_ok(),
        "not every agent re-checked 60 s after the restart: {}",
        missing.lock().unwrap()
    );
    let list = match admin(Op::DeviceList(outpost_proto::pb::admin::DeviceList {
        role: "agent".into(),
    }))
    .await
    {
        R::Devices(d) => d.devices,
        other => panic!("{other:?}"),
    };
    let licensed = list
        .iter()
        .filter(|d| d.licence_state == "licensed" && d.licence_key == "K-STORM2")
        .count();
    assert_eq!(licensed, S as usize, "exactly S licensed on the server");
    assert_eq!(used("K-STORM2").await, S, "seat count matches the holders");
    until("agents hold the same view", || async {
        count(&agents, "K-STORM2") == S as usize
            && agents.iter().all(|a| {
                let s = a.h().status().borrow().clone();
                s.licence.key == "K-STORM2" || s.licence.state == "unlicensed"
            })
    })
    .await;
    // The same devices, not just the same number: the server's licensed set is the agents'.
    let on_server: std::collections::BTreeSet<String> = list
        .iter()
        .filter(|d| d.licence_state == "licensed")
        .map(|d| d.device_id.clone())
        .collect();
    let on_agents: std::collections::BTreeSet<String> = agents
        .iter()
        .filter(|a| a.h().status().borrow().licence.state == "licensed")
        .map(|a| a.h().device_id().to_owned())
        .collect();
    assert_eq!(on_server, on_agents);
    for a in agents.iter_mut() {
        a.stop().await;
    }
    child.kill().ok();
    child.wait().ok();
    // The store itself after the crash and restart: every count equals its rows.
    let store = outpost_server::store::Store::open(
        &data.join("outpost.db"),
        outpost_server::store::Durability::Normal,
    )
    .await
    .unwrap();
    assert_eq!(store.audit_seats().await.unwrap(), Vec::<String>::new());
    store.close().await;
}

/// L6 at the store: 2 × S devices checked at the same time from as many tasks — the real
/// conditional updates, concurrently — give exactly S seats; checking them all again keeps
/// every holder on its seat and the counts equal to the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l6_concurrent_checks_never_over_allocate() {
    const S: usize = 37;
    let auth = Authority::new();
    let dir = tempfile::tempdir().unwrap();
    let store = outpost_server::store::Store::open(
        &dir.path().join("s.db"),
        outpost_server::store::Durability::Normal,
    )
    .await
    .unwrap();
    let now = outpost_net::unix_now();
    let key = auth.key("K-CC", S as u32, Duration::from_secs(30 * 86_400));
    store
        .insert_keys(&[("K-CC.key".into(), key)], false, true, "imported", now)
        .await
        .unwrap();
    for i in 0..2 * S {
        store
            .insert_local_device(&format!("a-{i}"), "agent", &format!("{i:064x}"), now)
            .await
            .unwrap();
    }
    let policy = outpost_server::store::Policy {
        grant_ttl: 7 * DAY,
        expiring_soon: DAY,
    };
    let round = async || {
        let tasks: Vec<_> = (0..2 * S)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let o = store
                        .check_licence(&format!("a-{i}"), now, &policy)
                        .await
                        .unwrap();
                    matches!(o, outpost_server::store::CheckOutcome::Licensed(_)).then_some(i)
                })
            })
            .collect();
        let mut holders = std::collections::BTreeSet::new();
        for t in tasks {
            if let Some(i) = t.await.unwrap() {
                holders.insert(i);
            }
        }
        holders
    };
    let first = round().await;
    assert_eq!(first.len(), S, "exactly the key's seats");
    assert_eq!(store.audit_seats().await.unwrap(), Vec::<String>::new());
    assert_eq!(store.seat_counts("K-CC").await.unwrap().1, S as i64);
    let again = round().await;
    assert_eq!(
        again, first,
        "holders keep their seats, nobody else gets one"
    );
    assert_eq!(store.audit_seats().await.unwrap(), Vec::<String>::new());
}
