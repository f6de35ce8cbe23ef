//! `server.toml`: the server's configuration, written with documented defaults at first start
//! (O1, O5). Unknown keys are refused; durations are humantime (`"15s"`, `"7d"`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use outpost_net::config::{ConfigError, Validate, ensure};
use outpost_net::endpoint::SocketOptions;
use serde::{Deserialize, Serialize};

use crate::store::Durability;

/// Default UDP port of `outpost-server`.
pub const DEFAULT_PORT: u16 = 4700;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// UDP address the server listens on (all roles share it; ALPN tells them apart).
    pub listen: SocketAddr,
    /// Name of the deployment, in the CA's name.
    pub deployment: String,
    /// Extra DNS names or IP addresses put in the server certificate at init, besides
    /// `outpost-server` (which is what clients verify).
    pub server_names: Vec<String>,
    /// The licence authority's public key (`outpost-authority-ed25519:…`), set at init.
    pub authority_public_key: String,
    /// Address agents, gateways and admins are told to reach the server at (the admin bundle
    /// is written with it). Empty: the first of `server_names` with the listening port, else
    /// `listen`.
    pub public_address: String,
    /// Gateways agents should use, in order (T8), handed out at sync.
    pub gateways: Vec<String>,
    /// The deployment's server instances (P2), handed out at sync: agents try them after their
    /// gateways and fail over along the list. Empty: on a shared PostgreSQL store with two or
    /// more instances running, their addresses (each one's `public_address`); else none.
    pub server_addresses: Vec<String>,
    /// Gateways in a DMZ that the server dials (T4): their `uplink.listen` addresses.
    pub dmz_gateways: Vec<String>,
    /// Limits (T9).
    pub limits: Limits,
    /// Timing.
    pub timing: Timing,
    /// Store.
    pub store: StoreConfig,
    /// Licence manager.
    pub licensing: Licensing,
    /// Notification delivery (L14).
    pub notifications: Notifications,
    /// Certificate lifetimes (S9).
    pub certificates: Certificates,
    /// UDP socket (T10).
    pub socket: SocketOptions,
    /// Server hierarchy and leases (H1–H9).
    pub hierarchy: Hierarchy,
    /// Prometheus metrics (O7).
    pub metrics: outpost_net::metrics::MetricsConfig,
    /// The web console (O8).
    pub console: Console,
}

/// The web console (O8): HTTPS on its own TCP port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Console {
    /// TCP address of the console, e.g. `0.0.0.0:4443`. Not set: no console.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain (leaf first) and PKCS#8 key of an organisation's certificate for
    /// the console; empty: the server's certificate from the deployment CA (browsers then need
    /// that CA, `ca.crt` in the data directory, imported once).
    pub cert_file: String,
    /// See `cert_file`.
    pub key_file: String,
    /// The address put in login links (`https://console.example.com:4443`); empty: `https://`
    /// and the host of the server's public address with the console's port.
    pub public_url: String,
    /// How long a login link printed by `admin console-login` stays valid (it works once).
    #[serde(with = "humantime_serde")]
    pub login_ttl: Duration,
    /// A session unused this long ends.
    #[serde(with = "humantime_serde")]
    pub session_idle: Duration,
    /// A session ends this long after sign-in however it is used.
    #[serde(with = "humantime_serde")]
    pub session_max: Duration,
}

impl Default for Console {
    fn default() -> Self {
        Console {
            listen: None,
            cert_file: String::new(),
            key_file: String::new(),
            public_url: String::new(),
            login_ttl: Duration::from_secs(600),
            session_idle: Duration::from_secs(1800),
            session_max: Duration::from_secs(12 * 3600),
        }
    }
}

/// Server hierarchy settings (H6–H8). Relations themselves are added with `admin server
/// add-…` and kept in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hierarchy {
    /// Auto-renewal period of leases this server gives (H6): each grant is good for this long
    /// and renewed while the neighbour is there; a neighbour that vanishes gives the seats
    /// back after at most this long. `lease give --period` overrides it per lease.
    #[serde(with = "humantime_serde")]
    pub lease_period: Duration,
    /// How often both ends of a link compare seats given and received (H8).
    #[serde(with = "humantime_serde")]
    pub sync_period: Duration,
    /// Periodic relations (H7): connect this long before a lease runs out, so it is renewed
    /// in time even when the relation's interval is longer than the lease period; `0s` off.
    #[serde(with = "humantime_serde")]
    pub early_renewal: Duration,
    /// For the servers below this one (H9): how often they send their licence-usage report.
    #[serde(with = "humantime_serde")]
    pub report_period: Duration,
    /// For the servers below this one (H9): devices active within this period are counted in
    /// reports; `0s` counts every device.
    #[serde(with = "humantime_serde")]
    pub active_period: Duration,
    /// Leases that follow demand (a key assigned to `server:<name>`, L4; an auto-distributed
    /// key given to a secondary, L8): how often a server tells the neighbours it receives from
    /// what its devices need when that changed, and how often a giver re-checks neighbours
    /// whose devices lack seats against the seats that freed (L9: about once a minute).
    #[serde(with = "humantime_serde")]
    pub demand_check: Duration,
}

