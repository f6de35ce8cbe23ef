//! Running a deployment as an administrator does, through the real binaries: the status
//! commands of agent and gateway (O4) and the embedded store a server creates and migrates by
//! itself (P1).

use std::path::Path;
use std::time::Duration;

use outpost_tests::*;
use sqlx::Connection as _;

const DAY: Duration = Duration::from_secs(86_400);

/// Waits until `child` exits; its exit status.
async fn exited(what: &str, child: &mut std::process::Child) -> std::process::ExitStatus {
    within(what, async {
        loop {
            if let Some(code) = child.try_wait().unwrap() {
                return code;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// O4: an agent process behind a gateway process. `outpost-agent status` and `outpost-gateway
/// status`, human and `--json`, show the path, the uplink, the licence, the last sync and the
/// queue depth; whether the process runs; and the licence and queue still right from disk when
/// it does not. A data directory that holds nothing is named in the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o4_status_commands_show_path_uplink_licence_last_sync_and_queue_running_or_not() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    server
        .import_key(&auth.key("K-O4", 5, 30 * DAY), true)
        .await
        .unwrap();
    let mut gw = Gateway::start(&server, |_, _| {}).await;
    let gw_addr = gw.addr();
    gw.stop().await;
    let mut gw_proc = gw.spawn_process();
    let gw_pid = gw_proc.0.id();
    let server_addr = server.addr().to_string();
    status_until(
        "the gateway process's uplink",
        "outpost-gateway",
        &gw.data,
        |v| v["pid"] == gw_pid && v["uplink"] == "up" && v["running"] == true,
    )
    .await;

    let token = server.token("agent", 1).await;
    let agent = Agent::enroll(
        test_agent_config(vec![gw_addr.to_string()], None, "o4"),
        &token,
    )
    .await;
    let mut agent_proc = spawn_agent_process(&agent.data);
    let agent_pid = agent_proc.0.id();
    let (v, human) = status_until(
        "the agent process synced",
        "outpost-agent",
        &agent.data,
        |v| v["pid"] == agent_pid && v["state"] == "connected" && v["last_sync"].as_i64() > Some(0),
    )
    .await;
    let path = format!("gateway {gw_addr}");
    assert_eq!(v["running"], true);
    assert_eq!(v["path"], path.as_str());
    assert_eq!(v["licence"]["state"], "licensed");
    assert_eq!(v["licence"]["key"], "K-O4");
    assert_eq!(v["queue_depth"], 0);
    assert!(
        human.contains(&format!("(running, pid {agent_pid})")),
        "{human}"
    );
    assert!(human.contains(&format!("path        {path}\n")), "{human}");
    assert!(
        human.contains("licence     licensed by key K-O4 until "),
        "{human}"
    );
    assert!(human.contains("queue       0 event(s) waiting"), "{human}");
    assert!(!human.contains("last sync   never"), "{human}");

    let (v, human) = status_until(
        "the gateway counts the agent",
        "outpost-gateway",
        &gw.data,
        |v| v["agents_connected"] == 1,
    )
    .await;
    assert_eq!(v["uplink_remote"], server_addr.as_str());
    assert!(v["sessions_total"].as_u64() >= Some(1), "{v}");
    assert!(v["uplink_connection_id"].as_u64() > Some(0), "{v}");
    assert!(
        human.contains(&format!("(running, pid {gw_pid})")),
        "{human}"
    );
    assert!(
        human.contains(&format!("uplink      up to {server_addr} since ")),
        "{human}"
    );
    assert!(human.contains("agents      1 connected"), "{human}");

    // The agent is stopped (SIGTERM, as systemd does); events are queued for it from the
    // command line. Its status, read from disk, says it does not run, keeps the licence its
    // grant gives and counts the queue; the gateway sees it leave.
    let term = std::process::Command::new("kill")
        .args(["-TERM", &agent_pid.to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let exit = exited("the agent stops on SIGTERM", &mut agent_proc.0).await;
    assert!(exit.success(), "agent exit on SIGTERM: {exit}");
    let d = agent.data.to_str().unwrap();
    for i in 0..2 {
        let payload = format!("queued while stopped {i}");
        let (ok, _, err) = run_bin(
            "outpost-agent",
            &[
                "event",
                "--data-dir",
                d,
                "--kind",
                "o4",
                "--payload",
                &payload,
            ],
        )
        .unwrap();
        assert!(ok, "{err}");
    }
    let (v, human) = status("outpost-agent", &agent.data);
    assert_eq!(v["running"], false);
    assert_eq!(v["state"], "stopped");
    assert_eq!(v["licence"]["state"], "licensed", "from the grant on disk");
    assert_eq!(v["queue_depth"], 2);
    assert!(human.contains("(not running)"), "{human}");
    assert!(human.contains("queue       2 event(s) waiting"), "{human}");
    status_until(
        "the gateway sees the agent gone",
        "outpost-gateway",
        &gw.data,
        |v| v["agents_connected"] == 0,
    )
    .await;

    // Started again, it sends the queue: depth 0, and the server holds both events.
    let _agent_proc = spawn_agent_process(&agent.data);
    status_until("the queue drained", "outpost-agent", &agent.data, |v| {
        v["running"] == true && v["queue_depth"] == 0 && v["state"] == "connected"
    })
    .await;
    let device = status("outpost-agent", &agent.data).0["device_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(server.h().store().event_count(&device).await.unwrap(), 2);

    // The gateway killed: its status says so.
    gw_proc.0.kill().unwrap();
    gw_proc.0.wait().unwrap();
    let (v, human) = status("outpost-gateway", &gw.data);
    assert_eq!(v["running"], false);
    assert!(human.contains("(not running)"), "{human}");

    // Nothing there: the error names the directory and what is missing.
    let empty = tempfile::tempdir().unwrap();
    let e = empty.path().to_str().unwrap();
    let (ok, _, err) = run_bin("outpost-agent", &["status", "--data-dir", e]).unwrap();
    assert!(!ok);
    assert!(err.contains(e) && err.contains("not enrolled"), "{err}");
    let (ok, _, err) = run_bin("outpost-gateway", &["status", "--data-dir", e]).unwrap();
    assert!(!ok);
    assert!(err.contains(e), "{err}");
}

/// A server process started with `outpost-server run` the README's way, on an empty data
/// directory; killed when dropped.
struct Proc {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Proc {
    fn start(data: &Path, args: &[&str]) -> Proc {
        let log = data.with_extension("log");
        let child = std::process::Command::new(bin("outpost-server"))
            .args(["run", "--data-dir", data.to_str().expect("utf-8 path")])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn outpost-server");
        Proc { child, log }
    }

    fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `outpost-server admin --data-dir <data> <args>` until the server answers.
async fn admin(data: &Path, args: &[&str]) -> String {
    let d = data.to_str().expect("utf-8 path");
    let mut all = vec!["admin", "--data-dir", d];
    all.extend_from_slice(args);
    within("the server answers its admin", async {
        loop {
            if let Ok((true, out, _)) = run_bin("outpost-server", &all) {
                return out;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

/// (migrations applied, all successful, tokens stored) in the embedded store file.
async fn store_facts(file: &Path) -> (i64, bool, i64) {
    let url = format!("sqlite://{}?mode=ro", file.display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let (n, ok): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COALESCE(MIN(success), 0) FROM _sqlx_migrations")
            .fetch_one(&mut c)
            .await
            .unwrap();
    let (tokens,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM tokens")
        .fetch_one(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    (n, ok == 1, tokens)
}

/// P1: `outpost-server run` on an empty directory needs no other service: it creates the
/// embedded store in its data directory with every migration of this release applied; a
/// restart keeps what was stored and applies nothing twice. A store a newer release migrated
/// further is refused with a sentence that says so, and nothing in it changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_first_start_creates_and_migrates_the_embedded_store_and_refuses_a_newer_schema() {
    init_logs();
    let auth = Authority::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let listen = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .unwrap()
        .to_string();
    let authority = auth.dir.path().join("authority.pub");
    let args = [
        "--authority-key",
        authority.to_str().unwrap(),
        "--listen",
        &listen,
        "--server-name",
        "127.0.0.1",
    ];
    let mut p = Proc::start(&data, &args);
    let out = admin(&data, &["token", "create", "--comment", "p1"]).await;
    let token_id = out
        .lines()
        .find_map(|l| l.strip_prefix("token ")?.split(' ').next())
        .expect("token id printed")
        .to_owned();
    p.kill();

    let file = data.join("outpost.db");
    let migrations = std::fs::read_dir(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../server/migrations/sqlite"),
    )
    .unwrap()
    .filter(|e| e.as_ref().unwrap().path().extension() == Some("sql".as_ref()))
    .count() as i64;
    assert!(migrations >= 16, "{migrations} migrations found");
    assert_eq!(store_facts(&file).await, (migrations, true, 1));

    // Restarted (its configuration is in the data directory now): the token is still there,
    // no migration ran twice.
    let mut p = Proc::start(&data, &[]);
    let list = admin(&data, &["token", "list"]).await;
    assert!(list.contains(&token_id), "{list}");
    p.kill();
    assert_eq!(store_facts(&file).await, (migrations, true, 1));

    // A newer release migrated this store further (as an upgrade and then a roll-back leaves it).
    {
        let url = format!("sqlite://{}", file.display());
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (9999, 'from a newer release', 1, x'00', 0)",
        )
        .execute(&mut c)
        .await
        .unwrap();
        c.close().await.unwrap();
    }
    let before = std::fs::read(&file).unwrap();
    let mut p = Proc::start(&data, &[]);
    let code = exited("the server refuses to start", &mut p.child).await;
    assert!(!code.success());
    let log = std::fs::read_to_string(&p.log).unwrap();
    assert!(
        log.contains("schema version 9999, newer than this outpost-server knows")
            && log.contains(&format!("(up to {migrations})"))
            && log.contains("Run that release (or newer) here too"),
        "{log}"
    );
    assert_eq!(store_facts(&file).await, (migrations + 1, true, 1));
    assert!(
        std::fs::read(&file).unwrap() == before,
        "the store file changed"
    );
}
