//! Test harness shared by the cross-crate tests, the sandbox and the benchmark: a licence
//! authority, servers, gateways and agents running in-process on loopback (port 0), and the
//! real binaries for tests that kill processes.
//!
//! Everything waits on readiness signals (watch channels, admin queries) with generous upper
//! bounds; nothing sleeps for timing.
#![forbid(unsafe_code)]

pub mod bench;
pub mod console;
pub mod fleet;
pub mod fuzz;
mod gateway;
pub mod hierarchy;
pub mod licensing;
pub mod netbed;
pub mod pg;

pub use gateway::{Gateway, test_gateway_config};

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use outpost_admin::AdminClient;
use outpost_agent::{AgentConfig, AgentHandle};
use outpost_proto::licence::{self, LicenceKey};
use outpost_proto::pb::admin::{
    DeviceListResult, Empty, KeyImport, KeyInfo, TokenCreate, admin_request::Op,
    admin_response::Result as R,
};
use outpost_server::config::ServerConfig;
use outpost_server::{DataDir, InitOptions, ServerHandle};

/// Upper bound for anything a test waits for.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Installs a test log subscriber once (RUST_LOG controls it; default warnings only).
pub fn init_logs() {
    outpost_net::logging::init(Some(
        &std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
    ));
}

/// Waits for `fut`, failing the test with `what` after [`PATIENCE`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {PATIENCE:?} waiting for {what}"),
    }
}

