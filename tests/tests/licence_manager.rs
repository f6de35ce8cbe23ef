//! The licence manager (SPEC §3, L2–L14, S8) driven through the real server: admin requests
//! over QUIC, agents connecting, the licence clock, the licence authority service and the
//! notification hook. Time-based rules use keys valid for seconds, or the store's functions
//! with a chosen "now" (a virtual clock), never long sleeps.

use std::path::Path;
use std::time::Duration;

use outpost_proto::licence::{LicenceKey, verify_key_file};
use outpost_proto::pb::admin::{
    DeviceMove, DeviceRef, Empty, GroupCreate, KeyAssign, KeyAutoDistribute, KeyImport, KeyRef,
    NotificationInfo, NotificationList, RenewalReport, TokenCreate, admin_request::Op,
    admin_response::Result as R,
};
use outpost_server::authority::{AuthorityService, IssueSpec};
use outpost_server::store::Policy;
use outpost_tests::*;

const DAY: i64 = 86_400;

/// A key with everything chosen by the test.
fn issue(
    auth: &Authority,
    id: &str,
    seats: u32,
    valid_for: i64,
    components: &[&str],
    demo: bool,
    renews: Option<&str>,
) -> LicenceKey {
    let now = outpost_net::unix_now();
    outpost_server::authority::issue(
        &auth.key,
        &IssueSpec {
            key_id: id.into(),
            licensee: "ACME GmbH".into(),
            product: "Outpost Endpoint".into(),
            components: components.iter().map(|c| c.to_string()).collect(),
            seats,
            valid_from: now - 1,
            expires_at: now + valid_for,
            demo,
            renews: renews.map(str::to_owned),
        },
    )
    .expect("issue key")
}

const AV_FW: &[&str] = &["antivirus", "firewall"];

async fn import(server: &Server, key: &LicenceKey, auto: bool, everyone: bool, activation: bool) {
    let r = server
        .try_admin(Op::KeyImport(KeyImport {
            file_name: format!("{}.key", key.body.key_id),
            content: key.file.clone(),
            auto_distribute: auto,
            assign_everyone: everyone,
            activation_reserve: activation,
        }))
        .await
        .expect("admin");
    assert!(matches!(r, R::KeyImport(_)), "import refused: {r:?}");
}

/// Runs an admin request that must be refused; returns the refusal.
async fn refused(server: &Server, op: Op) -> String {
    match server.try_admin(op).await {
        Err(e) => e.to_string(),
        Ok(r) => panic!("accepted, expected a refusal: {r:?}"),
    }
}

/// Imports a plain commercial key (antivirus, firewall), optionally assigned to everyone.
async fn add_key(
    server: &Server,
    auth: &Authority,
    id: &str,
    seats: u32,
    valid_for: i64,
    everyone: bool,
) {
    import(
        server,
        &issue(auth, id, seats, valid_for, AV_FW, false, None),
        false,
        everyone,
        false,
    )
    .await;
}

async fn assign(server: &Server, key: &str, object: &str) {
    let r = server
        .admin(Op::KeyAssign(KeyAssign {
            key_id: key.into(),
            object: object.into(),
        }))
        .await;
    assert!(matches!(r, R::Done(_)), "assign refused: {r:?}");
}

async fn group(server: &Server, path: &str) {
    let r = server
        .admin(Op::GroupCreate(GroupCreate { path: path.into() }))
        .await;
    assert!(matches!(r, R::Done(_)), "group create refused: {r:?}");
}

async fn key_ids(server: &Server) -> Vec<String> {
    match server.admin(Op::KeyList(Empty {})).await {
        R::Keys(k) => k.keys.into_iter().map(|k| k.key_id).collect(),
        other => panic!("unexpected {other:?}"),
    }
}

async fn notices(server: &Server, kind: &str) -> Vec<NotificationInfo> {
    match server
        .admin(Op::NotificationList(NotificationList {
            kind: kind.into(),
            limit: 1000,
        }))
        .await
    {
        R::Notifications(n) => n.notifications,
        other => panic!("unexpected {other:?}"),
    }
}

