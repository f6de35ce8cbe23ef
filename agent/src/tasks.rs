//! Tasks from the server (D5): kept in `tasks.json` with the runs handled, run one at a time
//! by the configured handler (`tasks.handler`, the task as JSON on standard input), each
//! result queued as a durable event (S5) whose id is derived from the task and the run.
//!
//! Exactly one result per run, whatever is killed when: the run is written down as started
//! before the handler starts, and as done after its result is queued. An agent that finds a
//! run started but not done (it was stopped or killed while the handler ran) reports that run
//! `interrupted` and does not run it again — a handler may not be safe to run twice; the
//! administrator sees the outcome and creates the task again if it is. If the real result had
//! already been queued, the queue keeps it (same id); if it had already been sent, the server
//! keeps the first (it de-duplicates events by id).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use outpost_proto::pb::v1::{Task, TaskList};
use outpost_proto::task::{self, Due, HandlerInput, Outcome, RunResult};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::node::{AgentEvent, Shared};

/// A task as kept on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct HeldTask {
    pub id: String,
    pub kind: String,
    pub arguments: serde_json::Value,
    pub not_before: i64,
    pub every_secs: u64,
}

impl HeldTask {
    fn as_task(&self) -> Task {
        Task {
            id: self.id.clone(),
            kind: self.kind.clone(),
            payload: self.arguments.to_string().into_bytes(),
            not_before: self.not_before,
            every_secs: self.every_secs,
        }
    }
}

/// The last run of a task this agent handled.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Run {
    pub run: u64,
    /// False between the handler's start and its result being queued.
    pub done: bool,
    pub started_at_ms: i64,
}

/// `tasks.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct HeldTasks {
    /// 0: no list received.
    pub revision: u64,
    pub tasks: Vec<HeldTask>,
    /// By task id.
    pub runs: BTreeMap<String, Run>,
}

impl HeldTasks {
    pub(crate) fn load(data: &Path) -> HeldTasks {
        crate::kept::load(data, "tasks.json")
    }

    fn save(&self, data: &Path) -> std::io::Result<()> {
        crate::kept::save(data, "tasks.json", self)
    }

    /// The run to start now, or when to look again.
    fn next(&self, now: i64) -> Result<(HeldTask, u64), Option<i64>> {
        let mut wake: Option<i64> = None;
        for t in &self.tasks {
            match task::due(&t.as_task(), now, self.runs.get(&t.id).map(|r| r.run)) {
                Due::Now(run) => return Ok((t.clone(), run)),
                Due::At(at) => wake = Some(wake.map_or(at, |w| w.min(at))),
                Due::Never => {}
            }
        }
        Err(wake)
    }
}

/// A task list received at sync: kept (before it is acknowledged by the next sync's known
/// revision), then the runner looks at it. Runs of tasks no longer listed are forgotten,
/// except one started and not reported yet.
pub(crate) fn on_tasks(shared: &Shared, list: TaskList) {
    let mut tasks = vec![];
    for t in list.tasks {
        match serde_json::from_slice(&t.payload) {
            Ok(arguments) => tasks.push(HeldTask {
                id: t.id,
                kind: t.kind,
                arguments,
                not_before: t.not_before,
                every_secs: t.every_secs,
            }),
            Err(e) => warn!(task = %t.id, error = %e, "task arguments are not JSON; task ignored"),
        }
    }
    let mut held = shared.tasks.lock().expect("tasks lock");
    let mut next = HeldTasks {
        revision: list.revision,
        runs: held.runs.clone(),
        tasks,
    };
    next.runs
        .retain(|id, r| !r.done || next.tasks.iter().any(|t| &t.id == id));
    if let Err(e) = next.save(&shared.data) {
        warn!(error = %e, "task list not saved; asked for again at the next sync");
        return;
    }
    info!(revision = %format!("{:016x}", next.revision), tasks = next.tasks.len(), "task list received");
    shared
        .status
        .send_modify(|s| s.tasks_held = next.tasks.len());
    let _ = shared.events.send(AgentEvent::Tasks {
        revision: next.revision,
        count: next.tasks.len(),
    });
    *held = next;
    drop(held);
    shared.tasks_changed.notify_one();
}

