//! What a primary hands down to its secondary (H4): its root policy and root tasks (D5) and its
//! update revisions (D1), with real `outpost-server` processes and an agent of the secondary.

use outpost_proto::pb::admin::{
    Empty, FileServing, PolicySet, TaskCreate, TaskRef, UpdateImport, UpdateListResult, UpdateRef,
    admin_request::Op, admin_response::Result as R,
};
use outpost_tests::hierarchy::*;
use outpost_tests::{Authority, init_logs, until, within};
use serde_json::json;

async fn updates(server: &ServerProc, op: Op) -> UpdateListResult {
    match server.admin(op).await {
        R::Updates(u) => u,
        other => panic!("{other:?}"),
    }
}

async fn newest_source(server: &ServerProc) -> String {
    let list = updates(server, Op::UpdateList(Empty {})).await;
    list.revisions
        .first()
        .map(|r| r.source.clone())
        .unwrap_or_default()
}

async fn served(server: &ServerProc) -> FileServing {
    match server.admin(Op::ServerStatus(Empty {})).await {
        R::ServerStatus(s) => s.files.unwrap_or_default(),
        other => panic!("{other:?}"),
    }
}

async fn task_ids(server: &ServerProc) -> Vec<String> {
    match server.admin(Op::TaskList(Empty {})).await {
        R::Tasks(t) => t.tasks.into_iter().map(|t| t.id).collect(),
        other => panic!("{other:?}"),
    }
}

fn content(dir: &std::path::Path, seed: u8) {
    std::fs::create_dir_all(dir.join("av")).unwrap();
    std::fs::write(dir.join("readme.txt"), format!("revision seed {seed}")).unwrap();
    // 2.5 blocks of 1 MiB.
    let big: Vec<u8> = (0..(5 << 19))
        .map(|i| (i as u8).wrapping_mul(seed))
        .collect();
    std::fs::write(dir.join("av/bases.bin"), big).unwrap();
}

