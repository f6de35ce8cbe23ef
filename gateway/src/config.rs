//! `gateway.toml`: the gateway's configuration, written with documented defaults at first
//! start. Unknown keys are refused; durations are humantime.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use outpost_net::config::{ConfigError, Validate, ensure};
use outpost_net::endpoint::SocketOptions;
use serde::{Deserialize, Serialize};

/// Default office-side UDP port of `outpost-gateway`.
pub const DEFAULT_PORT: u16 = 4701;
/// Default UDP port a DMZ gateway listens on for the server.
pub const DEFAULT_UPLINK_PORT: u16 = 4702;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// The server's address (`host:port`), or the deployment's server instances as a list
    /// (`["hq-1:4700", "hq-2:4700"]`, P2); the uplink dials one of them (T3) and moves to the
    /// next when it is gone. Each gateway starts at a place in the list chosen by its device
    /// id, so the offices spread over the instances.
    pub server: outpost_net::config::Addresses,
    /// Office-side UDP address agents connect to.
    pub listen: SocketAddr,
    /// Machine identity override (default `/etc/machine-id`). The server keeps one record per
    /// machine identity (S7): give cloned machines their own.
    pub machine_id: String,
    /// Uplink behaviour.
    pub uplink: UplinkConfig,
    /// Limits (T9).
    pub limits: Limits,
    /// Waits and grace periods.
    pub timing: Timing,
    /// UDP socket of the office listener (T10).
    pub socket: SocketOptions,
    /// The update cache (D2).
    pub cache: crate::cache::CacheConfig,
    /// Network discovery of the office (D3).
    pub discovery: crate::discovery::DiscoveryConfig,
    /// Prometheus metrics (O7).
    pub metrics: outpost_net::metrics::MetricsConfig,
}

/// Waits and grace periods of the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// How long the server has to answer the uplink's hello before the uplink is re-dialled.
    #[serde(with = "humantime_serde")]
    pub uplink_hello_timeout: Duration,
    /// How long an agent's stream waits for a stream on the uplink (flow control) before it
    /// is refused as "no uplink".
    #[serde(with = "humantime_serde")]
    pub relay_open_timeout: Duration,
    /// Base of the retry-after an agent is told when the gateway is at a limit (plus up to
    /// the same again at random, so agents spread out, T6).
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// At shutdown, relayed sessions get this long to end, then the endpoints this long
    /// again to deliver their closes.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            uplink_hello_timeout: Duration::from_secs(30),
            relay_open_timeout: Duration::from_secs(10),
            retry_after: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Who opens the uplink connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UplinkMode {
    /// The gateway dials `server` (T3): nothing in the office needs an inbound port.
    Dial,
    /// The server dials the gateway at `uplink.listen` (a gateway in a DMZ, T4).
    Listen,
}

/// Uplink behaviour (T3, T4, T6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkConfig {
    /// `dial` (default) or `listen` (DMZ).
    pub mode: UplinkMode,
    /// UDP address the server dials in `listen` mode (put it in the server's `dmz_gateways`).
    pub listen: SocketAddr,
    /// QUIC keep-alive interval: below the office NAT's UDP mapping timeout.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// The uplink is considered dead after this long without packets: above the keep-alive.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// First reconnect delay (upper bound; the actual delay is random below it).
    #[serde(with = "humantime_serde")]
    pub reconnect_initial: Duration,
    /// Largest reconnect delay.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// An uplink up this long resets the reconnect backoff.
    #[serde(with = "humantime_serde")]
    pub healthy_after: Duration,
    /// How often the gateway reports to the server.
    #[serde(with = "humantime_serde")]
    pub report_interval: Duration,
}

/// Limits (T9).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Concurrent agent connections.
    pub max_agents: u32,
    /// Concurrent relayed sessions (keep at or below the server's max_sessions_per_gateway).
    pub max_sessions: u32,
    /// Concurrent relayed enrollments.
    pub max_enrollments: u32,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            server: Default::default(),
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            machine_id: String::new(),
            uplink: UplinkConfig::default(),
            limits: Limits::default(),
            timing: Timing::default(),
            socket: SocketOptions::default(),
            cache: Default::default(),
            discovery: Default::default(),
            metrics: Default::default(),
        }
    }
}

impl Default for UplinkConfig {
    fn default() -> Self {
        UplinkConfig {
            mode: UplinkMode::Dial,
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_UPLINK_PORT)),
            keep_alive: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            healthy_after: Duration::from_secs(30),
            report_interval: Duration::from_secs(30),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_agents: 10_000,
            max_sessions: outpost_net::transport::DEFAULT_UPLINK_STREAMS,
            max_enrollments: 16,
        }
    }
}