/// Polls an async condition until it holds (for state that has no change signal, like rows
/// in the server's store), failing after [`PATIENCE`].
pub async fn until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(what, async {
        loop {
            if f().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
}

/// A licence authority in a temporary directory.
pub struct Authority {
    /// Directory with authority.key / authority.pub.
    pub dir: tempfile::TempDir,
    /// The signing key.
    pub key: licence::Authority,
    /// Public key text for servers.
    pub public_text: String,
}

impl Authority {
    /// Creates one.
    pub fn new() -> Authority {
        let dir = tempfile::tempdir().expect("tempdir");
        let (key, _) = outpost_server::authority::init(dir.path()).expect("authority init");
        let public_text = licence::key::encode_public_key(key.public_key());
        Authority {
            dir,
            key,
            public_text,
        }
    }

    /// Issues a key valid from now for `valid` with `seats`.
    pub fn key(&self, id: &str, seats: u32, valid: Duration) -> LicenceKey {
        let now = outpost_net::unix_now();
        self.key_at(id, seats, now - 1, now + valid.as_secs() as i64)
    }

    /// Issues a key with explicit validity.
    pub fn key_at(&self, id: &str, seats: u32, from: i64, until: i64) -> LicenceKey {
        outpost_server::authority::issue(
            &self.key,
            &outpost_server::authority::IssueSpec {
                key_id: id.into(),
                licensee: "ACME GmbH".into(),
                product: "Outpost Endpoint".into(),
                components: vec!["antivirus".into(), "firewall".into()],
                seats,
                valid_from: from,
                expires_at: until,
                demo: false,
                renews: None,
            },
        )
        .expect("issue key")
    }
}

impl Default for Authority {
    fn default() -> Self {
        Authority::new()
    }
}

/// A server running in-process on 127.0.0.1:0 with its data in a temporary directory.
pub struct Server {
    /// The running server (None while stopped).
    pub handle: Option<ServerHandle>,
    /// Data directory.
    pub data: PathBuf,
    _dir: Option<tempfile::TempDir>,
    admin: Option<AdminClient>,
}

/// Config used by tests: fast retry hints, fast session setup, quick shutdown.
pub fn test_server_config() -> ServerConfig {
    let mut c = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("literal"),
        ..Default::default()
    };
    c.timing.retry_after = Duration::from_millis(200);
    c.timing.shutdown_grace = Duration::from_secs(2);
    c.store.durability = outpost_server::store::Durability::Normal;
    if pg::servers_on_postgres() {
        let base = pg::cluster().expect("OUTPOST_TEST_STORE=postgres needs OUTPOST_TEST_PG");
        c.store.url = pg::fresh_database(&base);
    }
    c
}

impl Server {
    /// Initialises and starts a server; `tweak` adjusts the configuration first.
    pub async fn start(auth: &Authority, tweak: impl FnOnce(&mut ServerConfig)) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("server");
        let mut cfg = test_server_config();
        tweak(&mut cfg);
        DataDir::new(&data)
            .init(&InitOptions {
                authority_public_key: auth.public_text.clone(),
                base: Some(cfg),
                ..Default::default()
            })
            .await
            .expect("server init");
        let mut s = Server {
            handle: None,
            data,
            _dir: Some(dir),
            admin: None,
        };
        s.boot().await;
        s
    }

    /// Another instance of this server's deployment (P2; the store must be PostgreSQL), made
    /// in-process with the join bundle of `outpost_server::join` and started on a port of its
    /// own.
    pub async fn another_instance(&self) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("server");
        let pass = "a passphrase for the test";
        let bundle = outpost_server::join::seal(&DataDir::new(&self.data), pass).expect("seal");
        outpost_server::join::open(
            &DataDir::new(&data),
            &bundle,
            "bundle",
            pass,
            &outpost_server::join::JoinOptions {
                listen: Some("127.0.0.1:0".parse().expect("literal")),
                public_address: None,
            },
        )
        .expect("join");
        let mut s = Server {
            handle: None,
            data,
            _dir: Some(dir),
            admin: None,
        };
        s.boot().await;
        s
    }

    /// Starts (again) on the same data directory. A port-0 config gets a new port; a pinned
    /// port that another test's short-lived socket took while the server was down is retried
    /// for a while.
    pub async fn boot(&mut self) {
        let started = std::time::Instant::now();
        let h = loop {
            match outpost_server::start(DataDir::new(&self.data)).await {
                Err(outpost_server::node::StartError::Listen(
                    outpost_net::endpoint::ListenError::Bind { source, .. },
                )) if source.kind() == std::io::ErrorKind::AddrInUse
                    && started.elapsed() < PATIENCE / 2 =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                r => break r.expect("server start"),
            }
        };
        self.handle = Some(h);
        self.admin = Some(
            AdminClient::from_bundle(&self.data.join("admin"), None)
                .await
                .expect("admin connect"),
        );
    }

    /// Restarts on the same port (so agents and gateways find it again).
    pub async fn restart(&mut self) {
        let addr = self.addr();
        self.stop().await;
        self.pin_listen(addr);
        self.boot().await;
    }

    /// Makes the next boot listen on `addr`.
    pub fn pin_listen(&self, addr: SocketAddr) {
        self.edit_config(|c| c.listen = addr);
    }

    /// Edits `server.toml` (takes effect at the next boot).
    pub fn edit_config(&self, f: impl FnOnce(&mut ServerConfig)) {
        let path = self.data.join("server.toml");
        let mut cfg = ServerConfig::load(&path).expect("config");
        f(&mut cfg);
        std::fs::write(&path, cfg.to_commented_toml()).expect("write config");
    }

    /// Stops cleanly.
    pub async fn stop(&mut self) {
        if let Some(a) = self.admin.take() {
            a.close();
        }
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }

    /// The running server.
    pub fn h(&self) -> &ServerHandle {
        self.handle.as_ref().expect("server running")
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.h().addr()
    }

    /// Runs an admin request; panics on refusal.
    pub async fn admin(&self, op: Op) -> R {
        self.try_admin(op).await.expect("admin request")
    }

    /// Runs an admin request.
    pub async fn try_admin(&self, op: Op) -> anyhow::Result<R> {
        Ok(self
            .admin
            .as_ref()
            .expect("admin client")
            .request(op)
            .await?)
    }

    /// Imports a key, optionally assigning it to everyone.
    pub async fn import_key(
        &self,
        key: &LicenceKey,
        assign_everyone: bool,
    ) -> anyhow::Result<Vec<KeyInfo>> {
        match self
            .try_admin(Op::KeyImport(KeyImport {
                file_name: format!("{}.key", key.body.key_id),
                content: key.file.clone(),
                auto_distribute: false,
                assign_everyone,
                activation_reserve: false,
            }))
            .await?
        {
            R::KeyImport(r) => Ok(r.keys),
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }

    /// Creates an enrollment token.
    pub async fn token(&self, role: &str, uses: u32) -> String {
        self.token_in(role, "", uses).await
    }

    /// Creates an enrollment token whose devices land in `group` ("" = everyone).
    pub async fn token_in(&self, role: &str, group: &str, uses: u32) -> String {
        match self
            .admin(Op::TokenCreate(TokenCreate {
                role: role.into(),
                group: group.into(),
                uses,
                ttl_secs: 3600,
                ..Default::default()
            }))
            .await
        {
            R::TokenCreated(t) => t.token,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Waits until key `id` has `want` seats in use. A seat of a grant the agent replaced
    /// returns when the agent confirms it stored the new one (L15): the sync right after the
    /// check, a round trip after the agent reports itself checked and synced.
    pub async fn seats_used_becomes(&self, id: &str, want: u32) {
        until(&format!("{want} seats in use on {id}"), || async {
            self.key_info(id).await.seats_used == want
        })
        .await;
    }

    /// One key's info.
    pub async fn key_info(&self, id: &str) -> KeyInfo {
        match self.admin(Op::KeyList(Empty {})).await {
            R::Keys(k) => k
                .keys
                .into_iter()
                .find(|k| k.key_id == id)
                .expect("key listed"),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Agents as the admin sees them.
    pub async fn agents(&self) -> DeviceListResult {
        match self
            .admin(Op::DeviceList(outpost_proto::pb::admin::DeviceList {
                role: "agent".into(),
            }))
            .await
        {
            R::Devices(d) => d,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A child process killed when the test ends, also when it panics (no orphan servers).
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A unique-enough id for machine identities in tests.
pub fn rand_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Agent config for tests: fast reconnects, long sync interval (syncs happen on demand).
pub fn test_agent_config(
    gateways: Vec<String>,
    server: Option<SocketAddr>,
    machine: &str,
) -> AgentConfig {
    let mut c = AgentConfig {
        server: outpost_net::config::Addresses::one(
            server.map(|s| s.to_string()).unwrap_or_default(),
        ),
        gateways,
        machine_id: machine.into(),
        hostname: format!("host-{machine}"),
        ..Default::default()
    };
    c.connect.reconnect_initial = Duration::from_millis(300);
    c.connect.reconnect_max = Duration::from_secs(2);
    c.connect.dial_timeout = Duration::from_secs(2);
    c.connect.healthy_after = Duration::from_secs(5);
    c.connect.setup_timeout = Duration::from_secs(5);
    c
}

/// An agent running in-process.
pub struct Agent {
    /// The running agent.
    pub handle: Option<AgentHandle>,
    /// Data directory.
    pub data: PathBuf,
    /// Its config.
    pub config: AgentConfig,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Enrolls (through the config's paths) with `token` and starts.
    pub async fn start(config: AgentConfig, token: &str) -> Agent {
        let mut a = Agent::enroll(config, token).await;
        a.boot();
        a
    }

    /// Enrolls without starting.
    pub async fn enroll(config: AgentConfig, token: &str) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("agent");
        std::fs::create_dir_all(&data).expect("mkdir");
        std::fs::write(data.join("agent.toml"), config.to_commented_toml()).expect("agent.toml");
        outpost_agent::enroll(
            &data,
            &config,
            &outpost_proto::token::Token::parse(token).expect("token"),
        )
        .await
        .expect("agent enroll");
        Agent {
            handle: None,
            data,
            config,
            _dir: dir,
        }
    }

    /// Starts (again).
    pub fn boot(&mut self) {
        let h = outpost_agent::start(
            &self.data,
            outpost_agent::StartOptions {
                config: Some(self.config.clone()),
                ..Default::default()
            },
        )
        .expect("agent start");
        self.handle = Some(h);
    }

    /// The running agent.
    pub fn h(&self) -> &AgentHandle {
        self.handle.as_ref().expect("agent running")
    }

    /// Waits until the agent holds a licence check result from a live session.
    pub async fn wait_checked(&self) -> outpost_agent::status::AgentStatus {
        within(
            "agent connected and licence-checked",
            self.h()
                .wait_for(|s| s.state == "connected" && s.last_sync > 0),
        )
        .await
    }

    /// Stops it.
    pub async fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }
}

/// Asks an in-process agent to sync (a `sync-now` push) and waits until it did; returns how
/// many of its events during that sync `counted` picked (e.g. policies or task lists received:
/// D5 checks that only changes travel).
pub async fn sync_and_count(
    server: &Server,
    agent: &Agent,
    counted: impl Fn(&outpost_agent::AgentEvent) -> bool,
) -> usize {
    let mut events = agent.h().events();
    server
        .admin(Op::Push(outpost_proto::pb::admin::PushRequest {
            device_id: agent.h().device_id().into(),
            kind: "sync-now".into(),
            wait_ms: 5_000,
            ..Default::default()
        }))
        .await;
    within("a sync after the push", async {
        let mut n = 0;
        loop {
            match events.recv().await {
                Ok(outpost_agent::AgentEvent::Synced { .. }) => return n,
                Ok(e) => n += usize::from(counted(&e)),
                Err(e) => panic!("agent events: {e}"),
            }
        }
    })
    .await
}

/// Starts `outpost-agent run` on an enrolled data directory (its `agent.toml`), killed when
/// dropped.
pub fn spawn_agent_process(data: &Path) -> KillOnDrop {
    let child = std::process::Command::new(bin("outpost-agent"))
        .args(["run", "--data-dir"])
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn outpost-agent");
    KillOnDrop(child)
}

/// Path of a workspace binary (built by `cargo test --workspace`, whose agent, gateway and
/// server packages have integration tests of their own, which makes cargo build them).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built: run the tests with `cargo test --workspace` (or `cargo build --bins` first)",
        p.display()
    );
    p
}

/// Runs a binary to completion, returning (status ok, stdout, stderr).
pub fn run_bin(name: &str, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = std::process::Command::new(bin(name))
        .args(args)
        .output()
        .with_context(|| format!("running {name}"))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `<bin> status --json` and `<bin> status` on `data`: (JSON, human text).
pub fn status(bin: &str, data: &Path) -> (serde_json::Value, String) {
    let d = data.to_str().expect("utf-8 path");
    let (ok, json, err) = run_bin(bin, &["status", "--json", "--data-dir", d]).unwrap();
    assert!(ok, "{bin} status --json: {err}");
    let (ok, human, err) = run_bin(bin, &["status", "--data-dir", d]).unwrap();
    assert!(ok, "{bin} status: {err}");
    (serde_json::from_str(&json).expect("status JSON"), human)
}

/// Waits until `<bin> status --json` satisfies `f`; returns both forms.
pub async fn status_until(
    what: &str,
    bin: &str,
    data: &Path,
    f: impl Fn(&serde_json::Value) -> bool,
) -> (serde_json::Value, String) {
    within(what, async {
        loop {
            let s = status(bin, data);
            if f(&s.0) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}
