//! D2 over a real WAN: the gateway's download of a revision survives a WAN cut (it resumes and
//! verifies after the link returns) and 10 % loss; the agent behind it gets every file intact.

use super::*;

/// A file of `mib` MiB with distinct blocks; returns its SHA-256 (hex).
fn update_dir(o: &Office, name: &str, mib: usize, seed: u8) -> (PathBuf, String) {
    let dir = o.bed.data(name);
    std::fs::create_dir_all(&dir).unwrap();
    // Every block different (content addressing would fetch a repeated block once).
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(seed);
    let mut data = Vec::with_capacity(mib << 20);
    while data.len() < mib << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(dir.join("bases.bin"), &data).unwrap();
    let h = outpost_proto::files::sha256(&data);
    (dir, h.iter().map(|b| format!("{b:02x}")).collect())
}

fn agent_holds(agent: &std::path::Path, sha: &str) -> bool {
    let p = agent.join("updates/files").join(sha);
    std::fs::read(&p)
        .map(|d| {
            let h = outpost_proto::files::sha256(&d);
            h.iter().map(|b| format!("{b:02x}")).collect::<String>() == sha
        })
        .unwrap_or(false)
}

#[test]
fn d2_a_download_cut_by_a_wan_outage_resumes_and_verifies_and_survives_loss() {
    let Some(o) = Office::new(
        "d2_a_download_cut_by_a_wan_outage_resumes_and_verifies_and_survives_loss",
        BedOptions::default(),
        5,
        |_| {},
    ) else {
        return;
    };
    // 10 % loss and 20 ms each way on the WAN for the whole test.
    let server = o.impair_wan(10, "20ms");
    let gw = o.start_gateway(|c| c.server = server.clone().into());
    o.wait_uplink_up(&gw);
    let agent = o.start_agent(0, 0, &format!("{GW_IP}:4701"), |_| {});
    o.wait_agent(
        "agent connected",
        &agent,
        Duration::from_secs(60),
        connected,
    );

    // 1. Revision 1 through the lossy WAN.
    let (dir, sha1) = update_dir(&o, "rev1", 4, 1);
    o.admin(&["update", "import", dir.to_str().unwrap()]);
    o.wait_agent(
        "revision 1 fetched through the lossy WAN",
        &agent,
        Duration::from_secs(240),
        |s| s["update_fetched"] == 1,
    );
    assert!(agent_holds(&agent, &sha1), "revision 1's file verifies");

    // 2. The WAN cut while the gateway downloads revision 2.
    let (dir, sha2) = update_dir(&o, "rev2", 8, 2);
    o.admin(&["update", "import", dir.to_str().unwrap()]);
    let started = Instant::now();
    loop {
        let s = o.gateway_status(&gw).unwrap_or_default();
        if s["cache_upstream_bytes"].as_u64().unwrap_or(0) > (4 << 20) + (1 << 20) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the gateway's download of revision 2 did not start: {s}\ngateway log:\n{}\nserver log:\n{}",
            o.bed.log_tail("gateway", 30),
            o.bed.log_tail("server", 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    o.bed.wan(false).unwrap();
    let during = o.gateway_status(&gw).unwrap();
    println!(
        "WAN cut with {} bytes fetched upstream in all",
        during["cache_upstream_bytes"]
    );
    std::thread::sleep(Duration::from_secs(8));
    o.bed.wan(true).unwrap();
    o.wait_agent(
        "revision 2 fetched after the WAN came back",
        &agent,
        Duration::from_secs(240),
        |s| s["update_fetched"] == 2,
    );
    assert!(agent_holds(&agent, &sha2), "revision 2's file verifies");
    // The gateway's status file lags a few seconds behind its counters.
    let s = wait(
        "the gateway's status shows all 12 blocks",
        Duration::from_secs(30),
        || {
            o.gateway_status(&gw)
                .filter(|s| s["cache_blocks"].as_u64() == Some(12))
        },
    );
    let upstream = s["cache_upstream_bytes"].as_u64().unwrap();
    let want = (4u64 + 8) << 20;
    println!("upstream bytes {upstream} for {want} bytes of revisions");
    // Resumed, not restarted: at most the block in flight at the cut came twice (and the
    // lossy phase's retried blocks, if any).
    assert!(upstream <= want + (2 << 20), "{upstream} > {want} + 2 MiB");
    assert_eq!(s["cache_refused_blocks"], 0, "{s}");
}
