//! Running a local handler program (D5 tasks, D1 updates): its input as JSON on standard
//! input, its exit status and the first [`task::MAX_OUTPUT`] bytes of its output as the result,
//! killed after a time-out.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use outpost_proto::task::{self, Outcome};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Runs `handler` with `input` on standard input; (outcome, exit status, output). `timeout_key`
/// names the setting in messages.
pub(crate) async fn run(
    handler: &str,
    timeout: Duration,
    timeout_key: &str,
    cwd: &Path,
    input: Vec<u8>,
) -> (Outcome, Option<i32>, String) {
    let mut child = match tokio::process::Command::new(handler)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .current_dir(cwd)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return (
                Outcome::Error,
                None,
                format!("the handler {handler} could not be started: {e}"),
            );
        }
    };
    let mut stdin = child.stdin.take().expect("piped");
    let body = input;
    // A handler that does not read its input must not block us: write in the background.
    tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
        let _ = stdin.shutdown().await;
    });
    let out = tokio::spawn(capped(child.stdout.take().expect("piped")));
    let err = tokio::spawn(capped(child.stderr.take().expect("piped")));
    let status = tokio::time::timeout(timeout, child.wait()).await;
    let (outcome, code) = match status {
        Ok(Ok(s)) if s.success() => (Outcome::Ok, s.code()),
        Ok(Ok(s)) => (Outcome::Failed, s.code()),
        Ok(Err(e)) => {
            return (
                Outcome::Error,
                None,
                format!("waiting for the handler: {e}"),
            );
        }
        Err(_) => {
            let _ = child.kill().await;
            (Outcome::TimedOut, None)
        }
    };
    // A grandchild still holding the pipes open does not hold the result back.
    let grace = Duration::from_secs(5);
    let mut output = match tokio::time::timeout(grace, out).await {
        Ok(Ok(s)) => s,
        _ => String::new(),
    };
    let err = match tokio::time::timeout(grace, err).await {
        Ok(Ok(s)) => s,
        _ => String::new(),
    };
    if !err.is_empty() {
        if !output.is_empty() && !output.ends_with('\n') {
            output.push('\n');
        }
        output.push_str(&err);
    }
    if outcome == Outcome::TimedOut {
        output.insert_str(
            0,
            &format!(
                "killed after {} ({timeout_key})\n",
                humantime::format_duration(timeout)
            ),
        );
    }
    (outcome, code, task::truncate(output, task::MAX_OUTPUT))
}

/// Reads a stream to its end, keeping the first [`task::MAX_OUTPUT`] bytes.
async fn capped(mut r: impl AsyncRead + Unpin) -> String {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = task::MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}
