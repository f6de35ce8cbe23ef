//! A real-network test bed on one machine: hosts are network namespaces joined by veth pairs,
//! an "internet" router, an office NAT router doing nftables masquerade with a short UDP
//! conntrack timeout and dropping unsolicited inbound traffic, an office LAN (a bridge) with a
//! gateway host and agent hosts, and optionally a DMZ host. The real binaries run inside.
//!
//! ```text
//!  hq 10.10.0.2 ──── 10.10.0.1 [inet] 198.18.0.1 ──── 198.18.0.2 [nat] 192.168.77.1 ── br ──┬── gw 192.168.77.10
//!                        10.20.0.1                                                       ├── a0 192.168.77.20
//!                            │                                                           └── a1 …
//!                     dmz 10.20.0.2
//! ```
//!
//! Every bed has its own id in every namespace and interface name, so beds in parallel tests
//! never collide; dropping the bed kills its processes and deletes its namespaces, also when a
//! test fails. Needs root (CAP_NET_ADMIN) and `ip`, `nft`, `conntrack`, `tc`; without them
//! [`NetBed::new`] says why and tests skip.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, bail};

/// Server address inside the bed.
pub const HQ_IP: &str = "10.10.0.2";
/// Gateway address on the office LAN.
pub const GW_IP: &str = "192.168.77.10";
/// DMZ host address.
pub const DMZ_IP: &str = "10.20.0.2";
/// The office NAT's public address.
pub const NAT_WAN_IP: &str = "198.18.0.2";

/// Shape of a bed.
#[derive(Debug, Clone)]
pub struct BedOptions {
    /// Agent hosts on the office LAN.
    pub agent_hosts: usize,
    /// Add a DMZ host off the internet router.
    pub dmz: bool,
    /// UDP conntrack timeout of the office NAT, seconds (both one-way and stream).
    pub nat_udp_timeout: u32,
    /// Plain hosts on the office LAN (no agent; D3), `p0`, `p1`, … at 192.168.77.40, .41, …;
    /// a last extra one, `px` at 192.168.77.60, when `outside_host`.
    pub plain_hosts: usize,
    /// See `plain_hosts`.
    pub outside_host: bool,
}

impl Default for BedOptions {
    fn default() -> Self {
        BedOptions {
            agent_hosts: 1,
            dmz: false,
            nat_udp_timeout: 20,
            plain_hosts: 0,
            outside_host: false,
        }
    }
}

/// A bed of namespaces with processes in them.
pub struct NetBed {
    id: String,
    namespaces: Vec<String>,
    children: Mutex<HashMap<String, Child>>,
    /// Working directory (data directories, logs).
    pub dir: tempfile::TempDir,
    opts: BedOptions,
}

fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(out)
}

fn ip(args: &[&str]) -> anyhow::Result<Output> {
    run(Command::new("ip").args(args))
}

/// Why network-namespace tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if uid.as_deref() != Some("0") {
        return Some("needs root (CAP_NET_ADMIN) to create network namespaces".into());
    }
    for tool in ["ip", "nft", "conntrack", "tc", "sysctl"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return Some(format!(
                "`{tool}` is not installed (.ci/run installs iproute2, nftables, conntrack)"
            ));
        }
    }
    let probe = format!(
        "op-probe-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    if let Err(e) = ip(&["netns", "add", &probe]) {
        return Some(format!("cannot create a network namespace: {e}"));
    }
    let _ = ip(&["netns", "del", &probe]);
    None
}

/// Set (to anything but "0") by CI: a network test that cannot run fails instead of skipping.
pub const REQUIRE_ENV: &str = "OUTPOST_REQUIRE_NETNS";

/// Returns a bed, or prints why the test is skipped and returns None. With
/// [`REQUIRE_ENV`] set, a test that cannot run fails with the reason instead.
pub fn bed_or_skip(test: &str, opts: BedOptions) -> Option<NetBed> {
    if let Some(why) = unavailable() {
        if std::env::var(REQUIRE_ENV).is_ok_and(|v| v != "0") {
            panic!("{test} cannot run ({why}), and {REQUIRE_ENV} says it must");
        }
        println!("SKIPPED {test}: {why}");
        eprintln!("SKIPPED {test}: {why}");
        return None;
    }
    match NetBed::new(opts) {
        Ok(b) => Some(b),
        Err(e) => panic!("could not build the network test bed: {e:#}"),
    }
}

impl NetBed {
    /// Builds the topology.
    pub fn new(opts: BedOptions) -> anyhow::Result<NetBed> {
        let id = format!("{:04x}", rand::random::<u16>());
        let bed = NetBed {
            id,
            namespaces: vec![],
            children: Mutex::new(HashMap::new()),
            dir: tempfile::tempdir()?,
            opts,
        };
        let mut bed = bed;
        bed.build().context("building the bed")?;
        Ok(bed)
    }

