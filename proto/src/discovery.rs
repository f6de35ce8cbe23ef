//! Network discovery (D3), the parts without I/O: the address ranges a gateway may probe (never
//! wider than a /16 unless forced), ICMP echo messages, the latency-adaptive probe time-out,
//! and what a scan changes in the hosts known.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::pb::v1::DiscoveredHost;

/// Widest range probed unless forced.
pub const WIDEST_PREFIX: u8 = 16;

/// An IPv4 range `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Network address (host bits cleared).
    pub network: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

/// Why a range is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RangeError {
    /// Not `a.b.c.d/len`.
    #[error("{0:?} is not an IPv4 range like 192.168.1.0/24")]
    Syntax(String),
    /// Wider than a /16.
    #[error(
        "{0} is wider than a /{WIDEST_PREFIX} ({1} addresses): split it, or set discovery.allow_wide = true"
    )]
    TooWide(String, u64),
}

impl Range {
    /// Parses `a.b.c.d/len` (or a single address); refuses ranges wider than a /16 unless
    /// `allow_wide`.
    pub fn parse(s: &str, allow_wide: bool) -> Result<Range, RangeError> {
        let bad = || RangeError::Syntax(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, p.parse::<u8>().map_err(|_| bad())?),
            None => (s, 32),
        };
        let addr: Ipv4Addr = addr.trim().parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        let r = Range {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        };
        if prefix < WIDEST_PREFIX && !allow_wide {
            return Err(RangeError::TooWide(s.to_owned(), r.len()));
        }
        Ok(r)
    }

    /// Number of addresses.
    pub fn len(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// Whether it holds no address (never: a range has at least one).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(self.network);
        let i = u32::from(ip);
        i >= n && u64::from(i - n) < self.len()
    }

    /// The addresses to probe: every address, except the network and broadcast addresses of
    /// ranges of /30 and wider.
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> + use<> {
        let n = u32::from(self.network);
        let len = self.len();
        let (first, last) = if self.prefix <= 30 {
            (1, len - 2)
        } else {
            (0, len - 1)
        };
        (first..=last).map(move |k| Ipv4Addr::from(n + k as u32))
    }
}

/// An ICMP echo request (type 8) with its checksum.
pub fn echo_request(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![8, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(payload);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo reply's sequence number, if `packet` is one. `with_ip_header`: a raw socket's
/// packet starts with the IPv4 header. (The identifier is not checked: an unprivileged ICMP
/// socket has its own, set by the kernel.)
pub fn echo_reply_seq(packet: &[u8], with_ip_header: bool) -> Option<u16> {
    let icmp = if with_ip_header {
        let ihl = usize::from(*packet.first()? & 0x0f) * 4;
        packet.get(ihl..)?
    } else {
        packet
    };
    (icmp.len() >= 8 && icmp[0] == 0).then(|| u16::from_be_bytes([icmp[6], icmp[7]]))
}

/// Probe time-out adapted to the answers seen (a smoothed RTT plus four deviations, as TCP
/// does), between `floor` and the configured `ceiling`.
#[derive(Debug, Clone)]
pub struct Timeout {
    srtt: Option<f64>,
    rttvar: f64,
    floor: Duration,
    ceiling: Duration,
}

impl Timeout {
    /// Starts at `ceiling` until answers come in.
    pub fn new(floor: Duration, ceiling: Duration) -> Timeout {
        Timeout {
            srtt: None,
            rttvar: 0.0,
            floor,
            ceiling: ceiling.max(floor),
        }
    }

    /// An answer after `rtt`.
    pub fn sample(&mut self, rtt: Duration) {
        let r = rtt.as_secs_f64();
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2.0;
            }
            Some(s) => {
                self.rttvar = 0.75 * self.rttvar + 0.25 * (s - r).abs();
                self.srtt = Some(0.875 * s + 0.125 * r);
            }
        }
    }

    /// The time-out to use now.
    pub fn current(&self) -> Duration {
        match self.srtt {
            None => self.ceiling,
            Some(s) => Duration::from_secs_f64(s + 4.0 * self.rttvar)
                .max(self.floor)
                .min(self.ceiling),
        }
    }
}

/// A device's network addresses as its record keeps them: its IP addresses and its interfaces'
/// hardware addresses, comma-separated (D3 matches scanned hosts against both).
pub fn addresses_of(inv: &crate::pb::v1::Inventory) -> String {
    inv.addresses
        .iter()
        .chain(inv.macs.iter())
        .cloned()
        .collect::<Vec<_>>()
        .join(",")
}

