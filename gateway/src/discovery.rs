//! Network discovery (D3): the gateway polls its office's configured address ranges — the
//! server usually cannot reach them — and reports the hosts that answer up the uplink.
//!
//! Each scan: every address of `discovery.ranges` (never one outside them, never the gateway's
//! own), at most `discovery.rate` new probes per second and `discovery.concurrency` at once. A
//! probe sends an ICMP echo (an unprivileged ICMP socket, else a raw one with `CAP_NET_RAW`,
//! else none — said once in the log) and tries a TCP connection to each of `discovery.ports`
//! (an accepted connection counts as `tcp:PORT`, a refusal as `tcp-refused`: the host
//! answered). Time-outs follow the answers seen (`outpost_proto::discovery::Timeout`). Then the
//! neighbour table (`/proc/net/arp`) gives MAC addresses, and hosts only it knows count as
//! `arp`. Reverse DNS is not done (offices rarely have PTR records for their clients; the
//! server shows devices' host names from their inventory).
//!
//! The hosts known are kept in `discovery.json`; the first report on every new uplink carries
//! all of them, later ones what each scan saw.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use outpost_proto::discovery::{self, Range, Timeout};
use outpost_proto::pb::v1::{DiscoveredHost, DiscoveryReport};
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{Mutex, Semaphore, mpsc};
use tracing::{info, warn};

use crate::node::Node;

/// `[discovery]` in `gateway.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// Ranges to poll (`192.168.1.0/24`); empty: no polling.
    pub ranges: Vec<String>,
    /// Allow ranges wider than a /16.
    pub allow_wide: bool,
    /// Time between scans.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// TCP ports tried on every address.
    pub ports: Vec<u16>,
    /// Addresses probed at once.
    pub concurrency: usize,
    /// New addresses probed per second at most.
    pub rate: u32,
    /// Longest wait for an answer (the time-out adapts below it to the answers seen).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            ranges: Vec::new(),
            allow_wide: false,
            interval: Duration::from_secs(3600),
            ports: vec![22, 80, 135, 443, 445, 3389],
            concurrency: 64,
            rate: 200,
            timeout: Duration::from_secs(1),
        }
    }
}

impl DiscoveryConfig {
    /// The ranges, checked.
    pub fn parsed(&self) -> Result<Vec<Range>, String> {
        self.ranges
            .iter()
            .map(|r| Range::parse(r, self.allow_wide).map_err(|e| format!("discovery.ranges: {e}")))
            .collect()
    }
}

/// Discovery state shared with the uplink.
pub struct Discovery {
    known: std::sync::Mutex<BTreeMap<String, DiscoveredHost>>,
    tx: mpsc::Sender<DiscoveryReport>,
    rx: Mutex<mpsc::Receiver<DiscoveryReport>>,
    /// Scans completed.
    pub scans: AtomicU64,
    /// Hosts that answered the last scan.
    pub last_hosts: AtomicU64,
    /// Reports not queued for the uplink (its queue was full); the next scan's goes.
    pub dropped: AtomicU64,
}

/// Scan reports the gateway keeps for the uplink while it is down.
pub const REPORT_QUEUE: usize = 4;

