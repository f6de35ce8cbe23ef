//! Transport rules on a real network: hosts in network namespaces, an office behind an
//! nftables NAT with a short UDP timeout, link outages, loss and delay, process crashes
//! (T3, T4, T5, T6, T7, P3). The real binaries run inside the namespaces.
//!
//! One module per concern: [`nat`] (T3, T4, T5), [`outages`] (T6, P3), [`lossy`] (T7),
//! [`hierarchy`] (a server link through the NAT, H3).
//!
//! These tests need root; without it each prints why it is skipped. Set
//! `OUTPOST_BED_LOG=debug` for verbose process logs (kept in the bed's directory while it
//! runs).

mod discovery;
mod downloads;
mod hierarchy;
mod lossy;
mod nat;
mod outages;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use outpost_agent::AgentConfig;
use outpost_gateway::GatewayConfig;
use outpost_gateway::config::UplinkMode;
use outpost_server::config::ServerConfig;
use outpost_tests::netbed::{self, BedOptions, GW_IP, HQ_IP, NetBed};
use outpost_tests::{Authority, bin};
use serde_json::Value;

pub(crate) const SERVER: &str = "10.10.0.2:4700";

/// One office and its head office on a bed.
pub(crate) struct Office {
    bed: NetBed,
    auth: Authority,
    server_data: PathBuf,
    agent_tokens: String,
}

