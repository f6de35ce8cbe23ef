//! The in-process gateway of the tests: enrolled with a server (or several instances of one,
//! P2), started, restarted on the same office port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use outpost_gateway::{GatewayConfig, GatewayHandle};

use crate::{PATIENCE, Server, rand_id, within};

/// A gateway running in-process.
pub struct Gateway {
    /// The running gateway.
    pub handle: Option<GatewayHandle>,
    /// Data directory.
    pub data: PathBuf,
    _dir: tempfile::TempDir,
    config: GatewayConfig,
}

/// Gateway config for tests: fast reconnects.
pub fn test_gateway_config(server: SocketAddr) -> GatewayConfig {
    let mut c = GatewayConfig {
        server: outpost_net::config::Addresses::one(server.to_string()),
        listen: "127.0.0.1:0".parse().expect("literal"),
        ..Default::default()
    };
    c.uplink.reconnect_initial = Duration::from_millis(200);
    c.uplink.reconnect_max = Duration::from_secs(2);
    c.uplink.report_interval = Duration::from_secs(5);
    c
}

impl Gateway {
    /// Enrolls a gateway with the server and starts it.
    pub async fn start(
        server: &Server,
        opts: impl FnOnce(&mut outpost_gateway::StartOptions, &mut GatewayConfig),
    ) -> Gateway {
        let token = server.token("gateway", 1).await;
        Gateway::start_at(&[server.addr()], &token, opts).await
    }

    /// Enrolls a gateway with the first of `servers` (a deployment's instances, P2) and starts
    /// it with all of them as its server list.
    pub async fn start_at(
        servers: &[SocketAddr],
        token: &str,
        opts: impl FnOnce(&mut outpost_gateway::StartOptions, &mut GatewayConfig),
    ) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("gateway");
        let token = outpost_proto::token::Token::parse(token).expect("token");
        let inv = outpost_net::identity::inventory(
            Some("gw-host"),
            Some(&format!("gw-{}", rand_id())),
            &data,
            "test",
        );
        outpost_net::identity::enroll(
            &data,
            outpost_net::identity::EnrollVia::Server(servers[0]),
            &token,
            outpost_proto::pb::v1::Role::Gateway,
            inv,
        )
        .await
        .expect("gateway enroll");
        let mut config = test_gateway_config(servers[0]);
        config.server =
            outpost_net::config::Addresses(servers.iter().map(|s| s.to_string()).collect());
        let mut so = outpost_gateway::StartOptions::default();
        opts(&mut so, &mut config);
        so.config = Some(config.clone());
        let handle = outpost_gateway::start(&data, so)
            .await
            .expect("gateway start");
        if config.uplink.mode == outpost_gateway::config::UplinkMode::Dial {
            within("gateway uplink", handle.wait_uplink()).await;
        }
        // A restart comes back on the same office port, as a deployed gateway would.
        config.listen = handle.addr();
        Gateway {
            handle: Some(handle),
            data,
            _dir: dir,
            config,
        }
    }

    /// The running gateway.
    pub fn h(&self) -> &GatewayHandle {
        self.handle.as_ref().expect("gateway running")
    }

    /// Office-side address.
    pub fn addr(&self) -> SocketAddr {
        self.h().addr()
    }

    /// Stops it.
    pub async fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }

    /// Starts it again (same identity, same office port). The port was free while the gateway
    /// was down, and another test's short-lived socket may have taken it meanwhile: binding is
    /// retried for a while.
    pub async fn boot(&mut self, server: SocketAddr) {
        let mut cfg = self.config.clone();
        cfg.server = outpost_net::config::Addresses::one(server.to_string());
        let started = std::time::Instant::now();
        let h = loop {
            let r = outpost_gateway::start(
                &self.data,
                outpost_gateway::StartOptions {
                    config: Some(cfg.clone()),
                    ..Default::default()
                },
            )
            .await;
            match r {
                Err(outpost_gateway::node::StartError::Listen(
                    outpost_net::endpoint::ListenError::Bind { source, .. },
                )) if source.kind() == std::io::ErrorKind::AddrInUse
                    && started.elapsed() < PATIENCE / 2 =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                r => break r.expect("gateway start"),
            }
        };
        self.handle = Some(h);
    }
}

impl Gateway {
    /// Writes the gateway's configuration to its data directory and runs the real
    /// `outpost-gateway` binary on it (the in-process gateway must be stopped first).
    pub fn spawn_process(&self) -> crate::KillOnDrop {
        let path = outpost_gateway::node::config_path(&self.data);
        std::fs::write(
            &path,
            toml::to_string(&self.config).expect("config as TOML"),
        )
        .expect("write gateway.toml");
        let child = std::process::Command::new(crate::bin("outpost-gateway"))
            .args(["run", "--data-dir"])
            .arg(&self.data)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawn outpost-gateway");
        crate::KillOnDrop(child)
    }

    /// The gateway's status file (written by a gateway process).
    pub fn status_file(&self) -> Option<outpost_gateway::status::GatewayStatus> {
        outpost_gateway::status::read(&self.data)
            .ok()
            .map(|(s, _)| s)
    }
}