/// Runs due tasks one at a time until shutdown.
pub(crate) async fn runner(shared: Arc<Shared>) {
    report_interrupted(&shared);
    loop {
        let now = outpost_net::unix_now();
        let next = shared.tasks.lock().expect("tasks lock").next(now);
        let wait = match next {
            Ok((t, run)) => {
                if run_one(&shared, &t, run).await.is_err() {
                    // Not written down as started: not run. Try again in a while.
                    Duration::from_secs(30)
                } else {
                    continue;
                }
            }
            Err(Some(at)) => Duration::from_secs((at - now).clamp(1, 3600) as u64),
            Err(None) => Duration::from_secs(3600),
        };
        tokio::select! {
            _ = shared.tasks_changed.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

/// Runs started by a previous process and never reported.
fn report_interrupted(shared: &Shared) {
    let started: Vec<(String, Run)> = {
        let held = shared.tasks.lock().expect("tasks lock");
        held.runs
            .iter()
            .filter(|(_, r)| !r.done)
            .map(|(id, r)| (id.clone(), *r))
            .collect()
    };
    for (id, r) in started {
        let result = RunResult {
            task: id.clone(),
            run: r.run,
            outcome: Outcome::Interrupted,
            exit_code: None,
            output: "the agent stopped while the handler ran; not run again".into(),
            started_at_ms: r.started_at_ms,
            finished_at_ms: outpost_net::unix_now_ms(),
        };
        if report(shared, &result).is_ok() {
            warn!(task = %id, run = r.run, "a task run was interrupted by the agent stopping; reported");
        }
    }
}

/// Queues a result, then writes its run down as done.
fn report(shared: &Shared, r: &RunResult) -> Result<(), ()> {
    let payload = serde_json::to_vec(r).unwrap_or_default();
    let id = task::result_event_id(&r.task, r.run);
    if let Err(e) = shared.queue.push_with_id(
        &id,
        task::RESULT_EVENT,
        &payload,
        outpost_net::unix_now_ms(),
    ) {
        warn!(task = %r.task, error = %e, "task result not queued; reported at the next start");
        return Err(());
    }
    let mut held = shared.tasks.lock().expect("tasks lock");
    held.runs.insert(
        r.task.clone(),
        Run {
            run: r.run,
            done: true,
            started_at_ms: r.started_at_ms,
        },
    );
    if let Err(e) = held.save(&shared.data) {
        // The result is queued: at the next start it is not queued twice (same id).
        warn!(error = %e, "task run not written down as done");
    }
    drop(held);
    shared.status.send_modify(|s| {
        s.queue_depth = shared.queue.len();
        s.tasks_run += 1;
        s.last_task = format!("{} run {}: {}", r.task, r.run, r.outcome.as_str());
    });
    let _ = shared.events.send(AgentEvent::TaskDone {
        task: r.task.clone(),
        run: r.run,
        outcome: r.outcome.as_str().into(),
    });
    shared.nudge.notify_one();
    Ok(())
}

async fn run_one(shared: &Arc<Shared>, t: &HeldTask, run: u64) -> Result<(), ()> {
    let started_at_ms = outpost_net::unix_now_ms();
    {
        let mut held = shared.tasks.lock().expect("tasks lock");
        held.runs.insert(
            t.id.clone(),
            Run {
                run,
                done: false,
                started_at_ms,
            },
        );
        if let Err(e) = held.save(&shared.data) {
            warn!(task = %t.id, error = %e, "cannot write down that a task run starts; not run");
            held.runs.remove(&t.id);
            return Err(());
        }
    }
    info!(task = %t.id, kind = %t.kind, run, "task run starts");
    let (outcome, exit_code, output) = tokio::select! {
        r = execute(shared, t, run) => r,
        // Stopping: the run stays "started" and is reported interrupted at the next start.
        _ = shared.shutdown.cancelled() => return Ok(()),
    };
    info!(task = %t.id, run, outcome = outcome.as_str(), "task run ended");
    report(
        shared,
        &RunResult {
            task: t.id.clone(),
            run,
            outcome,
            exit_code,
            output,
            started_at_ms,
            finished_at_ms: outpost_net::unix_now_ms(),
        },
    )
}

/// Runs the handler; (outcome, exit status, output).
async fn execute(shared: &Shared, t: &HeldTask, run: u64) -> (Outcome, Option<i32>, String) {
    let cfg = &shared.config.tasks;
    if cfg.handler.is_empty() {
        return (
            Outcome::NoHandler,
            None,
            "no task handler is configured on this agent (tasks.handler in agent.toml)".into(),
        );
    }
    let input = HandlerInput {
        id: t.id.clone(),
        kind: t.kind.clone(),
        arguments: t.arguments.clone(),
        run,
        device_id: shared.device_id.clone(),
    };
    let body = serde_json::to_vec(&input).unwrap_or_default();
    crate::handler::run(
        &cfg.handler,
        cfg.timeout,
        "tasks.timeout",
        &shared.data,
        body,
    )
    .await
}
