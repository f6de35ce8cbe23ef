//! Tasks and their results (D5); scheduling and result format are `outpost_proto::task`'s.
//!
//! A device's task list is every task aimed at it or at its group or a group above it. Results
//! arrive as events (S5); [`record_result`] writes the result row in the transaction that
//! stores the event, so a result delivered twice is kept once.

use outpost_proto::pb::v1::Task;
use outpost_proto::task::{self, RunResult};
use tracing::warn;

use super::backend::Tx;
use super::groups::normalize_group;
use super::{Store, StoreError};

/// A task as an administrator created it.
#[derive(Debug, Clone, Default)]
pub struct NewTask {
    /// Kind (a plain word the agent's handler understands).
    pub kind: String,
    /// Arguments (JSON text; empty: `{}`).
    pub arguments: String,
    /// Target group (and below) …
    pub group: Option<String>,
    /// … or one device.
    pub device: Option<String>,
    /// Unix seconds; 0: now.
    pub not_before: i64,
    /// 0: once.
    pub every_secs: u64,
}

/// A stored task and how many results it has.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TaskRow {
    /// Id.
    pub id: String,
    /// Kind.
    pub kind: String,
    /// Arguments (JSON).
    pub arguments: String,
    /// Target group, if aimed at one.
    pub target_group: Option<String>,
    /// Target device, if aimed at one.
    pub target_device: Option<String>,
    /// Unix seconds.
    pub not_before: i64,
    /// 0: once.
    pub every_secs: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// The primary it was passed down from (H4); `None`: created here.
    pub origin: Option<String>,
    /// Results with outcome `ok`.
    pub ok: i64,
    /// Other results.
    pub not_ok: i64,
}

/// One device's result of one run.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ResultRow {
    /// The device.
    pub device_id: String,
    /// Its host name (empty when the device was removed since).
    pub hostname: String,
    /// The run.
    pub run: i64,
    /// `ok`, `failed`, …
    pub outcome: String,
    /// Exit status, when the handler exited.
    pub exit_code: Option<i64>,
    /// What the handler printed.
    pub output: String,
    /// Unix milliseconds.
    pub started_at_ms: i64,
    /// Unix milliseconds.
    pub finished_at_ms: i64,
}

/// A task as sent to devices, from its stored (id, kind, arguments, not_before, every_secs).
pub(super) fn task_of(
    (id, kind, arguments, not_before, every): (String, String, String, i64, i64),
) -> Task {
    Task {
        id,
        kind,
        payload: arguments.into_bytes(),
        not_before,
        every_secs: every.max(0) as u64,
    }
}

/// A task row with its result counts.
const SELECT_TASK: &str = "SELECT t.id, t.kind, t.arguments, t.target_group, t.target_device,
        t.not_before, t.every_secs, t.created_at, t.origin,
        (SELECT COUNT(*) FROM task_results r WHERE r.task_id = t.id AND r.outcome = 'ok') AS ok,
        (SELECT COUNT(*) FROM task_results r WHERE r.task_id = t.id AND r.outcome <> 'ok')
          AS not_ok
    FROM tasks t";