impl Default for Hierarchy {
    fn default() -> Self {
        Hierarchy {
            lease_period: Duration::from_secs(3600),
            sync_period: Duration::from_secs(300),
            early_renewal: Duration::from_secs(600),
            report_period: Duration::from_secs(3600),
            active_period: Duration::ZERO,
            demand_check: Duration::from_secs(60),
        }
    }
}

/// Limits (T9).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Concurrent agent sessions (direct and relayed) before new ones are refused with a
    /// retry-after.
    pub max_sessions: u32,
    /// Concurrent relayed sessions on one gateway uplink.
    pub max_sessions_per_gateway: u32,
    /// Largest frame accepted, bytes.
    pub max_frame: usize,
    /// Events accepted in one sync; the agent sends the rest next time.
    pub max_events_per_sync: u32,
    /// Pushes queued per live session before further ones are counted as dropped (they stay
    /// queued in the database and are delivered at the next connect).
    pub push_queue: usize,
}

/// Timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// How often agents sync while connected.
    #[serde(with = "humantime_serde")]
    pub sync_interval: Duration,
    /// Lifetime of a licence grant (L7); never beyond the key's expiry.
    #[serde(with = "humantime_serde")]
    pub grant_ttl: Duration,
    /// A connection silent this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Base of the retry-after sent when overloaded or shutting down; clients are told
    /// base + a random part of the same size, so they do not return as one spike (T6).
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// How long a push for an offline device stays deliverable.
    #[serde(with = "humantime_serde")]
    pub push_ttl: Duration,
    /// Update manifests (D1) expire this long after they are signed; the server signs a fresh
    /// revision of the same files when less than half of it is left, so devices notice a
    /// repository that stopped moving (freeze) within this time.
    #[serde(with = "humantime_serde")]
    pub manifest_ttl: Duration,
    /// How long an admin push waits for acknowledgements before answering.
    #[serde(with = "humantime_serde")]
    pub push_wait: Duration,
    /// Time a session may take for its handshake and licence check.
    #[serde(with = "humantime_serde")]
    pub session_setup_timeout: Duration,
    /// Grace period for sessions to end at shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

/// Licence manager settings (L5, L8, L9, L11).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Licensing {
    /// A device whose active key expires within this window gets a reserve key (L5, L8), and
    /// the key's "expiring soon" notification goes out.
    #[serde(with = "humantime_serde")]
    pub expiring_soon: Duration,
    /// Seats of agents not seen for this long are freed for others (L9); "0s" never.
    #[serde(with = "humantime_serde")]
    pub reclaim_after: Duration,
    /// How often the licence clock runs (expiry notifications, reclaim, scheduled renewal).
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// Licence authority service (`outpost-server authority serve`), host:port; empty: none.
    pub authority: String,
    /// SHA-256 (hex) of the authority service's TLS certificate, printed by `authority serve`.
    pub authority_tls_sha256: String,
    /// The scheduled repository-update task also updates licence keys (L11).
    pub update_licence_keys: bool,
    /// How often the repository-update task runs.
    #[serde(with = "humantime_serde")]
    pub repository_update_interval: Duration,
}

impl Default for Licensing {
    fn default() -> Self {
        Licensing {
            expiring_soon: Duration::from_secs(14 * 86_400),
            reclaim_after: Duration::from_secs(30 * 86_400),
            check_interval: Duration::from_secs(60),
            authority: String::new(),
            authority_tls_sha256: String::new(),
            update_licence_keys: true,
            repository_update_interval: Duration::from_secs(86_400),
        }
    }
}

/// Certificate lifetimes (S9). Devices renew over a live session once two thirds of their
/// certificate's lifetime has passed; the server renews its own the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Certificates {
    /// Lifetime of agent, gateway and admin certificates issued from now on.
    #[serde(with = "humantime_serde")]
    pub device_lifetime: Duration,
    /// Lifetime of the server's own certificate.
    #[serde(with = "humantime_serde")]
    pub server_lifetime: Duration,
}

