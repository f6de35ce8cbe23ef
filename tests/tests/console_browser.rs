//! The web console (O8) in a real browser: headless Chromium driven by playwright-core
//! (`tests/browser/console.mjs`) against a real server with 20 real agents and an
//! organisation's certificate for the console. Chromium is told to accept exactly that
//! certificate's public key (`--ignore-certificate-errors-spki-list`), so TLS verification
//! stays on. Screenshots of the main pages land in `target/console-shots/`.
//! Needs Debian's `chromium` and `npm ci` in `tests/browser` (`.ci/run` does both); without
//! them the test fails, it does not skip.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use outpost_tests::*;
use rcgen::PublicKeyData;

const CHROMIUM: &str = "/usr/bin/chromium";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o8_console_in_headless_chromium_signs_in_shows_agents_revokes_and_refuses() {
    init_logs();
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} missing: apt-get install chromium (.ci/run does)"
    );
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core missing: run `npm ci` in {} (.ci/run does)",
        browser_dir.display()
    );
    // An organisation's certificate for the console (the console.cert_file path).
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

    let auth = Authority::new();
    const IDLE: Duration = Duration::from_secs(8);
    let server = Server::start(&auth, |c| {
        c.console.listen = Some("127.0.0.1:0".parse().unwrap());
        c.console.cert_file = cert_file.display().to_string();
        c.console.key_file = key_file.display().to_string();
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
    let login = outpost_tests::console::login_path(&server).await;
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-shots");
    let port = server.h().console_addr().unwrap().port();
    let out = tokio::process::Command::new("node")
        .arg(browser_dir.join("console.mjs"))
        .env("CONSOLE_URL", format!("https://127.0.0.1:{port}"))
        .env("LOGIN", &login)
        .env("SPKI", &spki)
        // Playwright's request API (the CSRF probe) goes through Node's TLS: it trusts the
        // same certificate as a CA of its own.
        .env("NODE_EXTRA_CA_CERTS", &cert_file)
        .env("TARGET", target.h().device_id())
        .env("SPARE", spare.h().device_id())
        .env("SPARE_KEY", "K-WEB2")
        .env("AGENTS", "20")
        .env("SEATS", "19")
        .env("SHOTS", &shots)
        .env("CHROMIUM", CHROMIUM)
        .env("IDLE_MS", IDLE.as_millis().to_string())
        .output()
        .await
        .expect("node (Debian package nodejs)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.contains("console browser test passed"),
        "{said}"
    );
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
    for page in ["overview", "devices", "device", "keys", "tokens", "audit"] {
        let png = std::fs::read(shots.join(format!("{page}.png"))).expect("screenshot");
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 2_000,
            "{page}.png"
        );
    }
}
