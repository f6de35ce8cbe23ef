//! A lossy, delayed WAN (T7).

use super::*;

/// T7 with 10 % loss and 100 ms delay each way on the WAN: a new agent connects, is
/// licence-checked, syncs and receives a push.
#[test]
fn t7_push_and_licence_check_over_lossy_delayed_wan() {
    let Some(o) = Office::new(
        "t7_push_and_licence_check_over_lossy_delayed_wan",
        BedOptions::default(),
        5,
        |_| {},
    ) else {
        return;
    };
    // The WAN between the office and HQ drops 10 % of datagrams and delays each by 100 ms,
    // both ways.
    let server = o.impair_wan(10, "100ms");
    let gw = o.start_gateway(|c| c.server = server.clone().into());
    o.wait_uplink_up(&gw);
    let started = Instant::now();
    let agent = o.start_agent(0, 0, &format!("{GW_IP}:4701"), |c| {
        c.connect.dial_timeout = Duration::from_secs(15)
    });
    let s = o.wait_agent(
        "agent connected over the lossy WAN",
        &agent,
        Duration::from_secs(120),
        connected,
    );
    println!(
        "enrolled, licence-checked and synced in {:?} over 10% loss / 100 ms",
        started.elapsed()
    );
    assert_eq!(s["licence"]["state"], "licensed");
    let t = Instant::now();
    let r = o.push(&Office::device_id(&agent), "through the lossy WAN");
    assert_eq!(r["outcomes"][0]["state"], "acked", "{r}");
    println!("push acknowledged in {:?}", t.elapsed());
    let _ = HQ_IP;
}
