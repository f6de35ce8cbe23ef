//! Installation (O9): the systemd units of `packaging/systemd` are checked by systemd itself —
//! `systemd-analyze verify` must accept each without a word, and `systemd-analyze security`
//! must rate its exposure low — and hold the hardening the README promises: own user, state
//! only in the state directory the binary is pointed at, a read-only system, no new privileges,
//! and no capability but CAP_NET_RAW for the gateway's ping sweep.

use std::path::{Path, PathBuf};
use std::process::Command;

use outpost_tests::bin;

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd")
}

/// The unit with its `ExecStart` pointed at the binary this build made (verify checks that the
/// command exists), written under `dir`.
fn unit_for_here(role: &str, dir: &Path) -> (String, PathBuf) {
    let name = format!("outpost-{role}.service");
    let text = std::fs::read_to_string(packaging().join(&name)).expect("unit file");
    let here = text.replace(
        &format!("/usr/local/bin/outpost-{role}"),
        &bin(&format!("outpost-{role}")).display().to_string(),
    );
    let path = dir.join(&name);
    std::fs::write(&path, here).unwrap();
    (text, path)
}

fn analyze(args: &[&str]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("systemd-analyze (Debian package systemd; .ci/run installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn directive<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn o9_systemd_units_verify_cleanly_rate_low_exposure_and_are_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let sysusers = std::fs::read_to_string(packaging().join("outpost.sysusers")).unwrap();
    for role in ["server", "gateway", "agent"] {
        let (unit, path) = unit_for_here(role, dir.path());
        let p = path.to_str().unwrap();
        let (ok, said) = analyze(&["verify", "--man=no", p]);
        assert!(
            ok && said.trim().is_empty(),
            "{role}: systemd-analyze verify: {said}"
        );
        let (ok, said) = analyze(&["security", "--offline=yes", "--no-pager", p]);
        assert!(ok, "{role}: {said}");
        let level: f64 = said
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|l| l.split(": ").nth(1))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{role}: no exposure level in {said}"));
        assert!(
            level <= 2.5,
            "{role}: exposure {level} (≤ 2.5 expected):\n{said}"
        );

        let user = format!("outpost-{role}");
        assert_eq!(directive(&unit, "User"), [user.as_str()], "{role}");
        assert_eq!(
            directive(&unit, "StateDirectory"),
            [user.as_str()],
            "{role}"
        );
        let exec = directive(&unit, "ExecStart");
        assert!(
            exec.len() == 1 && exec[0].contains(&format!("--data-dir /var/lib/{user}")),
            "{role}: the binary's data directory is the state directory: {exec:?}"
        );
        for (k, v) in [
            ("ProtectSystem", "strict"),
            ("NoNewPrivileges", "yes"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("UMask", "0077"),
        ] {
            assert_eq!(directive(&unit, k), [v], "{role}: {k}");
        }
        let caps = if role == "gateway" { "CAP_NET_RAW" } else { "" };
        assert_eq!(directive(&unit, "CapabilityBoundingSet"), [caps], "{role}");
        assert_eq!(directive(&unit, "AmbientCapabilities"), [caps], "{role}");
        assert!(
            sysusers
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(user.as_str())),
            "{role}: outpost.sysusers creates {user}"
        );
    }
}

/// The check can fail: a misspelt directive is reported by verify.
#[test]
fn o9_verify_reports_a_misspelt_directive() {
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = unit_for_here("agent", dir.path());
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("NoNewPrivileges=yes", "NoNewPriviliges=yes");
    std::fs::write(&path, text).unwrap();
    let (_, said) = analyze(&["verify", "--man=no", path.to_str().unwrap()]);
    assert!(said.contains("NoNewPriviliges"), "{said}");
}