impl Validate for GatewayConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        ensure(
            !self.server.is_empty() || self.uplink.mode == UplinkMode::Listen,
            || "server is not set: give the server's host:port (e.g. hq.example.com:4700)".into(),
        )?;
        if !self.server.is_empty() {
            outpost_net::config::check_addresses("server", self.server.iter())?;
        }
        ensure(self.uplink.keep_alive < self.uplink.idle_timeout, || {
            format!(
                "uplink.keep_alive ({:?}) must be shorter than uplink.idle_timeout ({:?})",
                self.uplink.keep_alive, self.uplink.idle_timeout
            )
        })?;
        ensure(self.uplink.keep_alive >= Duration::from_millis(100), || {
            "uplink.keep_alive must be at least 100ms".into()
        })?;
        ensure(
            self.uplink.reconnect_initial <= self.uplink.reconnect_max,
            || "uplink.reconnect_initial must not exceed uplink.reconnect_max".into(),
        )?;
        self.discovery.parsed().map_err(ConfigError::invalid)?;
        ensure(
            self.discovery.concurrency > 0
                && self.discovery.rate > 0
                && self.discovery.interval >= Duration::from_secs(1)
                && !self.discovery.timeout.is_zero(),
            || {
                "discovery.concurrency and discovery.rate must be at least 1, \
                 discovery.interval at least 1s, discovery.timeout above 0"
                    .into()
            },
        )?;
        ensure(
            self.cache.max_mib > 0 && self.cache.revisions_kept > 0,
            || "cache.max_mib and cache.revisions_kept must be at least 1".into(),
        )?;
        if let Some(p) = self.cache.sources.iter().find(|p| !p.is_absolute()) {
            return Err(ConfigError::invalid(format!(
                "cache.sources: {} is not an absolute path (give the directory's full path)",
                p.display()
            )));
        }
        ensure(
            self.limits.max_sessions > 0 && self.limits.max_agents > 0,
            || "limits must be at least 1".into(),
        )?;
        ensure(
            !self.timing.uplink_hello_timeout.is_zero()
                && !self.timing.relay_open_timeout.is_zero(),
            || "timing.uplink_hello_timeout and timing.relay_open_timeout must be above 0s".into(),
        )
    }
}

impl GatewayConfig {
    /// Reads and validates.
    pub fn load(path: &Path) -> Result<GatewayConfig, ConfigError> {
        outpost_net::config::load(path)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Validate::validate(self)
    }

    /// The file as written at first start.
    pub fn to_commented_toml(&self) -> String {
        outpost_net::config::commented(HEADER, self)
    }
}

/// The comment at the top of `gateway.toml`.
pub const HEADER: &str = "outpost-gateway configuration. Shown values are defaults unless set at first start.\n\
     Durations: \"15s\", \"1m\". See README \"Configuration\".";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn o5_gateway_config_defaults_and_validation() {
        let mut cfg = GatewayConfig {
            server: "hq:4700".into(),
            ..Default::default()
        };
        let back: GatewayConfig = toml::from_str(&cfg.to_commented_toml()).unwrap();
        assert_eq!(back, cfg);
        assert_eq!(
            cfg.uplink.keep_alive,
            Duration::from_secs(15),
            "T3 default keep-alive"
        );
        cfg.uplink.keep_alive = Duration::from_secs(60);
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("keep_alive")
        );
        assert!(toml::from_str::<GatewayConfig>("srever = \"x\"").is_err());
    }

    #[test]
    fn d3_d2_bad_discovery_and_cache_settings_are_refused_naming_the_key() {
        let base = GatewayConfig {
            server: "hq:4700".into(),
            ..Default::default()
        };
        let err = |f: &dyn Fn(&mut GatewayConfig)| {
            let mut c = base.clone();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        let e = err(&|c| c.discovery.ranges = vec!["10.0.0.0/8".into()]);
        assert!(
            e.contains("discovery.ranges") && e.contains("allow_wide"),
            "{e}"
        );
        let e = err(&|c| c.discovery.ranges = vec!["10.0.0/24".into()]);
        assert!(e.contains("not an IPv4 range"), "{e}");
        let e = err(&|c| c.discovery.rate = 0);
        assert!(e.contains("discovery.rate"), "{e}");
        let e = err(&|c| c.cache.sources = vec!["mirror".into()]);
        assert!(e.contains("cache.sources") && e.contains("absolute"), "{e}");
        let e = err(&|c| c.cache.max_mib = 0);
        assert!(e.contains("cache.max_mib"), "{e}");
        let mut wide = base.clone();
        wide.discovery.ranges = vec!["10.0.0.0/8".into()];
        wide.discovery.allow_wide = true;
        assert!(wide.validate().is_ok());
    }
}