async fn agent(server: &Server, token: &str, machine: &str) -> Agent {
    Agent::start(
        test_agent_config(vec![], Some(server.addr()), machine),
        token,
    )
    .await
}

/// Restarts an agent and waits for the licence check of its new session.
async fn reconnect(a: &mut Agent) -> outpost_agent::status::AgentStatus {
    a.stop().await;
    a.boot();
    a.wait_checked().await
}

async fn renew(server: &Server) -> Vec<RenewalReport> {
    match server.admin(Op::KeyRenew(Empty {})).await {
        R::Renewals(r) => r.reports,
        other => panic!("renewal refused: {other:?}"),
    }
}

fn device_row(list: &outpost_proto::pb::admin::DeviceListResult, id: &str) -> (String, String) {
    let d = list
        .devices
        .iter()
        .find(|d| d.device_id == id)
        .expect("device listed");
    (d.licence_state.clone(), d.licence_key.clone())
}

/// A licence authority service holding renewals, and a server that fetches from it.
async fn with_authority(
    auth: &Authority,
    tweak: impl FnOnce(&mut outpost_server::config::ServerConfig),
) -> (AuthorityService, Server) {
    let svc = outpost_server::authority::serve(auth.dir.path(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("authority serve");
    let (addr, pin) = (svc.addr.to_string(), svc.tls_sha256.clone());
    let server = Server::start(auth, |c| {
        c.licensing.authority = addr;
        c.licensing.authority_tls_sha256 = pin;
        tweak(c);
    })
    .await;
    (svc, server)
}

/// Puts a renewal key on offer at the authority, as `outpost-server authority offer` does.
fn offer(auth: &Authority, key: &LicenceKey) {
    let f = auth.dir.path().join(format!("{}.upload", key.body.key_id));
    std::fs::write(&f, &key.file).unwrap();
    outpost_server::authority::offer(auth.dir.path(), &f).expect("offer");
}

fn write_hook(dir: &Path, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.to_str().unwrap().to_owned()
}

// ----- L2, L3, L4

/// L2: the repository shows seats and objects; removal keeps the file; export is the signed
/// file, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_repository_counts_remove_keeps_file_export_is_byte_identical() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    let key = issue(&auth, "K-L2", 3, 30 * DAY, AV_FW, false, None);
    import(&server, &key, false, true, false).await;
    let token = server.token("agent", 1).await;
    let mut a = agent(&server, &token, "l2").await;
    assert_eq!(a.wait_checked().await.licence.key, "K-L2");

    let info = server.key_info("K-L2").await;
    assert_eq!(
        (
            info.seats_total,
            info.seats_used,
            info.seats_leased_out,
            info.seats_free
        ),
        (3, 1, 0, 2)
    );
    assert_eq!(info.components, ["antivirus", "firewall"]);
    assert_eq!(info.objects, ["everyone"]);
    assert_eq!(info.expires_at, key.body.expires_at);
    assert_eq!(info.kind, "commercial");

    let R::KeyFile(f) = server
        .admin(Op::KeyExport(KeyRef {
            key_id: "K-L2".into(),
        }))
        .await
    else {
        panic!("export refused")
    };
    assert_eq!(f.content, key.file, "export is byte-identical");
    let other_place = verify_key_file(&f.content, auth.key.public_key()).expect("verifies");
    assert_eq!(other_place.body, key.body);

    // Through the CLI too: the exported file verifies with the authority's public key.
    let out = server.data.join("exported.key");
    let (ok, _, err) = run_bin(
        "outpost-server",
        &[
            "admin",
            "--data-dir",
            server.data.to_str().unwrap(),
            "key",
            "export",
            "K-L2",
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), key.file);

    let r = server
        .admin(Op::KeyRemove(KeyRef {
            key_id: "K-L2".into(),
        }))
        .await;
    assert!(matches!(r, R::Done(_)), "{r:?}");
    assert!(key_ids(&server).await.is_empty(), "gone from the manager");
    let kept = server.data.join("keys").join("K-L2.key");
    assert_eq!(
        std::fs::read(&kept).expect("file stays in the data directory"),
        key.file
    );
    let s = reconnect(&mut a).await;
    assert_eq!(
        s.licence.state, "unlicensed",
        "a removed key licenses nobody"
    );
    a.stop().await;
}

/// L3: a demo key works like any key and ends with its short validity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l3_demo_key_licenses_fully_until_its_short_validity_ends() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    let key = issue(&auth, "K-DEMO", 1, 4, AV_FW, true, None);
    import(&server, &key, false, true, false).await;
    assert_eq!(server.key_info("K-DEMO").await.kind, "demo");
    let token = server.token("agent", 1).await;
    let mut a = agent(&server, &token, "l3").await;
    let s = a.wait_checked().await;
    assert_eq!(s.licence.state, "licensed");
    assert_eq!(
        s.licence.components,
        ["antivirus", "firewall"],
        "full function"
    );
    assert!(
        s.licence.expires_at <= key.body.expires_at,
        "grant ends with the key"
    );
    let s = within(
        "demo key expiry",
        a.h().wait_for(|s| s.licence.state == "unlicensed"),
    )
    .await;
    assert!(outpost_net::unix_now() >= key.body.expires_at);
    assert!(s.licence.reason.contains("K-DEMO"), "{}", s.licence.reason);
    let s = reconnect(&mut a).await;
    assert_eq!(
        s.licence.state, "unlicensed",
        "no new grant from an expired key"
    );
    assert!(server.key_info("K-DEMO").await.expired);
    a.stop().await;
}

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
    assert_eq!(server.key_info("K-BER").await.seats_used, 0);
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
    assert_eq!(server.key_info("K-F2").await.seats_used, 0);
    assert_eq!(server.key_info("K-ALL").await.seats_used, 1);
    a.stop().await;
}

