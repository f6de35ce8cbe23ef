//! Tasks (D5): what an administrator asks agents to do, and when; what an agent reports back.
//!
//! A task has an id, a kind and JSON arguments, a target (a group and the groups below it, or
//! one device) and a schedule: once (at or after `not_before`), or every `every_secs` from
//! `not_before` on. Every run has a number — 0 for a once-task, the index of the period for a
//! recurring one — so a device reports at most one result per run: its result is an event
//! (S5) whose id is derived from the task and the run ([`result_event_id`]), and the server
//! de-duplicates events by id. Periods an agent missed (it was off) collapse into one run,
//! the latest: a daily task does not run seven times after a week away.

use serde::{Deserialize, Serialize};

use crate::pb::v1::Task;

/// Event kind of a task result.
pub const RESULT_EVENT: &str = "task-result";

/// Shortest period of a recurring task, seconds.
pub const MIN_EVERY_SECS: u64 = 60;

/// Largest arguments document, bytes.
pub const MAX_ARGUMENTS: usize = 64 * 1024;

/// Most output bytes a result carries (the handler's standard output, then standard error,
/// cut at a character boundary).
pub const MAX_OUTPUT: usize = 16 * 1024;

/// When a task's next run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Run number `n` is due now.
    Now(u64),
    /// Nothing until this unix second.
    At(i64),
    /// Every run this device owes is done.
    Never,
}

/// The run due at `now` for a task whose last handled run is `last` (None: none yet).
pub fn due(task: &Task, now: i64, last: Option<u64>) -> Due {
    if now < task.not_before {
        return Due::At(task.not_before);
    }
    if task.every_secs == 0 {
        return match last {
            None => Due::Now(0),
            Some(_) => Due::Never,
        };
    }
    let every = task.every_secs.max(1);
    let current = (now - task.not_before) as u64 / every;
    match last {
        Some(l) if l >= current => Due::At(task.not_before + ((l + 1) * every) as i64),
        _ => Due::Now(current),
    }
}

/// The id of the event that carries a device's result of one run of a task: the same for
/// every attempt at reporting it, so the server keeps one.
pub fn result_event_id(task_id: &str, run: u64) -> String {
    format!("task-{task_id}-{run}")
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The handler exited with status 0.
    Ok,
    /// The handler exited with another status or was killed by a signal.
    Failed,
    /// The handler ran past the agent's `tasks.timeout` and was killed.
    TimedOut,
    /// The agent stopped (or was killed) while the handler ran; it is not run again.
    Interrupted,
    /// The agent has no `tasks.handler` configured.
    NoHandler,
    /// The handler could not be started.
    Error,
}

impl Outcome {
    /// As shown and stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed-out",
            Outcome::Interrupted => "interrupted",
            Outcome::NoHandler => "no-handler",
            Outcome::Error => "error",
        }
    }
}

/// A device's result of one run: the payload of a [`RESULT_EVENT`] event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The task.
    pub task: String,
    /// The run.
    pub run: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// The handler's exit status, when it exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// What it printed (at most [`MAX_OUTPUT`] bytes), or why it did not run.
    #[serde(default)]
    pub output: String,
    /// Unix milliseconds.
    pub started_at_ms: i64,
    /// Unix milliseconds.
    pub finished_at_ms: i64,
}

/// What the handler gets on its standard input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandlerInput {
    /// The task.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// Its arguments (JSON).
    pub arguments: serde_json::Value,
    /// The run.
    pub run: u64,
    /// This device.
    pub device_id: String,
}

/// Cuts `s` to at most `max` bytes at a character boundary.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The revision of a device's task list: a hash of the list sorted by id (never 0, which
/// means "none received"; an empty list has one too, so removing the last task travels).
pub fn list_revision(tasks: &[Task]) -> u64 {
    let mut sorted: Vec<&Task> = tasks.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for t in sorted {
        for part in [t.id.as_bytes(), t.kind.as_bytes(), &t.payload] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        ctx.update(&t.not_before.to_be_bytes());
        ctx.update(&t.every_secs.to_be_bytes());
    }
    let d = ctx.finish();
    u64::from_be_bytes(d.as_ref()[..8].try_into().expect("8 bytes")) | 1
}

