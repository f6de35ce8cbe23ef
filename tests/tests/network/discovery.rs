//! D3: the gateway polls its office's configured ranges and the server lists the hosts that
//! answer but run no agent — never probing outside the ranges, never touching a device record.

use super::*;

/// The MAC of a host's LAN interface.
fn mac_of(o: &Office, host: &str) -> String {
    let out = o
        .bed
        .shell(
            host,
            "cat /sys/class/net/$(ls /sys/class/net | grep -v lo | head -1)/address",
        )
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn d3_office_scan_lists_exactly_the_agentless_hosts_that_answer_and_never_probes_outside() {
    let Some(o) = Office::new(
        "d3_office_scan_lists_exactly_the_agentless_hosts_that_answer_and_never_probes_outside",
        BedOptions {
            agent_hosts: 2,
            plain_hosts: 3,
            outside_host: true,
            ..Default::default()
        },
        5,
        |_| {},
    ) else {
        return;
    };
    // p0 (.40) answers ping only; p1 (.41) ignores ping, has TCP port 8080 open; p2 (.42) is
    // silent (drops all IP and ARP); px (.60) is outside the ranges and counts what reaches it
    // from the gateway.
    o.bed
        .shell("p1", "sysctl -qw net.ipv4.icmp_echo_ignore_all=1")
        .unwrap();
    o.bed
        .spawn(
            "listen",
            "p1",
            &bin("outpost-listen"),
            &["192.168.77.41:8080"],
        )
        .unwrap();
    o.bed
        .shell(
            "p2",
            "nft add table inet f && nft add chain inet f in '{ type filter hook input priority 0; policy drop; }' \
             && nft add table arp f && nft add chain arp f in '{ type filter hook input priority 0; policy drop; }'",
        )
        .unwrap();
    // Count what the gateway sends px: IP packets to it, and ARP requests asking for it (the
    // gateway's ARP broadcasts for addresses inside the ranges reach px too; those are not
    // probes of px).
    let gw_mac = mac_of(&o, "gw");
    let px_if = String::from_utf8_lossy(
        &o.bed
            .shell("px", "ls /sys/class/net | grep -v lo | head -1")
            .unwrap()
            .stdout,
    )
    .trim()
    .to_owned();
    o.bed
        .shell(
            "px",
            &format!(
                "nft add table netdev g && nft add chain netdev g in '{{ type filter hook ingress device {px_if} priority 0; }}' \
                 && nft add rule netdev g in ether saddr {gw_mac} ip daddr 192.168.77.60 counter \
                 && nft add rule netdev g in ether saddr {gw_mac} arp daddr ip 192.168.77.60 counter"
            ),
        )
        .unwrap();

    let gw = o.start_gateway(|c| {
        c.discovery.ranges = vec!["192.168.77.16/28".into(), "192.168.77.32/28".into()];
        c.discovery.ports = vec![8080, 22];
        c.discovery.interval = Duration::from_secs(3);
        c.discovery.timeout = Duration::from_millis(500);
        c.discovery.rate = 500;
    });
    o.wait_uplink_up(&gw);
    let a0 = o.start_agent(0, 0, &format!("{GW_IP}:4701"), |_| {});
    let a1 = o.start_agent(1, 1, &format!("{GW_IP}:4701"), |_| {});
    for a in [&a0, &a1] {
        o.wait_agent("agent connected", a, Duration::from_secs(60), connected);
    }
    // Two scans after the agents are known, so both reports are in.
    let scans_now = o.gateway_status(&gw).unwrap()["discovery_scans"]
        .as_u64()
        .unwrap();
    wait("two more scans", Duration::from_secs(60), || {
        let s = o.gateway_status(&gw)?;
        (s["discovery_scans"].as_u64()? >= scans_now + 2).then_some(())
    });

    let unmanaged = o.admin(&["hosts", "list", "--unmanaged"]);
    let hosts = unmanaged["hosts"].as_array().unwrap();
    let by_ip: HashMap<&str, &Value> = hosts
        .iter()
        .map(|h| (h["ip"].as_str().unwrap(), h))
        .collect();
    let mut ips: Vec<&str> = by_ip.keys().copied().collect();
    ips.sort();
    assert_eq!(ips, ["192.168.77.40", "192.168.77.41"], "{unmanaged}");
    let p0 = by_ip["192.168.77.40"];
    assert!(
        p0["methods"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "icmp"),
        "{p0}"
    );
    assert_eq!(p0["mac"], mac_of(&o, "p0"));
    let p1 = by_ip["192.168.77.41"];
    let m1: Vec<&str> = p1["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(m1.contains(&"tcp:8080") && !m1.contains(&"icmp"), "{p1}");
    assert_eq!(p1["mac"], mac_of(&o, "p1"));

    // The agents' hosts were found too, and matched to their devices (not listed as unmanaged,
    // no device changed or merged).
    let all = o.admin(&["hosts", "list"]);
    let devices = o.devices();
    for (a, ip) in [(&a0, "192.168.77.20"), (&a1, "192.168.77.21")] {
        let id = Office::device_id(a);
        let h = all["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["ip"] == ip)
            .unwrap_or_else(|| panic!("{ip} not found: {all}"));
        assert_eq!(h["device_id"], id.as_str(), "{h}");
        assert!(devices.contains_key(&id));
    }
    assert_eq!(devices.len(), 2, "a scan creates no device");

    // Nothing from the gateway was ever aimed at the host outside the ranges…
    let counted = || -> Vec<u64> {
        let out = o.bed.shell("px", "nft list chain netdev g in").unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split("counter packets ")
            .skip(1)
            .map(|t| t.split_whitespace().next().unwrap().parse().unwrap())
            .collect()
    };
    assert_eq!(counted(), [0, 0], "probes reached 192.168.77.60");
    // … and the counters do count: one connection attempt from the gateway's host shows up in
    // both.
    let _ = o.bed.shell(
        "gw",
        "timeout 2 bash -c 'echo > /dev/tcp/192.168.77.60/9' 2>/dev/null; true",
    );
    let after = counted();
    assert!(after[0] >= 1 && after[1] >= 1, "{after:?}");

    // --stale: nothing is older than a day yet.
    let stale = o.admin(&["hosts", "list", "--stale"]);
    assert!(stale["hosts"].as_array().unwrap().is_empty(), "{stale}");
}