// ----- L5, L8, L9, L10

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

/// L9 (and S8): seats freed by removal, revocation or inactivity beyond the reclaim period go
/// to unlicensed devices at their next connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l9_freed_seats_go_to_unlicensed_devices_at_next_connect() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    add_key(&server, &auth, "K-L9", 1, 30 * DAY, true).await;
    let token = server.token("agent", 4).await;
    let mut holder = agent(&server, &token, "l9-a").await;
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

    // Removal.
    let id = holder.h().device_id().to_owned();
    holder.stop().await;
    server
        .admin(Op::DeviceRemove(DeviceRef { device_id: id }))
        .await;
    assert_eq!(server.key_info("K-L9").await.seats_used, 0);
    let mut b = waiting.remove(0);
    assert_eq!(reconnect(&mut b).await.licence.state, "licensed");

    // Revocation (S8).
    let id = b.h().device_id().to_owned();
    server
        .admin(Op::DeviceRevoke(DeviceRef { device_id: id }))
        .await;
    b.stop().await;
    let mut c = waiting.remove(0);
    assert_eq!(reconnect(&mut c).await.licence.state, "licensed");

    // Inactivity: c goes quiet; the licence clock at a "now" past the reclaim period frees
    // its seat (virtual clock: the cutoff is the current time).
    let c_id = c.h().device_id().to_owned();
    c.stop().await;
    let now = outpost_net::unix_now();
    let freed = server.h().reclaim(now + 1, now).await.unwrap();
    assert_eq!(freed, 1);
    assert_eq!(server.key_info("K-L9").await.seats_used, 0);
    let list = server.agents().await;
    let (state, _) = device_row(&list, &c_id);
    assert_eq!(state, "unlicensed");
    assert_eq!(notices(&server, "seats-reclaimed").await.len(), 1);
    let mut d = waiting.remove(0);
    assert_eq!(reconnect(&mut d).await.licence.state, "licensed");
    // The stale device coming back finds the seat taken.
    let s = reconnect(&mut c).await;
    assert_eq!(s.licence.state, "unlicensed");
    assert_eq!(server.key_info("K-L9").await.seats_used, 1);
    c.stop().await;
    d.stop().await;
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

