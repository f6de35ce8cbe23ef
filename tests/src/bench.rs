//! Benchmark plumbing: the bare-quinn baselines measured in the same run, process
//! measurements (RSS, CPU) and the results file.
//!
//! The baselines use the same rustls configuration (ring, TLS 1.3, mutual certificates from an
//! rcgen CA) and quinn's default transport settings, so a ratio isolates what Outpost adds.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_proto::pki::{self, Ca, CertRole, ClientAuth, Identity, Trust};
use serde::Serialize;

/// One row of `target/bench/results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    /// Fixed scenario name.
    pub name: String,
    /// Measured value.
    pub value: f64,
    /// Unit of `value`.
    pub unit: String,
    /// Bare-quinn figure in the same unit, same run (None where there is no baseline).
    pub baseline: Option<f64>,
    /// value / baseline.
    pub ratio: Option<f64>,
    /// The target (a ratio or an absolute value; see `target_kind`).
    pub target: f64,
    /// "ratio>=", "ratio>", "ratio<=", "value<=", "value>=".
    pub target_kind: String,
    /// Whether the target is met.
    pub meets: bool,
    /// Further figures (p50, sizes, counts).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ScenarioResult {
    /// Builds a row and decides `meets`.
    pub fn new(
        name: &str,
        value: f64,
        unit: &str,
        baseline: Option<f64>,
        target: f64,
        target_kind: &str,
    ) -> Self {
        let ratio = baseline.filter(|b| *b > 0.0).map(|b| value / b);
        let meets = match target_kind {
            "ratio>=" => ratio.is_some_and(|r| r >= target),
            "ratio<=" => ratio.is_some_and(|r| r <= target),
            "ratio>" => ratio.is_some_and(|r| r > target),
            "value<=" => value <= target,
            _ => value >= target,
        };
        ScenarioResult {
            name: name.into(),
            value,
            unit: unit.into(),
            baseline,
            ratio,
            target,
            target_kind: target_kind.into(),
            meets,
            extra: Default::default(),
        }
    }

    /// Adds an extra figure.
    pub fn with(mut self, key: &str, v: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.into(), v.into());
        self
    }
}

/// Writes the results file and returns the human table.
pub fn write_results(
    path: &Path,
    rows: &[ScenarioResult],
    machine: &str,
) -> anyhow::Result<String> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let doc = serde_json::json!({ "machine": machine, "scenarios": rows });
    std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    let mut t = format!(
        "{:<16} {:>14} {:<12} {:>14} {:>8} {:>12} {:>6}\n",
        "scenario", "value", "unit", "baseline", "ratio", "target", "meets"
    );
    for r in rows {
        t.push_str(&format!(
            "{:<16} {:>14.2} {:<12} {:>14} {:>8} {:>12} {:>6}\n",
            r.name,
            r.value,
            r.unit,
            figure(r.baseline),
            figure(r.ratio),
            format!("{} {}", r.target_kind, r.target),
            if r.meets { "yes" } else { "NO" }
        ));
    }
    Ok(t)
}

/// An optional figure with two decimals, "-" when absent.
pub fn figure(v: Option<f64>) -> String {
    v.map(|b| format!("{b:.2}")).unwrap_or_else(|| "-".into())
}

/// A short description of this machine for the results.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
                    / 1024
                    / 1024
            })
        })
        .unwrap_or(0);
    format!(
        "{} cpu(s) {cpu}, {mem} GiB",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    )
}

/// Resident set size of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// CPU time (user + system) a process used so far.
pub fn cpu_time(pid: u32) -> Duration {
    let ticks = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(100);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis((utime + stime) * 1000 / ticks)
}

/// Percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Certificates for a bare quinn pair.
pub struct BarePki {
    /// CA certificate.
    pub ca: rustls_pki_types::CertificateDer<'static>,
    /// Server identity.
    pub server: Identity,
    /// Client identity (shared by all bare clients; the cost of a handshake does not depend
    /// on which certificate is presented).
    pub client: Identity,
}

impl BarePki {
    /// Generates a CA with a server and a client certificate.
    pub fn generate() -> BarePki {
        let now = outpost_net::unix_now();
        let ca = Ca::generate("bench", now).expect("ca");
        let server = Identity::from_pem(
            &ca.issue(CertRole::Server, "bench-server", &[], now, 86_400)
                .expect("server cert"),
            "server",
        )
        .expect("id");
        let client = Identity::from_pem(
            &ca.issue(CertRole::Agent, "bench-client", &[], now, 86_400)
                .expect("client cert"),
            "client",
        )
        .expect("id");
        BarePki {
            ca: ca.cert_der().clone(),
            server,
            client,
        }
    }

