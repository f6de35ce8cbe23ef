//! Delivery of notifications (L14): to the log and to the configured user hook, an
//! executable given the event as JSON on stdin, killed after its time limit. A hook failure is
//! logged and never stops the server or the next notification.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::node::Shared;
use crate::store::Notice;

/// Delivers notifications until shutdown.
pub async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Notice>) {
    loop {
        let n = tokio::select! {
            n = rx.recv() => match n { Some(n) => n, None => return },
            _ = shared.shutdown.cancelled() => return,
        };
        let cfg = &shared.config.notifications;
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
pub async fn run_hook(hook: &str, limit: Duration, n: &Notice) -> anyhow::Result<()> {
    let mut child = tokio::process::Command::new(hook)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {hook}: {e}"))?;
    let body = serde_json::to_vec(&n.to_json())?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its input is not an error.
        let _ = stdin.write_all(&body).await;
    }
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let err = String::from_utf8_lossy(&out.stderr);
            anyhow::bail!(
                "exited with {}: {}",
                out.status,
                err.lines().last().unwrap_or("")
            )
        }
        Ok(Err(e)) => Err(e.into()),
        // Dropping the wait future drops the child, which kills it (kill_on_drop).
        Err(_) => anyhow::bail!("did not finish within {limit:?}; killed"),
    }
}
