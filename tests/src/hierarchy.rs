//! Servers as real `outpost-server` processes for the hierarchy tests (H1–H9): initialised in
//! a temporary directory on a fixed loopback port, spawned, killed with SIGKILL, restarted;
//! administered over QUIC with their admin bundles; related to each other by exchanging
//! their link certificates the way an administrator does (`server export-cert`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use outpost_admin::{AdminClient, AdminError};
use outpost_proto::pb::admin::{
    Empty, KeyInfo, LeaseGive, LeaseInfo, ServerAdd, ServerInfo, admin_request::Op,
    admin_response::Result as R,
};
use outpost_server::config::ServerConfig;

use crate::{Authority, bin, test_server_config, until, within};

/// One `outpost-server run` process.
pub struct ServerProc {
    /// Name in test output and relations.
    pub name: String,
    /// Data directory.
    pub data: PathBuf,
    /// Where it listens (fixed across restarts).
    pub addr: SocketAddr,
    child: Option<std::process::Child>,
    _dir: tempfile::TempDir,
}

impl ServerProc {
    /// Initialises a data directory (config from `tweak`) and starts the process.
    pub async fn start(
        auth: &Authority,
        name: &str,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> ServerProc {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join(name);
        let addr = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("free port");
        let mut cfg = test_server_config();
        cfg.listen = addr;
        tweak(&mut cfg);
        outpost_server::DataDir::new(&data)
            .init(&outpost_server::InitOptions {
                authority_public_key: auth.public_text.clone(),
                base: Some(cfg),
                deployment: Some(name.to_owned()),
                ..Default::default()
            })
            .await
            .expect("server init");
        let mut p = ServerProc {
            name: name.to_owned(),
            data,
            addr,
            child: None,
            _dir: dir,
        };
        p.spawn();
        p
    }

    /// Starts the process (again).
    pub fn spawn(&mut self) {
        let log = std::fs::File::create(self.data.with_extension("log")).expect("log file");
        let child = std::process::Command::new(bin("outpost-server"))
            .args(["run", "--data-dir"])
            .arg(&self.data)
            .env(
                "RUST_LOG",
                std::env::var("HIERARCHY_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn outpost-server");
        self.child = Some(child);
    }

    /// Another instance of this server's deployment on the same PostgreSQL database (P2), made
    /// the way an administrator does: `outpost-server join-bundle` here, `outpost-server init
    /// --join` into a new data directory listening on a port of its own; started.
    pub fn another_instance(&self, name: &str) -> ServerProc {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join(name);
        let addr = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("free port");
        let bundle = dir.path().join("join.bundle");
        let pass = "a passphrase for the test";
        let run = |args: &[&str]| {
            let out = std::process::Command::new(bin("outpost-server"))
                .args(args)
                .env("OUTPOST_JOIN_PASSPHRASE", pass)
                .output()
                .expect("run outpost-server");
            assert!(
                out.status.success(),
                "outpost-server {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "join-bundle",
            "--data-dir",
            self.data.to_str().expect("utf-8 path"),
            "--out",
            bundle.to_str().expect("utf-8 path"),
        ]);
        run(&[
            "init",
            "--join",
            bundle.to_str().expect("utf-8 path"),
            "--data-dir",
            data.to_str().expect("utf-8 path"),
            "--listen",
            &addr.to_string(),
        ]);
        let mut p = ServerProc {
            name: name.to_owned(),
            data,
            addr,
            child: None,
            _dir: dir,
        };
        p.spawn();
        p
    }

    /// Whether the process is still running (it did not exit or crash).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL: no shutdown, nothing flushed beyond what was committed.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL");
            let _ = c.wait();
        }
    }

    /// Edits `server.toml` (for the next start).
    pub fn edit_config(&self, f: impl FnOnce(&mut ServerConfig)) {
        let path = self.data.join("server.toml");
        let mut cfg = ServerConfig::load(&path).expect("config");
        f(&mut cfg);
        std::fs::write(&path, cfg.to_commented_toml()).expect("write config");
    }

