//! `status.json` in the data directory and `outpost-agent status` (O4): connection path,
//! licence state, last sync, queue depth. The licence state and the queue depth are
//! recomputed from disk when the command runs, so they are right even when the agent is not
//! running (a grant that expired offline shows as expired).

use std::path::Path;

use outpost_net::status_file::{self, StatusError};
use serde::{Deserialize, Serialize};

use crate::grants::LicenceState;

/// What `outpost-agent status` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Device id.
    pub device_id: String,
    /// Process id of the running agent.
    pub pid: u32,
    /// Unix seconds of this snapshot.
    pub updated_at: i64,
    /// starting | connecting | connected | offline | stopped.
    pub state: String,
    /// The path in use: "gateway <addr>" or "server <addr> (direct)" (T8).
    pub path: String,
    /// Licence.
    pub licence: LicenceState,
    /// Unix seconds of the last completed sync.
    pub last_sync: i64,
    /// Events waiting in the durable queue.
    pub queue_depth: usize,
    /// Pushes received since start.
    pub pushes_received: u64,
    /// The last push: kind and text.
    pub last_push: String,
    /// Why the last connection attempt or session ended.
    pub last_error: String,
    /// Sessions established since start.
    pub sessions: u64,
    /// Unix seconds at which this device's certificate expires (S9; renewed before).
    #[serde(default)]
    pub cert_expires_at: i64,
    /// Revision of the policy held (D5; 0: none received yet).
    #[serde(default)]
    pub policy_revision: u64,
    /// The policy held: the settings of its group and the groups above it, merged.
    #[serde(default)]
    pub policy: serde_json::Value,
    /// Tasks held (D5).
    #[serde(default)]
    pub tasks_held: usize,
    /// Task runs reported since start.
    #[serde(default)]
    pub tasks_run: u64,
    /// The last run reported: task, run and outcome.
    #[serde(default)]
    pub last_task: String,
    /// Revision of the update manifest held (D1; 0: none).
    #[serde(default)]
    pub update_revision: u64,
    /// Files in it.
    #[serde(default)]
    pub update_files: usize,
    /// Why the last manifest offered was refused (rollback, expired, bad signature); empty
    /// once one is accepted.
    #[serde(default)]
    pub update_error: String,
    /// Newest revision whose files are all here (D2).
    #[serde(default)]
    pub update_fetched: u64,
    /// Newest revision the update handler took.
    #[serde(default)]
    pub update_handled: u64,
    /// Download progress of the revision being fetched: bytes held, bytes wanted.
    #[serde(default)]
    pub update_progress: u64,
    /// See `update_progress`.
    #[serde(default)]
    pub update_total: u64,
    /// Where the last download came from.
    #[serde(default)]
    pub update_source: String,
    /// Why the last download stopped ("" once one completes).
    #[serde(default)]
    pub update_fetch_error: String,
    /// The update handler's last result.
    #[serde(default)]
    pub update_handler_result: String,
}

/// Writes the status file.
pub fn write(data: &Path, s: &AgentStatus) {
    status_file::write(data, s);
}