    /// Writes PEM files to `dir` for a child process.
    pub fn save(&self, dir: &Path) {
        let chain: String = self
            .server
            .chain
            .iter()
            .map(|c| pki::cert_to_pem(c))
            .collect();
        std::fs::write(dir.join("bare-ca.pem"), pki::cert_to_pem(&self.ca)).unwrap();
        std::fs::write(dir.join("bare-server.pem"), chain).unwrap();
        let key = match &self.server.key {
            rustls_pki_types::PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
            _ => panic!("rcgen keys are PKCS#8"),
        };
        std::fs::write(dir.join("bare-server.key"), key).unwrap();
    }

    /// Loads what `save` wrote (server side only).
    pub fn load_server(dir: &Path) -> (rustls_pki_types::CertificateDer<'static>, Identity) {
        let ca = pki::certs_from_pem(
            &std::fs::read_to_string(dir.join("bare-ca.pem")).unwrap(),
            "ca",
        )
        .unwrap()
        .remove(0);
        let chain = pki::certs_from_pem(
            &std::fs::read_to_string(dir.join("bare-server.pem")).unwrap(),
            "chain",
        )
        .unwrap();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(
            std::fs::read(dir.join("bare-server.key")).unwrap().into(),
        );
        (ca, Identity { chain, key })
    }

    /// Client configuration with quinn's default transport (keep-alive added if asked).
    pub fn client_config(&self, keep_alive: Option<Duration>) -> quinn::ClientConfig {
        let tls = pki::client_config(
            Some(&self.client),
            &Trust::Ca(vec![self.ca.clone()]),
            &[b"bench"],
        )
        .unwrap();
        let mut c = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).unwrap(),
        ));
        if let Some(k) = keep_alive {
            let mut t = quinn::TransportConfig::default();
            t.keep_alive_interval(Some(k));
            c.transport_config(Arc::new(t));
        }
        c
    }
}

/// A bare quinn mTLS server with default transport settings. Every connection: each bidi
/// stream gets its request read and echoed back. Returns the endpoint.
pub fn bare_server(
    ca: &rustls_pki_types::CertificateDer<'static>,
    id: &Identity,
    addr: SocketAddr,
) -> quinn::Endpoint {
    let tls = pki::server_config(
        id,
        std::slice::from_ref(ca),
        &[b"bench"],
        ClientAuth::Required,
    )
    .unwrap();
    let cfg = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls)).unwrap(),
    ));
    // Same socket buffers as Outpost's endpoints: a baseline starved by kernel drops would
    // flatter every ratio.
    let ep = outpost_net::endpoint::endpoint(
        addr,
        &outpost_net::endpoint::SocketOptions::default(),
        Some(cfg),
    )
    .unwrap();
    let acc = ep.clone();
    tokio::spawn(async move {
        while let Some(inc) = acc.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = inc.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        if let Ok(req) = recv.read_to_end(1 << 16).await {
                            let _ = send.write_all(&req).await;
                            let _ = send.finish();
                            let _ = send.stopped().await;
                        }
                    });
                }
            });
        }
    });
    ep
}

/// Client endpoints shared by many simulated clients.
pub fn client_endpoints(n: usize) -> Vec<quinn::Endpoint> {
    let opts = outpost_net::endpoint::SocketOptions::default();
    (0..n)
        .map(|_| {
            outpost_net::endpoint::endpoint("0.0.0.0:0".parse().unwrap(), &opts, None).unwrap()
        })
        .collect()
}

/// One bare client: mTLS handshake, one 200-byte request echoed back, close.
async fn connect_and_request(ep: &quinn::Endpoint, cfg: quinn::ClientConfig, addr: SocketAddr) {
    let conn = ep
        .connect_with(cfg, addr, pki::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[7u8; 200]).await.unwrap();
    send.finish().unwrap();
    let resp = recv.read_to_end(1 << 16).await.unwrap();
    assert_eq!(resp.len(), 200);
    conn.close(0u32.into(), b"");
}

