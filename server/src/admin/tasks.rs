//! `admin task create/list/results/remove` (D5).

use outpost_proto::pb::admin::{
    AdminResponse, TaskCreate, TaskInfo, TaskListResult, TaskRef, TaskResultsResult, TaskRunResult,
    admin_response::Result as R,
};
use tracing::info;

use super::ok;
use crate::node::Node;
use crate::store::StoreError;
use crate::store::tasks::{NewTask, TaskRow};

type Answer = Result<AdminResponse, StoreError>;

fn info(t: TaskRow) -> TaskInfo {
    TaskInfo {
        id: t.id,
        kind: t.kind,
        arguments: t.arguments,
        group: t.target_group.unwrap_or_default(),
        device_id: t.target_device.unwrap_or_default(),
        not_before: t.not_before,
        every_secs: t.every_secs.max(0) as u64,
        created_at: t.created_at,
        ok: t.ok,
        not_ok: t.not_ok,
    }
}

/// Asks the connected devices a task is aimed at to sync now, here and on the other
/// instances; returns how many were connected here.
async fn nudge_targets(node: &Node, t: &TaskInfo) -> Result<usize, StoreError> {
    let group = if t.group.is_empty() {
        match node.store().device(&t.device_id).await? {
            Some(d) => d.group_path,
            None => return Ok(0),
        }
    } else {
        t.group.clone()
    };
    let devices = if t.group.is_empty() {
        vec![t.device_id.clone()]
    } else {
        node.store().devices_under(&group).await?
    };
    let nudged = node.sessions().registry().nudge(&devices);
    node.store().announce_sync(&group).await;
    Ok(nudged)
}

pub(super) async fn create(node: &Node, t: TaskCreate) -> Answer {
    let now = outpost_net::unix_now();
    let id = node
        .store()
        .create_task(
            NewTask {
                kind: t.kind,
                arguments: t.arguments,
                group: (!t.group.is_empty()).then_some(t.group),
                device: (!t.device_id.is_empty()).then_some(t.device_id),
                not_before: t.not_before,
                every_secs: t.every_secs,
            },
            now,
        )
        .await?;
    let row = node.store().task(&id).await?;
    let task = row
        .map(info)
        .ok_or_else(|| StoreError::NotFound(format!("task {id} was removed as it was created")))?;
    let nudged = nudge_targets(node, &task).await?;
    node.peers().hand_down_changed();
    info!(task = %id, kind = %task.kind, nudged, "task created");
    Ok(ok(R::Tasks(TaskListResult {
        tasks: vec![task],
        created: id,
        nudged: nudged as u32,
        ..Default::default()
    })))
}

pub(super) async fn list(node: &Node) -> Answer {
    let tasks = node.store().tasks().await?.into_iter().map(info).collect();
    Ok(ok(R::Tasks(TaskListResult {
        tasks,
        ..Default::default()
    })))
}

pub(super) async fn remove(node: &Node, t: TaskRef) -> Answer {
    let task = info(node.store().remove_task(&t.id).await?);
    let nudged = nudge_targets(node, &task).await?;
    node.peers().hand_down_changed();
    info!(task = %t.id, nudged, "task removed");
    Ok(ok(R::Tasks(TaskListResult {
        tasks: vec![task],
        removed: t.id,
        nudged: nudged as u32,
        ..Default::default()
    })))
}

pub(super) async fn results(node: &Node, t: TaskRef) -> Answer {
    if !node.store().task_known(&t.id).await? {
        return Err(StoreError::NotFound(format!(
            "no task {} (admin task list shows them)",
            t.id
        )));
    }
    let results = node
        .store()
        .task_results(&t.id)
        .await?
        .into_iter()
        .map(|r| TaskRunResult {
            device_id: r.device_id,
            hostname: r.hostname,
            run: r.run.max(0) as u64,
            outcome: r.outcome,
            exited: r.exit_code.is_some(),
            exit_code: r.exit_code.unwrap_or_default(),
            output: r.output,
            started_at_ms: r.started_at_ms,
            finished_at_ms: r.finished_at_ms,
        })
        .collect();
    Ok(ok(R::TaskResults(TaskResultsResult {
        task_id: t.id,
        results,
    })))
}