impl Store {
    /// One task with its result counts.
    pub async fn task(&self, id: &str) -> Result<Option<TaskRow>, StoreError> {
        Ok(sqlx::query_as::<_, TaskRow>(sqlx::AssertSqlSafe(format!(
            "{SELECT_TASK} WHERE t.id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.read)
        .await?)
    }

    /// Creates a task; returns its id.
    pub async fn create_task(&self, t: NewTask, now: i64) -> Result<String, StoreError> {
        let arguments = task::validate(&t.kind, &t.arguments, t.every_secs)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let group = match &t.group {
            Some(g) => Some(normalize_group(g)?),
            None => None,
        };
        let mut tx = self.write.begin().await?;
        match (&group, &t.device) {
            (Some(g), None) => {
                let found: Option<(String,)> =
                    sqlx::query_as("SELECT path FROM groups WHERE path = $1")
                        .bind(g)
                        .fetch_optional(&mut *tx)
                        .await?;
                if found.is_none() {
                    return Err(StoreError::NotFound(format!(
                        "group {g:?} does not exist (admin group list shows them)"
                    )));
                }
            }
            (None, Some(d)) => {
                let found: Option<(String,)> =
                    sqlx::query_as("SELECT id FROM devices WHERE id = $1 AND role = 'agent'")
                        .bind(d)
                        .fetch_optional(&mut *tx)
                        .await?;
                if found.is_none() {
                    return Err(StoreError::NotFound(format!(
                        "no agent {d} (admin device list shows them)"
                    )));
                }
            }
            _ => {
                return Err(StoreError::Invalid(
                    "a task targets either a group (--group) or one device (--device)".into(),
                ));
            }
        }
        let id = format!("{:010x}", rand::random::<u64>() >> 24);
        sqlx::query(
            "INSERT INTO tasks (id, kind, arguments, target_group, target_device, not_before,
                                every_secs, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&id)
        .bind(&t.kind)
        .bind(&arguments)
        .bind(&group)
        .bind(&t.device)
        .bind(t.not_before.max(now))
        .bind(t.every_secs as i64)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Removes a task (no further runs; its results stay). Returns its target.
    pub async fn remove_task(&self, id: &str) -> Result<TaskRow, StoreError> {
        let row = self.task(id).await?.ok_or_else(|| {
            StoreError::NotFound(format!("no task {id} (admin task list shows them)"))
        })?;
        if let Some(source) = &row.origin {
            return Err(StoreError::Invalid(format!(
                "task {id} comes from server {source} (this server's primary); remove it there"
            )));
        }
        sqlx::query("DELETE FROM tasks WHERE id = $1")
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(row)
    }

    /// Every task, newest first, with its result counts.
    pub async fn tasks(&self) -> Result<Vec<TaskRow>, StoreError> {
        Ok(sqlx::query_as::<_, TaskRow>(sqlx::AssertSqlSafe(format!(
            "{SELECT_TASK} ORDER BY t.created_at DESC, t.id"
        )))
        .fetch_all(&self.read)
        .await?)
    }

    /// A device's task list and its revision.
    pub async fn tasks_for(&self, device_id: &str) -> Result<(Vec<Task>, u64), StoreError> {
        let rows: Vec<(String, String, String, i64, i64)> = sqlx::query_as(
            "SELECT t.id, t.kind, t.arguments, t.not_before, t.every_secs
             FROM devices d JOIN tasks t
               ON t.target_device = d.id
               OR t.target_group = d.group_path
               OR SUBSTR(d.group_path, 1, LENGTH(t.target_group) + 1) = t.target_group || '/'
             WHERE d.id = $1
             ORDER BY t.id",
        )
        .bind(device_id)
        .fetch_all(&self.read)
        .await?;
        let tasks: Vec<Task> = rows.into_iter().map(task_of).collect();
        let revision = task::list_revision(&tasks);
        Ok((tasks, revision))
    }

    /// A device's group now (empty for an unknown device).
    pub async fn device_group(&self, device_id: &str) -> Result<String, StoreError> {
        let row: Option<(String,)> = sqlx::query_as("SELECT group_path FROM devices WHERE id = $1")
            .bind(device_id)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(|(g,)| g).unwrap_or_default())
    }

    /// The results of a task, newest run first.
    pub async fn task_results(&self, id: &str) -> Result<Vec<ResultRow>, StoreError> {
        Ok(sqlx::query_as::<_, ResultRow>(
            "SELECT r.device_id, COALESCE(d.hostname, '') AS hostname, r.run, r.outcome,
                    r.exit_code, r.output, r.started_at_ms, r.finished_at_ms
             FROM task_results r LEFT JOIN devices d ON d.id = r.device_id
             WHERE r.task_id = $1
             ORDER BY r.run DESC, r.finished_at_ms DESC, r.device_id",
        )
        .bind(id)
        .fetch_all(&self.read)
        .await?)
    }

    /// Whether a task exists or has results (`task results` of an unknown id is an error).
    pub async fn task_known(&self, id: &str) -> Result<bool, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM tasks WHERE id = $1)
                  + (SELECT COUNT(*) FROM task_results WHERE task_id = $1)",
        )
        .bind(id)
        .fetch_one(&self.read)
        .await?;
        Ok(n > 0)
    }
}

/// Writes the result carried by a `task-result` event (inside the transaction storing the
/// event; `new` says the event was not stored before). A payload that is not a result is
/// kept as an event only, with a warning: a faulty agent must not stop its queue.
pub(super) async fn record_result(
    tx: &mut Tx<'_>,
    device_id: &str,
    payload: &[u8],
    now: i64,
) -> Result<(), StoreError> {
    let r: RunResult = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => {
            warn!(device = %device_id, error = %e, "a task-result event that is not a result; kept as an event only");
            return Ok(());
        }
    };
    sqlx::query(
        "INSERT INTO task_results (task_id, device_id, run, outcome, exit_code, output,
                                   started_at_ms, finished_at_ms, received_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (task_id, device_id, run) DO NOTHING",
    )
    .bind(&r.task)
    .bind(device_id)
    .bind(r.run.min(i64::MAX as u64) as i64)
    .bind(r.outcome.as_str())
    .bind(r.exit_code.map(i64::from))
    .bind(task::truncate(r.output, task::MAX_OUTPUT))
    .bind(r.started_at_ms)
    .bind(r.finished_at_ms)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