/// Bare baseline of `connect_storm`: `n` clients, each an mTLS handshake plus one
/// request/response, at most `concurrency` in flight at once (`n` = all released together).
/// Returns connections per second.
pub async fn bare_connect_storm(
    pki: &BarePki,
    n: usize,
    endpoints: usize,
    concurrency: usize,
) -> f64 {
    let server = bare_server(&pki.ca, &pki.server, "127.0.0.1:0".parse().unwrap());
    let addr = server.local_addr().unwrap();
    let eps = client_endpoints(endpoints);
    let cfg = pki.client_config(None);
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let ep = eps[i % eps.len()].clone();
        let cfg = cfg.clone();
        let slots = slots.clone();
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await.unwrap();
            connect_and_request(&ep, cfg, addr).await;
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("bare client");
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    server.close(0u32.into(), b"");
    rate
}

/// `bare_connect_storm` at several concurrencies (16, 64, 256 and `n`): (concurrency, rate)
/// pairs, so the ratio can be taken against the baseline at its best (SPEC §8).
pub async fn bare_connect_storm_sweep(
    pki: &BarePki,
    n: usize,
    endpoints: usize,
) -> Vec<(usize, f64)> {
    let mut levels: Vec<usize> = [16, 64, 256].into_iter().filter(|c| *c < n).collect();
    levels.push(n);
    let mut out = vec![];
    for c in levels {
        out.push((c, bare_connect_storm(pki, n, endpoints, c).await));
    }
    out
}

/// Bare baseline of `connect_latency`: `n` sequential direct connects (mTLS handshake + one
/// request/response, then close) from one client endpoint. Returns sorted latencies, ms.
pub async fn bare_connect_latency(pki: &BarePki, n: usize) -> Vec<f64> {
    let server = bare_server(&pki.ca, &pki.server, "127.0.0.1:0".parse().unwrap());
    let addr = server.local_addr().unwrap();
    let ep = client_endpoints(1).remove(0);
    let cfg = pki.client_config(None);
    let mut lat = vec![];
    for _ in 0..n {
        let t = Instant::now();
        connect_and_request(&ep, cfg.clone(), addr).await;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    server.close(0u32.into(), b"");
    lat
}

/// Bare baseline of `push_fanout`: `n` connections held; the server opens one stream per
/// connection at once and waits for the echo. Returns sorted round-trip latencies, ms.
pub async fn bare_push_fanout(pki: &BarePki, n: usize, endpoints: usize) -> Vec<f64> {
    let tls = pki::server_config(
        &pki.server,
        std::slice::from_ref(&pki.ca),
        &[b"bench"],
        ClientAuth::Required,
    )
    .unwrap();
    let cfg = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls)).unwrap(),
    ));
    let server = outpost_net::endpoint::endpoint(
        "127.0.0.1:0".parse().unwrap(),
        &outpost_net::endpoint::SocketOptions::default(),
        Some(cfg),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let eps = client_endpoints(endpoints);
    let ccfg = pki.client_config(Some(Duration::from_secs(5)));
    // The server accepts while the clients connect (an Incoming is not handshaken until
    // accepted).
    let acceptor = server.clone();
    let accepted = tokio::spawn(async move {
        let mut conns = vec![];
        for _ in 0..n {
            let inc = acceptor.accept().await.unwrap();
            conns.push(inc.await.unwrap());
        }
        conns
    });
    // Clients: echo whatever the server sends on a stream it opens.
    let mut clients = vec![];
    for i in 0..n {
        let conn = eps[i % eps.len()]
            .connect_with(ccfg.clone(), addr, pki::SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let c2 = conn.clone();
        tokio::spawn(async move {
            while let Ok((mut send, mut recv)) = c2.accept_bi().await {
                let msg = recv.read_to_end(1 << 16).await.unwrap_or_default();
                let _ = send.write_all(&msg).await;
                let _ = send.finish();
            }
        });
        clients.push(conn);
    }
    let server_conns = accepted.await.unwrap();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in server_conns {
        tasks.spawn(async move {
            let (mut send, mut recv) = c.open_bi().await.unwrap();
            send.write_all(b"sync-now push payload").await.unwrap();
            send.finish().unwrap();
            let _ = recv.read_to_end(1 << 16).await.unwrap();
            started.elapsed().as_secs_f64() * 1000.0
        });
    }
    let mut lat = vec![];
    while let Some(r) = tasks.join_next().await {
        lat.push(r.unwrap());
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    for c in clients {
        c.close(0u32.into(), b"");
    }
    server.close(0u32.into(), b"");
    lat
}