    /// Namespace name of a host: "hq", "inet", "nat", "gw", "dmz", "a0", "a1", ….
    pub fn ns(&self, host: &str) -> String {
        format!("op-{}-{host}", self.id)
    }

    fn add_ns(&mut self, host: &str) -> anyhow::Result<String> {
        let ns = self.ns(host);
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        self.exec(host, &["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A shell script in a host's namespace.
    pub fn shell(&self, host: &str, script: &str) -> anyhow::Result<Output> {
        self.sh(host, script)
    }

    /// Runs a command in a host's namespace.
    pub fn exec(&self, host: &str, args: &[&str]) -> anyhow::Result<Output> {
        let ns = self.ns(host);
        run(Command::new("ip").args(["netns", "exec", &ns]).args(args))
    }

    fn sh(&self, host: &str, script: &str) -> anyhow::Result<Output> {
        self.exec(host, &["sh", "-c", script])
    }

    /// A veth pair from `a` (name `an`, address `aip`) to `b` (name `bn`).
    fn link(
        &self,
        a: &str,
        an: &str,
        aip: Option<&str>,
        b: &str,
        bn: &str,
        bip: Option<&str>,
    ) -> anyhow::Result<()> {
        ip(&["link", "add", an, "type", "veth", "peer", "name", bn])?;
        ip(&["link", "set", an, "netns", &self.ns(a)])?;
        ip(&["link", "set", bn, "netns", &self.ns(b)])?;
        for (host, dev, addr) in [(a, an, aip), (b, bn, bip)] {
            if let Some(addr) = addr {
                self.exec(host, &["ip", "addr", "add", addr, "dev", dev])?;
            }
            self.exec(host, &["ip", "link", "set", dev, "up"])?;
        }
        Ok(())
    }

    fn build(&mut self) -> anyhow::Result<()> {
        let id = self.id.clone();
        for h in ["hq", "inet", "nat", "gw"] {
            self.add_ns(h)?;
        }
        for k in 0..self.opts.agent_hosts {
            self.add_ns(&format!("a{k}"))?;
        }
        for k in 0..self.opts.plain_hosts {
            self.add_ns(&format!("p{k}"))?;
        }
        if self.opts.outside_host {
            self.add_ns("px")?;
        }
        if self.opts.dmz {
            self.add_ns("dmz")?;
        }
        // HQ and the internet router.
        self.link(
            "hq",
            &format!("h{id}0"),
            Some("10.10.0.2/24"),
            "inet",
            &format!("h{id}1"),
            Some("10.10.0.1/24"),
        )?;
        self.exec("hq", &["ip", "route", "add", "default", "via", "10.10.0.1"])?;
        // The office NAT's WAN side.
        let wan = format!("w{id}0");
        self.link(
            "nat",
            &wan,
            Some("198.18.0.2/24"),
            "inet",
            &format!("w{id}1"),
            Some("198.18.0.1/24"),
        )?;
        self.exec(
            "nat",
            &["ip", "route", "add", "default", "via", "198.18.0.1"],
        )?;
        if self.opts.dmz {
            self.link(
                "dmz",
                &format!("d{id}0"),
                Some("10.20.0.2/24"),
                "inet",
                &format!("d{id}1"),
                Some("10.20.0.1/24"),
            )?;
            self.exec(
                "dmz",
                &["ip", "route", "add", "default", "via", "10.20.0.1"],
            )?;
        }
        self.exec("inet", &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        // The office LAN: a bridge in the NAT router, one veth per host.
        let br = format!("b{id}");
        self.exec("nat", &["ip", "link", "add", &br, "type", "bridge"])?;
        self.exec("nat", &["ip", "addr", "add", "192.168.77.1/24", "dev", &br])?;
        self.exec("nat", &["ip", "link", "set", &br, "up"])?;
        let mut lan_hosts = vec![("gw".to_string(), GW_IP.to_string())];
        for k in 0..self.opts.agent_hosts {
            lan_hosts.push((format!("a{k}"), format!("192.168.77.{}", 20 + k)));
        }
        for k in 0..self.opts.plain_hosts {
            lan_hosts.push((format!("p{k}"), format!("192.168.77.{}", 40 + k)));
        }
        if self.opts.outside_host {
            lan_hosts.push(("px".into(), "192.168.77.60".into()));
        }
        for (n, (host, addr)) in lan_hosts.iter().enumerate() {
            let inner = format!("l{id}{n}a");
            let outer = format!("l{id}{n}b");
            self.link(
                host,
                &inner,
                Some(&format!("{addr}/24")),
                "nat",
                &outer,
                None,
            )?;
            self.exec("nat", &["ip", "link", "set", &outer, "master", &br])?;
            self.exec(
                host,
                &["ip", "route", "add", "default", "via", "192.168.77.1"],
            )?;
        }
        // NAT: masquerade the LAN out of the WAN; nothing unsolicited comes in.
        self.exec("nat", &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        self.set_nat_ports(20000, 29999)?;
        let t = self.opts.nat_udp_timeout;
        self.sh(
            "nat",
            &format!(
                "sysctl -qw net.netfilter.nf_conntrack_udp_timeout={t} net.netfilter.nf_conntrack_udp_timeout_stream={t}"
            ),
        )
        .context("setting the NAT's UDP conntrack timeouts")?;
        Ok(())
    }

    /// (Re)writes the NAT rules, masquerading to source ports `lo..=hi`.
    pub fn set_nat_ports(&self, lo: u16, hi: u16) -> anyhow::Result<()> {
        let wan = format!("w{}0", self.id);
        let rules = format!(
            "table ip outpostnat\n\
             delete table ip outpostnat\n\
             table ip outpostnat {{\n\
               chain postrouting {{ type nat hook postrouting priority 100; policy accept;\n\
                 oifname \"{wan}\" ip saddr 192.168.77.0/24 meta l4proto udp masquerade to :{lo}-{hi}\n\
                 oifname \"{wan}\" ip saddr 192.168.77.0/24 masquerade\n\
               }}\n\
               chain forward {{ type filter hook forward priority 0; policy accept;\n\
                 iifname \"{wan}\" ct state new drop\n\
               }}\n\
             }}\n"
        );
        let path = self.dir.path().join("nat.nft");
        std::fs::write(&path, rules)?;
        self.exec("nat", &["nft", "-f", path.to_str().unwrap_or_default()])?;
        Ok(())
    }

    /// Forgets every NAT mapping: the next packet gets a new public port (a rebinding).
    pub fn flush_conntrack(&self) -> anyhow::Result<()> {
        // conntrack exits 1 when the table was already empty.
        let _ = self.exec("nat", &["conntrack", "-F"]);
        Ok(())
    }

    /// Takes the office's WAN link down or up.
    pub fn wan(&self, up: bool) -> anyhow::Result<()> {
        let wan = format!("w{}0", self.id);
        self.exec(
            "nat",
            &["ip", "link", "set", &wan, if up { "up" } else { "down" }],
        )?;
        if up {
            // Taking a link down drops the routes through it; the router's DHCP would put the
            // default route back, so do that.
            self.exec(
                "nat",
                &["ip", "route", "replace", "default", "via", "198.18.0.1"],
            )?;
        }
        Ok(())
    }

    /// Applies `tc netem` (e.g. "loss 10% delay 100ms") to both directions of the WAN link.
    pub fn netem(&self, spec: &str) -> anyhow::Result<()> {
        let args: Vec<&str> = spec.split_whitespace().collect();
        for (host, dev) in [
            ("nat", format!("w{}0", self.id)),
            ("inet", format!("w{}1", self.id)),
        ] {
            let mut a = vec![
                "tc",
                "qdisc",
                "replace",
                "dev",
                dev.as_str(),
                "root",
                "netem",
            ];
            a.extend(&args);
            self.exec(host, &a)?;
        }
        Ok(())
    }

    /// Starts a long-running process in a host's namespace, logging to `<dir>/<name>.log`.
    pub fn spawn(&self, name: &str, host: &str, bin: &Path, args: &[&str]) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log")))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .arg(bin)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("OUTPOST_BED_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.children
            .lock()
            .expect("children")
            .insert(name.to_owned(), child);
        Ok(())
    }

    /// Kills a process with SIGKILL (a crash) and waits for it.
    pub fn kill(&self, name: &str) {
        if let Some(mut c) = self.children.lock().expect("children").remove(name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops a process with SIGTERM and waits for it.
    pub fn stop(&self, name: &str) {
        if let Some(mut c) = self.children.lock().expect("children").remove(name) {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            for _ in 0..200 {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The last lines of a process's log (for failure messages).
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
            .unwrap_or_default();
        let v: Vec<&str> = text.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    /// A data directory inside the bed.
    pub fn data(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for NetBed {
    fn drop(&mut self) {
        for (_, mut c) in self
            .children
            .lock()
            .map(|mut m| std::mem::take(&mut *m))
            .unwrap_or_default()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        if std::env::var_os("OUTPOST_BED_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            eprintln!("test bed files kept in {}", dir.keep().display());
        }
    }
}
