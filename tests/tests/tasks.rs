//! Tasks (D5, S4, S5): created by an administrator for a group or a device, delivered at sync
//! only when the device's task list changed, run by the agent's handler with the task as JSON
//! on standard input, and reported as a durable event — exactly once per run, also when the
//! agent process is SIGKILLed while the handler runs or right after it finished.

use std::path::Path;

use outpost_agent::AgentEvent;
use outpost_proto::pb::admin::{
    GroupCreate, TaskCreate, TaskRef, TaskRunResult, admin_request::Op, admin_response::Result as R,
};
use outpost_tests::*;

/// The handler: appends its input to `runs.log` beside it, prints it; kind `slow` waits for a
/// `release` file first (after writing `started-<task>`), kind `fail` exits 3.
fn write_handler(dir: &Path) -> String {
    let path = dir.join("handler.sh");
    let d = dir.display();
    std::fs::write(
        &path,
        format!(
            r#"#!/bin/sh
input=$(cat)
echo "$input" >> {d}/runs.log
task=$(echo "$input" | sed 's/^{{"id":"\([^"]*\)".*/\1/')
touch {d}/started-$task
case "$input" in
  *'"kind":"slow"'*) while [ ! -e {d}/release ]; do sleep 0.05; done ;;
esac
echo "handled $input"
case "$input" in *'"kind":"fail"'*) echo "it went wrong" >&2; exit 3 ;; esac
exit 0
"#
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

fn runs_of(dir: &Path, task: &str) -> usize {
    std::fs::read_to_string(dir.join("runs.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&format!("\"id\":\"{task}\"")))
        .count()
}

async fn create(server: &Server, t: TaskCreate) -> String {
    match server.admin(Op::TaskCreate(t)).await {
        R::Tasks(r) => r.created,
        other => panic!("task create: {other:?}"),
    }
}

async fn results(server: &Server, task: &str) -> Vec<TaskRunResult> {
    match server
        .admin(Op::TaskResults(TaskRef { id: task.into() }))
        .await
    {
        R::TaskResults(r) => r.results,
        other => panic!("task results: {other:?}"),
    }
}

