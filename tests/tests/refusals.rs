//! Bad input gets a clear refusal naming what is wrong, and the server keeps serving others
//! (O6): foreign certificates, unknown ALPN, unsupported versions, tampered keys, expired
//! tokens, oversized frames, missing certificates, revoked devices, overload.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use outpost_net::identity::DeviceIdentity;
use outpost_net::{refuse, stream};
use outpost_proto::alpn;
use outpost_proto::error::{RefusalCode, Refused};
use outpost_proto::pb::admin::{DeviceRef, Empty, admin_request::Op, admin_response::Result as R};
use outpost_proto::pb::v1::{Hello, Role, envelope::Msg};
use outpost_proto::pki::{self, Ca, CertRole, Identity, Trust};
use outpost_tests::*;

const DAY: Duration = Duration::from_secs(86_400);

async fn dial(
    id: Option<&Identity>,
    trust: &Trust,
    alpn: &[u8],
    server: std::net::SocketAddr,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let tls = pki::client_config(id, trust, &[alpn]).unwrap();
    let mut cfg = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).unwrap(),
    ));
    cfg.transport_config(outpost_net::transport::client(
        Duration::from_secs(5),
        Duration::from_secs(10),
    ));
    let ep = outpost_net::endpoint::client_endpoint(server).unwrap();
    ep.connect_with(cfg, server, pki::SERVER_NAME)
        .unwrap()
        .await
}

/// An enrolled agent's identity, for raw connections.
async fn enrolled(server: &Server, machine: &str) -> (Agent, DeviceIdentity) {
    let token = server.token("agent", 1).await;
    let a = Agent::enroll(
        test_agent_config(vec![], Some(server.addr()), machine),
        &token,
    )
    .await;
    let id = DeviceIdentity::load(&a.data).unwrap().unwrap();
    (a, id)
}

/// Proves the server still serves a normal agent session.
async fn still_serving(server: &Server) {
    let token = server.token("agent", 1).await;
    let mut a = Agent::start(
        test_agent_config(vec![], Some(server.addr()), &format!("ok-{}", rand_id())),
        &token,
    )
    .await;
    a.wait_checked().await;
    a.stop().await;
}

