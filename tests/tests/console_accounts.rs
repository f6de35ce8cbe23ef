//! Named web console accounts (O8): made with the real `outpost-server admin console-account`
//! command (the password piped in), then used over real HTTPS: a wrong password and an unknown
//! name get the same refusal, five failures in a row lock the account (the right password is
//! refused while it is locked), a new password unlocks it and ends its sessions, removing the
//! account ends them too. Every refusal is in the audit log with its real reason.

use std::io::Write;
use std::process::{Command, Stdio};

use outpost_tests::console::ConsoleClient;
use outpost_tests::*;

/// Runs `outpost-server admin --data-dir D ARGS` with `stdin` piped in: (ok, stdout, stderr).
fn admin(server: &Server, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(bin("outpost-server"))
        .arg("admin")
        .arg("--data-dir")
        .arg(&server.data)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("outpost-server");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = "correct horse battery staple";

async fn sign_in(server: &Server, name: &str, password: &str) -> (ConsoleClient, u16, String) {
    let mut b = ConsoleClient::new(server);
    let form = format!("name={name}&password={}", password.replace(' ', "+"));
    let a = b.send("POST", "/login", Some(&form)).await;
    (b, a.status, a.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o8_console_accounts_sign_in_with_a_password_lock_after_five_failures_and_end_on_change_or_removal()
 {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |c| {
        c.console.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;

    // Weak input is refused with the reason, and makes nothing.
    let (ok, _, err) = admin(&server, &["console-account", "set", "alice"], "short\n");
    assert!(!ok && err.contains("at least 12"), "{err}");
    let (ok, _, err) = admin(
        &server,
        &["console-account", "set", "al ice"],
        &format!("{GOOD}\n"),
    );
    assert!(!ok && err.contains("account name"), "{err}");
    let (ok, out, _) = admin(&server, &["console-account", "list"], "");
    assert!(ok && out.contains("no console accounts"), "{out}");
    let (ok, out, err) = admin(
        &server,
        &["console-account", "set", "alice"],
        &format!("{GOOD}\n"),
    );
    assert!(ok && out.contains("created"), "{out}{err}");

    // The form; a wrong password and an unknown name get the same answer.
    let mut b = ConsoleClient::new(&server);
    let a = b.get("/login").await;
    assert_eq!(a.status, 200);
    assert!(a.body.contains("type=\"password\""), "{}", a.body);
    let (_, status, wrong) = sign_in(&server, "alice", "not the password").await;
    assert_eq!(status, 401);
    let (_, status, unknown) = sign_in(&server, "bob", GOOD).await;
    assert_eq!(status, 401);
    assert_eq!(wrong, unknown, "no hint whether the name exists");
    assert!(wrong.contains("Wrong name or password"), "{wrong}");

    // A sign-in posted from another site (login CSRF) is refused, even with the right password.
    let mut evil = ConsoleClient::new(&server);
    evil.extra_headers = "Origin: https://evil.example\r\n".into();
    let a = evil
        .send(
            "POST",
            "/login",
            Some(&format!("name=alice&password={}", GOOD.replace(' ', "+"))),
        )
        .await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(evil.cookie.is_none());

    // The right password signs in.
    let (mut alice, status, body) = sign_in(&server, "alice", GOOD).await;
    assert_eq!(status, 303, "{body}");
    let a = alice.get("/").await;
    assert_eq!(a.status, 200);
    assert!(a.body.contains("alice"), "the session is alice's");

    // (The sign-in started the count again.) Five failures in a row: locked; the right
    // password is refused while locked.
    for _ in 0..5 {
        assert_eq!(sign_in(&server, "alice", "guess guess guess").await.1, 401);
    }
    let (_, status, _) = sign_in(&server, "alice", GOOD).await;
    assert_eq!(status, 401, "locked: the right password is refused");
    let (ok, out, _) = admin(&server, &["console-account", "list"], "");
    let row = out
        .lines()
        .find(|l| l.starts_with("alice"))
        .unwrap_or_default();
    assert!(
        ok && row.contains(" 5 ") && !row.trim_end().ends_with('-'),
        "{out}"
    );
    let log = alice.get("/audit").await.body;
    assert!(
        log.contains("refused: wrong password; locked until"),
        "{log}"
    );
    assert!(log.contains("refused: locked until"), "{log}");
    assert!(log.contains("refused: no such account"), "{log}");

    // A new password unlocks it and ends the open session.
    let new = "a different long passphrase";
    let (ok, out, _) = admin(
        &server,
        &["console-account", "set", "alice"],
        &format!("{new}\n"),
    );
    assert!(ok && out.contains("sessions ended"), "{out}");
    assert_eq!(alice.get("/").await.status, 401, "the old session ended");
    assert_eq!(
        sign_in(&server, "alice", GOOD).await.1,
        401,
        "the old password is gone"
    );
    let (mut alice, status, _) = sign_in(&server, "alice", new).await;
    assert_eq!(status, 303);
    assert_eq!(alice.get("/devices").await.status, 200);

    // Removed: its session ends, it cannot sign in, a second removal names the mistake.
    let (ok, out, _) = admin(&server, &["console-account", "remove", "alice"], "");
    assert!(ok && out.contains("removed"), "{out}");
    assert_eq!(alice.get("/").await.status, 401);
    assert_eq!(sign_in(&server, "alice", new).await.1, 401);
    let (ok, _, err) = admin(&server, &["console-account", "remove", "alice"], "");
    assert!(!ok && err.contains("no console account alice"), "{err}");
}
