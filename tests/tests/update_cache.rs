//! The gateway's update cache and agents' downloads (D2): one upstream transfer for many
//! agents asking at once, every block checked before it is served or stored (a corrupt block
//! on the server never reaches an agent), a download resumed after a gateway kill, the cache
//! surviving a restart and keeping its bound, the gateway refusing a rollback.

use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_proto::files::sha256;
use outpost_proto::pb::admin::{
    Empty, FileServing, GatewayLinkInfo, PushRequest, UpdateImport, UpdateRef, admin_request::Op,
    admin_response::Result as R,
};
use outpost_tests::fleet::{enroll_agents, start_agents, wait_all_checked};
use outpost_tests::*;
use sqlx::Connection;

const MIB: u64 = 1 << 20;

async fn served(server: &Server) -> (FileServing, Vec<GatewayLinkInfo>) {
    match server.admin(Op::ServerStatus(Empty {})).await {
        R::ServerStatus(s) => (s.files.unwrap_or_default(), s.gateways),
        other => panic!("{other:?}"),
    }
}

async fn import(server: &Server, dir: &Path) -> u64 {
    match server
        .admin(Op::UpdateImport(UpdateImport {
            dir: dir.display().to_string(),
        }))
        .await
    {
        R::Updates(u) => u.revisions[0].revision,
        other => panic!("{other:?}"),
    }
}

/// A file of `mib` MiB whose blocks all differ; returns its SHA-256.
fn big_file(path: &Path, mib: u64, seed: u64) -> [u8; 32] {
    let mut data = Vec::with_capacity((mib * MIB) as usize);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while data.len() < (mib * MIB) as usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, &data).unwrap();
    sha256(&data)
}

/// The one file an agent fetched, and its hash.
fn fetched_file(data: &Path) -> (PathBuf, [u8; 32]) {
    let dir = data.join("updates/files");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let p = files.pop().unwrap();
    let h = sha256(&std::fs::read(&p).unwrap());
    (p, h)
}