async fn refusal_on_stream(conn: &quinn::Connection, first: Vec<u8>) -> Refused {
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(&first).await.unwrap();
    let mut f = stream::framed(stream::bi(send, recv), 1 << 20);
    loop {
        match f.next().await {
            Some(Ok(Msg::Refusal(r))) => return Refused(r),
            Some(Ok(_)) => continue,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_certificate_from_another_ca_is_refused() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    let (_a, real) = enrolled(&server, "t2").await;
    // A well-formed agent certificate from a CA the server does not know.
    let rogue_ca = Ca::generate("rogue", outpost_net::unix_now()).unwrap();
    let rogue = Identity::from_pem(
        &rogue_ca
            .issue(
                CertRole::Agent,
                &real.device_id,
                &[],
                outpost_net::unix_now(),
                86_400,
            )
            .unwrap(),
        "rogue",
    )
    .unwrap();
    // TLS 1.3: the client may finish its side before the server has judged its certificate;
    // the server's alert then closes the connection.
    let err = match dial(
        Some(&rogue),
        &Trust::Ca(real.cas.clone()),
        alpn::AGENT,
        server.addr(),
    )
    .await
    {
        Err(e) => e,
        Ok(c) => c.closed().await,
    };
    let text = refuse::explain(&err);
    assert!(text.contains("certificate not trusted"), "{text}");
    // And the other way round: a server from another deployment is not trusted by our agent.
    let err = dial(
        Some(&real.identity),
        &Trust::Ca(vec![rogue_ca.cert_der().clone()]),
        alpn::AGENT,
        server.addr(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, quinn::ConnectionError::TransportError(_)),
        "{err:?}"
    );
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_unknown_alpn_is_refused_during_handshake() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    let (_a, real) = enrolled(&server, "t1").await;
    let err = dial(
        Some(&real.identity),
        &Trust::Ca(real.cas.clone()),
        b"outpost-agent/9",
        server.addr(),
    )
    .await
    .unwrap_err();
    let text = refuse::explain(&err);
    assert!(text.contains("ALPN"), "{text}");
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_unsupported_protocol_version_is_refused_naming_both() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    let (_a, real) = enrolled(&server, "s2").await;
    let conn = dial(
        Some(&real.identity),
        &Trust::Ca(real.cas.clone()),
        alpn::AGENT,
        server.addr(),
    )
    .await
    .unwrap();
    let hello = Msg::Hello(Hello {
        min_version: 7,
        max_version: 9,
        role: Role::Agent as i32,
        ..Default::default()
    });
    let r = refusal_on_stream(&conn, outpost_proto::frame::encode_frame(hello)).await;
    assert_eq!(r.code(), RefusalCode::UnsupportedVersion);
    assert!(
        r.0.message.contains("7..=9") && r.0.message.contains("1..=1"),
        "{}",
        r.0.message
    );
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t9_oversized_frame_is_refused_and_others_continue() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |c| c.limits.max_frame = 64 * 1024).await;
    let (_a, real) = enrolled(&server, "t9").await;
    let conn = dial(
        Some(&real.identity),
        &Trust::Ca(real.cas.clone()),
        alpn::AGENT,
        server.addr(),
    )
    .await
    .unwrap();
    // Header announcing 1 GiB: refused before anything is allocated.
    let mut header = vec![outpost_proto::frame::FRAME_ENVELOPE];
    header.extend((1u32 << 30).to_be_bytes());
    let r = refusal_on_stream(&conn, header).await;
    assert_eq!(r.code(), RefusalCode::FrameTooLarge);
    assert!(
        r.0.message.contains("exceeds the maximum of 65536"),
        "{}",
        r.0.message
    );
    // Garbage in a well-sized frame: malformed.
    let mut junk = vec![
        outpost_proto::frame::FRAME_ENVELOPE,
        0,
        0,
        0,
        3,
        0xff,
        0xff,
        0xff,
    ];
    junk.truncate(8);
    let r = refusal_on_stream(&conn, junk).await;
    assert_eq!(r.code(), RefusalCode::Malformed);
    // The same connection still carries a good session.
    let (send, recv) = conn.open_bi().await.unwrap();
    let mut f = stream::framed(stream::bi(send, recv), 1 << 20);
    f.send(Msg::Hello(outpost_proto::session::hello(
        Role::Agent,
        "raw",
        &[],
    )))
    .await
    .unwrap();
    assert!(matches!(f.next().await, Some(Ok(Msg::HelloAck(_)))));
    assert!(matches!(f.next().await, Some(Ok(Msg::LicenceStatus(_)))));
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_missing_client_certificate_is_refused_clearly() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    let (_a, real) = enrolled(&server, "nc").await;
    let conn = dial(
        None,
        &Trust::Ca(real.cas.clone()),
        alpn::AGENT,
        server.addr(),
    )
    .await
    .unwrap();
    let err = conn.closed().await;
    let r = refuse::refusal_of(&err).expect("closed with a refusal");
    assert_eq!(r.code(), RefusalCode::Unauthenticated);
    assert!(
        r.0.message.contains("client certificate is required"),
        "{}",
        r.0.message
    );
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_tampered_or_foreign_key_is_refused_and_nothing_stored() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    let key = auth.key("K-T", 10, 30 * DAY);
    let tampered = String::from_utf8(key.file.clone())
        .unwrap()
        .replace("seats = 10", "seats = 1000");
    let mut bad = key.clone();
    bad.file = tampered.into_bytes();
    let err = server.import_key(&bad, true).await.unwrap_err().to_string();
    assert!(err.contains("signature does not verify"), "{err}");
    assert!(err.contains("nothing was imported"), "{err}");
    let other = Authority::new().key("K-O", 10, 30 * DAY);
    let err = server
        .import_key(&other, true)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("another authority"), "{err}");
    let R::Keys(k) = server.admin(Op::KeyList(Empty {})).await else {
        panic!()
    };
    assert!(k.keys.is_empty(), "nothing stored");
    assert_eq!(
        std::fs::read_dir(server.data.join("keys")).unwrap().count(),
        0,
        "no key file kept"
    );
    // The good key still imports.
    server.import_key(&key, true).await.unwrap();
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_expired_or_used_up_token_is_refused() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    let store = server.h().store().clone();
    let spec = outpost_server::store::TokenSpec {
        role: "agent".into(),
        group: String::new(),
        ttl_secs: 3600,
        uses: 1,
        comment: String::new(),
        allow_takeover: true,
    };
    // Created two hours ago with a one-hour lifetime.
    let ca = server.h().ca_sha256();
    let (expired, _) = store
        .create_token(&spec, ca, outpost_net::unix_now() - 7200)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_agent_config(vec![], Some(server.addr()), "x1");
    let err = outpost_agent::enroll(dir.path(), &cfg, &expired)
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("expired at") && text.contains("token create"),
        "{text}"
    );
    assert!(
        !text.contains(&expired.to_text()),
        "the token is never echoed in full"
    );
    // One use only.
    let once = outpost_proto::token::Token::parse(&server.token("agent", 1).await).unwrap();
    outpost_agent::enroll(dir.path(), &cfg, &once)
        .await
        .unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let cfg2 = test_agent_config(vec![], Some(server.addr()), "x2");
    let text = format!(
        "{:#}",
        outpost_agent::enroll(dir2.path(), &cfg2, &once)
            .await
            .unwrap_err()
    );
    assert!(text.contains("no uses left"), "{text}");
    // A gateway token does not enroll an agent.
    let gw = outpost_proto::token::Token::parse(&server.token("gateway", 1).await).unwrap();
    let text = format!(
        "{:#}",
        outpost_agent::enroll(dir2.path(), &cfg2, &gw)
            .await
            .unwrap_err()
    );
    assert!(text.contains("for gateway devices"), "{text}");
    assert_eq!(
        server.agents().await.devices.len(),
        1,
        "only the valid enrollment created a device"
    );
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_revoked_device_is_refused_at_next_connect() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    server
        .import_key(&auth.key("K-R", 2, 30 * DAY), true)
        .await
        .unwrap();
    let token = server.token("agent", 1).await;
    let mut agent =
        Agent::start(test_agent_config(vec![], Some(server.addr()), "rv"), &token).await;
    assert_eq!(agent.wait_checked().await.licence.state, "licensed");
    let id = agent.h().device_id().to_owned();
    server
        .admin(Op::DeviceRevoke(DeviceRef {
            device_id: id.clone(),
            ..Default::default()
        }))
        .await;
    let s = within(
        "agent refused after revocation",
        agent
            .h()
            .wait_for(|s| s.state == "offline" && s.last_error.contains("revoked")),
    )
    .await;
    assert!(
        s.last_error.contains(&format!("device {id} was revoked")),
        "{}",
        s.last_error
    );
    // S8: told it is revoked, the agent dropped its grants at once (offline too) …
    assert_eq!(
        (s.licence.state.as_str(), s.licence.reason.as_str()),
        ("unlicensed", "revoked")
    );
    // … and confirmed, so its seat is free (L15).
    until("the revoked agent's seat returns", || async {
        server.key_info("K-R").await.seats_used == 0
    })
    .await;
    // The state is on disk: the status command shows it after the agent stopped.
    agent.stop().await;
    let (st, running) = outpost_agent::status::read(&agent.data).unwrap();
    assert!(!running);
    assert_eq!(
        (st.licence.state.as_str(), st.licence.reason.as_str()),
        ("unlicensed", "revoked")
    );
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t6_overloaded_server_says_when_to_come_back() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |c| {
        c.limits.max_sessions = 1;
        c.timing.retry_after = Duration::from_millis(1500);
    })
    .await;
    let token = server.token("agent", 1).await;
    let mut first =
        Agent::start(test_agent_config(vec![], Some(server.addr()), "o1"), &token).await;
    first.wait_checked().await;
    let (_a, real) = enrolled(&server, "o2").await;
    let conn = dial(
        Some(&real.identity),
        &Trust::Ca(real.cas.clone()),
        alpn::AGENT,
        server.addr(),
    )
    .await
    .unwrap();
    let r = refusal_on_stream(
        &conn,
        outpost_proto::frame::encode_frame(Msg::Hello(outpost_proto::session::hello(
            Role::Agent,
            "raw",
            &[],
        ))),
    )
    .await;
    assert_eq!(r.code(), RefusalCode::Overloaded);
    let after = r.retry_after().expect("retry-after given");
    assert!(
        after >= Duration::from_millis(1500) && after <= Duration::from_millis(3000),
        "{after:?}"
    );
    let R::ServerStatus(st) = server.admin(Op::ServerStatus(Empty {})).await else {
        panic!()
    };
    assert!(st.sessions_refused >= 1);
    first.stop().await;
}