impl Discovery {
    /// Loads `discovery.json`.
    pub fn open(data: &std::path::Path) -> Discovery {
        let known: BTreeMap<String, DiscoveredHost> = std::fs::read(data.join("discovery.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<Kept>>(&b).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|k| {
                let h = k.into_host();
                (discovery::key(&h), h)
            })
            .collect();
        let (tx, rx) = mpsc::channel(REPORT_QUEUE);
        Discovery {
            known: std::sync::Mutex::new(known),
            tx,
            rx: Mutex::new(rx),
            scans: AtomicU64::new(0),
            last_hosts: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Every host known, for the first report on a new uplink.
    pub fn full_report(&self) -> DiscoveryReport {
        DiscoveryReport {
            hosts: self
                .known
                .lock()
                .expect("known lock")
                .values()
                .cloned()
                .collect(),
            full: true,
        }
    }

    /// Reports waiting for the uplink (they pile up while it is down, at most
    /// [`REPORT_QUEUE`]; a scan whose report finds the queue full is counted in `dropped`).
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// The queue of reports for the uplink (held by the uplink while it is up).
    pub fn reports(&self) -> &Mutex<mpsc::Receiver<DiscoveryReport>> {
        &self.rx
    }
}

#[derive(Serialize, Deserialize)]
struct Kept {
    ip: String,
    mac: String,
    methods: Vec<String>,
    first_seen: i64,
    last_seen: i64,
}

impl Kept {
    fn into_host(self) -> DiscoveredHost {
        DiscoveredHost {
            ip: self.ip,
            mac: self.mac,
            methods: self.methods,
            first_seen: self.first_seen,
            last_seen: self.last_seen,
        }
    }
}

/// Scans every `discovery.interval` until shutdown (nothing when no range is configured).
pub async fn run(node: Arc<Node>) {
    let cfg = node.config().discovery.clone();
    let Ok(ranges) = cfg.parsed() else { return };
    if ranges.is_empty() {
        return;
    }
    let mut icmp = Icmp::detect();
    loop {
        let started = Instant::now();
        let seen = scan(&node, &cfg, &ranges, &mut icmp).await;
        let d = node.discovery();
        let hosts = {
            let mut known = d.known.lock().expect("known lock");
            let hosts = discovery::merge(&mut known, seen, outpost_net::unix_now());
            let kept: Vec<Kept> = known
                .values()
                .map(|h| Kept {
                    ip: h.ip.clone(),
                    mac: h.mac.clone(),
                    methods: h.methods.clone(),
                    first_seen: h.first_seen,
                    last_seen: h.last_seen,
                })
                .collect();
            let bytes = serde_json::to_vec(&kept).unwrap_or_default();
            if let Err(e) = outpost_net::fsutil::write_atomic(
                &node.data().join("discovery.json"),
                &bytes,
                false,
            ) {
                warn!(error = %e, "discovery.json not saved");
            }
            hosts
        };
        d.scans.fetch_add(1, Ordering::Relaxed);
        d.last_hosts.store(hosts.len() as u64, Ordering::Relaxed);
        info!(hosts = hosts.len(), took = ?started.elapsed(), "network scan done");
        if d.tx
            .try_send(DiscoveryReport { hosts, full: false })
            .is_err()
        {
            d.dropped.fetch_add(1, Ordering::Relaxed);
        }
        node.status_changed();
        tokio::select! {
            _ = tokio::time::sleep(cfg.interval) => {}
            _ = node.runtime().cancelled() => return,
        }
    }
}

/// One pass over the ranges: (IP, MAC, methods) of the hosts that answered.
async fn scan(
    node: &Arc<Node>,
    cfg: &DiscoveryConfig,
    ranges: &[Range],
    icmp: &mut Icmp,
) -> Vec<(Ipv4Addr, String, Vec<String>)> {
    let own = outpost_net::hostinfo::local_ipv4();
    let timeout = Arc::new(std::sync::Mutex::new(Timeout::new(
        Duration::from_millis(50),
        cfg.timeout,
    )));
    let gate = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let mut pace = tokio::time::interval(Duration::from_secs(1) / cfg.rate.max(1));
    let mut tasks = tokio::task::JoinSet::new();
    let mut addrs: Vec<Ipv4Addr> = ranges.iter().flat_map(|r| r.hosts()).collect();
    addrs.sort();
    addrs.dedup();
    for ip in addrs.into_iter().filter(|ip| !own.contains(ip)) {
        tokio::select! {
            _ = pace.tick() => {}
            _ = node.runtime().cancelled() => break,
        }
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        let (timeout, ports, mode) = (timeout.clone(), cfg.ports.clone(), *icmp);
        tasks.spawn(async move {
            let r = probe(ip, &ports, &timeout, mode).await;
            drop(permit);
            r
        });
    }
    let mut answered: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Probed::Answered(ip, methods)) => {
                answered.insert(ip, methods);
            }
            Ok(Probed::IcmpUnusable(why)) if *icmp != Icmp::None => {
                warn!(%why, "ping sweep unavailable: allow unprivileged ICMP (sysctl net.ipv4.ping_group_range) or give the gateway CAP_NET_RAW; TCP probes continue");
                *icmp = Icmp::None;
            }
            _ => {}
        }
    }
    let neighbours = neighbours();
    for ip in neighbours.keys() {
        if ranges.iter().any(|r| r.contains(*ip)) && !own.contains(ip) {
            answered.entry(*ip).or_insert_with(|| vec!["arp".into()]);
        }
    }
    answered
        .into_iter()
        .map(|(ip, methods)| {
            let mac = neighbours.get(&ip).cloned().unwrap_or_default();
            (ip, mac, methods)
        })
        .collect()
}