pub(crate) fn wait<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Office {
    /// Server (with a key of `seats` assigned to everyone) in HQ, nothing else started.
    fn new(
        test: &str,
        opts: BedOptions,
        seats: u32,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> Option<Office> {
        let bed = netbed::bed_or_skip(test, opts)?;
        let auth = Authority::new();
        let pubkey = auth.dir.path().join("authority.pub");
        let server_data = bed.data("server");
        let (ok, _, err) = outpost_tests::run_bin(
            "outpost-server",
            &[
                "init",
                "--data-dir",
                server_data.to_str().unwrap(),
                "--authority-key",
                pubkey.to_str().unwrap(),
                "--listen",
                SERVER,
            ],
        )
        .unwrap();
        assert!(ok, "{err}");
        let cfg_path = server_data.join("server.toml");
        let mut cfg = ServerConfig::load(&cfg_path).unwrap();
        cfg.timing.retry_after = Duration::from_secs(2);
        tweak(&mut cfg);
        std::fs::write(&cfg_path, cfg.to_commented_toml()).unwrap();
        let office = Office {
            bed,
            auth,
            server_data,
            agent_tokens: String::new(),
        };
        office.start_server();
        let key = office.auth.key("K-NET", seats, Duration::from_secs(86_400));
        let key_path = office.bed.data("K-NET.key");
        std::fs::write(&key_path, &key.file).unwrap();
        office.admin(&[
            "key",
            "import",
            key_path.to_str().unwrap(),
            "--assign-everyone",
        ]);
        let mut office = office;
        office.agent_tokens = office
            .admin(&["token", "create", "--role", "agent", "--uses", "100"])["token"]
            .as_str()
            .unwrap()
            .to_owned();
        Some(office)
    }

    fn start_server(&self) {
        self.bed
            .spawn(
                "server",
                "hq",
                &bin("outpost-server"),
                &["run", "--data-dir", self.server_data.to_str().unwrap()],
            )
            .unwrap();
        wait("server up", Duration::from_secs(30), || {
            self.try_admin(&["status"]).ok()
        });
    }

    fn try_admin(&self, args: &[&str]) -> Result<Value, String> {
        let mut a = vec![
            bin("outpost-server").to_str().unwrap().to_owned(),
            "admin".into(),
            "--json".into(),
            "--data-dir".into(),
            self.server_data.to_str().unwrap().into(),
        ];
        a.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
        match self.bed.exec("hq", &refs) {
            Ok(out) => serde_json::from_slice(&out.stdout).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn admin(&self, args: &[&str]) -> Value {
        self.try_admin(args).unwrap_or_else(|e| {
            panic!(
                "admin {args:?}: {e}\nserver log:\n{}",
                self.bed.log_tail("server", 30)
            )
        })
    }

    /// Impairs the WAN between the office and HQ (both ways): with `sch_netem` in the kernel
    /// the link itself; without it (some VMs ship without the module) a userspace relay on
    /// the internet router does the same. Returns the server address the office must dial.
    fn impair_wan(&self, loss_percent: u32, delay: &str) -> String {
        if self
            .bed
            .netem(&format!("loss {loss_percent}% delay {delay}"))
            .is_ok()
        {
            println!("WAN impaired with tc netem");
            return SERVER.to_owned();
        }
        let loss = loss_percent.to_string();
        self.bed
            .spawn(
                "wanem",
                "inet",
                &bin("outpost-wanem"),
                &[
                    "--listen",
                    "198.18.0.1:4700",
                    "--to",
                    SERVER,
                    "--loss",
                    &loss,
                    "--delay",
                    delay,
                ],
            )
            .unwrap();
        println!("sch_netem not available: WAN impaired by outpost-wanem on the internet router");
        "198.18.0.1:4700".to_owned()
    }

    /// Starts the gateway on the office LAN (or in the DMZ); returns its data directory.
    fn start_gateway(&self, tweak: impl FnOnce(&mut GatewayConfig)) -> PathBuf {
        let data = self.bed.data("gateway");
        std::fs::create_dir_all(&data).unwrap();
        let mut cfg = GatewayConfig {
            server: SERVER.into(),
            listen: format!("{GW_IP}:4701").parse().unwrap(),
            ..Default::default()
        };
        cfg.uplink.reconnect_max = Duration::from_secs(5);
        tweak(&mut cfg);
        std::fs::write(data.join("gateway.toml"), cfg.to_commented_toml()).unwrap();
        let token = self.admin(&["token", "create", "--role", "gateway"])["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let host = if cfg.uplink.mode == UplinkMode::Listen {
            "dmz"
        } else {
            "gw"
        };
        self.bed
            .spawn(
                "gateway",
                host,
                &bin("outpost-gateway"),
                &[
                    "run",
                    "--data-dir",
                    data.to_str().unwrap(),
                    "--token",
                    &token,
                ],
            )
            .unwrap();
        data
    }

    fn restart_gateway(&self, data: &std::path::Path, host: &str) {
        self.bed
            .spawn(
                "gateway",
                host,
                &bin("outpost-gateway"),
                &["run", "--data-dir", data.to_str().unwrap()],
            )
            .unwrap();
    }

    fn gateway_status(&self, data: &std::path::Path) -> Option<Value> {
        let (ok, out, _) = outpost_tests::run_bin(
            "outpost-gateway",
            &["status", "--json", "--data-dir", data.to_str().unwrap()],
        )
        .ok()?;
        ok.then(|| serde_json::from_str(&out).ok()).flatten()
    }

    fn wait_uplink_up(&self, data: &std::path::Path) -> Value {
        let limit = Duration::from_secs(60);
        let start = Instant::now();
        loop {
            if let Some(s) = self
                .gateway_status(data)
                .filter(|s| s["uplink"] == "up" && s["running"] == true)
            {
                return s;
            }
            if start.elapsed() > limit {
                panic!(
                    "gateway uplink not up after {limit:?}\ngateway log:\n{}\nserver log:\n{}",
                    self.bed.log_tail("gateway", 40),
                    self.bed.log_tail("server", 20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts agent `n` on agent host `host`; returns its data directory.
    fn start_agent(
        &self,
        n: usize,
        host: usize,
        gateway: &str,
        tweak: impl FnOnce(&mut AgentConfig),
    ) -> PathBuf {
        let data = self.bed.data(&format!("agent{n}"));
        std::fs::create_dir_all(&data).unwrap();
        let mut cfg = AgentConfig {
            gateways: vec![gateway.to_owned()],
            machine_id: format!("net-machine-{n}"),
            hostname: format!("pc{n}"),
            ..Default::default()
        };
        cfg.connect.reconnect_max = Duration::from_secs(5);
        tweak(&mut cfg);
        std::fs::write(data.join("agent.toml"), cfg.to_commented_toml()).unwrap();
        self.restart_agent(n, host, &data, Some(&self.agent_tokens));
        data
    }

    fn restart_agent(&self, n: usize, host: usize, data: &std::path::Path, token: Option<&str>) {
        let mut args = vec!["run", "--data-dir", data.to_str().unwrap()];
        if let Some(t) = token {
            args.extend(["--token", t]);
        }
        self.bed
            .spawn(
                &format!("agent{n}"),
                &format!("a{host}"),
                &bin("outpost-agent"),
                &args,
            )
            .unwrap();
    }

    fn agent_status(&self, data: &std::path::Path) -> Option<Value> {
        let (ok, out, _) = outpost_tests::run_bin(
            "outpost-agent",
            &["status", "--json", "--data-dir", data.to_str().unwrap()],
        )
        .ok()?;
        ok.then(|| serde_json::from_str(&out).ok()).flatten()
    }

    fn wait_agent(
        &self,
        what: &str,
        data: &std::path::Path,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let s = self.agent_status(data);
            if let Some(s) = s.as_ref().filter(|s| pred(s)) {
                return s.clone();
            }
            if start.elapsed() > limit {
                let name = data.file_name().unwrap().to_string_lossy().into_owned();
                panic!(
                    "timed out after {limit:?} waiting for {what} ({name}: {s:?})\nagent log:\n{}\ngateway log:\n{}",
                    self.bed.log_tail(&name, 20),
                    self.bed.log_tail("gateway", 20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn device_id(data: &std::path::Path) -> String {
        outpost_net::identity::DeviceIdentity::load(data)
            .unwrap()
            .unwrap()
            .device_id
    }

    fn push(&self, device: &str, text: &str) -> Value {
        self.admin(&[
            "push",
            "--device",
            device,
            "--kind",
            "message",
            "--message",
            text,
            "--wait",
            "20s",
        ])
    }

    fn gateway_link(&self) -> Value {
        self.admin(&["status"])["gateways"][0].clone()
    }

    fn devices(&self) -> HashMap<String, Value> {
        self.admin(&["device", "list", "--role", "agent"])["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["device_id"].as_str().unwrap().to_owned(), d.clone()))
            .collect()
    }
}

pub(crate) fn connected(s: &Value) -> bool {
    s["state"] == "connected" && s["last_sync"].as_i64().unwrap_or(0) > 0
}