impl Default for Certificates {
    fn default() -> Self {
        Certificates {
            device_lifetime: Duration::from_secs(365 * 86_400),
            server_lifetime: Duration::from_secs(365 * 86_400),
        }
    }
}

/// Where notifications go (L14). Every notification is stored in the server's log first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Notifications {
    /// Executable run after each notification, given the event as JSON on stdin; empty: none.
    pub hook: String,
    /// The hook is killed after this long; a failure is logged, never fatal.
    #[serde(with = "humantime_serde")]
    pub hook_timeout: Duration,
    /// Channels per event kind ("log", "hook"); kinds not listed use `default_channels`.
    pub channels: std::collections::BTreeMap<String, Vec<String>>,
    /// Channels for kinds not listed in `channels`.
    pub default_channels: Vec<String>,
}

impl Default for Notifications {
    fn default() -> Self {
        Notifications {
            hook: String::new(),
            hook_timeout: Duration::from_secs(10),
            channels: Default::default(),
            default_channels: vec!["log".into(), "hook".into()],
        }
    }
}

/// Store settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `full`: every commit survives power loss; `normal`: survives a process crash, faster.
    /// (The embedded store; PostgreSQL's durability is the database's own setting.)
    pub durability: Durability,
    /// Where the store is: empty for the embedded SQLite file in the data directory (P1), or a
    /// PostgreSQL URL, `postgres://user:password@host:5432/outpost` (P2: several server
    /// instances may share it).
    pub url: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            deployment: "outpost".into(),
            server_names: vec![],
            authority_public_key: String::new(),
            public_address: String::new(),
            gateways: vec![],
            server_addresses: vec![],
            dmz_gateways: vec![],
            limits: Limits::default(),
            timing: Timing::default(),
            store: StoreConfig::default(),
            licensing: Licensing::default(),
            notifications: Notifications::default(),
            certificates: Certificates::default(),
            socket: SocketOptions::default(),
            hierarchy: Hierarchy::default(),
            metrics: Default::default(),
            console: Default::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 20_000,
            max_sessions_per_gateway: outpost_net::transport::DEFAULT_UPLINK_STREAMS,
            max_frame: outpost_proto::frame::DEFAULT_MAX_FRAME,
            max_events_per_sync: 500,
            push_queue: 64,
        }
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            sync_interval: Duration::from_secs(300),
            grant_ttl: Duration::from_secs(7 * 86_400),
            idle_timeout: Duration::from_secs(60),
            retry_after: Duration::from_secs(5),
            push_ttl: Duration::from_secs(86_400),
            manifest_ttl: Duration::from_secs(7 * 86_400),
            push_wait: Duration::from_secs(5),
            session_setup_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            durability: Durability::Full,
            url: String::new(),
        }
    }
}

