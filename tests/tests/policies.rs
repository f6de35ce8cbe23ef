//! Policies (D5, S4): documents per group inherited down the tree, nearest group winning per
//! setting; delivered at sync only when the device's effective document changed; kept by the
//! agent across restarts.

use outpost_agent::AgentEvent;
use outpost_proto::pb::admin::{
    GroupCreate, PolicySet, PolicyShow, admin_request::Op, admin_response::Result as R,
};
use outpost_tests::{
    Agent, Authority, Server, init_logs, sync_and_count, test_agent_config, within,
};
use serde_json::json;

async fn set(server: &Server, group: &str, doc: serde_json::Value) -> R {
    server
        .admin(Op::PolicySet(PolicySet {
            group: group.into(),
            document: doc.to_string(),
        }))
        .await
}

/// Asks the agent to sync; returns the policies it received meanwhile.
async fn sync_and_count_policies(server: &Server, agent: &Agent) -> usize {
    sync_and_count(server, agent, |e| matches!(e, AgentEvent::Policy { .. })).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_s4_policy_inherited_nearest_group_wins_and_only_changes_travel() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    for g in ["everyone/berlin", "everyone/berlin/it"] {
        server
            .admin(Op::GroupCreate(GroupCreate { path: g.into() }))
            .await;
    }
    set(
        &server,
        "everyone",
        json!({"scan": {"daily": true, "hour": 2}, "firewall": "on", "motd": "hi"}),
    )
    .await;
    set(
        &server,
        "berlin",
        json!({"scan": {"hour": 4}, "motd": null}),
    )
    .await;
    set(&server, "everyone/berlin/it", json!({"firewall": "off"})).await;

    let mut agents = vec![];
    for (i, g) in ["everyone", "everyone/berlin", "everyone/berlin/it"]
        .iter()
        .enumerate()
    {
        let token = server.token_in("agent", g, 1).await;
        let cfg = test_agent_config(vec![], Some(server.addr()), &format!("pol-{i}"));
        let mut a = Agent::enroll(cfg, &token).await;
        a.boot();
        agents.push(a);
    }
    let expect = [
        json!({"scan": {"daily": true, "hour": 2}, "firewall": "on", "motd": "hi"}),
        json!({"scan": {"daily": true, "hour": 4}, "firewall": "on"}),
        json!({"scan": {"daily": true, "hour": 4}, "firewall": "off"}),
    ];
    for (a, e) in agents.iter().zip(&expect) {
        let st = within(
            "the agent holds its effective policy",
            a.h().wait_for(|s| &s.policy == e),
        )
        .await;
        assert_ne!(st.policy_revision, 0);
    }
    let R::Policy(p) = server
        .admin(Op::PolicyShow(PolicyShow {
            device_id: agents[2].h().device_id().into(),
        }))
        .await
    else {
        panic!("policy show")
    };
    assert_eq!(
        p.from_groups,
        ["everyone", "everyone/berlin", "everyone/berlin/it"]
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&p.effective).unwrap(),
        expect[2]
    );

    // S4: a sync with nothing changed carries no policy.
    for a in &agents {
        assert_eq!(
            sync_and_count_policies(&server, a).await,
            0,
            "policy re-sent unchanged"
        );
    }

    // A change in berlin reaches berlin and berlin/it (told to sync at once), not everyone.
    let mut ev: Vec<_> = agents.iter().map(|a| a.h().events()).collect();
    let R::Done(d) = set(&server, "everyone/berlin", json!({"scan": {"hour": 5}})).await else {
        panic!("policy set")
    };
    assert!(d.message.contains("2 connected device(s)"), "{}", d.message);
    for (a, e) in agents[1..].iter().zip([
        json!({"scan": {"daily": true, "hour": 5}, "firewall": "on", "motd": "hi"}),
        json!({"scan": {"daily": true, "hour": 5}, "firewall": "off", "motd": "hi"}),
    ]) {
        within(
            "the change arrives without waiting for the sync interval",
            a.h().wait_for(|s| s.policy == e),
        )
        .await;
    }
    assert_eq!(sync_and_count_policies(&server, &agents[0]).await, 0);
    let mut received = |i: usize| {
        let mut n = 0;
        while let Ok(e) = ev[i].try_recv() {
            n += usize::from(matches!(e, AgentEvent::Policy { .. }));
        }
        n
    };
    assert_eq!((received(0), received(1), received(2)), (0, 1, 1));

    // Bad input: refused with what is wrong, nothing changed.
    for (group, doc, why) in [
        ("everyone/berlin", "[1, 2]", "not an array"),
        ("everyone/berlin", "{", "not JSON"),
        ("everyone/nowhere", "{}", "does not exist"),
    ] {
        let r = server
            .try_admin(Op::PolicySet(PolicySet {
                group: group.into(),
                document: doc.into(),
            }))
            .await;
        let e = r.expect_err(doc).to_string();
        assert!(e.contains(why.trim_start_matches("not ")), "{doc}: {e}");
    }
    assert_eq!(
        sync_and_count_policies(&server, &agents[1]).await,
        0,
        "nothing changed"
    );

    // P4: the agent keeps its policy across a restart, and is not sent it again.
    let held = agents[2].h().status().borrow().policy.clone();
    agents[2].stop().await;
    agents[2].boot();
    assert_eq!(
        agents[2].h().status().borrow().policy,
        held,
        "kept in policy.json"
    );
    within(
        "reconnected",
        agents[2].h().wait_for(|s| s.state == "connected"),
    )
    .await;
    assert_eq!(sync_and_count_policies(&server, &agents[2]).await, 0);
}