    /// The process's log so far (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
    }

    /// Runs an admin request, retrying while the process starts.
    pub async fn admin(&self, op: Op) -> R {
        within(&format!("admin request to {}", self.name), async {
            loop {
                if let Ok(c) = AdminClient::from_bundle(&self.data.join("admin"), None).await {
                    let r = c.request(op.clone()).await;
                    c.close();
                    match r {
                        Ok(r) => return r,
                        Err(e @ (AdminError::Failed { .. } | AdminError::Refused(_))) => {
                            panic!("{}: {e}", self.name)
                        }
                        Err(_) => {}
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
    }

    /// An enrollment token for `uses` devices of `role` (an hour).
    pub async fn token(&self, role: &str, uses: usize) -> String {
        let R::TokenCreated(t) = self
            .admin(Op::TokenCreate(TokenCreate {
                role: role.into(),
                uses: uses as u32,
                ttl_secs: 3600,
                ..Default::default()
            }))
            .await
        else {
            panic!("{}: no token", self.name)
        };
        t.token
    }

    /// Runs an admin request expected to be refused; returns the refusal text.
    pub async fn admin_refused(&self, op: Op) -> String {
        let c = within("admin connect", async {
            loop {
                if let Ok(c) = AdminClient::from_bundle(&self.data.join("admin"), None).await {
                    return c;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        let r = c.request(op).await;
        c.close();
        match r {
            Err(e) => e.to_string(),
            Ok(r) => panic!("{}: expected a refusal, got {r:?}", self.name),
        }
    }

    /// Its link certificate (PEM), as `server export-cert` writes it.
    pub async fn link_cert(&self) -> (String, String) {
        match self.admin(Op::ServerExportCert(Empty {})).await {
            R::ServerCert(c) => (c.pem, c.sha256),
            other => panic!("{other:?}"),
        }
    }

    /// Relations as `server list` shows them.
    pub async fn servers(&self) -> Vec<ServerInfo> {
        match self.admin(Op::ServerList(Empty {})).await {
            R::Servers(s) => s.servers,
            other => panic!("{other:?}"),
        }
    }

    /// Waits until the link to `other` is up.
    pub async fn wait_connected(&self, other: &str) {
        until(&format!("{} linked to {other}", self.name), || async {
            self.servers()
                .await
                .iter()
                .any(|s| s.name == other && s.state == "connected")
        })
        .await;
    }

    /// Leases given and received.
    pub async fn leases(&self) -> Vec<LeaseInfo> {
        match self.admin(Op::LeaseList(Empty {})).await {
            R::Leases(l) => l.leases,
            other => panic!("{other:?}"),
        }
    }

    /// One key as `key list` shows it (None when absent).
    pub async fn key(&self, id: &str) -> Option<KeyInfo> {
        match self.admin(Op::KeyList(Empty {})).await {
            R::Keys(k) => k.keys.into_iter().find(|k| k.key_id == id),
            other => panic!("{other:?}"),
        }
    }

    /// Gives `seats` of `key` to the neighbour `server` until `end_at`; returns the lease id.
    pub async fn give(&self, key: &str, server: &str, seats: u32, end_at: i64) -> String {
        match self
            .admin(Op::LeaseGive(LeaseGive {
                server: server.into(),
                key_id: key.into(),
                seats,
                end_at,
                period_secs: 0,
            }))
            .await
        {
            R::Done(d) => d
                .message
                .split_whitespace()
                .nth(1)
                .expect("lease id")
                .trim_end_matches(':')
                .to_owned(),
            other => panic!("{other:?}"),
        }
    }

    /// Waits until `key` here has `seats` seats in total.
    pub async fn key_seats_become(&self, key: &str, seats: u32) {
        until(
            &format!("{} holds {seats} seats of {key}", self.name),
            || async { self.key(key).await.is_some_and(|k| k.seats_total == seats) },
        )
        .await;
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Relates `primary` and `secondary` the documented way: each exports its link certificate,
/// the primary adds the secondary, the secondary sets the primary at its address (it dials).
pub async fn relate(primary: &ServerProc, secondary: &ServerProc) {
    let (p_cert, _) = primary.link_cert().await;
    let (s_cert, _) = secondary.link_cert().await;
    let r = primary
        .admin(Op::ServerAdd(ServerAdd {
            name: secondary.name.clone(),
            kind: "secondary".into(),
            cert_pem: s_cert,
            ..Default::default()
        }))
        .await;
    assert!(matches!(r, R::Done(_)), "{r:?}");
    let r = secondary
        .admin(Op::ServerAdd(ServerAdd {
            name: primary.name.clone(),
            kind: "primary".into(),
            cert_pem: p_cert,
            address: primary.addr.to_string(),
            dial: true,
            ..Default::default()
        }))
        .await;
    assert!(matches!(r, R::Done(_)), "{r:?}");
    primary.wait_connected(&secondary.name).await;
    secondary.wait_connected(&primary.name).await;
}

// Helpers of the hierarchy tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use outpost_proto::pb::admin::{KeyImport, TokenCreate};

use crate::{Agent, run_bin, test_agent_config};

/// The auto-renewal period of the hierarchy tests: short, so renewals happen many times in a
/// test, with room for a loaded 2-core machine (a renewal is asked for half-way through).
pub const PERIOD: Duration = Duration::from_secs(8);

/// Hierarchy tests start three to five server processes and dozens of agents each; they run
/// one at a time (within a test binary) so that none misses a renewal for want of CPU.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Short periods so renewals happen many times in a test.
pub fn fast(c: &mut ServerConfig) {
    c.hierarchy.lease_period = PERIOD;
    c.hierarchy.sync_period = Duration::from_secs(2);
    c.timing.sync_interval = Duration::from_secs(1);
}

/// Enrolls and starts `n` agents on `server` (directly, no gateway).
pub async fn agents(server: &ServerProc, n: usize) -> Vec<Agent> {
    let token = server.token("agent", n).await;
    // Machine ids unique across calls: a second batch on the same server is other machines.
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let mut out = vec![];
    for _ in 0..n {
        let name = format!("{}-{}", server.name, NEXT.fetch_add(1, Ordering::Relaxed));
        out.push(Agent::start(test_agent_config(vec![], Some(server.addr), &name), &token).await);
    }
    out
}

/// How many of `agents` hold an unexpired grant on `key` now.
pub fn licensed(agents: &[Agent], key: &str) -> usize {
    let now = outpost_net::unix_now();
    agents
        .iter()
        .filter(|a| {
            let s = a.h().status().borrow().clone();
            s.licence.state == "licensed" && s.licence.key == key && s.licence.expires_at > now
        })
        .count()
}

/// Samples every agent's grant on `key` across the tree until stopped; returns the highest
/// count seen and the number of samples.
pub fn monitor(
    all: Arc<Vec<Vec<Agent>>>,
    key: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize)> {
    let max = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        let mut samples = 0;
        while !stop.load(Ordering::Relaxed) {
            let n: usize = all.iter().map(|level| licensed(level, key)).sum();
            max.fetch_max(n, Ordering::Relaxed);
            samples += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (max.load(Ordering::Relaxed), samples)
    })
}

/// Imports `key` on `server`, assigned to everyone.
pub async fn import(server: &ServerProc, key: &outpost_proto::licence::LicenceKey) {
    let r = server
        .admin(Op::KeyImport(KeyImport {
            file_name: format!("{}.key", key.body.key_id),
            content: key.file.clone(),
            assign_everyone: true,
            ..Default::default()
        }))
        .await;
    assert!(matches!(r, R::KeyImport(_)), "{r:?}");
}

/// Runs `outpost-server admin --data-dir <its data> ARGS` and returns its output; panics on failure.
pub fn cli(server: &ServerProc, args: &[&str]) -> String {
    let data = server.data.to_string_lossy().into_owned();
    let mut all = vec!["admin", "--data-dir", data.as_str()];
    all.extend_from_slice(args);
    let (ok, out, err) = run_bin("outpost-server", &all).expect("run outpost-server admin");
    assert!(ok, "outpost-server {all:?} failed: {err}");
    out
}

/// Rewrites the receiver's record of a lease while it is stopped (a damaged or forged
/// database): it claims `seats` where fewer were given.
pub async fn forge(server: &ServerProc, key: &str, seats: i64) {
    use sqlx::Connection;
    let url = format!("sqlite://{}", server.data.join("outpost.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("UPDATE leases_received SET seats = $1 WHERE key_id = $2")
        .bind(seats)
        .bind(key)
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("UPDATE licence_keys SET seats = $1 WHERE id = $2")
        .bind(seats)
        .bind(key)
        .execute(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();
}

/// The messages of the notifications of `kind` on `server`, newest first.
pub async fn notified(server: &ServerProc, kind: &str) -> Vec<String> {
    match server
        .admin(Op::NotificationList(
            outpost_proto::pb::admin::NotificationList {
                kind: kind.into(),
                limit: 50,
            },
        ))
        .await
    {
        R::Notifications(n) => n.notifications.into_iter().map(|n| n.message).collect(),
        other => panic!("{other:?}"),
    }
}

/// `admin report` on `server`.
pub async fn report(server: &ServerProc) -> Vec<outpost_proto::pb::admin::ServerUsage> {
    match server
        .admin(Op::Report(
            outpost_proto::pb::admin::ReportRequest::default(),
        ))
        .await
    {
        R::Report(r) => r.servers,
        other => panic!("{other:?}"),
    }
}

/// (seats, leased out, active licensed) of `key` in the report of the server at `path`.
pub fn usage(
    rows: &[outpost_proto::pb::admin::ServerUsage],
    path: &str,
    key: &str,
) -> Option<(u32, u32, u32)> {
    let r = rows.iter().find(|u| u.path == path)?.report.as_ref()?;
    let k = r.keys.iter().find(|k| k.key_id == key)?;
    Some((k.seats, k.seats_leased_out, k.active_licensed))
}
