//! Device identity (S7): one record per machine, taken over by a re-imaged machine only within
//! its safeguards — never while the old record is connected, never with a token that forbids
//! it, always in the notification log.

use outpost_net::identity::{self, EnrollError, EnrollVia};
use outpost_proto::error::RefusalCode;
use outpost_proto::pb::admin::{TokenCreate, admin_request::Op, admin_response::Result as R};
use outpost_proto::pb::v1::Role;
use outpost_proto::token::Token;
use outpost_tests::licensing::*;
use outpost_tests::*;

/// Enrolls a device of `role` claiming `machine` in a fresh data directory.
async fn enroll_as(
    server: &Server,
    token: &str,
    role: Role,
    machine: &str,
) -> Result<identity::DeviceIdentity, EnrollError> {
    let dir = tempfile::tempdir().unwrap();
    let inv = identity::inventory(Some("clone"), Some(machine), dir.path(), "test");
    identity::enroll(
        dir.path(),
        EnrollVia::Server(server.addr()),
        &Token::parse(token).unwrap(),
        role,
        inv,
    )
    .await
}

fn conflict(e: EnrollError) -> String {
    match e {
        EnrollError::Refused(r) => {
            assert_eq!(r.code(), RefusalCode::Conflict, "{r}");
            r.0.message
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// S7: a claim on the machine id of an agent that is connected right now is refused with the
/// reason (two machines with one identity, or a guessed id); once it is offline, the
/// re-imaged machine takes the record over, and the notification log names both
/// certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_no_takeover_while_connected_and_every_takeover_is_logged() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    add_key(&server, &auth, "K-S7", 1, 30 * DAY, true).await;
    let token = server.token("agent", 3).await;
    let mut first = agent(&server, &token, "same-id").await;
    assert_eq!(first.wait_checked().await.licence.state, "licensed");
    let id = first.h().device_id().to_owned();

    let e = enroll_as(&server, &token, Role::Agent, "same-id")
        .await
        .unwrap_err();
    let why = conflict(e);
    assert!(
        why.contains(&id) && why.contains("connected right now") && why.contains("--machine-id"),
        "{why}"
    );
    assert!(notices(&server, "device-taken-over").await.is_empty());

    first.stop().await;
    let taken = enroll_as(&server, &token, Role::Agent, "same-id")
        .await
        .expect("takeover once the old record is offline");
    assert_eq!(taken.device_id, id, "same record");
    let logged = notices(&server, "device-taken-over").await;
    assert_eq!(logged.len(), 1);
    assert!(
        logged[0].message.contains(&id)
            && logged[0].message.contains("old certificate")
            && logged[0].message.contains("new certificate"),
        "{}",
        logged[0].message
    );
    assert_eq!(
        server.agents().await.devices.len(),
        1,
        "no duplicate record"
    );
}

/// S7: a token created with takeover disallowed enrolls new machines but refuses a machine id
/// that already has a record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_token_can_forbid_takeover() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    let strict = match server
        .admin(Op::TokenCreate(TokenCreate {
            role: "agent".into(),
            uses: 3,
            ttl_secs: 3600,
            no_takeover: true,
            ..Default::default()
        }))
        .await
    {
        R::TokenCreated(t) => t.token,
        other => panic!("{other:?}"),
    };
    let first = enroll_as(&server, &strict, Role::Agent, "m-strict")
        .await
        .expect("a new machine enrolls");
    let why = conflict(
        enroll_as(&server, &strict, Role::Agent, "m-strict")
            .await
            .unwrap_err(),
    );
    assert!(
        why.contains(&first.device_id) && why.contains("does not allow taking over"),
        "{why}"
    );
    match server.admin(Op::TokenList(Default::default())).await {
        R::Tokens(t) => assert!(!t.tokens[0].allow_takeover),
        other => panic!("{other:?}"),
    }
}

/// S7 for gateways: a cloned gateway (same machine id as the office gateway, whose uplink is
/// up) cannot take over the office gateway's record; with its own machine id it enrolls as a
/// new gateway, and the office gateway keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_cloned_gateway_cannot_take_over_a_connected_gateway() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    let office = Gateway::start(&server, |_, _| {}).await;
    office.h().wait_uplink().await;
    let office_machine = {
        let list = match server
            .admin(Op::DeviceList(outpost_proto::pb::admin::DeviceList {
                role: "gateway".into(),
            }))
            .await
        {
            R::Devices(d) => d,
            other => panic!("{other:?}"),
        };
        list.devices[0].machine_id.clone()
    };
    let token = server.token("gateway", 2).await;
    let why = conflict(
        enroll_as(&server, &token, Role::Gateway, &office_machine)
            .await
            .unwrap_err(),
    );
    assert!(why.contains("connected right now"), "{why}");
    let clone = enroll_as(&server, &token, Role::Gateway, "clone-own-id")
        .await
        .expect("its own machine id enrolls");
    assert_ne!(clone.device_id, office.h().status().device_id);
    assert_eq!(
        office.h().status().uplink,
        "up",
        "the office gateway is untouched"
    );
    assert!(notices(&server, "device-taken-over").await.is_empty());
}
