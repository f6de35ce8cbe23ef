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
}

/// O2 + issue "licence manager": the README's licence workflow, run line by line as written
/// against a running sandbox (import, group, assign, usage, revoke, renew, notifications,
/// export).
#[test]
fn o2_readme_licence_workflow_runs_against_the_sandbox() {
    use std::io::{BufRead, BufReader};
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let section = &readme[readme
        .find("### Licence workflow")
        .expect("workflow section")..];
    let block = &section[section.find("```sh\n").expect("sh block") + 6..];
    let block = &block[..block.find("```").expect("end of block")];

    let mut sandbox = Command::new(env!("CARGO_BIN_EXE_outpost-sandbox"))
        .args(["--agents", "3", "--seats", "2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run sandbox");
    let mut lines = BufReader::new(sandbox.stdout.take().unwrap()).lines();
    let (d, a) = loop {
        let line = lines.next().expect("sandbox output").unwrap();
        if let Some(rest) = line.trim().strip_prefix("(README \"Licence workflow\": D=") {
            let (d, a) = rest.trim_end_matches(')').split_once(" A=").unwrap();
            break (d.to_owned(), a.to_owned());
        }
    };
    // Keep draining the status view so the sandbox never blocks on a full pipe.
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let server = outpost_tests::bin("outpost-server");
    let work = tempfile::tempdir().unwrap();
    let run = |cmd: &str| -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(work.path())
            .env("A", &a)
            .env("D", &d)
            .env("OUTPOST_SERVER_DATA", &d)
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "`{cmd}` failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let json = |args: &str| -> serde_json::Value {
        serde_json::from_str(&run(&format!("{} admin --json {args}", server.display())))
            .expect("admin --json")
    };
    // The workflow needs agents that have been checked (step 3 revokes one).
    let agents = loop {
        let v = json("device list --role agent");
        let list = v["devices"].as_array().cloned().unwrap_or_default();
        if list.len() == 3 && list.iter().all(|d| d["licence_state"] != "unknown") {
            break list;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let device = agents[0]["device_id"].as_str().unwrap().to_owned();
    let mut ran = 0;
    for line in block.lines().map(str::trim) {
        // Comments and the shell set-up lines (the test sets the same environment itself).
        if line.is_empty()
            || line.starts_with('#')
            || line.starts_with("export ")
            || line.starts_with("alias ")
        {
            continue;
        }
        let cmd = line
            .strip_prefix("os ")
            .unwrap_or_else(|| panic!("README workflow line not understood: {line}"));
        run(&format!(
            "{} {}",
            server.display(),
            cmd.replace("<device id>", &device)
        ));
        ran += 1;
    }
    assert!(ran >= 12, "ran {ran} commands");

    // What the administrator expects to see afterwards.
    let keys = json("key list");
    let ids: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"K-3") && !ids.contains(&"K-2"), "{keys}");
    let k3 = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == "K-3")
        .unwrap();
    let objects: Vec<&str> = k3["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    assert!(
        objects.contains(&"everyone") && objects.contains(&"group:everyone/berlin"),
        "{k3}"
    );
    assert_eq!(
        std::fs::read(work.path().join("K-3-copy.key")).unwrap(),
        std::fs::read(work.path().join("K-3.key")).unwrap(),
        "export is byte-identical"
    );
    let n = json("notifications --kind key-renewed");
    assert_eq!(n["notifications"].as_array().unwrap().len(), 1, "{n}");
    let revoked = json("device list --role agent");
    assert!(
        revoked["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["device_id"] == device.as_str() && x["revoked"] == true),
        "{revoked}"
    );

    Command::new("kill")
        .args(["-INT", &sandbox.id().to_string()])
        .status()
        .unwrap();
    assert!(sandbox.wait().unwrap().success());
    let rest = drain.join().unwrap();
    assert!(
        rest.iter().any(|l| l.contains("stopped cleanly")),
        "{rest:?}"
    );
}
