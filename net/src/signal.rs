//! Process signals for the binaries.

/// Waits for SIGINT (Ctrl-C) or SIGTERM (systemd stop, `kill`).
pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The entry of every binary: logging at `log_level`, a runtime, `main`; an error is printed
/// with its causes and the process exits with status 1.
pub fn run_main<F, E>(log_level: Option<&str>, main: F)
where
    F: std::future::Future<Output = Result<(), E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    crate::logging::init(log_level);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(main) {
        let e: Box<dyn std::error::Error + Send + Sync> = e.into();
        eprintln!("error: {}", error_chain(&*e));
        std::process::exit(1);
    }
}

/// An error and its causes on one line, each said once: a cause whose text its parent's
/// message already carries (an error type that prints its source in its own message, as
/// `"cannot open the store: {0}"` does) is not repeated.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("database: {0}")]
    struct Inner(#[from] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open the store: {0}")]
    struct Outer(#[from] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("starting")]
    struct Silent(#[source] std::io::Error);

    #[test]
    fn o6_an_error_is_printed_with_each_cause_once() {
        let io = || std::io::Error::other("disk full");
        let e = Outer(Inner(io()));
        assert_eq!(
            error_chain(&e),
            "cannot open the store: database: disk full"
        );
        // A parent that does not print its cause gets it appended.
        assert_eq!(error_chain(&Silent(io())), "starting: disk full");
        // Through anyhow (the binaries' error type), contexts and causes alike.
        let a = anyhow::Error::new(e).context("outpost-server run");
        let b: Box<dyn std::error::Error + Send + Sync> = a.into();
        assert_eq!(
            error_chain(&*b),
            "outpost-server run: cannot open the store: database: disk full"
        );
    }
}