async fn set_policy(server: &ServerProc, doc: serde_json::Value) {
    let r = server
        .admin(Op::PolicySet(PolicySet {
            group: "everyone".into(),
            document: doc.to_string(),
        }))
        .await;
    assert!(matches!(r, R::Done(_)), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h4_d5_d1_a_primary_hands_down_policy_tasks_and_revisions_and_its_secondary_refuses_a_rollback()
 {
    init_logs();
    let _serial = one_at_a_time().await;
    let auth = Authority::new();
    let hq = ServerProc::start(&auth, "hq", fast).await;
    let mut region = ServerProc::start(&auth, "region", fast).await;
    relate(&hq, &region).await;

    // Policy: the primary's root document lies under the secondary's own (nearest wins).
    set_policy(
        &hq,
        json!({ "scan": { "depth": "deep", "hour": 3 }, "owner": "hq" }),
    )
    .await;
    set_policy(&region, json!({ "scan": { "hour": 5 } })).await;
    let task = match hq
        .admin(Op::TaskCreate(TaskCreate {
            kind: "inventory".into(),
            arguments: json!({ "full": true }).to_string(),
            group: "everyone".into(),
            ..Default::default()
        }))
        .await
    {
        R::Tasks(t) => t.created,
        other => panic!("{other:?}"),
    };
    let content_dir = tempfile::tempdir().unwrap();
    content(content_dir.path(), 3);
    let imported = updates(
        &hq,
        Op::UpdateImport(UpdateImport {
            dir: content_dir.path().display().to_string(),
        }),
    )
    .await;
    let hq_rev = imported.revisions[0].revision;
    let agents = agents(&region, 1).await;
    let agent = agents[0].h();

    let want = json!({ "scan": { "depth": "deep", "hour": 5 }, "owner": "hq" });
    within(
        "the secondary's agent holds the merged policy",
        agent.wait_for(|s| s.policy == want),
    )
    .await;
    // The task runs on the secondary's agent (no handler configured: it says so) and its result
    // is kept where the agent reports, on the secondary.
    let inherited = format!("up.{task}");
    until(
        "the inherited task's result is on the secondary",
        || async {
            match region
                .admin(Op::TaskResults(TaskRef {
                    id: inherited.clone(),
                }))
                .await
            {
                R::TaskResults(r) => r.results.iter().any(|r| r.outcome == "no-handler"),
                other => panic!("{other:?}"),
            }
        },
    )
    .await;
    let refused = region
        .admin_refused(Op::TaskRemove(TaskRef {
            id: inherited.clone(),
        }))
        .await;
    assert!(
        refused.contains("remove it there") && refused.contains("hq"),
        "{refused}"
    );

    // The revision: fetched from the primary once, recorded under the secondary's own key, and
    // fetched by its agent, whose file verifies.
    let label = format!("server hq revision {hq_rev}");
    until("the secondary took the primary's revision", || async {
        newest_source(&region).await == label
    })
    .await;
    let local = updates(&region, Op::UpdateList(Empty {})).await.revisions[0].revision;
    within(
        "the secondary's agent fetched the revision",
        agent.wait_for(|s| s.update_revision == local && s.update_fetched == 1),
    )
    .await;
    // Blocks 0 and 1 of av/bases.bin are the same bytes (the pattern repeats every 256), so
    // the distinct blocks are one full block, the half block and the readme.
    let first = served(&hq).await;
    assert_eq!(
        (first.blocks, first.bytes),
        (3, (3 << 19) + "revision seed 3".len() as u64),
        "every distinct block of revision {hq_rev} crossed the link once: {first:?}"
    );

    // A restart of the secondary keeps what it took: nothing is fetched again.
    region.kill();
    region.spawn();
    region.wait_connected("hq").await;
    hq.wait_connected("region").await;
    assert_eq!(newest_source(&region).await, label);

    // A newer revision follows; removed on the primary, its older one is offered again and
    // refused by the secondary as a rollback, which keeps the newer.
    let second_dir = tempfile::tempdir().unwrap();
    content(second_dir.path(), 7);
    let second = updates(
        &hq,
        Op::UpdateImport(UpdateImport {
            dir: second_dir.path().display().to_string(),
        }),
    )
    .await
    .revisions[0]
        .revision;
    let label2 = format!("server hq revision {second}");
    until("the secondary took the second revision", || async {
        newest_source(&region).await == label2
    })
    .await;
    // Only the second revision's distinct blocks crossed: the restart fetched nothing again.
    let both = served(&hq).await;
    assert_eq!(both.blocks, 2 * first.blocks, "{both:?}");
    updates(&hq, Op::UpdateRemove(UpdateRef { revision: second })).await;
    until("the secondary notified the rollback it refused", || async {
        notified(&region, "update-refused")
            .await
            .iter()
            .any(|m| m.contains("rollback") && m.contains(&format!("revision {hq_rev}")))
    })
    .await;
    assert_eq!(
        newest_source(&region).await,
        label2,
        "the newer revision is kept"
    );

    // Changes follow: a new root policy, the task removed on the primary.
    set_policy(&hq, json!({ "scan": { "depth": "quick" } })).await;
    let want = json!({ "scan": { "depth": "quick", "hour": 5 } });
    within(
        "the changed policy reached the agent",
        agent.wait_for(|s| s.policy == want),
    )
    .await;
    hq.admin(Op::TaskRemove(TaskRef { id: task.clone() })).await;
    until("the task left the secondary", || async {
        !task_ids(&region).await.contains(&inherited)
    })
    .await;
    within(
        "the agent's task list is empty",
        agent.wait_for(|s| s.tasks_held == 0),
    )
    .await;

    // The relation removed on the secondary: the inherited layer goes, the revisions stay.
    let r = region
        .admin(Op::ServerRemove(outpost_proto::pb::admin::ServerRef {
            name: "hq".into(),
        }))
        .await;
    assert!(matches!(r, R::Done(_)), "{r:?}");
    let own = json!({ "scan": { "hour": 5 } });
    within(
        "the agent is left with the secondary's own policy",
        agent.wait_for(|s| s.policy == own),
    )
    .await;
    assert_eq!(newest_source(&region).await, label2);
}

/// What a secondary takes from its primary is checked before anything is stored: a bad
/// policy or one bad task refuses the whole hand-down, with the reason, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h4_a_hand_down_with_a_bad_policy_or_task_changes_nothing() {
    use outpost_proto::pb::v1::Task;
    use outpost_server::store::{Durability, Store};
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store.db"), Durability::Normal)
        .await
        .unwrap();
    let task = |id: &str, kind: &str, args: &str| Task {
        id: id.into(),
        kind: kind.into(),
        payload: args.as_bytes().to_vec(),
        not_before: 0,
        every_secs: 0,
    };
    let good = [
        task("a1", "inventory", "{}"),
        task("b2", "scan", r#"{"deep":true}"#),
    ];
    assert!(
        store
            .take_hand_down("hq", r#"{"scan":{"hour":3}}"#, &good, 1)
            .await
            .unwrap()
    );
    // The same again changes nothing.
    assert!(
        !store
            .take_hand_down("hq", r#"{"scan":{"hour":3}}"#, &good, 2)
            .await
            .unwrap()
    );
    let before = (
        store.inherited_policy().await.unwrap(),
        store.root_tasks().await.unwrap(),
    );
    assert_eq!(before.1.len(), 2);
    for (policy, tasks, why) in [
        ("not json", vec![task("c3", "inventory", "{}")], "policy"),
        ("[1, 2]", vec![], "policy"),
        ("{}", vec![task("c3", "Bad Kind", "{}")], "kind"),
        ("{}", vec![task("c3", "inventory", "{not json")], "argument"),
        ("{}", vec![task("../x", "inventory", "{}")], "not a task id"),
        (
            "{}",
            vec![task("c3", "inventory", "{}"), task("", "scan", "{}")],
            "not a task id",
        ),
    ] {
        let e = store
            .take_hand_down("hq", policy, &tasks, 3)
            .await
            .expect_err(why)
            .to_string();
        assert!(e.contains(why) && e.contains("hq"), "{why}: {e}");
        let after = (
            store.inherited_policy().await.unwrap(),
            store.root_tasks().await.unwrap(),
        );
        assert_eq!(after, before, "{why}: nothing changed");
    }
    // A task the primary removed leaves; the layer's document follows the primary's.
    assert!(
        store
            .take_hand_down("hq", r#"{"scan":{"hour":4}}"#, &good[..1], 4)
            .await
            .unwrap()
    );
    let ids: Vec<String> = store
        .root_tasks()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, ["up.a1"]);
    assert_eq!(
        store.inherited_policy().await.unwrap().unwrap().1,
        json!({ "scan": { "hour": 4 } })
    );
}

/// In a chain (hq → region → office) each server passes on what it inherited: the head
/// office's policy, root task and update revision reach an agent of the office, two links down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h4_a_chain_passes_policy_tasks_and_revisions_two_links_down() {
    init_logs();
    let _serial = one_at_a_time().await;
    let auth = Authority::new();
    let hq = ServerProc::start(&auth, "hq", fast).await;
    let region = ServerProc::start(&auth, "region", fast).await;
    let office = ServerProc::start(&auth, "office", fast).await;
    relate(&hq, &region).await;
    relate(&region, &office).await;
    set_policy(&hq, json!({ "scan": { "hour": 2 }, "owner": "hq" })).await;
    set_policy(&region, json!({ "scan": { "depth": "quick" } })).await;
    let task = match hq
        .admin(Op::TaskCreate(TaskCreate {
            kind: "inventory".into(),
            group: "everyone".into(),
            ..Default::default()
        }))
        .await
    {
        R::Tasks(t) => t.created,
        other => panic!("{other:?}"),
    };
    let dir = tempfile::tempdir().unwrap();
    content(dir.path(), 5);
    let rev = updates(
        &hq,
        Op::UpdateImport(UpdateImport {
            dir: dir.path().display().to_string(),
        }),
    )
    .await
    .revisions[0]
        .revision;
    let agents = agents(&office, 1).await;
    let agent = agents[0].h();
    let want = json!({ "scan": { "hour": 2, "depth": "quick" }, "owner": "hq" });
    within(
        "the office's agent holds hq's and the region's settings merged",
        agent.wait_for(|s| s.policy == want),
    )
    .await;
    let twice = format!("up.up.{task}");
    until(
        "hq's task reached the office through the region",
        || async { task_ids(&office).await.contains(&twice) },
    )
    .await;
    let region_label = format!("server hq revision {rev}");
    until("the region took hq's revision", || async {
        newest_source(&region).await == region_label
    })
    .await;
    let region_rev = updates(&region, Op::UpdateList(Empty {})).await.revisions[0].revision;
    let office_label = format!("server region revision {region_rev}");
    until("the office took it from the region", || async {
        newest_source(&office).await == office_label
    })
    .await;
    within(
        "the office's agent fetched it",
        agent.wait_for(|s| s.update_fetched > 0 && s.update_fetched == s.update_revision),
    )
    .await;
}