/// Why a task definition is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// Kind empty or not a plain word.
    #[error(
        "task kind {0:?} is not a plain word (1 to 64 of a-z, 0-9, '-', '_', '.'); e.g. run-script"
    )]
    Kind(String),
    /// Arguments not JSON.
    #[error("the task arguments are not JSON: {0}")]
    Arguments(String),
    /// Arguments too large.
    #[error("the task arguments are {0} bytes; at most {MAX_ARGUMENTS} are accepted")]
    TooLarge(usize),
    /// Period too short.
    #[error("a recurring task runs at most every {MIN_EVERY_SECS} s; {0} s is too often")]
    TooOften(u64),
}

/// Checks a task an administrator gives; returns its arguments in canonical form.
pub fn validate(kind: &str, arguments: &str, every_secs: u64) -> Result<String, TaskError> {
    let plain = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
    if kind.is_empty() || kind.len() > 64 || !kind.chars().all(plain) {
        return Err(TaskError::Kind(kind.to_owned()));
    }
    if arguments.len() > MAX_ARGUMENTS {
        return Err(TaskError::TooLarge(arguments.len()));
    }
    let args = if arguments.trim().is_empty() {
        serde_json::Value::Object(Default::default())
    } else {
        serde_json::from_str(arguments).map_err(|e| TaskError::Arguments(e.to_string()))?
    };
    if every_secs != 0 && every_secs < MIN_EVERY_SECS {
        return Err(TaskError::TooOften(every_secs));
    }
    Ok(args.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(not_before: i64, every_secs: u64) -> Task {
        Task {
            id: "t1".into(),
            kind: "run-script".into(),
            payload: b"{}".to_vec(),
            not_before,
            every_secs,
        }
    }

    #[test]
    fn d5_a_once_task_runs_once_after_not_before() {
        let t = task(1000, 0);
        assert_eq!(due(&t, 999, None), Due::At(1000));
        assert_eq!(due(&t, 1000, None), Due::Now(0));
        assert_eq!(due(&t, 5000, Some(0)), Due::Never);
    }

    #[test]
    fn d5_a_recurring_task_runs_each_period_and_missed_periods_collapse() {
        let t = task(1000, 3600);
        assert_eq!(due(&t, 1000, None), Due::Now(0));
        assert_eq!(due(&t, 2000, Some(0)), Due::At(4600));
        assert_eq!(due(&t, 4600, Some(0)), Due::Now(1));
        // A week away: one run, the current period's.
        assert_eq!(due(&t, 1000 + 7 * 24 * 3600 + 5, Some(1)), Due::Now(168));
    }

    #[test]
    fn d5_result_ids_are_stable_per_run_and_revisions_follow_content() {
        assert_eq!(result_event_id("t1", 3), result_event_id("t1", 3));
        assert_ne!(result_event_id("t1", 3), result_event_id("t1", 4));
        let a = task(0, 0);
        let mut b = a.clone();
        let rev = |t: &Task| list_revision(std::slice::from_ref(t));
        assert_eq!(rev(&a), rev(&b));
        b.payload = br#"{"x":1}"#.to_vec();
        assert_ne!(rev(&a), rev(&b));
        assert_ne!(list_revision(&[]), 0);
        assert_ne!(list_revision(&[]), list_revision(&[a]));
    }

    #[test]
    fn d5_bad_task_definitions_are_refused_with_the_reason() {
        assert!(matches!(
            validate("Run Script", "", 0),
            Err(TaskError::Kind(_))
        ));
        assert!(matches!(
            validate("run", "{", 0),
            Err(TaskError::Arguments(_))
        ));
        assert!(matches!(
            validate("run", "", 10),
            Err(TaskError::TooOften(10))
        ));
        assert_eq!(validate("run", "", 0).unwrap(), "{}");
        assert_eq!(
            validate("run", r#"{ "script": "a.sh" }"#, 3600).unwrap(),
            r#"{"script":"a.sh"}"#
        );
        let s = truncate("héllo".into(), 2);
        assert_eq!(s, "h");
    }
}