async fn results_become(server: &Server, task: &str, n: usize) -> Vec<TaskRunResult> {
    within(&format!("{n} result(s) of task {task}"), async {
        loop {
            let got = results(server, task).await;
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Asks an in-process agent to sync; returns the task lists it received meanwhile.
async fn sync_and_count_lists(server: &Server, agent: &Agent) -> usize {
    sync_and_count(server, agent, |e| matches!(e, AgentEvent::Tasks { .. })).await
}

/// Creates a task for one device and waits until its handler started.
async fn start_for(server: &Server, hdir: &Path, kind: &str, device: &str) -> String {
    let t = create(
        server,
        TaskCreate {
            kind: kind.into(),
            device_id: device.into(),
            ..Default::default()
        },
    )
    .await;
    let started = hdir.join(format!("started-{t}"));
    until(&format!("the {kind} task started"), || {
        let s = started.clone();
        async move { s.exists() }
    })
    .await;
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_s4_task_runs_on_the_handler_and_its_result_arrives_exactly_once_after_an_agent_kill() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    server
        .admin(Op::GroupCreate(GroupCreate {
            path: "everyone/branch".into(),
        }))
        .await;
    let hdir = tempfile::tempdir().unwrap();
    let handler = write_handler(hdir.path());

    // P: a real agent process in the branch, with the handler. R: in the branch, no handler.
    // Q: above the branch, with the handler.
    let token = server.token_in("agent", "everyone/branch", 2).await;
    let mut cfg = test_agent_config(vec![], Some(server.addr()), "task-p");
    cfg.tasks.handler = handler.clone();
    let p = Agent::enroll(cfg, &token).await;
    let p_id = outpost_net::identity::DeviceIdentity::load(&p.data)
        .unwrap()
        .unwrap()
        .device_id;
    let mut child = spawn_agent_process(&p.data);
    let r = Agent::start(
        test_agent_config(vec![], Some(server.addr()), "task-r"),
        &token,
    )
    .await;
    let mut qcfg = test_agent_config(vec![], Some(server.addr()), "task-q");
    qcfg.tasks.handler = handler.clone();
    let q = Agent::start(qcfg, &server.token("agent", 1).await).await;
    r.wait_checked().await;
    q.wait_checked().await;
    // The first sync carried the (empty) list; nothing travels again until it changes.
    assert_eq!(
        sync_and_count_lists(&server, &q).await,
        0,
        "an unchanged list does not travel"
    );

    // A task for the branch: P runs it, R reports that it has no handler, Q never sees it.
    let t1 = create(
        &server,
        TaskCreate {
            kind: "inventory".into(),
            arguments: r#"{"depth": 2}"#.into(),
            group: "everyone/branch".into(),
            ..Default::default()
        },
    )
    .await;
    let got = results_become(&server, &t1, 2).await;
    let of = |d: &str| got.iter().find(|x| x.device_id == d).cloned().unwrap();
    let rp = of(&p_id);
    assert_eq!(
        (rp.outcome.as_str(), rp.exited, rp.exit_code),
        ("ok", true, 0)
    );
    assert!(
        rp.output.contains(r#""arguments":{"depth":2}"#),
        "{}",
        rp.output
    );
    assert!(
        rp.output.contains(&p_id),
        "the handler is told its device: {}",
        rp.output
    );
    assert_eq!(of(r.h().device_id()).outcome, "no-handler");
    assert_eq!(runs_of(hdir.path(), &t1), 1);
    assert_eq!(
        q.h().status().borrow().tasks_held,
        0,
        "Q is not in the branch"
    );
    assert_eq!(sync_and_count_lists(&server, &q).await, 0);

    // A failing task for Q alone: its exit status and standard error come back.
    let t2 = create(
        &server,
        TaskCreate {
            kind: "fail".into(),
            device_id: q.h().device_id().into(),
            ..Default::default()
        },
    )
    .await;
    let got = results_become(&server, &t2, 1).await;
    assert_eq!((got[0].outcome.as_str(), got[0].exit_code), ("failed", 3));
    assert!(got[0].output.contains("it went wrong"), "{}", got[0].output);

    // Killed while the handler runs: reported `interrupted` once after the restart, not run
    // again.
    let t3 = start_for(&server, hdir.path(), "slow", &p_id).await;
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    std::fs::write(hdir.path().join("release"), b"").unwrap();
    let _child = spawn_agent_process(&p.data);
    let got = results_become(&server, &t3, 1).await;
    assert_eq!(got[0].outcome, "interrupted");
    assert!(!got[0].exited);

    // Killed right after the handler finished (the result queued or not yet): one result.
    let mut child = _child;
    let t4 = start_for(&server, hdir.path(), "quick", &p_id).await;
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let _child = spawn_agent_process(&p.data);
    let got = results_become(&server, &t4, 1).await;
    assert!(
        ["ok", "interrupted"].contains(&got[0].outcome.as_str()),
        "{:?}",
        got[0]
    );
    // Everything P still had queued is in: its queue drains, and still one result each.
    let queue = outpost_agent::queue::Queue::open(&p.data, 1000).unwrap();
    until("P's queue drained", || {
        let q = queue.clone();
        async move { q.is_empty() }
    })
    .await;
    for (t, runs) in [(&t1, 1), (&t3, 1), (&t4, 1)] {
        let mine: Vec<_> = results(&server, t)
            .await
            .into_iter()
            .filter(|x| x.device_id == p_id)
            .collect();
        assert_eq!(mine.len(), 1, "task {t}: one result from P, got {mine:?}");
        assert_eq!(runs_of(hdir.path(), t), runs, "task {t}: handler runs");
        let events = server.h().store().events_of(&p_id).await.unwrap();
        let id = outpost_proto::task::result_event_id(t, 0);
        assert_eq!(events.iter().filter(|e| e.id == id).count(), 1);
    }
    let list = match server.admin(Op::TaskList(Default::default())).await {
        R::Tasks(l) => l.tasks,
        other => panic!("{other:?}"),
    };
    let row = list.iter().find(|t| t.id == t1).unwrap();
    assert_eq!((row.ok, row.not_ok), (1, 1), "t1: P ok, R no-handler");

    // Removing a task sends the shorter list; the results stay.
    server
        .admin(Op::TaskRemove(TaskRef { id: t2.clone() }))
        .await;
    assert_eq!(sync_and_count_lists(&server, &q).await, 1);
    assert_eq!(q.h().status().borrow().tasks_held, 0);
    assert_eq!(results(&server, &t2).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_bad_task_definitions_are_refused_and_nothing_is_stored() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    let cases = [
        (
            TaskCreate {
                kind: "run".into(),
                group: "nowhere".into(),
                ..Default::default()
            },
            "does not exist",
        ),
        (
            TaskCreate {
                kind: "Run Script".into(),
                group: "everyone".into(),
                ..Default::default()
            },
            "not a plain word",
        ),
        (
            TaskCreate {
                kind: "run".into(),
                arguments: "{not json".into(),
                group: "everyone".into(),
                ..Default::default()
            },
            "not JSON",
        ),
        (
            TaskCreate {
                kind: "run".into(),
                group: "everyone".into(),
                every_secs: 5,
                ..Default::default()
            },
            "too often",
        ),
        (
            TaskCreate {
                kind: "run".into(),
                device_id: "no-such-device".into(),
                ..Default::default()
            },
            "no agent",
        ),
        (
            TaskCreate {
                kind: "run".into(),
                ..Default::default()
            },
            "either a group",
        ),
    ];
    for (t, want) in cases {
        let err = server
            .try_admin(Op::TaskCreate(t))
            .await
            .expect_err("refused")
            .to_string();
        assert!(err.contains(want), "{err:?} should say {want:?}");
    }
    match server.admin(Op::TaskList(Default::default())).await {
        R::Tasks(l) => assert!(l.tasks.is_empty(), "{l:?}"),
        other => panic!("{other:?}"),
    }
    let err = server
        .try_admin(Op::TaskResults(TaskRef { id: "nope".into() }))
        .await
        .expect_err("unknown task")
        .to_string();
    assert!(err.contains("no task nope"), "{err}");
    // The CLI parses a schedule and arguments file and says what it made.
    let args = server.data.join("args.json");
    std::fs::write(&args, r#"{"script": "cleanup.sh"}"#).unwrap();
    let (ok, out, err) = run_bin(
        "outpost-server",
        &[
            "admin",
            "--data-dir",
            server.data.to_str().unwrap(),
            "task",
            "create",
            "--kind",
            "run-script",
            "--args-file",
            args.to_str().unwrap(),
            "--group",
            "everyone",
            "--every",
            "1day",
            "--at",
            "2030-01-01T02:00:00Z",
        ],
    )
    .unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("created"), "{out}");
    assert!(out.contains("every 1day, from 2030-01-01"), "{out}");
    let (ok, _, err) = run_bin(
        "outpost-server",
        &[
            "admin",
            "--data-dir",
            server.data.to_str().unwrap(),
            "task",
            "create",
            "--kind",
            "run",
            "--group",
            "everyone",
            "--at",
            "tomorrow",
        ],
    )
    .unwrap();
    assert!(!ok);
    assert!(
        err.contains("--at \"tomorrow\" is not an RFC 3339 date"),
        "{err}"
    );
}
