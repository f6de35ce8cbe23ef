//! T4 on loopback: a gateway in DMZ mode listens; the server dials it; agents behind it get
//! licence-checked and pushed to exactly as through a gateway that dials out.

use std::time::Duration;

use outpost_gateway::config::UplinkMode;
use outpost_proto::pb::admin::{
    Empty, PushRequest, admin_request::Op, admin_response::Result as R,
};
use outpost_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t4_server_dials_a_gateway_in_the_dmz() {
    init_logs();
    let auth = Authority::new();
    let mut server = Server::start(&auth, |_| {}).await;
    server
        .import_key(&auth.key("K-DMZ", 5, Duration::from_secs(86_400)), true)
        .await
        .unwrap();
    let gw = Gateway::start(&server, |_, c| {
        c.uplink.mode = UplinkMode::Listen;
        c.uplink.listen = "127.0.0.1:0".parse().unwrap();
        c.server.0.clear();
    })
    .await;
    let listen = within("DMZ listener bound", async {
        loop {
            if let Some(a) = gw.h().uplink_listen_addr() {
                return a;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    // Tell the server where the DMZ gateway is; it dials out on its next start.
    let addr = server.addr();
    server.stop().await;
    server.edit_config(|c| {
        c.listen = addr;
        c.dmz_gateways = vec![listen.to_string()];
    });
    server.boot().await;
    within("server dialled the DMZ gateway", gw.h().wait_uplink()).await;
    let R::ServerStatus(st) = server.admin(Op::ServerStatus(Empty {})).await else {
        panic!()
    };
    assert_eq!(st.gateways.len(), 1);
    assert_eq!(st.gateways[0].direction, "dmz");

    let token = server.token("agent", 1).await;
    let agent = Agent::start(
        test_agent_config(vec![gw.addr().to_string()], None, "dmz-agent"),
        &token,
    )
    .await;
    let s = agent.wait_checked().await;
    assert_eq!(s.licence.state, "licensed");
    assert_eq!(s.path, format!("gateway {}", gw.addr()));
    let R::Push(p) = server
        .admin(Op::Push(PushRequest {
            device_id: agent.h().device_id().into(),
            kind: "sync-now".into(),
            ..Default::default()
        }))
        .await
    else {
        panic!()
    };
    assert_eq!(p.outcomes[0].state, "acked");
}

/// T4 at run time: `admin gateway dmz add` makes the server dial a DMZ gateway at once (no
/// restart) and `remove` stops it; a server whose DMZ gateway does not answer shuts down within
/// its grace period, every task ended (the dialler stops first, a dial in progress included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t4_dmz_gateways_added_at_run_time_and_a_dead_one_does_not_slow_shutdown() {
    use outpost_proto::pb::admin::DmzGateway;
    init_logs();
    let auth = Authority::new();
    let mut server = Server::start(&auth, |_| {}).await;
    let gw = Gateway::start(&server, |_, c| {
        c.uplink.mode = UplinkMode::Listen;
        c.uplink.listen = "127.0.0.1:0".parse().unwrap();
        c.server.0.clear();
    })
    .await;
    let listen = within("DMZ listener bound", async {
        loop {
            if let Some(a) = gw.h().uplink_listen_addr() {
                return a;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    let add = |a: String| Op::DmzGatewayAdd(DmzGateway { address: a });
    let R::Done(d) = server.admin(add(listen.to_string())).await else {
        panic!()
    };
    assert!(d.message.contains("dialling"), "{}", d.message);
    within(
        "server dialled the DMZ gateway at once",
        gw.h().wait_uplink(),
    )
    .await;
    // A second one that never answers.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    server.admin(add(dead_addr.clone())).await;
    let R::DmzGateways(list) = server.admin(Op::DmzGatewayList(Empty {})).await else {
        panic!()
    };
    assert_eq!(list.gateways.len(), 2);
    let live = list
        .gateways
        .iter()
        .find(|g| g.address == listen.to_string())
        .unwrap();
    assert!(live.state.starts_with("connected to g-"), "{}", live.state);
    assert_eq!(live.source, "admin");
    // Bad input is refused with the fix.
    let e = server
        .try_admin(add("not-an-address".into()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("host:port"), "{e}");

    // Removing stops the dialling and closes the uplink with a reason.
    let R::Done(d) = server
        .admin(Op::DmzGatewayRemove(DmzGateway {
            address: listen.to_string(),
        }))
        .await
    else {
        panic!()
    };
    assert!(d.message.contains("no longer dialling"), "{}", d.message);
    let mut up = gw.h().uplink();
    let down = within("uplink closed", up.wait_for(|u| u.conn.is_none()))
        .await
        .unwrap()
        .clone();
    assert!(
        down.last_error.contains("stopped dialling"),
        "{}",
        down.last_error
    );

    // The dead one is still being dialled (a handshake that never completes): shutdown is
    // prompt and clean all the same.
    let h = server.handle.take().unwrap();
    let report = h.shutdown().await;
    assert!(
        report.tasks_ended_in_grace,
        "every task ended within the grace period"
    );
    drop(dead);
}
