//! The web console (O8) in a real browser: headless Chromium driven by playwright-core
//! (`tests/browser/*.mjs`) against real servers with real agents and an organisation's
//! certificate for the console. Chromium is told to accept exactly that certificate's public
//! key (`--ignore-certificate-errors-spki-list`), so TLS verification stays on. Screenshots of
//! the pages land in `target/console-shots/`.
//! Needs Debian's `chromium` and `npm ci` in `tests/browser` (`.ci/run` does both); without
//! them the tests fail, they do not skip.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use outpost_proto::pb::admin::{
    ConsoleAccountSet, DeviceList, Empty, ServerAdd, UpdateImport, admin_request::Op,
    admin_response::Result as R,
};
use outpost_tests::*;
use rcgen::PublicKeyData;

const CHROMIUM: &str = "/usr/bin/chromium";

/// An organisation's certificate for the console (the `console.cert_file` path), and the
/// browser run that trusts it.
struct Browser {
    _files: tempfile::TempDir,
    cert_file: PathBuf,
    key_file: PathBuf,
    spki: String,
    dir: PathBuf,
    shots: PathBuf,
}

impl Browser {
    /// Checks Chromium and playwright-core are there and makes the console's certificate.
    fn new() -> Browser {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} missing: apt-get install chromium (.ci/run does)"
        );
        assert!(
            dir.join("node_modules/playwright-core").exists(),
            "playwright-core missing: run `npm ci` in {} (.ci/run does)",
            dir.display()
        );
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = params.self_signed(&key).unwrap();
        let files = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = (
            files.path().join("console.crt"),
            files.path().join("console.key"),
        );
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let spki = base64::engine::general_purpose::STANDARD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            &key.subject_public_key_info(),
        ));
        Browser {
            _files: files,
            cert_file,
            key_file,
            spki,
            shots: dir.join("../../target/console-shots"),
            dir,
        }
    }

    /// Serves the console on loopback with this certificate.
    fn console(&self, c: &mut outpost_server::config::ServerConfig) {
        c.console.listen = Some("127.0.0.1:0".parse().unwrap());
        c.console.cert_file = self.cert_file.display().to_string();
        c.console.key_file = self.key_file.display().to_string();
    }

    /// Runs `script` against `server`'s console with a fresh sign-in link and `env`; panics
    /// with everything it said unless it passed; returns its output.
    async fn run(&self, script: &str, server: &Server, env: &[(&str, String)]) -> String {
        // One browser at a time: two Chromiums on two cores make both tests slow.
        static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _one = ONE.lock().await;
        let login = outpost_tests::console::login_path(server).await;
        let port = server.h().console_addr().unwrap().port();
        let out = tokio::process::Command::new("node")
            .arg(self.dir.join(script))
            .env("CONSOLE_URL", format!("https://127.0.0.1:{port}"))
            .env("LOGIN", &login)
            .env("SPKI", &self.spki)
            // Playwright's request API (the CSRF probe) goes through Node's TLS: it trusts the
            // same certificate as a CA of its own.
            .env("NODE_EXTRA_CA_CERTS", &self.cert_file)
            .env("SHOTS", &self.shots)
            .env("CHROMIUM", CHROMIUM)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .await
            .expect("node (Debian package nodejs)");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.contains("browser test passed"),
            "{said}"
        );
        said
    }

    /// Checks the screenshots of `pages` were taken.
    fn shot(&self, pages: &[&str]) {
        for page in pages {
            let png = std::fs::read(self.shots.join(format!("{page}.png"))).expect("screenshot");
            assert!(
                png.starts_with(b"\x89PNG") && png.len() > 2_000,
                "{page}.png"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o8_console_in_headless_chromium_signs_in_shows_agents_revokes_and_refuses() {
    init_logs();
    let browser = Browser::new();
    let auth = Authority::new();
    const IDLE: Duration = Duration::from_secs(8);
    let server = Server::start(&auth, |c| {
        browser.console(c);
        c.console.session_idle = IDLE;
    })
    .await;
    server
        .import_key(
            &auth.key("K-WEB", 19, Duration::from_secs(86_400 * 30)),
            true,
        )
        .await
        .unwrap();
    let token = server.token("agent", 20).await;
    let mut agents = vec![];
    for i in 0..20 {
        let cfg = test_agent_config(vec![], Some(server.addr()), &format!("web-{i:02}"));
        agents.push(Agent::start(cfg, &token).await);
    }
    for a in &agents {
        a.wait_checked().await;
    }
    // A licensed one is revoked in the browser.
    let target = agents
        .iter()
        .find(|a| a.h().status().borrow().licence.state == "licensed")
        .unwrap();
    // The one without a seat gets a second key in the browser.
    let spare = agents
        .iter()
        .find(|a| a.h().status().borrow().licence.state != "licensed")
        .unwrap();
    server
        .import_key(
            &auth.key("K-WEB2", 2, Duration::from_secs(86_400 * 30)),
            false,
        )
        .await
        .unwrap();
    let said = browser
        .run(
            "console.mjs",
            &server,
            &[
                ("TARGET", target.h().device_id().to_owned()),
                ("SPARE", spare.h().device_id().to_owned()),
                ("SPARE_KEY", "K-WEB2".to_owned()),
                ("AGENTS", "20".to_owned()),
                ("SEATS", "19".to_owned()),
                ("IDLE_MS", IDLE.as_millis().to_string()),
            ],
        )
        .await;
    within(
        "the agent revoked in the browser turned unlicensed",
        target.h().wait_for(|s| s.licence.state != "licensed"),
    )
    .await;
    within(
        "the agent given the second key in the browser is licensed by it",
        spare
            .h()
            .wait_for(|s| s.licence.state == "licensed" && s.licence.key == "K-WEB2"),
    )
    .await;
    // The token created in the browser enrolls a new agent.
    let token = said
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .expect("the script printed the token");
    let late = Agent::start(
        test_agent_config(vec![], Some(server.addr()), "web-late"),
        token,
    )
    .await;
    late.wait_checked().await;
    browser.shot(&["overview", "devices", "device", "keys", "tokens", "audit"]);
}

/// Relates `primary` and `secondary` the documented way (link certificates exchanged, the
/// secondary dials) and waits until both see the link up.
async fn relate(primary: &Server, secondary: &Server, names: (&str, &str)) {
    let mut certs = vec![];
    for s in [primary, secondary] {
        match s.admin(Op::ServerExportCert(Empty {})).await {
            R::ServerCert(c) => certs.push(c.pem),
            other => panic!("{other:?}"),
        }
    }
    let (s_cert, p_cert) = (certs.pop().unwrap(), certs.pop().unwrap());
    let add = |kind: &str, cert_pem: String, name: &str, address: String| ServerAdd {
        name: name.into(),
        kind: kind.into(),
        cert_pem,
        dial: !address.is_empty(),
        address,
        ..Default::default()
    };
    let r = primary
        .admin(Op::ServerAdd(add(
            "secondary",
            s_cert,
            names.1,
            String::new(),
        )))
        .await;
    assert!(matches!(r, R::Done(_)), "{r:?}");
    let r = secondary
        .admin(Op::ServerAdd(add(
            "primary",
            p_cert,
            names.0,
            primary.addr().to_string(),
        )))
        .await;
    assert!(matches!(r, R::Done(_)), "{r:?}");
    for (s, other) in [(primary, names.1), (secondary, names.0)] {
        until(&format!("link to {other} up"), || async {
            match s.admin(Op::ServerList(Empty {})).await {
                R::Servers(l) => l
                    .servers
                    .iter()
                    .any(|n| n.name == other && n.state == "connected"),
                _ => false,
            }
        })
        .await;
    }
}

async fn seats_at(server: &Server, key: &str) -> u32 {
    match server.admin(Op::KeyList(Empty {})).await {
        R::Keys(k) => k
            .keys
            .iter()
            .find(|k| k.key_id == key)
            .map_or(0, |k| k.seats_total),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o8_console_in_headless_chromium_manages_groups_devices_pushes_leases_and_shows_gateway_caches()
 {
    init_logs();
    let browser = Browser::new();
    let auth = Authority::new();
    let hq = Server::start(&auth, |c| browser.console(c)).await;
    let office = Server::start(&auth, |_| {}).await;
    hq.import_key(
        &auth.key("K-HQ", 10, Duration::from_secs(86_400 * 90)),
        true,
    )
    .await
    .unwrap();
    relate(&hq, &office, ("hq", "office")).await;
    // An update revision, cached by the office gateway (prefetch).
    let content = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(content.path().join("av")).unwrap();
    std::fs::write(content.path().join("av/bases.bin"), vec![7u8; 1 << 20]).unwrap();
    let rev = match hq
        .admin(Op::UpdateImport(UpdateImport {
            dir: content.path().display().to_string(),
        }))
        .await
    {
        R::Updates(u) => u.revisions[0].revision,
        other => panic!("{other:?}"),
    };
    let gw = Gateway::start(&hq, |_, _| {}).await;
    let token = hq.token("agent", 4).await;
    let mut behind = vec![];
    for i in 0..2 {
        let cfg = test_agent_config(
            vec![gw.h().addr().to_string()],
            Some(hq.addr()),
            &format!("gw-agent-{i}"),
        );
        behind.push(Agent::start(cfg, &token).await);
    }
    let mover = Agent::start(test_agent_config(vec![], Some(hq.addr()), "mover"), &token).await;
    let leaver = Agent::start(test_agent_config(vec![], Some(hq.addr()), "leaver"), &token).await;
    for a in behind.iter().chain([&mover, &leaver]) {
        within(
            "licensed",
            a.h().wait_for(|s| s.licence.state == "licensed"),
        )
        .await;
    }
    until("the gateway reports revision 1 cached", || async {
        match hq.admin(Op::ServerStatus(Empty {})).await {
            R::ServerStatus(s) => s.gateways.iter().any(|g| g.cache_revision == rev),
            _ => false,
        }
    })
    .await;

    let r = hq
        .admin(Op::ConsoleAccountSet(ConsoleAccountSet {
            name: "alice".into(),
            password: "correct horse battery staple".into(),
        }))
        .await;
    assert!(matches!(r, R::Done(_)), "{r:?}");
    let said = browser
        .run(
            "manage.mjs",
            &hq,
            &[
                ("MOVER", mover.h().device_id().to_owned()),
                ("LEAVER", leaver.h().device_id().to_owned()),
                ("GATEWAY", gw.h().status().device_id),
                ("REVISION", rev.to_string()),
                ("NEIGHBOUR", "office".to_owned()),
                ("KEY", "K-HQ".to_owned()),
                ("ACCOUNT", "alice".to_owned()),
                ("PASSWORD", "correct horse battery staple".to_owned()),
            ],
        )
        .await;
    // What the browser did, seen from the agents and the servers.
    within(
        "the message pushed to one device arrived",
        mover
            .h()
            .wait_for(|s| s.last_push.contains("to the mover from the console")),
    )
    .await;
    for a in &behind {
        within(
            "the message pushed to the group arrived through the gateway",
            a.h()
                .wait_for(|s| s.last_push.contains("to everyone from the console")),
        )
        .await;
    }
    let moved = match hq
        .admin(Op::DeviceList(DeviceList {
            ..Default::default()
        }))
        .await
    {
        R::Devices(d) => d.devices,
        other => panic!("{other:?}"),
    };
    let group_of = |id: &str| {
        moved
            .iter()
            .find(|d| d.device_id == id)
            .map(|d| d.group.clone())
    };
    assert_eq!(
        group_of(mover.h().device_id()).as_deref(),
        Some("everyone/berlin")
    );
    assert_eq!(group_of(leaver.h().device_id()), None, "removed");
    // A lease given with 3 seats, changed to 5 in the browser: the office holds 5 seats.
    until(
        "the office holds the 5 seats the browser leased",
        || async { seats_at(&office, "K-HQ").await == 5 },
    )
    .await;
    // The give refused in the browser (more seats than free) made no lease; the second one was
    // revoked (the office gave up its seat at once; it counts against hq until its period ends).
    let mut given: Vec<_> = match hq.admin(Op::LeaseList(Empty {})).await {
        R::Leases(l) => l.leases,
        other => panic!("{other:?}"),
    };
    given.sort_by_key(|l| l.seats);
    assert_eq!(given.len(), 2, "{given:?}");
    assert!(given[0].revoked && given[0].seats == 1, "{given:?}");
    assert!(!given[1].revoked && given[1].seats == 5, "{given:?}");
    assert!(said.contains("ok: the gateway's cache shows"), "{said}");
    browser.shot(&[
        "groups",
        "servers",
        "updates",
        "hosts",
        "notifications",
        "device-moved",
    ]);
}
