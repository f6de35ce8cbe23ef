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
    assert!(stdout.contains("seats used: DEMO-1 3/3"), "{stdout}");
    // D2: the demo revision reached every agent through the gateway's cache.
    assert!(
        stdout.contains("updates: revision 1, 5/5 agents fetched"),
        "{stdout}"
    );
    assert!(stdout.contains("stopped cleanly"), "{stdout}");
    // Not a terminal: plain lines, no cursor movement; the metrics address is printed.
    assert!(!stdout.contains('\x1b'), "{stdout}");
    assert!(stdout.contains("/metrics (Prometheus"), "{stdout}");
    assert!(
        stdout.contains("console  https://127.0.0.1:") && stdout.contains("/login?token="),
        "the console's address and a sign-in link: {stdout}"
    );
}

/// On a terminal (a pseudo-terminal from util-linux `script`), the view is a table of agents
/// redrawn in place: each redraw moves the cursor up over the previous one and clears it.
#[test]
fn o2_sandbox_redraws_a_table_of_agents_in_place_on_a_terminal() {
    let cmd = format!(
        "{} --agents 3 --seats 2 --until-ready",
        env!("CARGO_BIN_EXE_outpost-sandbox")
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .expect("run script (util-linux)");
    let tty = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(out.status.success(), "{tty}");
    let views: Vec<&str> = tty.split("\x1b[J").skip(1).collect();
    assert!(!views.is_empty(), "{tty}");
    let last = views.last().unwrap();
    assert!(
        last.contains("agent ") && last.contains("licence"),
        "{last}"
    );
    let rows: Vec<&str> = last.lines().filter(|l| l.starts_with("  a-")).collect();
    assert_eq!(rows.len(), 3, "a row per agent: {last}");
    assert_eq!(
        rows.iter().filter(|r| r.contains(" licensed ")).count(),
        2,
        "{last}"
    );
    assert!(last.contains("no free seat on key DEMO-1"), "{last}");
    // Every view but the last is followed by the cursor moving up over all its lines.
    for view in &views[..views.len() - 1] {
        let (body, up) = view
            .rsplit_once("\x1b[")
            .expect("a cursor move after a view");
        assert_eq!(up, format!("{}A", body.lines().count()), "{view:?}");
    }
}
