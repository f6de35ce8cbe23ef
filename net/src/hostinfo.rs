//! This host's IPv4 addresses and interface hardware addresses, read from `/proc` and `/sys`
//! (Linux): agents report them in their inventory so a network scan (D3) recognises them, and a
//! gateway never probes itself.

use std::net::Ipv4Addr;

/// The host's own IPv4 addresses, loopback excluded (from `/proc/net/fib_trie`: an address
/// followed by `/32 host LOCAL`).
pub fn local_ipv4() -> Vec<Ipv4Addr> {
    let text = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
    parse_fib_trie(&text)
}

fn parse_fib_trie(text: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(a) = t.strip_prefix("|-- ") {
            last = a.parse().ok();
        } else if t.starts_with("/32 host LOCAL")
            && let Some(a) = last.filter(|a| !a.is_loopback() && !out.contains(a))
        {
            out.push(a);
        }
    }
    out
}

/// Hardware addresses of the host's interfaces (lower case, `aa:bb:…`), loopback excluded.
pub fn macs() -> Vec<String> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(mac) = std::fs::read_to_string(e.path().join("address")) else {
            continue;
        };
        let mac = mac.trim().to_lowercase();
        if mac.len() == 17 && mac != "00:00:00:00:00:00" && !out.contains(&mac) {
            out.push(mac);
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn d3_local_addresses_come_from_the_fib_trie() {
        let t = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 127.0.0.1\n        /32 host LOCAL\n     |-- 192.168.77.20\n        /32 host LOCAL\n     |-- 192.168.77.255\n        /32 link BROADCAST\nLocal:\n     |-- 192.168.77.20\n        /32 host LOCAL\n";
        assert_eq!(parse_fib_trie(t), [Ipv4Addr::new(192, 168, 77, 20)]);
    }
}