impl Validate for ServerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        ensure(self.timing.manifest_ttl >= Duration::from_secs(1), || {
            "timing.manifest_ttl must be at least 1s (an update manifest must live to reach devices)".into()
        })?;
        ensure(self.limits.max_sessions > 0, || {
            "limits.max_sessions must be at least 1".into()
        })?;
        ensure(
            self.store.url.is_empty() || crate::store::backend::is_postgres(&self.store.url),
            || {
                // Not echoed: it may hold a password.
                "store.url is not a PostgreSQL URL: leave it empty for the embedded store, or \
                 give postgres://user:password@host:5432/database"
                    .to_owned()
            },
        )?;
        ensure(self.limits.max_frame >= 4096, || {
            "limits.max_frame must be at least 4096 bytes".into()
        })?;
        ensure(self.timing.sync_interval >= Duration::from_secs(1), || {
            "timing.sync_interval must be at least 1s".into()
        })?;
        ensure(self.timing.grant_ttl >= Duration::from_secs(1), || {
            "timing.grant_ttl must be at least 1s".into()
        })?;
        ensure(self.timing.idle_timeout >= Duration::from_secs(2), || {
            "timing.idle_timeout must be at least 2s".into()
        })?;
        for (key, v) in [
            (
                "certificates.device_lifetime",
                self.certificates.device_lifetime,
            ),
            (
                "certificates.server_lifetime",
                self.certificates.server_lifetime,
            ),
        ] {
            ensure(
                v >= Duration::from_secs(3) && v <= Duration::from_secs(20 * 365 * 86_400),
                || {
                    format!(
                        "{key} must be between 3s and 20 years (a year is the default; under a day is for tests)"
                    )
                },
            )?;
        }
        for ch in self
            .notifications
            .channels
            .values()
            .flatten()
            .chain(&self.notifications.default_channels)
        {
            ensure(ch == "log" || ch == "hook", || {
                format!("notifications: unknown channel {ch:?} (use \"log\" or \"hook\")")
            })?;
        }
        if !self.licensing.authority.is_empty() {
            ensure(
                self.licensing.authority_tls_sha256.len() == 64
                    && hex::decode(&self.licensing.authority_tls_sha256).is_ok(),
                || {
                    "licensing.authority_tls_sha256 must be the 64 hex digits printed by `outpost-server authority serve`".into()
                },
            )?;
        }
        if !self.authority_public_key.is_empty() {
            outpost_proto::licence::key::decode_public_key(&self.authority_public_key)
                .map_err(|e| ConfigError::invalid(format!("authority_public_key: {e}")))?;
        }
        ensure(
            self.hierarchy.lease_period >= Duration::from_secs(2),
            || "hierarchy.lease_period must be at least 2s (an hour is the default)".into(),
        )?;
        ensure(
            self.hierarchy.report_period >= Duration::from_secs(1),
            || "hierarchy.report_period must be at least 1s".into(),
        )?;
        ensure(
            self.hierarchy.demand_check >= Duration::from_secs(1),
            || "hierarchy.demand_check must be at least 1s (a minute is the default)".into(),
        )?;
        ensure(self.hierarchy.sync_period >= Duration::from_secs(1), || {
            "hierarchy.sync_period must be at least 1s".into()
        })?;
        outpost_net::config::check_addresses("gateways", &self.gateways)?;
        outpost_net::config::check_addresses("dmz_gateways", &self.dmz_gateways)
    }
}

impl ServerConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        outpost_net::config::load(path)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Validate::validate(self)
    }

    /// The file as written at first start: every key with its default and a comment.
    pub fn to_commented_toml(&self) -> String {
        outpost_net::config::commented(
            "outpost-server configuration. Every key is optional; shown values are the defaults\n\
             unless set at init. Durations: \"30s\", \"5m\", \"7d\". See README \"Configuration\".",
            self,
        )
    }

    /// The address clients should dial.
    ///
    /// `public_address` when set; else, for a server listening on every address, the first
    /// `--server-name` (which other hosts can resolve) with the listening port; else the
    /// listening address itself (loopback for an unspecified one).
    pub fn client_address(&self) -> String {
        if !self.public_address.is_empty() {
            return self.public_address.clone();
        }
        if self.listen.ip().is_unspecified()
            && let Some(name) = self.server_names.first()
        {
            return match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SocketAddr::new(ip, self.listen.port()).to_string(),
                Err(_) => format!("{name}:{}", self.listen.port()),
            };
        }
        let ip = if self.listen.ip().is_unspecified() {
            if self.listen.is_ipv6() {
                std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
            } else {
                std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST)
            }
        } else {
            self.listen.ip()
        };
        SocketAddr::new(ip, self.listen.port()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn o1_admin_bundle_address_reaches_the_server_from_other_hosts() {
        let mut c = ServerConfig::default();
        assert_eq!(c.client_address(), "127.0.0.1:4700", "nothing better known");
        c.server_names = vec!["hq.example.com".into(), "10.0.0.5".into()];
        assert_eq!(c.client_address(), "hq.example.com:4700");
        c.server_names = vec!["10.0.0.5".into()];
        assert_eq!(c.client_address(), "10.0.0.5:4700");
        c.listen = "192.168.1.2:4800".parse().unwrap();
        assert_eq!(
            c.client_address(),
            "192.168.1.2:4800",
            "a specific listen address wins"
        );
        c.public_address = "gw.example.com:443".into();
        assert_eq!(c.client_address(), "gw.example.com:443");
    }

    #[test]
    fn o5_defaults_round_trip_and_unknown_keys_are_refused() {
        let cfg = ServerConfig::default();
        let text = cfg.to_commented_toml();
        let back: ServerConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, cfg);
        let err = toml::from_str::<ServerConfig>("listen = \"0.0.0.0:1\"\nlisten_port = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_port"), "{err}");
        let bad: ServerConfig = toml::from_str("[timing]\nsync_interval = \"0s\"\n").unwrap();
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("sync_interval")
        );
        assert!(toml::from_str::<ServerConfig>("[timing]\nsync_interval = \"soon\"\n").is_err());
    }
}