/// Key of a host: MAC + IP.
pub fn key(h: &DiscoveredHost) -> String {
    format!("{}|{}", h.mac, h.ip)
}

/// Merges what a scan at `now` saw (IP, MAC, methods) into the hosts known; returns the hosts
/// seen, with their first-seen time kept from before.
pub fn merge(
    known: &mut BTreeMap<String, DiscoveredHost>,
    seen: Vec<(Ipv4Addr, String, Vec<String>)>,
    now: i64,
) -> Vec<DiscoveredHost> {
    let mut out = Vec::new();
    for (ip, mac, mut methods) in seen {
        methods.sort();
        methods.dedup();
        let mut h = DiscoveredHost {
            ip: ip.to_string(),
            mac,
            methods,
            first_seen: now,
            last_seen: now,
        };
        if let Some(old) = known.get(&key(&h)) {
            h.first_seen = old.first_seen;
        }
        known.insert(key(&h), h.clone());
        out.push(h);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn d3_ranges_wider_than_a_slash_16_are_refused_unless_forced() {
        let r = Range::parse("192.168.77.17/28", false).unwrap();
        assert_eq!(r.network, Ipv4Addr::new(192, 168, 77, 16));
        let hosts: Vec<_> = r.hosts().collect();
        assert_eq!(hosts.len(), 14);
        assert_eq!(hosts[0], Ipv4Addr::new(192, 168, 77, 17));
        assert!(r.contains(Ipv4Addr::new(192, 168, 77, 31)));
        assert!(!r.contains(Ipv4Addr::new(192, 168, 77, 32)));
        assert_eq!(Range::parse("10.0.0.5", false).unwrap().hosts().count(), 1);
        assert!(Range::parse("10.0.0.0/16", false).is_ok());
        let e = Range::parse("10.0.0.0/8", false).unwrap_err();
        assert!(e.to_string().contains("discovery.allow_wide"), "{e}");
        assert!(Range::parse("10.0.0.0/8", true).is_ok());
        for bad in ["10.0.0.0/33", "10.0.0/24", "host/24", ""] {
            assert!(
                matches!(Range::parse(bad, true), Err(RangeError::Syntax(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn d3_echo_requests_checksum_and_replies_parse() {
        let m = echo_request(0x1234, 7, b"outpost");
        assert_eq!(checksum(&m), 0, "a message with its checksum sums to zero");
        let mut reply = m.clone();
        reply[0] = 0;
        assert_eq!(echo_reply_seq(&reply, false), Some(7));
        let mut with_ip = vec![0x45; 1];
        with_ip.extend_from_slice(&[0; 19]);
        with_ip.extend_from_slice(&reply);
        assert_eq!(echo_reply_seq(&with_ip, true), Some(7));
        assert_eq!(echo_reply_seq(&m, false), None, "a request is not a reply");
        assert_eq!(echo_reply_seq(&[0, 0], false), None);
    }

    #[test]
    fn d3_timeouts_follow_the_answers() {
        let mut t = Timeout::new(Duration::from_millis(50), Duration::from_secs(1));
        assert_eq!(t.current(), Duration::from_secs(1));
        for _ in 0..20 {
            t.sample(Duration::from_millis(2));
        }
        assert_eq!(t.current(), Duration::from_millis(50));
        for _ in 0..20 {
            t.sample(Duration::from_millis(200));
        }
        assert!(t.current() > Duration::from_millis(200));
        assert!(t.current() <= Duration::from_secs(1));
    }

    #[test]
    fn d3_a_scan_keeps_first_seen_and_keys_by_mac_and_ip() {
        let mut known = BTreeMap::new();
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        merge(
            &mut known,
            vec![(ip, "aa".into(), vec!["icmp".into()])],
            100,
        );
        let again = merge(
            &mut known,
            vec![(ip, "aa".into(), vec!["tcp:22".into(), "icmp".into()])],
            200,
        );
        assert_eq!((again[0].first_seen, again[0].last_seen), (100, 200));
        assert_eq!(again[0].methods, ["icmp", "tcp:22"]);
        // A new MAC on the same address is another host.
        merge(&mut known, vec![(ip, "bb".into(), vec![])], 300);
        assert_eq!(known.len(), 2);
    }
}