async fn push_update(server: &Server, device: &str) {
    server
        .admin(Op::Push(PushRequest {
            device_id: device.into(),
            kind: "update-available".into(),
            wait_ms: 5_000,
            ..Default::default()
        }))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d2_fifty_agents_fetch_one_64_mib_file_with_one_upstream_transfer_and_the_cache_survives_a_restart()
 {
    init_logs();
    const N: usize = 50;
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    // No prefetch: the agents' requests are what starts the download, and they all ask at once.
    let mut gw = Gateway::start(&server, |_, c| c.cache.prefetch = false).await;
    let token = server.token("agent", N as u32 + 1).await;
    let root = tempfile::tempdir().unwrap();
    let dirs = enroll_agents(root.path(), server.addr(), &token, N, "d2-")
        .await
        .unwrap();
    let endpoints = bench::client_endpoints(4);
    let (_go, hold) = tokio::sync::watch::channel(true);
    let agents = start_agents(&dirs, gw.addr(), &endpoints, &hold).unwrap();
    wait_all_checked(&agents).await;

    let src = tempfile::tempdir().unwrap();
    let want = big_file(&src.path().join("av/bases.bin"), 64, 1);
    assert_eq!(import(&server, src.path()).await, 1);
    for a in &agents {
        within(
            "every agent fetched revision 1",
            a.wait_for(|s| s.update_fetched == 1),
        )
        .await;
    }
    for d in &dirs {
        assert_eq!(fetched_file(d).1, want, "{} holds the file", d.display());
    }
    // Exactly one transfer from the server: 64 blocks, 64 MiB.
    let (files, links) = served(&server).await;
    assert_eq!((files.blocks, files.bytes), (64, 64 * MIB), "{files:?}");
    let st = gw.h().status();
    assert_eq!(st.cache_upstream_bytes, 64 * MIB);
    assert_eq!(st.cache_hits + st.cache_misses, 64 * N as u64);
    assert!(st.cache_misses >= 64, "{st:?}");
    eprintln!(
        "d2: {N} agents, 64 MiB: server served {} bytes in {} requests; gateway hits {} misses {}",
        files.bytes, files.requests, st.cache_hits, st.cache_misses
    );
    // The server's view of the gateway's cache (reported on the uplink).
    until("the gateway reports its cache", || async {
        let (_, links) = served(&server).await;
        links
            .first()
            .is_some_and(|l| l.cache_revision == 1 && l.cache_upstream_bytes == 64 * MIB)
    })
    .await;
    drop(links);
    for a in agents {
        a.shutdown().await;
    }

    // The cache survives a restart: a new agent is served from disk, nothing from upstream.
    gw.stop().await;
    gw.boot(server.addr()).await;
    within("gateway uplink", gw.h().wait_uplink()).await;
    let st = gw.h().status();
    assert_eq!(
        (st.cache_bytes, st.cache_blocks, st.cache_revision),
        (64 * MIB, 64, 1)
    );
    let late = Agent::start(
        test_agent_config(vec![gw.addr().to_string()], None, "d2-late"),
        &token,
    )
    .await;
    within(
        "the new agent fetched",
        late.h().wait_for(|s| s.update_fetched == 1),
    )
    .await;
    assert_eq!(fetched_file(&late.data).1, want);
    assert_eq!(served(&server).await.0.bytes, 64 * MIB);
    let st = gw.h().status();
    assert_eq!((st.cache_hits, st.cache_misses), (64, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d2_a_block_corrupted_in_the_servers_store_is_refused_by_the_gateway_and_never_reaches_an_agent()
 {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    let gw = Gateway::start(&server, |_, c| c.cache.prefetch = false).await;
    let mut agent = Agent::start(
        test_agent_config(vec![gw.addr().to_string()], None, "d2-c"),
        &server.token("agent", 1).await,
    )
    .await;
    agent.wait_checked().await;
    let src = tempfile::tempdir().unwrap();
    let want = big_file(&src.path().join("fw/image.bin"), 3, 2);
    let original = std::fs::read(src.path().join("fw/image.bin")).unwrap();
    let second = sha256(&original[MIB as usize..2 * MIB as usize]);
    let hex: String = second.iter().map(|b| format!("{b:02x}")).collect();

    // Block 2 of 3 altered in the store (a disk fault, or someone with access to the database).
    let corrupt = |fix: bool| {
        let mut block = original[MIB as usize..2 * MIB as usize].to_vec();
        if !fix {
            block[4242] ^= 0x20;
        }
        alter_block(&server, hex.clone(), block)
    };
    // The agent is away while the revision is imported and the block altered (a connected
    // agent would start fetching at the import's nudge, before the alteration); it fetches
    // when it comes back. The gateway does not prefetch.
    agent.stop().await;
    assert_eq!(import(&server, src.path()).await, 1);
    corrupt(false).await;
    agent.boot();
    let s = within(
        "the agent reports the corrupt block",
        agent
            .h()
            .wait_for(|s| s.update_fetch_error.contains("corrupt") || s.update_fetched == 1),
    )
    .await;
    assert_eq!(s.update_fetched, 0, "{s:?}");
    assert!(
        s.update_fetch_error.contains("block 1 of fw/image.bin")
            && s.update_fetch_error.contains("corrupt"),
        "{}",
        s.update_fetch_error
    );
    let st = gw.h().status();
    assert_eq!(
        st.cache_refused_blocks, 2,
        "fetched twice, refused twice: {st:?}"
    );
    assert_eq!(st.cache_blocks, 2, "only the good blocks are stored");
    // The agent holds the good first block only, never the altered bytes.
    let partial: Vec<PathBuf> = std::fs::read_dir(agent.data.join("updates/partial"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let held = std::fs::read(&partial[0]).unwrap();
    assert_eq!(held, original[..MIB as usize]);

    // The store repaired: the next try completes and the file verifies.
    corrupt(true).await;
    push_update(&server, agent.h().device_id()).await;
    within(
        "the agent fetched after the repair",
        agent.h().wait_for(|s| s.update_fetched == 1),
    )
    .await;
    assert_eq!(fetched_file(&agent.data).1, want);
}

/// Replaces a stored block's bytes behind the server's back (embedded or PostgreSQL store).
async fn alter_block(server: &Server, sha256_hex: String, data: Vec<u8>) {
    let cfg = outpost_server::config::ServerConfig::load(&server.data.join("server.toml")).unwrap();
    let sql = "UPDATE update_blocks SET data = $1 WHERE sha256 = $2";
    let n = if cfg.store.url.is_empty() {
        let path = server.data.join("outpost.db");
        let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let n = sqlx::query(sql)
            .bind(data)
            .bind(sha256_hex)
            .execute(&mut db)
            .await
            .unwrap();
        db.close().await.unwrap();
        n.rows_affected()
    } else {
        let mut db = sqlx::PgConnection::connect(&cfg.store.url).await.unwrap();
        let n = sqlx::query(sql)
            .bind(data)
            .bind(sha256_hex)
            .execute(&mut db)
            .await
            .unwrap();
        db.close().await.unwrap();
        n.rows_affected()
    };
    assert_eq!(n, 1, "the block is stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d2_a_gateway_killed_mid_download_resumes_from_its_last_good_block() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    let mut gw = Gateway::start(&server, |_, _| {}).await;
    gw.stop().await;
    let mut proc = gw.spawn_process();
    until("the gateway process is up", || async {
        matches!(served(&server).await.1.first(), Some(l) if l.connection_id != 0)
    })
    .await;
    const SIZE: u64 = 192;
    let src = tempfile::tempdir().unwrap();
    big_file(&src.path().join("big.bin"), SIZE, 3);
    assert_eq!(import(&server, src.path()).await, 1);
    // The gateway prefetches the revision at once; kill it a quarter of the way in.
    let blocks_dir = gw.data.join("cache/blocks");
    // Stored blocks only: a block being written is a hidden temporary file until it is renamed
    // (a kill mid-write leaves one behind, which is not a block kept).
    let count = || {
        std::fs::read_dir(&blocks_dir)
            .map(|d| {
                d.flatten()
                    .map(|s| {
                        std::fs::read_dir(s.path()).map_or(0, |f| {
                            f.flatten()
                                .filter(|b| !b.file_name().to_string_lossy().starts_with('.'))
                                .count()
                        })
                    })
                    .sum::<usize>()
            })
            .unwrap_or(0) as u64
    };
    let deadline = std::time::Instant::now() + PATIENCE;
    while count() < SIZE / 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    proc.kill().unwrap();
    proc.wait().unwrap();
    let kept = count();
    let before = served(&server).await.0.bytes;
    assert!(
        kept < SIZE,
        "the download ended before the kill: resume not exercised"
    );
    eprintln!("d2 resume: killed with {kept} of {SIZE} blocks stored, {before} bytes served");

    let _proc = gw.spawn_process();
    until("the restarted gateway holds every block", || async {
        gw.status_file()
            .is_some_and(|s| s.cache_blocks == SIZE && s.cache_revision == 1)
    })
    .await;
    let total = served(&server).await.0.bytes;
    let overshoot = total - SIZE * MIB;
    eprintln!(
        "d2 resume: {total} bytes served in all for {} bytes: {overshoot} bytes fetched twice",
        SIZE * MIB
    );
    // What was stored before the kill was not fetched again; only what was in flight was.
    assert!(overshoot <= 2 * MIB, "fetched again: {overshoot} bytes");
    assert_eq!(total - before, (SIZE - kept) * MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d2_eviction_keeps_the_bound_and_d1_the_gateway_refuses_a_rollback() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    let gw = Gateway::start(&server, |_, c| c.cache.max_mib = 5).await;
    let src = tempfile::tempdir().unwrap();
    big_file(&src.path().join("a.bin"), 4, 4);
    assert_eq!(import(&server, src.path()).await, 1);
    until("revision 1 cached", || async {
        let s = gw.h().status();
        s.cache_revision == 1 && s.cache_blocks == 4
    })
    .await;
    big_file(&src.path().join("a.bin"), 4, 5);
    assert_eq!(import(&server, src.path()).await, 2);
    until("revision 2 cached", || async {
        let s = gw.h().status();
        // Every fetched block stored or evicted (its bytes count before it is stored).
        s.cache_revision == 2
            && s.cache_upstream_bytes == 8 * MIB
            && s.cache_blocks + s.cache_evicted == 8
    })
    .await;
    let s = gw.h().status();
    assert!(s.cache_bytes <= 5 * MIB, "bound kept: {s:?}");
    assert!(s.cache_evicted >= 3, "{s:?}");

    // Revision 2 withdrawn: the server now offers revision 1, which the gateway refuses.
    server
        .admin(Op::UpdateRemove(UpdateRef { revision: 2 }))
        .await;
    until("the gateway refused the rollback", || async {
        gw.h().status().cache_error.contains("rollback")
    })
    .await;
    assert_eq!(gw.h().status().cache_revision, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d2_an_agent_without_a_gateway_fetches_from_the_server_its_components_and_runs_its_handler()
{
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    let hdir = tempfile::tempdir().unwrap();
    let handler = hdir.path().join("update.sh");
    let log = hdir.path().join("got.json");
    std::fs::write(
        &handler,
        format!("#!/bin/sh\ncat > {}\nexit 0\n", log.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&handler, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cfg = test_agent_config(vec![], Some(server.addr()), "d2-direct");
    cfg.updates.handler = handler.display().to_string();
    cfg.updates.components = vec!["av".into()];
    let mut agent = Agent::start(cfg, &server.token("agent", 1).await).await;
    agent.wait_checked().await;
    let src = tempfile::tempdir().unwrap();
    let want = big_file(&src.path().join("av/bases.bin"), 2, 6);
    // Another component's file: not fetched by this agent.
    big_file(&src.path().join("fw/image.bin"), 1, 7);
    assert_eq!(import(&server, src.path()).await, 1);
    within(
        "the handler took revision 1",
        agent.h().wait_for(|s| s.update_handled == 1),
    )
    .await;
    let (path, got) = fetched_file(&agent.data);
    assert_eq!(got, want);
    let input: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&log).unwrap()).unwrap();
    assert_eq!(input["revision"], 1);
    assert_eq!(input["files"].as_array().unwrap().len(), 1, "{input}");
    assert_eq!(input["files"][0]["name"], "av/bases.bin");
    assert_eq!(input["files"][0]["path"], path.display().to_string());
    assert_eq!(served(&server).await.0.bytes, 2 * MIB);

    // `outpost-agent update fetch` with the agent stopped: from the configured server.
    agent.stop().await;
    std::fs::remove_dir_all(agent.data.join("updates")).unwrap();
    std::fs::write(
        agent.data.join("agent.toml"),
        toml::to_string(&agent.config).unwrap(),
    )
    .unwrap();
    let d = agent.data.display().to_string();
    let (ok, out, err) = run_bin("outpost-agent", &["update", "fetch", "--data-dir", &d]).unwrap();
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("revision 1: 2097152 bytes fetched from server"),
        "{out}"
    );
    assert_eq!(fetched_file(&agent.data).1, want);
    let (ok, out, _) = run_bin("outpost-agent", &["update", "status", "--data-dir", &d]).unwrap();
    assert!(ok && out.contains("revision    1 held"), "{out}");
    // Bad input: a data directory without an agent.
    let empty = tempfile::tempdir().unwrap();
    let e = empty.path().display().to_string();
    let (ok, _, err) = run_bin("outpost-agent", &["update", "fetch", "--data-dir", &e]).unwrap();
    assert!(!ok && err.contains("holds no agent identity"), "{err}");
}
