//! O2: the README's sandbox command works — N agents behind a gateway against a demo key of
//! S seats, N > S showing the unlicensed ones and why.

use std::process::Command;

#[test]
fn o2_sandbox_runs_and_shows_unlicensed_agents_with_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost-sandbox"))
        .args(["--agents", "5", "--seats", "3", "--until-ready"])
        .output()
        .expect("run sandbox");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("5 connected, 3 licensed, 2 unlicensed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("unlicensed: no free seat on key DEMO-1, 3 of 3 used"),
        "{stdout}"
    );
    assert!(stdout.contains("3 of 3 seats used"), "{stdout}");
    assert!(stdout.contains("stopped cleanly"), "{stdout}");
}
