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
        c.server.clear();
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