/// Why `status` could not show anything.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The data directory holds no enrolled agent.
    #[error("{0} holds no agent identity (not enrolled yet)")]
    NotEnrolled(String),
    /// The identity is unreadable.
    #[error(transparent)]
    Identity(#[from] outpost_net::identity::IdentityError),
    /// The status file is damaged.
    #[error(transparent)]
    Status(#[from] StatusError),
}

/// Reads the status, refreshing licence and queue from disk. Returns whether the agent runs.
pub fn read(data: &Path) -> Result<(AgentStatus, bool), ReadError> {
    let id = outpost_net::identity::DeviceIdentity::load(data)?
        .ok_or_else(|| ReadError::NotEnrolled(data.display().to_string()))?;
    let mut s: AgentStatus = match status_file::read(data, "agent") {
        Ok(s) => s,
        Err(StatusError::Missing { .. }) => AgentStatus {
            state: "never started".into(),
            ..Default::default()
        },
        Err(e) => return Err(e.into()),
    };
    s.device_id = id.device_id.clone();
    s.cert_expires_at = id.expires_at();
    s.licence = crate::grants::state(
        data,
        &id.device_id,
        &id.grant_public_key,
        outpost_net::unix_now(),
    );
    s.queue_depth = crate::queue::Queue::open(data, usize::MAX)
        .map(|q| q.len())
        .unwrap_or(0);
    let running = status_file::process_running(s.pid) && s.state != "stopped";
    Ok((s, running))
}

/// Human form.
pub fn human(s: &AgentStatus, running: bool) -> String {
    let when = |t: i64| {
        if t > 0 {
            outpost_proto::licence::key::format_time(t)
        } else {
            "never".into()
        }
    };
    let licence = if s.licence.state == "licensed" {
        format!(
            "licensed by key {} until {}{}",
            s.licence.key,
            when(s.licence.expires_at),
            if s.licence.promoted_reserve {
                " (reserve key, now active)".to_owned()
            } else if !s.licence.reserve_key.is_empty() {
                format!("; reserve key {} takes over then", s.licence.reserve_key)
            } else {
                String::new()
            }
        )
    } else {
        format!("UNLICENSED: {}", s.licence.reason)
    };
    let tasks = format!(
        "{} held, {} run(s) reported since start{}",
        s.tasks_held,
        s.tasks_run,
        if s.last_task.is_empty() {
            String::new()
        } else {
            format!(", last: {}", s.last_task)
        }
    );
    let updates = format!(
        "{}{}",
        if s.update_revision == 0 {
            "no manifest yet".to_owned()
        } else {
            format!(
                "revision {}, {} file(s); fetched {}, handled {}; {} of {} bytes{}{}",
                s.update_revision,
                s.update_files,
                s.update_fetched,
                s.update_handled,
                s.update_progress,
                s.update_total,
                if s.update_source.is_empty() {
                    String::new()
                } else {
                    format!(" from {}", s.update_source)
                },
                if s.update_fetch_error.is_empty() {
                    String::new()
                } else {
                    format!(" (download: {})", s.update_fetch_error)
                }
            )
        },
        if s.update_error.is_empty() {
            String::new()
        } else {
            format!(" (last offer refused: {})", s.update_error)
        }
    );
    format!(
        "agent {}  ({})\nstate       {}\npath        {}\nlicence     {}\ncertificate {} (expiry; renewed by itself while connected)\npolicy      {}\ntasks       {}\nupdates     {}\nlast sync   {}\nqueue       {} event(s) waiting\npushes      {} received{}\n{}",
        s.device_id,
        if running {
            format!("running, pid {}", s.pid)
        } else {
            "not running".into()
        },
        s.state,
        if s.path.is_empty() { "-" } else { &s.path },
        licence,
        when(s.cert_expires_at),
        match (&s.policy, s.policy_revision) {
            (_, 0) => "none received yet".to_owned(),
            (serde_json::Value::Object(m), r) => {
                format!("revision {r:016x}, {} setting(s)", m.len())
            }
            (_, r) => format!("revision {r:016x}"),
        },
        tasks,
        updates,
        when(s.last_sync),
        s.queue_depth,
        s.pushes_received,
        if s.last_push.is_empty() {
            String::new()
        } else {
            format!(", last: {}", s.last_push)
        },
        if s.last_error.is_empty() {
            String::new()
        } else {
            format!("last error  {}\n", s.last_error)
        },
    )
}

/// `outpost-agent update status` in human form.
pub fn update_human(s: &AgentStatus, running: bool) -> String {
    let pct = if s.update_total > 0 {
        format!(
            "{} of {} bytes ({}%)",
            s.update_progress,
            s.update_total,
            s.update_progress * 100 / s.update_total
        )
    } else {
        "-".into()
    };
    let or_dash = |v: &str| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.to_owned()
        }
    };
    format!(
        "agent {} ({})\nrevision    {} held, {} file(s)\nfetched     {}\nhandled     {}\ndownload    {}{}\nlast error  {}\nhandler     {}\nmanifest    {}\n",
        s.device_id,
        if running { "running" } else { "not running" },
        s.update_revision,
        s.update_files,
        s.update_fetched,
        s.update_handled,
        pct,
        if s.update_source.is_empty() {
            String::new()
        } else {
            format!(" from {}", s.update_source)
        },
        or_dash(&s.update_fetch_error),
        or_dash(&s.update_handler_result),
        if s.update_error.is_empty() {
            "accepted".to_owned()
        } else {
            format!("last offer refused: {}", s.update_error)
        },
    )
}
