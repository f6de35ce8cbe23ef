//! `agent.toml`: where the agent connects and how it paces itself. Written with documented
//! defaults at first start; unknown keys are refused.

use std::path::Path;
use std::time::Duration;

use outpost_net::config::{ConfigError, Validate, ensure};
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
pub struct AgentConfig {
    /// Server address (`host:port`): enrollment fallback and the last path tried (T8). Or the
    /// deployment's server instances as a list (P2); the list the server sends at sync comes
    /// first, then these.
    pub server: outpost_net::config::Addresses,
    /// Gateways in order of preference (T8). A list sent by the server at sync replaces it.
    pub gateways: Vec<String>,
    /// Machine identity override (default `/etc/machine-id`); the server keeps one record per
    /// machine identity (S7).
    pub machine_id: String,
    /// Host name override.
    pub hostname: String,
    /// Connection behaviour.
    pub connect: ConnectConfig,
    /// Event queue.
    pub queue: QueueConfig,
    /// Tasks from the server (D5).
    pub tasks: TasksConfig,
    /// Update downloads (D2).
    pub updates: UpdatesConfig,
}

/// Updates (D1, D2): which files to fetch and the local program that takes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdatesConfig {
    /// Components whose files this device fetches (the first directory of a file's name);
    /// files at the top of a revision go to every device. Empty: every file.
    pub components: Vec<String>,
    /// Executable given each fetched revision as JSON on standard input (`revision`,
    /// `device_id`, `files` with `name`, `component`, `size`, `sha256` and the local `path`).
    /// Empty: files are fetched and kept, nothing more.
    pub handler: String,
    /// A handler running longer is killed (and the revision counted as failed).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for UpdatesConfig {
    fn default() -> Self {
        UpdatesConfig {
            components: Vec::new(),
            handler: String::new(),
            timeout: Duration::from_secs(3600),
        }
    }
}

/// Tasks (D5): the local program that runs them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TasksConfig {
    /// Executable given each task as JSON on standard input (`id`, `kind`, `arguments`,
    /// `run`, `device_id`); its exit status and output are the result. Empty: tasks are
    /// reported `no-handler`.
    pub handler: String,
    /// A handler running longer is killed and the run reported `timed-out`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for TasksConfig {
    fn default() -> Self {
        TasksConfig {
            handler: String::new(),
            timeout: Duration::from_secs(3600),
        }
    }
}

/// Connection behaviour (T6, T8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectConfig {
    /// How long to wait for one gateway (or the server) to answer before trying the next.
    #[serde(with = "humantime_serde")]
    pub dial_timeout: Duration,
    /// QUIC keep-alive.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Connection idle timeout.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// First reconnect delay (upper bound; actual delay random below it).
    #[serde(with = "humantime_serde")]
    pub reconnect_initial: Duration,
    /// Largest reconnect delay.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// A session up this long resets the backoff.
    #[serde(with = "humantime_serde")]
    pub healthy_after: Duration,
    /// How long to wait for a sync answer before giving up on the session.
    #[serde(with = "humantime_serde")]
    pub sync_timeout: Duration,
    /// How long a new session may take to be established (the server's hello answer and the
    /// licence check) before the agent gives up on it and reconnects — a server that died
    /// mid-handshake is noticed by then.
    #[serde(with = "humantime_serde")]
    pub setup_timeout: Duration,
    /// On a fallback path, how often (jittered between half and all of it) the agent checks
    /// whether a path it prefers answers again, and moves back when one does (T8).
    #[serde(with = "humantime_serde")]
    pub return_check: Duration,
}

/// Event queue (S5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Most events kept; further events are refused (counted) until the queue drains.
    pub max_events: usize,
    /// Most events sent in one sync.
    pub batch: usize,
}

impl Default for ConnectConfig {
    fn default() -> Self {
        ConnectConfig {
            dial_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            reconnect_initial: Duration::from_secs(2),
            reconnect_max: Duration::from_secs(120),
            healthy_after: Duration::from_secs(60),
            sync_timeout: Duration::from_secs(60),
            setup_timeout: Duration::from_secs(20),
            return_check: Duration::from_secs(60),
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_events: 100_000,
            batch: 200,
        }
    }
}

impl Validate for AgentConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        ensure(!self.server.is_empty() || !self.gateways.is_empty(), || {
            "neither server nor gateways is set: give at least one address to connect to".into()
        })?;
        outpost_net::config::check_addresses("gateways", &self.gateways)?;
        outpost_net::config::check_addresses("server", self.server.iter())?;
        ensure(self.connect.setup_timeout >= Duration::from_secs(1), || {
            "connect.setup_timeout must be at least 1s".into()
        })?;
        ensure(self.connect.return_check >= Duration::from_secs(1), || {
            "connect.return_check must be at least 1s".into()
        })?;
        ensure(self.connect.keep_alive < self.connect.idle_timeout, || {
            "connect.keep_alive must be shorter than connect.idle_timeout".into()
        })?;
        ensure(
            self.tasks.handler.is_empty() || Path::new(&self.tasks.handler).is_absolute(),
            || {
                format!(
                    "tasks.handler {:?} is not an absolute path; give the handler's full path",
                    self.tasks.handler
                )
            },
        )?;
        ensure(
            self.updates.handler.is_empty() || Path::new(&self.updates.handler).is_absolute(),
            || {
                format!(
                    "updates.handler {:?} is not an absolute path; give the handler's full path",
                    self.updates.handler
                )
            },
        )?;
        ensure(self.tasks.timeout >= Duration::from_secs(1), || {
            "tasks.timeout must be at least 1s".into()
        })?;
        ensure(self.queue.batch > 0 && self.queue.max_events > 0, || {
            "queue sizes must be at least 1".into()
        })
    }
}

impl AgentConfig {
    /// Reads and validates.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        outpost_net::config::load(path)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Validate::validate(self)
    }

    /// The file as written at first start.
    pub fn to_commented_toml(&self) -> String {
        outpost_net::config::commented(HEADER, self)
    }
}

/// The comment at the top of `agent.toml`.
pub const HEADER: &str = "outpost-agent configuration. Shown values are defaults unless set at first start.\n\
     Durations: \"5s\", \"1m\". See README \"Configuration\".";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn d2_d5_handlers_must_be_absolute_paths() {
        let mut c = AgentConfig {
            server: outpost_net::config::Addresses::one("hq:4700".to_owned()),
            ..Default::default()
        };
        assert!(c.validate().is_ok());
        c.updates.handler = "install.sh".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("updates.handler") && e.contains("absolute"),
            "{e}"
        );
        c.updates.handler = "/usr/local/bin/install.sh".into();
        c.tasks.handler = "run.sh".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("tasks.handler"), "{e}");
    }
}
