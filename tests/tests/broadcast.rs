//! Push fan-out (D4): a push to every agent behind a gateway crosses the uplink once, signed by
//! the server; the gateway fans it out and reports the acknowledgements in one message; a push
//! the gateway altered is refused by every agent (which then gets the genuine one in its own
//! session); an agent offline at the time gets it when it reconnects.

use std::time::Duration;

use outpost_proto::pb::admin::{
    Empty, GatewayLinkInfo, GroupCreate, PushRequest, PushResult, admin_request::Op,
    admin_response::Result as R,
};
use outpost_tests::fleet::{enroll_agents, start_agents, wait_all_checked};
use outpost_tests::*;

async fn uplink(server: &Server) -> GatewayLinkInfo {
    match server.admin(Op::ServerStatus(Empty {})).await {
        R::ServerStatus(s) => s.gateways.into_iter().next().expect("a gateway uplink"),
        other => panic!("{other:?}"),
    }
}

async fn push(server: &Server, req: PushRequest) -> PushResult {
    match server.admin(Op::Push(req)).await {
        R::Push(p) => p,
        other => panic!("push: {other:?}"),
    }
}

fn message(text: &str) -> PushRequest {
    PushRequest {
        kind: "message".into(),
        message: text.into(),
        wait_ms: 30_000,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d4_broadcast_to_200_agents_crosses_the_uplink_once_and_offline_agents_get_it_later() {
    init_logs();
    const N: usize = 200;
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    let gw = Gateway::start(&server, |_, _| {}).await;
    let token = server.token("agent", N as u32 + 1).await;
    let root = tempfile::tempdir().unwrap();
    let dirs = enroll_agents(root.path(), server.addr(), &token, N, "d4-")
        .await
        .unwrap();
    let endpoints = bench::client_endpoints(4);
    let (_go, hold) = tokio::sync::watch::channel(true);
    let agents = start_agents(&dirs, gw.addr(), &endpoints, &hold).unwrap();
    wait_all_checked(&agents).await;
    // One more agent, in-process with its own data directory, that will be offline.
    let mut late = Agent::start(
        test_agent_config(vec![gw.addr().to_string()], None, "d4-late"),
        &token,
    )
    .await;
    late.wait_checked().await;
    let late_id = late.h().device_id().to_owned();
    late.stop().await;
    until("the server saw the late agent go", || {
        let online = server.h().sessions().registry().online_count();
        async move { online == N }
    })
    .await;

    // The cost of one push inside one agent's session, for scale.
    let before = uplink(&server).await.bytes_down;
    let one = push(
        &server,
        PushRequest {
            device_id: agents[0].device_id().into(),
            ..message("just you")
        },
    )
    .await;
    assert_eq!(one.outcomes[0].state, "acked");
    let single = uplink(&server).await.bytes_down - before;

    // The broadcast.
    let before = uplink(&server).await;
    let p = push(
        &server,
        PushRequest {
            all: true,
            ..message("to everyone")
        },
    )
    .await;
    let after = uplink(&server).await;
    let acked = p.outcomes.iter().filter(|o| o.state == "acked").count();
    let queued: Vec<_> = p.outcomes.iter().filter(|o| o.state == "queued").collect();
    assert_eq!(acked, N, "every connected agent acknowledged: {p:?}");
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].device_id, late_id);
    assert_eq!(p.fanned_out_via, 1, "one message up the one uplink");
    let down = after.bytes_down - before.bytes_down;
    let up = after.bytes_up - before.bytes_up;
    println!(
        "uplink bytes: one in-session push {single}; broadcast to {N} agents {down} down, \
         {up} up (acknowledgements)"
    );
    assert!(
        down < 4 * single,
        "a broadcast to {N} agents cost {down} bytes down the uplink; one push costs {single}"
    );
    let stats = server.h().broadcasts();
    assert_eq!(
        stats.acks.load(std::sync::atomic::Ordering::Relaxed),
        N as u64
    );
    for a in &agents {
        let s = a.status().borrow().clone();
        let want = if a.device_id() == agents[0].device_id() {
            2
        } else {
            1
        };
        assert_eq!(s.pushes_received, want, "{}", a.device_id());
        assert_eq!(s.last_push, "message: to everyone");
    }

    // The offline agent gets it at its next connect, from the server's mailbox.
    late.boot();
    let s = within(
        "the late agent got the broadcast",
        late.h().wait_for(|s| s.pushes_received >= 1),
    )
    .await;
    assert_eq!(s.last_push, "message: to everyone");
    for a in agents {
        a.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d4_a_broadcast_altered_by_the_gateway_is_refused_and_the_genuine_push_arrives_in_session()
{
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |c| c.timing.push_wait = Duration::from_secs(3)).await;
    server
        .admin(Op::GroupCreate(GroupCreate {
            path: "everyone/lab".into(),
        }))
        .await;
    let gw = Gateway::start(&server, |o, _| o.tamper_broadcasts = true).await;
    let token = server.token_in("agent", "everyone/lab", 3).await;
    let mut agents = vec![];
    for i in 0..3 {
        let a = Agent::start(
            test_agent_config(vec![gw.addr().to_string()], None, &format!("d4-t{i}")),
            &token,
        )
        .await;
        a.wait_checked().await;
        agents.push(a);
    }
    // A group broadcast (the lab), with a short wait: the altered copy is refused, nothing is
    // acknowledged through the gateway, and each agent's own session carries the real one.
    let p = push(
        &server,
        PushRequest {
            group: "lab".into(),
            wait_ms: 2_000,
            ..message("genuine")
        },
    )
    .await;
    assert_eq!(p.fanned_out_via, 1);
    assert!(
        p.outcomes.iter().all(|o| o.state == "sent"),
        "nothing acknowledged through a tampering gateway: {p:?}"
    );
    until("the gateway's agents answered", || {
        let declined = gw.h().status().broadcast_declined;
        async move { declined == 3 }
    })
    .await;
    assert_eq!(gw.h().status().broadcast_acked, 0);
    for a in &agents {
        let s = within(
            "the genuine push in the session",
            a.h().wait_for(|s| s.pushes_received >= 1),
        )
        .await;
        assert_eq!(s.last_push, "message: genuine", "never the altered text");
        assert_eq!(s.pushes_received, 1);
    }
    // A group that does not exist is refused with the reason.
    let err = server
        .try_admin(Op::Push(PushRequest {
            group: "nowhere".into(),
            ..message("x")
        }))
        .await
        .map(|r| format!("{r:?}"))
        .unwrap_or_else(|e| e.to_string());
    assert!(err.contains("no group everyone/nowhere"), "{err}");
}
