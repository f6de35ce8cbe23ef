//! The `outpost-server` command line: errors name what is wrong and how to fix it (O6), and
//! the admin commands work end to end with human and JSON output (O3).

use std::path::Path;
use std::process::{Child, Command, Stdio};

fn server() -> Command {
    Command::new(env!("CARGO_BIN_EXE_outpost-server"))
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = server().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn o6_bad_arguments_and_config_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("srv");
    let (ok, _, err) = run(&["run", "--data-dir", p(&data)]);
    assert!(!ok);
    assert!(err.contains("--authority-key"), "{err}");
    let (ok, _, err) = run(&[
        "run",
        "--data-dir",
        p(&data),
        "--authority-key",
        "not-a-key-file",
    ]);
    assert!(!ok);
    assert!(err.contains("not-a-key-file"), "{err}");
    let (ok, _, err) = run(&[
        "authority",
        "issue",
        "--dir",
        p(dir.path()),
        "--id",
        "K",
        "--licensee",
        "x",
        "--seats",
        "1",
        "--valid-for",
        "1d",
        "--out",
        "k",
    ]);
    assert!(!ok);
    assert!(err.contains("authority.key"), "{err}");
    assert!(run(&["authority", "init", "--dir", p(dir.path())]).0);
    let (ok, _, err) = run(&[
        "authority",
        "issue",
        "--dir",
        p(dir.path()),
        "--id",
        "K",
        "--licensee",
        "x",
        "--seats",
        "1",
        "--expires",
        "tomorrow",
        "--out",
        p(&dir.path().join("k")),
    ]);
    assert!(!ok);
    assert!(
        err.contains("--expires") && err.contains("RFC 3339"),
        "{err}"
    );
    let (ok, _, err) = run(&[
        "authority",
        "issue",
        "--dir",
        p(dir.path()),
        "--id",
        "bad id!",
        "--licensee",
        "x",
        "--seats",
        "1",
        "--valid-for",
        "1d",
        "--out",
        p(&dir.path().join("k")),
    ]);
    assert!(!ok);
    assert!(err.contains("key_id"), "{err}");
    let (ok, _, err) = run(&["authority", "init", "--dir", p(dir.path())]);
    assert!(!ok && err.contains("never overwritten"), "{err}");
    // A config file with an unknown key.
    let pubkey = dir.path().join("authority.pub");
    assert!(
        run(&[
            "init",
            "--data-dir",
            p(&data),
            "--authority-key",
            p(&pubkey),
            "--listen",
            "127.0.0.1:0"
        ])
        .0
    );
    let cfg = data.join("server.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text}\nmax_agents = 5\n")).unwrap();
    let (ok, _, err) = run(&["run", "--data-dir", p(&data)]);
    assert!(!ok);
    assert!(
        err.contains("server.toml") && err.contains("max_agents"),
        "{err}"
    );
    let (ok, _, err) = run(&["--bogus"]);
    assert!(!ok && err.contains("--bogus"), "{err}");
}

struct Running(Child);
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn o3_admin_commands_with_human_and_json_output() {
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth");
    let data = dir.path().join("srv");
    assert!(run(&["authority", "init", "--dir", p(&auth)]).0);
    let key = dir.path().join("k1.key");
    let (ok, out, err) = run(&[
        "authority",
        "issue",
        "--dir",
        p(&auth),
        "--id",
        "K-CLI",
        "--licensee",
        "ACME",
        "--seats",
        "7",
        "--valid-for",
        "30d",
        "--demo",
        "--out",
        p(&key),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("issued key K-CLI"), "{out}");
    let child = server()
        .args([
            "run",
            "--data-dir",
            p(&data),
            "--authority-key",
            p(&auth.join("authority.pub")),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Running(child);
    // Ready when the admin bundle points at the bound port.
    let admin = |args: &[&str]| {
        let mut v = vec!["admin", "--data-dir", p(&data)];
        v.extend_from_slice(args);
        run(&v)
    };
    let mut ready = false;
    for _ in 0..400 {
        if data.join("admin/admin.toml").exists() && admin(&["status"]).0 {
            ready = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(ready, "server did not come up");
    let (ok, out, err) = admin(&["key", "import", p(&key), "--assign-everyone"]);
    assert!(ok, "{err}");
    assert!(out.contains("K-CLI") && out.contains("demo"), "{out}");
    let (ok, out, _) = admin(&["--json", "key", "list"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["keys"][0]["key_id"], "K-CLI");
    assert_eq!(v["keys"][0]["seats_total"], 7);
    assert_eq!(v["keys"][0]["objects"][0], "everyone");
    let (ok, out, _) = admin(&["token", "create", "--uses", "3", "--ttl", "2h"]);
    assert!(ok);
    assert!(out.starts_with("opt1."), "{out}");
    let (ok, out, _) = admin(&["--json", "token", "list"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tokens"][0]["uses_left"], 3);
    assert!(!out.contains("opt1."), "token list never shows secrets");
    let exported = dir.path().join("exported.key");
    let (ok, _, err) = admin(&["key", "export", "K-CLI", "--out", p(&exported)]);
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read(&exported).unwrap(),
        std::fs::read(&key).unwrap(),
        "byte-identical export"
    );
    let (ok, _, err) = admin(&["key", "assign", "K-NOPE", "everyone"]);
    assert!(!ok && err.contains("no key K-NOPE"), "{err}");
    let (ok, _, err) = admin(&["key", "assign", "K-CLI", "planet:mars"]);
    assert!(!ok && err.contains("group:<path>"), "{err}");
    let (ok, _, err) = admin(&["device", "revoke", "a-000000000000"]);
    assert!(!ok && err.contains("no device"), "{err}");
    let (ok, _, err) = admin(&["push", "--device", "a-000000000000"]);
    assert!(!ok && err.contains("no device"), "{err}");
    let (ok, out, _) = admin(&["group", "create", "everyone/berlin"]);
    assert!(ok && out.contains("everyone/berlin"), "{out}");
    let (ok, _, err) = admin(&["group", "create", "everyone/nowhere/deep"]);
    assert!(!ok && err.contains("parent group"), "{err}");
    let (ok, out, _) = admin(&["--json", "status"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["software"]
            .as_str()
            .unwrap()
            .starts_with("outpost-server")
    );
}
