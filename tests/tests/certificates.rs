//! S9 certificate lifecycle: devices renew over a live session, the server certificate is
//! rotated and the CA rolled over without anyone re-enrolling, an expired certificate is
//! refused with the fix in the message.

use std::time::Duration;

use outpost_net::identity::DeviceIdentity;
use outpost_proto::pb::admin::{
    CaFinish, CertStatus, Empty, admin_request::Op, admin_response::Result as R,
};
use outpost_tests::licensing::*;
use outpost_tests::*;

async fn cert_status(server: &Server) -> CertStatus {
    match server.admin(Op::ServerStatus(Empty {})).await {
        R::ServerStatus(s) => s.certificates.expect("certificate status"),
        other => panic!("unexpected {other:?}"),
    }
}

fn done(r: R) -> String {
    match r {
        R::Done(d) => d.message,
        other => panic!("unexpected {other:?}"),
    }
}

fn leaf_of(data: &std::path::Path) -> Vec<u8> {
    DeviceIdentity::load(data)
        .expect("identity")
        .expect("enrolled")
        .identity
        .leaf()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_agent_and_gateway_renew_by_themselves_near_expiry() {
    init_logs();
    let auth = Authority::new();
    // A 9-second lifetime puts both devices two thirds of the way to expiry within seconds.
    let server = Server::start(&auth, |c| {
        c.certificates.device_lifetime = Duration::from_secs(9);
    })
    .await;
    add_key(&server, &auth, "K-1", 5, 30 * 86_400, true).await;
    let mut gw = Gateway::start(&server, |_, c| {
        c.uplink.report_interval = Duration::from_millis(500);
    })
    .await;
    let token = server.token("agent", 1).await;
    let mut agent = Agent::start(
        test_agent_config(vec![gw.addr().to_string()], None, &rand_id()),
        &token,
    )
    .await;
    agent.wait_checked().await;
    let (agent_first, gw_first) = (leaf_of(&agent.data), leaf_of(&gw.data));
    let (_, agent_until) = outpost_proto::pki::validity(&agent_first).unwrap();
    let (_, gw_until) = outpost_proto::pki::validity(&gw_first).unwrap();

    // Both renew over their live links, with new key pairs, before the old certificates end.
    until("agent and gateway hold renewed certificates", || async {
        leaf_of(&agent.data) != agent_first && leaf_of(&gw.data) != gw_first
    })
    .await;
    assert!(outpost_net::unix_now() < agent_until.min(gw_until) + 1);
    let renewed = DeviceIdentity::load(&agent.data).unwrap().unwrap();
    assert!(renewed.expires_at() > agent_until, "a later expiry");
    within(
        "agent status shows the new expiry",
        agent.h().wait_for(|s| s.cert_expires_at > agent_until),
    )
    .await;
    assert!(gw.h().status().cert_expires_at > gw_until);

    // Past the first certificates' expiry, both reconnect on the renewed ones (and keep
    // renewing), without a token.
    until("the first certificates expired", || async {
        outpost_net::unix_now() > agent_until.max(gw_until)
    })
    .await;
    agent.stop().await;
    gw.stop().await;
    gw.boot(server.addr()).await;
    within(
        "gateway uplink on its renewed certificate",
        gw.h().wait_uplink(),
    )
    .await;
    agent.boot();
    let st = agent.wait_checked().await;
    assert!((st.licence.state == "licensed"), "{st:?}");
    let devices = server.agents().await;
    assert_eq!(devices.devices.len(), 1, "no second record: {devices:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_server_rotation_and_ca_roll_over_with_20_agents_through_a_gateway() {
    init_logs();
    let auth = Authority::new();
    let mut server = Server::start(&auth, |_| {}).await;
    add_key(&server, &auth, "K-1", 20, 30 * 86_400, true).await;
    let mut gw = Gateway::start(&server, |_, _| {}).await;
    let token = server.token("agent", 20).await;
    let mut agents = Vec::new();
    for _ in 0..20 {
        agents.push(
            Agent::start(
                test_agent_config(vec![gw.addr().to_string()], None, &rand_id()),
                &token,
            )
            .await,
        );
    }
    for a in &agents {
        a.wait_checked().await;
    }
    let sessions_before: Vec<u64> = agents
        .iter()
        .map(|a| a.h().status().borrow().sessions)
        .collect();
    let before = cert_status(&server).await;
    assert_eq!(before.cas.len(), 1);
    assert!(!before.rolling_over);
    assert!(before.server_expires_at > outpost_net::unix_now() + 300 * 86_400);

    // 1. Server certificate rotation: new handshakes get the new certificate; nobody drops.
    let old_server_cert = std::fs::read(server.data.join("server.crt")).unwrap();
    done(server.admin(Op::CertRotateServer(Empty {})).await);
    assert_ne!(
        std::fs::read(server.data.join("server.crt")).unwrap(),
        old_server_cert
    );

    // 2. CA roll-over: the new CA reaches the gateway and every agent over their live
    // sessions, and each renews under it.
    let msg = done(server.admin(Op::CaRollOver(Empty {})).await);
    assert!(msg.contains("finish-roll-over"), "{msg}");
    let rolling = cert_status(&server).await;
    assert_eq!(rolling.cas.len(), 2);
    assert!(rolling.rolling_over && rolling.cas[0].issuing);
    let new_ca = rolling.cas[0].sha256.clone();
    let on_new_ca = |data: &std::path::Path| {
        let id = DeviceIdentity::load(data).unwrap().unwrap();
        id.cas.len() == 2 && id.renewal_due() != 0
    };
    until("gateway and 20 agents renewed under the new CA", || async {
        on_new_ca(&gw.data) && agents.iter().all(|a| on_new_ca(&a.data))
    })
    .await;
    let now: Vec<u64> = agents
        .iter()
        .map(|a| a.h().status().borrow().sessions)
        .collect();
    assert_eq!(
        now, sessions_before,
        "no agent session dropped during rotation and roll-over"
    );
    // Finishing now would cut off devices whose new certificate is not in use yet.
    let refused = server
        .try_admin(Op::CaFinishRollOver(CaFinish { force: false }))
        .await
        .expect_err("refused while devices are on the old CA")
        .to_string();
    assert!(
        refused.contains("still hold a certificate from the old CA"),
        "{refused}"
    );
    assert!(refused.contains("--force"), "names the way out: {refused}");

    // Everyone reconnects (a server restart): each presents its renewed certificate.
    server.restart().await;
    for a in &agents {
        within(
            "agent reconnected after the restart",
            a.h()
                .wait_for(|s| s.state == "connected" && s.sessions >= 2),
        )
        .await;
    }
    until("every device on the new CA", || async {
        cert_status(&server).await.devices_on_other_ca == 0
    })
    .await;

    // 3. Finish: the old CA is no longer trusted; devices learn it at once or at next sync.
    let msg = done(
        server
            .admin(Op::CaFinishRollOver(CaFinish { force: false }))
            .await,
    );
    assert!(msg.contains("finished"), "{msg}");
    let finished = cert_status(&server).await;
    assert_eq!(finished.cas.len(), 1);
    assert_eq!(finished.cas[0].sha256, new_ca);
    assert!(server.data.join("retired").join("ca.crt").exists());
    until("gateway and agents trust only the new CA", || async {
        let one = |d: &std::path::Path| DeviceIdentity::load(d).unwrap().unwrap().cas.len() == 1;
        one(&gw.data) && agents.iter().all(|a| one(&a.data))
    })
    .await;

    // None needs a token: all 20 reconnect through the gateway after another restart.
    server.restart().await;
    for a in &agents {
        let st = within(
            "agent reconnected on the new CA",
            a.h().wait_for(|s| {
                s.state == "connected" && s.sessions >= 3 && s.licence.state == "licensed"
            }),
        )
        .await;
        assert!(st.path.starts_with("gateway"), "{st:?}");
    }
    assert_eq!(server.agents().await.devices.len(), 20);
    for a in &mut agents {
        a.stop().await;
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_expired_device_certificate_is_refused_with_the_fix() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |c| {
        c.certificates.device_lifetime = Duration::from_secs(3);
    })
    .await;
    add_key(&server, &auth, "K-1", 1, 30 * 86_400, true).await;
    let machine = rand_id();
    // Enrolled, then off while its certificate runs out.
    let mut agent = Agent::enroll(
        test_agent_config(vec![], Some(server.addr()), &machine),
        &server.token("agent", 1).await,
    )
    .await;
    let until_ts = DeviceIdentity::load(&agent.data)
        .unwrap()
        .unwrap()
        .expires_at();
    until("the certificate expired", || async {
        outpost_net::unix_now() > until_ts
    })
    .await;
    agent.boot();
    let st = within(
        "agent reports the expired certificate",
        agent.h().wait_for(|s| s.state == "certificate-expired"),
    )
    .await;
    assert!(st.last_error.contains("expired"), "{}", st.last_error);
    assert!(
        st.last_error.contains("--token"),
        "the fix: {}",
        st.last_error
    );
    assert_ne!(st.licence.state, "licensed");
    agent.stop().await;

    // The fix works: a new token, the same machine, the same device record.
    outpost_agent::enroll(
        &agent.data,
        &agent.config,
        &outpost_proto::token::Token::parse(&server.token("agent", 1).await).unwrap(),
    )
    .await
    .expect("enroll again");
    agent.boot();
    let st = agent.wait_checked().await;
    assert!((st.licence.state == "licensed"), "{st:?}");
    assert_eq!(server.agents().await.devices.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_local_admin_bundle_is_renewed_by_the_server() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |c| {
        c.certificates.device_lifetime = Duration::from_secs(6);
    })
    .await;
    let bundle = server.data.join("admin");
    let first = std::fs::read(bundle.join("cert.pem")).unwrap();
    let (_, first_until) = outpost_proto::pki::validity(
        &outpost_proto::pki::certs_from_pem(&String::from_utf8(first.clone()).unwrap(), "t")
            .unwrap()[0],
    )
    .unwrap();
    until("the server renewed its admin bundle", || async {
        std::fs::read(bundle.join("cert.pem")).unwrap() != first
    })
    .await;
    until("the first admin certificate expired", || async {
        outpost_net::unix_now() > first_until
    })
    .await;
    // The admin tool connects with the renewed bundle, which the server then takes as current.
    let admin = outpost_admin::AdminClient::from_bundle(&bundle, None)
        .await
        .expect("admin connects with the renewed certificate");
    match admin.request(Op::ServerStatus(Empty {})).await.unwrap() {
        R::ServerStatus(s) => assert!(s.certificates.is_some()),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_damaged_pki_file_stops_the_start_with_the_file_named() {
    init_logs();
    let auth = Authority::new();
    let mut server = Server::start(&auth, |_| {}).await;
    done(server.admin(Op::CaRollOver(Empty {})).await);
    let rolling = cert_status(&server).await;
    server.stop().await;
    let pki = server.data.join("pki.toml");
    let good = std::fs::read(&pki).unwrap();
    std::fs::write(&pki, "issuing = \"ca\"\n").unwrap();
    let err = outpost_server::start(outpost_server::DataDir::new(&server.data))
        .await
        .expect_err("a damaged pki.toml stops the start")
        .to_string();
    assert!(
        err.contains("pki.toml") && err.contains("restore it"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&pki).unwrap(),
        b"issuing = \"ca\"\n",
        "nothing rewritten"
    );
    std::fs::write(&pki, &good).unwrap();
    server.boot().await;
    assert_eq!(
        cert_status(&server).await.cas,
        rolling.cas,
        "the roll-over state survives"
    );
}
