//! H3 on a real network: a regional server in the office, behind the NAT, on a permanent
//! relation with the head office server. Its link stays up through 3 × the NAT's UDP timeout
//! of silence and through a NAT rebinding — one link, never re-established — and its lease
//! keeps working: a change made at the head office after both reaches it.

use std::time::{Duration, Instant};

use outpost_server::config::ServerConfig;
use outpost_tests::bin;
use outpost_tests::netbed::BedOptions;
use serde_json::Value;

use super::{Office, SERVER, wait};

const REGIONAL: &str = "192.168.77.10:4700";

/// Runs `outpost-server admin --json` for the regional server inside the office.
fn regional_admin(o: &Office, data: &std::path::Path, args: &[&str]) -> Result<Value, String> {
    let mut a = vec![
        bin("outpost-server").to_str().unwrap().to_owned(),
        "admin".into(),
        "--json".into(),
        "--data-dir".into(),
        data.to_str().unwrap().into(),
    ];
    a.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
    match o.bed.exec("gw", &refs) {
        Ok(out) => serde_json::from_slice(&out.stdout).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn seats(v: &Value) -> Option<u64> {
    v["keys"]
        .as_array()?
        .iter()
        .find(|k| k["key_id"] == "K-NET")?["seats_total"]
        .as_u64()
}

#[test]
fn h3_regional_server_behind_nat_keeps_its_link_and_lease_through_idle_and_rebinding() {
    let nat_timeout = 20;
    let Some(o) = Office::new(
        "h3_regional_server_behind_nat_keeps_its_link_and_lease_through_idle_and_rebinding",
        BedOptions {
            nat_udp_timeout: nat_timeout,
            ..Default::default()
        },
        10,
        |c: &mut ServerConfig| c.hierarchy.sync_period = Duration::from_secs(3600),
    ) else {
        return;
    };
    // The regional server in the office LAN, its data next to the head office's.
    let data = o.bed.data("regional");
    let pubkey = o.auth.dir.path().join("authority.pub");
    let (ok, _, err) = outpost_tests::run_bin(
        "outpost-server",
        &[
            "init",
            "--data-dir",
            data.to_str().unwrap(),
            "--authority-key",
            pubkey.to_str().unwrap(),
            "--listen",
            REGIONAL,
        ],
    )
    .unwrap();
    assert!(ok, "{err}");
    let cfg_path = data.join("server.toml");
    let mut cfg = ServerConfig::load(&cfg_path).unwrap();
    cfg.hierarchy.sync_period = Duration::from_secs(3600);
    std::fs::write(&cfg_path, cfg.to_commented_toml()).unwrap();
    o.bed
        .spawn(
            "regional",
            "gw",
            &bin("outpost-server"),
            &["run", "--data-dir", data.to_str().unwrap()],
        )
        .unwrap();
    wait("regional server up", Duration::from_secs(30), || {
        regional_admin(&o, &data, &["status"]).ok()
    });
    // Certificate files exchanged; the regional server dials out through the NAT.
    let hq_pem = o.bed.data("hq.pem");
    let regional_pem = o.bed.data("regional.pem");
    o.admin(&["server", "export-cert", "--out", hq_pem.to_str().unwrap()]);
    regional_admin(
        &o,
        &data,
        &[
            "server",
            "export-cert",
            "--out",
            regional_pem.to_str().unwrap(),
        ],
    )
    .unwrap();
    o.admin(&[
        "server",
        "add-secondary",
        "regional",
        "--cert",
        regional_pem.to_str().unwrap(),
    ]);
    regional_admin(
        &o,
        &data,
        &[
            "server",
            "set-primary",
            "hq",
            "--cert",
            hq_pem.to_str().unwrap(),
            "--address",
            SERVER,
        ],
    )
    .unwrap();
    let until = outpost_proto::licence::key::format_time(outpost_net::unix_now() + 12 * 3600);
    o.admin(&[
        "lease", "give", "K-NET", "regional", "--seats", "3", "--until", &until,
    ]);
    wait(
        "the lease at the regional server",
        Duration::from_secs(60),
        || (seats(&regional_admin(&o, &data, &["key", "list"]).ok()?)? == 3).then_some(()),
    );
    // The head office's own "regional is online" (the regional server's own notices travel
    // up too, tagged "[regional] …": not counted here).
    let onlines = || {
        o.admin(&["notifications", "--kind", "neighbour-online"])["notifications"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|n| !n["message"].as_str().unwrap_or("").starts_with('['))
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(onlines(), 1);
    let idle = Duration::from_secs(3 * nat_timeout as u64);
    println!("link idle for {idle:?} (NAT UDP timeout {nat_timeout} s, link keep-alive 15 s)");
    std::thread::sleep(idle);
    let id = o.admin(&["lease", "list"])["leases"][0]["lease_id"]
        .as_str()
        .unwrap()
        .to_owned();
    o.admin(&["lease", "change", &id, "--seats", "4"]);
    let started = Instant::now();
    wait(
        "the change after the idle period",
        Duration::from_secs(10),
        || (seats(&regional_admin(&o, &data, &["key", "list"]).ok()?)? == 4).then_some(()),
    );
    println!(
        "lease change arrived {:?} after the idle period",
        started.elapsed()
    );
    // The NAT forgets its mappings and moves to other ports: the link migrates.
    o.bed.set_nat_ports(30000, 39999).unwrap();
    o.bed.flush_conntrack().unwrap();
    o.admin(&["lease", "change", &id, "--seats", "5"]);
    let started = Instant::now();
    wait(
        "the change after the rebinding",
        Duration::from_secs(30),
        || (seats(&regional_admin(&o, &data, &["key", "list"]).ok()?)? == 5).then_some(()),
    );
    println!(
        "lease change arrived {:?} after the rebinding",
        started.elapsed()
    );
    let list = o.admin(&["server", "list"]);
    assert_eq!(list["servers"][0]["state"], "connected", "{list}");
    assert_eq!(onlines(), 1, "one link all along, never re-established");
}