// ----- L11, L12, L13

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
    server
        .admin(Op::DeviceRemove(DeviceRef { device_id: id }))
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

// ----- L14

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

// ----- concurrency, bad input

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
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
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
    for a in agents.iter_mut() {
        a.boot();
    }
    // Kill as soon as the first agent holds a seat on the fresh key (agents report instantly).
    within("first seat of storm 2", async {
        while count(&agents, "K-STORM2") == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    println!(
        "server killed with {} of {S} seats granted to agents",
        count(&agents, "K-STORM2")
    );
    let mut child = spawn();
    // Every agent reconnects and is checked against the fresh key.
    until("every agent re-checked after the restart", || async {
        let list = match admin(Op::DeviceList(outpost_proto::pb::admin::DeviceList {
            role: "agent".into(),
        }))
        .await
        {
            R::Devices(d) => d.devices,
            _ => return false,
        };
        list.len() == 2 * S as usize
            && list
                .iter()
                .all(|d| d.online && d.licence_state != "unknown")
    })
    .await;
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
    for a in agents.iter_mut() {
        a.stop().await;
    }
    child.kill().ok();
    child.wait().ok();
}

/// L1 for archives: a zip holding one tampered key imports nothing; a key signed by another
/// authority is refused; the repository is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_zip_with_one_tampered_key_imports_nothing() {
    use std::io::Write;
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    let good = issue(&auth, "K-Z1", 5, 30 * DAY, AV_FW, false, None);
    let also_good = issue(&auth, "K-Z2", 5, 30 * DAY, AV_FW, false, None);
    let tampered = String::from_utf8(issue(&auth, "K-Z3", 5, 30 * DAY, AV_FW, false, None).file)
        .unwrap()
        .replace("seats = 5", "seats = 50");
    let zip = |entries: &[(&str, &[u8])]| {
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut z = zip::ZipWriter::new(&mut buf);
        for (name, bytes) in entries {
            z.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(bytes).unwrap();
        }
        z.finish().unwrap();
        buf.into_inner()
    };
    let bad_zip = zip(&[
        ("K-Z1.key", &good.file),
        ("K-Z2.key", &also_good.file),
        ("K-Z3.key", tampered.as_bytes()),
    ]);
    let e = refused(
        &server,
        Op::KeyImport(KeyImport {
            file_name: "order-4711.zip".into(),
            content: bad_zip,
            ..Default::default()
        }),
    )
    .await;
    assert!(
        e.contains("K-Z3.key: signature does not verify"),
        "names the bad entry: {e}"
    );
    assert!(e.contains("nothing was imported"), "{e}");
    assert!(
        key_ids(&server).await.is_empty(),
        "nothing of the zip imported"
    );
    for k in ["K-Z1", "K-Z2", "K-Z3"] {
        assert!(!server.data.join("keys").join(format!("{k}.key")).exists());
    }

    let other = Authority::new();
    let foreign = other.key("K-FOREIGN", 5, Duration::from_secs(86_400));
    let e = refused(
        &server,
        Op::KeyImport(KeyImport {
            file_name: "K-FOREIGN.key".into(),
            content: foreign.file.clone(),
            ..Default::default()
        }),
    )
    .await;
    assert!(e.contains("signature does not verify"), "{e}");
    assert!(key_ids(&server).await.is_empty());

    let ok_zip = zip(&[("K-Z1.key", &good.file), ("K-Z2.key", &also_good.file)]);
    let r = server
        .admin(Op::KeyImport(KeyImport {
            file_name: "order-4712.zip".into(),
            content: ok_zip,
            ..Default::default()
        }))
        .await;
    assert!(
        matches!(r, R::KeyImport(ref k) if k.keys.len() == 2),
        "{r:?}"
    );
    let mut ids = key_ids(&server).await;
    ids.sort();
    assert_eq!(ids, ["K-Z1", "K-Z2"]);
}