/// Complete entries of the neighbour table: IP → MAC.
fn neighbours() -> BTreeMap<Ipv4Addr, String> {
    let text = std::fs::read_to_string("/proc/net/arp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(2)?.trim_start_matches("0x"), 16).ok()?;
            (flags & 0x2 != 0).then(|| Some((f[0].parse().ok()?, f.get(3)?.to_lowercase())))?
        })
        .collect()
}

/// How echo requests can be sent here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Icmp {
    /// An unprivileged ICMP datagram socket.
    Datagram,
    /// A raw socket (CAP_NET_RAW); replies arrive with the IP header.
    Raw,
    /// Neither.
    None,
}

impl Icmp {
    fn detect() -> Icmp {
        if Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4)).is_ok() {
            Icmp::Datagram
        } else if Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).is_ok() {
            Icmp::Raw
        } else {
            Icmp::None
        }
    }
}

enum Probed {
    Answered(Ipv4Addr, Vec<String>),
    Silent,
    IcmpUnusable(String),
}

async fn probe(
    ip: Ipv4Addr,
    ports: &[u16],
    timeout: &std::sync::Mutex<Timeout>,
    icmp: Icmp,
) -> Probed {
    let wait = timeout.lock().expect("timeout lock").current();
    let sample = |rtt: Duration| timeout.lock().expect("timeout lock").sample(rtt);
    let mut methods = Vec::new();
    let ping = async {
        if icmp == Icmp::None {
            return Ok(false);
        }
        let started = Instant::now();
        let r = echo(ip, icmp, wait).await;
        if let Ok(true) = r {
            sample(started.elapsed());
        }
        r
    };
    let tcp = futures_util::future::join_all(ports.iter().map(|&port| async move {
        let started = Instant::now();
        let addr = SocketAddr::from((ip, port));
        match tokio::time::timeout(wait, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Some((format!("tcp:{port}"), started.elapsed())),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                Some(("tcp-refused".to_owned(), started.elapsed()))
            }
            _ => None,
        }
    }));
    let (ping, tcp) = tokio::join!(ping, tcp);
    match ping {
        Ok(true) => methods.push("icmp".to_owned()),
        Ok(false) => {}
        Err(e) => return Probed::IcmpUnusable(e.to_string()),
    }
    for (m, rtt) in tcp.into_iter().flatten() {
        sample(rtt);
        methods.push(m);
    }
    if methods.is_empty() {
        Probed::Silent
    } else {
        Probed::Answered(ip, methods)
    }
}

/// One echo request; whether a reply came within `wait`.
async fn echo(ip: Ipv4Addr, mode: Icmp, wait: Duration) -> std::io::Result<bool> {
    let raw = mode == Icmp::Raw;
    let ty = if raw { Type::RAW } else { Type::DGRAM };
    let s = Socket::new(Domain::IPV4, ty, Some(Protocol::ICMPV4))?;
    s.set_nonblocking(true)?;
    s.connect(&SocketAddr::from((ip, 0)).into())?;
    let sock = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(s))?;
    let seq: u16 = rand::random();
    let msg = discovery::echo_request(rand::random(), seq, b"outpost-discovery");
    if sock.send(&msg).await.is_err() {
        // Unreachable (no route, no neighbour): no answer.
        return Ok(false);
    }
    let mut buf = [0u8; 1500];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            Ok(Ok(n)) if discovery::echo_reply_seq(&buf[..n], raw) == Some(seq) => return Ok(true),
            Ok(Ok(_)) => continue,
            Ok(Err(_)) | Err(_) => return Ok(false),
        }
    }
}
