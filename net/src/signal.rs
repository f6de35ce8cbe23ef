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
    E: std::fmt::Display,
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
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
