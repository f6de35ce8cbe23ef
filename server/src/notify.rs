//! Delivery of notifications (L14): to the log and to the configured user hook, an
//! executable given the event as JSON on stdin, killed after its time limit. A hook failure is
//! logged and never stops the server or the next notification.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::node::Node;
use crate::store::Notice;

/// Why a hook run failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The executable could not be started.
    #[error("cannot start {hook}: {source}")]
    Start {
        /// The hook.
        hook: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error("exited with {status}: {last_line}")]
    Failed {
        /// Exit status.
        status: std::process::ExitStatus,
        /// The last line it wrote to stderr.
        last_line: String,
    },
    /// Waiting for it failed.
    #[error("waiting for it failed: {0}")]
    Wait(std::io::Error),
    /// It ran too long.
    #[error("did not finish within {0:?}; killed")]
    TimedOut(Duration),
}

/// Delivers notifications until shutdown.
pub async fn run(node: Arc<Node>, mut rx: mpsc::Receiver<Notice>) {
    loop {
        let n = tokio::select! {
            n = rx.recv() => match n { Some(n) => n, None => return },
            _ = node.runtime().cancelled() => return,
        };
        let cfg = &node.config().notifications;
        let channels = cfg.channels.get(&n.kind).unwrap_or(&cfg.default_channels);
        if channels.iter().any(|c| c == "log") {
            info!(kind = %n.kind, key = n.key_id.as_deref().unwrap_or(""), "notification: {}", n.message);
        }
        if channels.iter().any(|c| c == "hook")
            && !cfg.hook.is_empty()
            && let Err(e) = run_hook(&cfg.hook, cfg.hook_timeout, &n).await
        {
            warn!(hook = %cfg.hook, notification = %n.id, error = %e, "notification hook failed");
        }
    }
}

/// Runs the hook once with the notification on stdin.
pub async fn run_hook(hook: &str, limit: Duration, n: &Notice) -> Result<(), HookError> {
    let mut child = tokio::process::Command::new(hook)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| HookError::Start {
            hook: hook.to_owned(),
            source,
        })?;
    let body = serde_json::to_vec(&n.to_json()).expect("notification serializes");
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its input is not an error.
        let _ = stdin.write_all(&body).await;
    }
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(HookError::Failed {
            status: out.status,
            last_line: String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
                .to_owned(),
        }),
        Ok(Err(e)) => Err(HookError::Wait(e)),
        // Dropping the wait future drops the child, which kills it (kill_on_drop).
        Err(_) => Err(HookError::TimedOut(limit)),
    }
}
