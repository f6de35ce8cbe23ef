//! The `outpost-agent` command line: clear errors for bad input (O6).

use std::process::Command;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn o6_agent_cli_errors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (ok, _, err) = run(&["run", "--data-dir", d]);
    assert!(
        !ok && err.contains("--gateway") && err.contains("--server"),
        "{err}"
    );
    let (ok, _, err) = run(&["run", "--data-dir", d, "--server", "no-port-here"]);
    assert!(!ok && err.contains("not host:port"), "{err}");
    let (ok, _, err) = run(&[
        "run",
        "--data-dir",
        d,
        "--server",
        "127.0.0.1:9",
        "--token",
        "opt1.nonsense",
    ]);
    assert!(!ok && err.contains("token is malformed"), "{err}");
    let (ok, _, err) = run(&["run", "--data-dir", d]);
    assert!(
        !ok && err.contains("--token"),
        "config was kept, identity is what is missing: {err}"
    );
    let (ok, _, err) = run(&["status", "--data-dir", d]);
    assert!(!ok && err.contains("not enrolled"), "{err}");
    std::fs::write(
        dir.path().join("agent.toml"),
        "server = \"127.0.0.1:9\"\nsync_everything = true\n",
    )
    .unwrap();
    let (ok, _, err) = run(&["run", "--data-dir", d]);
    assert!(
        !ok && err.contains("agent.toml") && err.contains("sync_everything"),
        "{err}"
    );
    let (ok, out, err) = run(&["event", "--data-dir", d, "--kind", "k", "--payload", "p"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim().len(), 32, "prints the event id: {out}");
}
