//! The web console (O8) over real HTTPS (TLS verified against the deployment CA) with real
//! agents: sign-in with a one-time link, the overview and device pages, a revoke through a form
//! that turns the agent unlicensed, and the refusals — a used or wrong link, a POST without or
//! with a wrong CSRF token, no session, an expired session — each in the audit log.
//! (`console_browser.rs` drives the same pages in headless Chromium.)

use std::time::Duration;

use outpost_proto::pb::admin::{Empty, admin_request::Op};
use outpost_tests::console::{ConsoleClient, login_path};
use outpost_tests::*;

/// The CSRF token in a page's forms.
fn csrf(body: &str) -> String {
    let at = body
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    body[at..].split('"').next().unwrap().to_owned()
}

async fn audit_has(b: &mut ConsoleClient, needle: &str) -> bool {
    b.get("/audit").await.body.contains(needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o8_console_signs_in_lists_devices_revokes_with_csrf_and_audits_every_action() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |c| {
        c.console.listen = Some("127.0.0.1:0".parse().unwrap());
        c.console.session_idle = Duration::from_secs(3);
    })
    .await;
    server
        .import_key(
            &auth.key("K-CON", 19, Duration::from_secs(86_400 * 30)),
            true,
        )
        .await
        .unwrap();
    let token = server.token("agent", 20).await;
    let mut agents = vec![];
    for i in 0..20 {
        let cfg = test_agent_config(vec![], Some(server.addr()), &format!("con-{i:02}"));
        agents.push(Agent::start(cfg, &token).await);
    }
    for a in &agents {
        a.wait_checked().await;
    }

    // Not signed in: no page, the way in is named.
    let mut b = ConsoleClient::new(&server);
    let a = b.get("/devices").await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(a.body.contains("console-login"), "{}", a.body);
    assert!(
        a.head
            .to_lowercase()
            .contains("content-security-policy: default-src 'none'")
    );

    // A one-time link signs in once.
    let link = login_path(&server).await;
    let a = b.get(&link).await;
    assert_eq!(a.status, 303, "{}", a.head);
    assert!(
        a.head.contains("Secure")
            && a.head.contains("HttpOnly")
            && a.head.contains("SameSite=Strict")
    );
    let mut other = ConsoleClient::new(&server);
    assert_eq!(other.get(&link).await.status, 403, "a used link is refused");
    assert_eq!(other.get("/login?token=forged").await.status, 403);

    // Overview: 20 agent sessions, the key's 19 of 19 seats.
    let o = b.get("/").await;
    assert_eq!(o.status, 200, "{}", o.body);
    assert!(o.body.contains("<b id=\"sessions\">20</b>"), "{}", o.body);
    assert!(
        o.body.contains("K-CON") && o.body.contains("19 / 19"),
        "{}",
        o.body
    );

    // Devices: 20 agents with their licence states; one unlicensed (19 seats); search; filter.
    let d = b.get("/devices").await;
    assert!(
        d.body.contains("21 device(s)"),
        "20 agents and the admin: {}",
        d.body
    );
    assert_eq!(
        d.body.matches("class=\"licensed\"").count(),
        19,
        "{}",
        d.body
    );
    assert_eq!(d.body.matches("class=\"unlicensed\"").count(), 1);
    let u = b.get("/devices?filter=unlicensed").await;
    assert!(
        u.body.contains("1 device(s)") && u.body.contains("no free seat"),
        "{}",
        u.body
    );
    let one = agents[3].h().device_id().to_owned();
    let s = b.get(&format!("/devices?q={}", &one[2..])).await;
    assert!(
        s.body.contains("1 device(s)") && s.body.contains(&one),
        "{}",
        s.body
    );

    // Keys: a second key assigned to the agent without a seat licenses it; a wrong object is
    // refused with the CLI's sentence.
    let spare = agents
        .iter()
        .find(|a| a.h().status().borrow().licence.state != "licensed")
        .unwrap();
    let spare_id = spare.h().device_id().to_owned();
    server
        .import_key(
            &auth.key("K-TWO", 2, Duration::from_secs(86_400 * 30)),
            false,
        )
        .await
        .unwrap();
    let page = b.get("/keys").await;
    assert!(
        page.body.contains("K-TWO") && page.body.contains("everyone"),
        "{}",
        page.body
    );
    let token = csrf(&page.body);
    let r = b
        .send(
            "POST",
            "/keys/K-TWO/assign",
            Some(&format!("csrf={token}&object=group%3Anowhere")),
        )
        .await;
    assert!(r.body.contains("id=\"outcome\">refused:"), "{}", r.body);
    let r = b
        .send(
            "POST",
            "/keys/K-TWO/assign",
            Some(&format!("csrf={token}&object=device%3A{spare_id}")),
        )
        .await;
    assert!(r.body.contains("id=\"outcome\">done"), "{}", r.body);
    within(
        "the agent without a seat is licensed by the key assigned to it",
        spare
            .h()
            .wait_for(|s| s.licence.state == "licensed" && s.licence.key == "K-TWO"),
    )
    .await;
    // … and unassigned again with the × of that assignment: the keys page no longer lists it.
    let page = b.get("/keys").await;
    assert!(page.body.contains(&format!("value=\"device:{spare_id}\"")));
    let r = b
        .send(
            "POST",
            "/keys/K-TWO/unassign",
            Some(&format!("csrf={token}&object=device%3A{spare_id}")),
        )
        .await;
    assert!(r.body.contains("id=\"outcome\">done"), "{}", r.body);
    assert!(
        !r.body.contains(&format!("value=\"device:{spare_id}\"")),
        "{}",
        r.body
    );

    // Tokens: created, shown once, usable; the audit log names its id, never the token.
    let page = b.get("/tokens").await;
    let r = b
        .send(
            "POST",
            "/tokens",
            Some(&format!(
                "csrf={}&role=agent&group=everyone&uses=1&ttl=1d&comment=web",
                csrf(&page.body)
            )),
        )
        .await;
    let needle = "id=\"new-token\">";
    let at = r.body.find(needle).expect("the new token shown") + needle.len();
    let new_token = r.body[at..].split('<').next().unwrap().to_owned();
    let again = b.get("/tokens").await;
    assert!(!again.body.contains(&new_token), "shown once");
    let late = Agent::start(
        test_agent_config(vec![], Some(server.addr()), "con-late"),
        &new_token,
    )
    .await;
    late.wait_checked().await;
    let r = b
        .send(
            "POST",
            "/tokens",
            Some(&format!(
                "csrf={}&role=agent&uses=1&ttl=soon",
                csrf(&page.body)
            )),
        )
        .await;
    assert!(r.body.contains("refused: valid for"), "{}", r.body);
    assert!(!b.get("/audit").await.body.contains(&new_token));

    // Revoke through the device page's form: the agent turns unlicensed.
    let page = b.get(&format!("/devices/{one}")).await;
    let token = csrf(&page.body);
    // Without the CSRF token, or with another, refused and nothing happens.
    let r = b
        .send("POST", &format!("/devices/{one}/revoke"), Some("x=1"))
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = b
        .send("POST", &format!("/devices/{one}/revoke"), Some("csrf=00ff"))
        .await;
    assert_eq!(r.status, 403);
    assert!(agents[3].h().status().borrow().licence.state == "licensed");
    let r = b
        .send(
            "POST",
            &format!("/devices/{one}/revoke"),
            Some(&format!("csrf={token}&free_seat_now=on")),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("id=\"outcome\">done"), "{}", r.body);
    within(
        "the revoked agent turned unlicensed",
        agents[3].h().wait_for(|s| s.licence.state != "licensed"),
    )
    .await;
    let page = b.get(&format!("/devices/{one}")).await;
    assert!(
        page.body.contains("id=\"licence\">revoked"),
        "{}",
        page.body
    );

    // Notifications (the key's usage thresholds were crossed) and discovered hosts (none: no
    // gateway scans here) are listed.
    let n = b.get("/notifications?kind=usage-100").await;
    assert!(
        n.body.contains("key K-CON: every seat is used"),
        "{}",
        n.body
    );
    assert!(
        !n.body.contains("usage-90</td>"),
        "filtered by kind: {}",
        n.body
    );
    let h = b.get("/hosts?unmanaged=1").await;
    assert!(
        h.status == 200 && h.body.contains("0 host(s)"),
        "{}",
        h.body
    );
    // A host a gateway's scan reported (recorded as the uplink would), with no agent on it.
    let now = outpost_net::unix_now();
    server
        .h()
        .store()
        .record_discovery(
            "g-office",
            &[outpost_proto::pb::v1::DiscoveredHost {
                ip: "10.9.0.40".into(),
                mac: "02:00:00:00:00:40".into(),
                methods: vec!["icmp".into(), "tcp:22".into()],
                first_seen: now,
                last_seen: now,
            }],
        )
        .await
        .unwrap();
    let h = b.get("/hosts?unmanaged=1").await;
    assert!(
        h.body.contains("1 host(s)")
            && h.body.contains("10.9.0.40")
            && h.body.contains("02:00:00:00:00:40")
            && h.body.contains("icmp, tcp:22")
            && h.body.contains("no agent"),
        "{}",
        h.body
    );

    // The audit log holds every action, done or refused.
    let log = b.get("/audit").await.body;
    for needle in [
        "sign-in</td><td>link</td><td>done",
        "refused: link unknown, used or expired",
        "refused: missing or wrong CSRF token",
        &format!("revoke</td><td>{one}</td><td>done"),
        &format!("key-assign</td><td>K-TWO device:{spare_id}</td><td>done"),
        &format!("key-unassign</td><td>K-TWO device:{spare_id}</td><td>done"),
        "token-create</td><td></td><td>done: token",
    ] {
        assert!(log.contains(needle), "{needle} in {log}");
    }

    // An unused session ends after console.session_idle.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(b.get("/").await.status, 401, "idle session expired");
    let mut c = ConsoleClient::new(&server);
    c.get(&login_path(&server).await).await;
    assert!(audit_has(&mut c, "sign-in").await);
}

/// `console-login` on a server without a console says how to turn it on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o8_console_login_without_a_console_names_the_setting() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    let e = server
        .try_admin(Op::ConsoleLogin(Empty {}))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_else(|| "accepted".into());
    assert!(e.contains("console.listen"), "{e}");
}
