//! `task …` (D5): tasks for agents' local handlers, and how their results print.

use std::path::PathBuf;

use clap::Subcommand;
use outpost_proto::licence::key::{format_time, parse_time};
use outpost_proto::pb::admin::{
    Empty, TaskCreate, TaskListResult, TaskRef, TaskResultsResult, admin_request::Op,
};

use crate::client::AdminError;

/// `task …`.
#[derive(Subcommand)]
pub enum TaskCmd {
    /// Create a task for the agents of a group (and the groups below it) or one agent. Each
    /// agent hands it to its `tasks.handler` as JSON on standard input and reports the result.
    Create {
        /// What the handler is asked to do (a plain word it understands, e.g. run-script).
        #[arg(long)]
        kind: String,
        /// Arguments: a JSON document …
        #[arg(long, conflicts_with = "args_file")]
        args: Option<String>,
        /// … or a file holding one.
        #[arg(long)]
        args_file: Option<PathBuf>,
        /// Target group path or name.
        #[arg(long, conflicts_with = "device", required_unless_present = "device")]
        group: Option<String>,
        /// Target device id.
        #[arg(long)]
        device: Option<String>,
        /// Not before this moment (RFC 3339, e.g. 2027-01-10T02:00:00Z); default now.
        #[arg(long)]
        at: Option<String>,
        /// Run again every period (e.g. 24h, at least 1m); default once.
        #[arg(long)]
        every: Option<humantime::Duration>,
    },
    /// Tasks, their target, schedule and result counts.
    List,
    /// One task's results: a line per device and run.
    Results {
        /// Task id.
        id: String,
    },
    /// Remove a task: no further runs (results already in stay).
    Remove {
        /// Task id.
        id: String,
    },
}

/// The request for a `task` command.
pub fn task_op(cmd: TaskCmd) -> Result<Op, AdminError> {
    Ok(match cmd {
        TaskCmd::Create {
            kind,
            args,
            args_file,
            group,
            device,
            at,
            every,
        } => {
            let arguments = match (args, args_file) {
                (Some(a), _) => a,
                (None, Some(f)) => outpost_net::fsutil::read_string(&f)
                    .map_err(|e| AdminError::Local(e.to_string()))?,
                (None, None) => String::new(),
            };
            let not_before = match at {
                Some(s) => parse_time(&s).ok_or_else(|| {
                    AdminError::Local(format!(
                        "--at {s:?} is not an RFC 3339 date (e.g. 2027-01-10T02:00:00Z)"
                    ))
                })?,
                None => 0,
            };
            Op::TaskCreate(TaskCreate {
                kind,
                arguments,
                group: group.unwrap_or_default(),
                device_id: device.unwrap_or_default(),
                not_before,
                every_secs: every.map_or(0, |d| d.as_secs()),
            })
        }
        TaskCmd::List => Op::TaskList(Empty {}),
        TaskCmd::Results { id } => Op::TaskResults(TaskRef { id }),
        TaskCmd::Remove { id } => Op::TaskRemove(TaskRef { id }),
    })
}

fn schedule(not_before: i64, every_secs: u64) -> String {
    let from = format_time(not_before);
    if every_secs == 0 {
        format!("once, from {from}")
    } else {
        let every = humantime::format_duration(std::time::Duration::from_secs(every_secs));
        format!("every {every}, from {from}")
    }
}

/// Rows of `task list` (and the header line of create/remove).
pub fn tasks(t: &TaskListResult) -> (String, Vec<Vec<String>>) {
    let head = if !t.created.is_empty() {
        format!(
            "task {} created; {} connected device(s) asked to sync now, the others get it at their next connect\n",
            t.created, t.nudged
        )
    } else if !t.removed.is_empty() {
        format!("task {} removed; it runs no more\n", t.removed)
    } else {
        String::new()
    };
    let rows = t
        .tasks
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.kind.clone(),
                if t.group.is_empty() {
                    format!("device {}", t.device_id)
                } else {
                    format!("group {}", t.group)
                },
                schedule(t.not_before, t.every_secs),
                format!("{} ok, {} not", t.ok, t.not_ok),
                t.arguments.clone(),
            ]
        })
        .collect();
    (head, rows)
}

/// Rows of `task results`.
pub fn results(r: &TaskResultsResult) -> Vec<Vec<String>> {
    r.results
        .iter()
        .map(|x| {
            let first = x.output.lines().next().unwrap_or("").to_owned();
            vec![
                x.device_id.clone(),
                if x.hostname.is_empty() {
                    "(removed)".into()
                } else {
                    x.hostname.clone()
                },
                x.run.to_string(),
                x.outcome.clone(),
                if x.exited {
                    x.exit_code.to_string()
                } else {
                    "-".into()
                },
                format_time(x.finished_at_ms / 1000),
                first,
            ]
        })
        .collect()
}
