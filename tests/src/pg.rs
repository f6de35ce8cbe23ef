//! The PostgreSQL cluster of the tests (P2). `.ci/pg-cluster start` starts a throwaway one as the
//! unprivileged `postgres` user and prints its URL; the tests find it in `OUTPOST_TEST_PG`.
//! With `OUTPOST_TEST_STORE=postgres` every test server gets a fresh database in it instead of
//! the embedded file (the second pass of `.ci/run`); tests that are about PostgreSQL itself ask
//! for it with [`required`].

use std::sync::atomic::{AtomicUsize, Ordering};

/// The URL of the cluster's `postgres` database, if one is configured.
pub fn cluster() -> Option<String> {
    std::env::var("OUTPOST_TEST_PG")
        .ok()
        .filter(|u| !u.is_empty())
}

/// Whether test servers run on PostgreSQL (`OUTPOST_TEST_STORE=postgres`).
pub fn servers_on_postgres() -> bool {
    std::env::var("OUTPOST_TEST_STORE").is_ok_and(|v| v == "postgres")
}

/// The cluster for a test about PostgreSQL. Without one: a failure in CI
/// (`OUTPOST_REQUIRE_PG=1`), else `None` and a line saying why the test did nothing.
pub fn required(test: &str) -> Option<String> {
    match cluster() {
        Some(u) => Some(u),
        None if std::env::var("OUTPOST_REQUIRE_PG").is_ok_and(|v| v == "1") => panic!(
            "{test}: OUTPOST_TEST_PG is not set; start a cluster with `.ci/pg-cluster start` \
             and export the URL it prints"
        ),
        None => {
            eprintln!(
                "{test}: SKIPPED — no PostgreSQL cluster (run `.ci/pg-cluster start` and export \
                 OUTPOST_TEST_PG=<the URL it prints>)"
            );
            None
        }
    }
}

/// A fresh, empty database in the cluster at `base`; returns its URL.
pub fn fresh_database(base: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "t_{}_{}_{:06x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>() & 0xff_ffff
    );
    let out = std::process::Command::new("psql")
        .arg(base)
        .args(["-q", "-c", &format!("CREATE DATABASE {name}")])
        .output()
        .expect("run psql (apt-get install postgresql-client)");
    assert!(
        out.status.success(),
        "CREATE DATABASE {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (prefix, _) = base.rsplit_once('/').expect("a URL with a database");
    format!("{prefix}/{name}")
}

/// A cluster of a test's own (one it may restart without disturbing the others), started with
/// `.ci/pg-cluster`; stopped and removed when dropped.
pub struct OwnCluster {
    /// URL of its `postgres` database.
    pub url: String,
    dir: String,
}

impl OwnCluster {
    /// Starts one (needs PostgreSQL installed and root or the `postgres` user).
    pub fn start() -> OwnCluster {
        let out = std::process::Command::new(script())
            .arg("start")
            .output()
            .expect("run .ci/pg-cluster");
        assert!(
            out.status.success(),
            ".ci/pg-cluster start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let (url, dir) = text.trim().split_once(' ').expect("URL and directory");
        OwnCluster {
            url: url.to_owned(),
            dir: dir.to_owned(),
        }
    }

    /// A fast restart: every connection is cut.
    pub fn restart(&self) {
        self.run("restart");
    }

    /// Stops the database (every connection cut) until [`OwnCluster::resume`].
    pub fn pause(&self) {
        self.run("pause");
    }

    /// Starts it again on the same port.
    pub fn resume(&self) {
        self.run("resume");
    }

    fn run(&self, what: &str) {
        let ok = std::process::Command::new(script())
            .args([what, &self.dir])
            .status()
            .expect("run .ci/pg-cluster");
        assert!(ok.success(), ".ci/pg-cluster {what} failed");
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(script())
            .args(["stop", &self.dir])
            .status();
    }
}

fn script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/pg-cluster")
}

/// Enrolls `n` agents with one token made through the first instance (good on every instance:
/// one database); agent `i` is pointed at instance `i % servers.len()`.
pub async fn spread_agents(
    servers: &[&crate::hierarchy::ServerProc],
    n: usize,
    prefix: &str,
) -> Vec<crate::Agent> {
    let token = servers[0].token("agent", n).await;
    let mut agents = vec![];
    for i in 0..n {
        let to = servers[i % servers.len()].addr;
        let config = crate::test_agent_config(vec![], Some(to), &format!("{prefix}-{i}"));
        agents.push(crate::Agent::enroll(config, &token).await);
    }
    agents
}

/// The shared database's store, opened beside the instances (audits, mailbox, events).
pub async fn shared_store(url: &str) -> outpost_server::store::Store {
    use outpost_server::store::{Durability, Store};
    let nowhere = std::path::Path::new("/nonexistent");
    Store::open_configured(nowhere, url, Durability::Normal)
        .await
        .unwrap()
}
