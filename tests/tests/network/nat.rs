//! The office NAT (T3, T5) and the DMZ direction (T4).

use super::*;

/// T3: after the office has been idle for 3 x the NAT's UDP timeout, a push reaches an agent
/// behind the NAT on the same uplink, without the gateway reconnecting.
#[test]
fn t3_push_reaches_agent_after_idle_beyond_nat_timeout() {
    let nat_timeout = 20;
    let Some(o) = Office::new(
        "t3_push_reaches_agent_after_idle_beyond_nat_timeout",
        BedOptions {
            nat_udp_timeout: nat_timeout,
            ..Default::default()
        },
        5,
        |_| {},
    ) else {
        return;
    };
    let gw = o.start_gateway(|_| {}); // default keep-alive 15 s < 20 s NAT timeout
    o.wait_uplink_up(&gw);
    let agent = o.start_agent(0, 0, &format!("{GW_IP}:4701"), |_| {});
    let s = o.wait_agent(
        "agent connected",
        &agent,
        Duration::from_secs(60),
        connected,
    );
    assert_eq!(s["licence"]["state"], "licensed");
    let link = o.gateway_link();
    let idle = Duration::from_secs(3 * nat_timeout as u64);
    println!("office idle for {idle:?} (NAT UDP timeout {nat_timeout} s, gateway keep-alive 15 s)");
    std::thread::sleep(idle);
    let r = o.push(&Office::device_id(&agent), "after the idle period");
    assert_eq!(r["outcomes"][0]["state"], "acked", "{r}");
    let gs = o.gateway_status(&gw).unwrap();
    assert_eq!(
        gs["uplink_connects"], 1,
        "the gateway never reconnected: {gs}"
    );
    assert_eq!(
        o.gateway_link()["connection_id"],
        link["connection_id"],
        "same uplink connection"
    );
    let s = o.agent_status(&agent).unwrap();
    assert_eq!(s["sessions"], 1, "the agent never reconnected either");
}

/// T5: the NAT rebinds the gateway to a new public port; the uplink migrates and the agent's
/// session on it continues without a reconnect.
#[test]
fn t5_nat_rebinding_migrates_the_uplink() {
    let Some(o) = Office::new(
        "t5_nat_rebinding_migrates_the_uplink",
        BedOptions::default(),
        5,
        |_| {},
    ) else {
        return;
    };
    let gw = o.start_gateway(|c| c.uplink.keep_alive = Duration::from_secs(2));
    o.wait_uplink_up(&gw);
    let agent = o.start_agent(0, 0, &format!("{GW_IP}:4701"), |_| {});
    o.wait_agent(
        "agent connected",
        &agent,
        Duration::from_secs(60),
        connected,
    );
    let before = o.gateway_link();
    let port = |v: &Value| {
        v["remote"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<u16>()
            .unwrap()
    };
    assert!((20000..=29999).contains(&port(&before)), "{before}");
    // New masquerade port range, mappings forgotten: the next packet leaves from a new port.
    o.bed.set_nat_ports(30000, 39999).unwrap();
    o.bed.flush_conntrack().unwrap();
    let started = Instant::now();
    let after = wait(
        "server sees the new address",
        Duration::from_secs(30),
        || {
            let l = o.gateway_link();
            (30000..=39999).contains(&port(&l)).then_some(l)
        },
    );
    println!(
        "uplink migrated {} -> {} in {:?}",
        before["remote"],
        after["remote"],
        started.elapsed()
    );
    assert_eq!(
        after["connection_id"], before["connection_id"],
        "same connection, migrated"
    );
    // The gateway's own status names the same connection, and `device list` shows the
    // address the uplink has now, not the one it came up with.
    assert_eq!(
        o.gateway_status(&gw).unwrap()["uplink_connection_id"],
        after["connection_id"]
    );
    let gw_id = Office::device_id(&gw);
    let gateways = o.admin(&["device", "list", "--role", "gateway"]);
    let path = gateways["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == gw_id.as_str())
        .unwrap()["path"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        path,
        format!("uplink from {}", after["remote"].as_str().unwrap())
    );
    let r = o.push(&Office::device_id(&agent), "after rebinding");
    assert_eq!(r["outcomes"][0]["state"], "acked", "{r}");
    assert_eq!(
        o.agent_status(&agent).unwrap()["sessions"],
        1,
        "the agent session continued"
    );
    assert_eq!(o.gateway_status(&gw).unwrap()["uplink_connects"], 1);
}

/// T4: DMZ mode — the server dials a gateway that listens in the DMZ; an office agent reaches
/// that gateway and is licence-checked and pushed to through it.
#[test]
fn t4_server_dials_gateway_in_dmz() {
    let Some(o) = Office::new(
        "t4_server_dials_gateway_in_dmz",
        BedOptions {
            dmz: true,
            ..Default::default()
        },
        5,
        |c| {
            c.dmz_gateways = vec![format!("{}:4702", netbed::DMZ_IP)];
        },
    ) else {
        return;
    };
    let gw = o.start_gateway(|c| {
        c.uplink.mode = UplinkMode::Listen;
        c.uplink.listen = format!("{}:4702", netbed::DMZ_IP).parse().unwrap();
        c.listen = format!("{}:4701", netbed::DMZ_IP).parse().unwrap();
    });
    let gs = o.wait_uplink_up(&gw);
    println!("DMZ gateway uplink: {gs}");
    assert_eq!(o.gateway_link()["direction"], "dmz");
    let agent = o.start_agent(0, 0, &format!("{}:4701", netbed::DMZ_IP), |_| {});
    let s = o.wait_agent(
        "agent connected through the DMZ gateway",
        &agent,
        Duration::from_secs(60),
        connected,
    );
    assert_eq!(s["licence"]["state"], "licensed");
    let r = o.push(&Office::device_id(&agent), "via the DMZ");
    assert_eq!(r["outcomes"][0]["state"], "acked", "{r}");
}
