//! The `outpost-gateway` command line: clear errors for bad input (O6).

use std::process::Command;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost-gateway"))
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
fn o6_gateway_cli_errors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (ok, _, err) = run(&["run", "--data-dir", d]);
    assert!(!ok && err.contains("--server"), "{err}");
    let (ok, _, err) = run(&["status", "--data-dir", d]);
    assert!(!ok && err.contains("status.json"), "{err}");
    std::fs::write(
        dir.path().join("gateway.toml"),
        "server = \"127.0.0.1:9\"\n[uplink]\nkeep_alive = \"60s\"\nidle_timeout = \"30s\"\n",
    )
    .unwrap();
    let (ok, _, err) = run(&["run", "--data-dir", d]);
    assert!(
        !ok && err.contains("gateway.toml") && err.contains("keep_alive"),
        "{err}"
    );
    std::fs::write(
        dir.path().join("gateway.toml"),
        "server = \"127.0.0.1:9\"\n",
    )
    .unwrap();
    let (ok, _, err) = run(&["run", "--data-dir", d]);
    assert!(!ok && err.contains("--token"), "{err}");
}
