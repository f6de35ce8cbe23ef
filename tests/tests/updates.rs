//! The update repository (D1): revisions imported from a directory under a signed manifest
//! (files, sizes, SHA-256 per file and per block); agents keep the newest and refuse an older
//! revision (rollback), an expired manifest (freeze) and a manifest whose signature does not
//! verify (tampering), keeping what they held.

use std::time::Duration;

use outpost_proto::pb::admin::{
    PushRequest, UpdateImport, UpdateListResult, UpdateRef, admin_request::Op,
    admin_response::Result as R,
};
use outpost_tests::*;
use sqlx::Connection;

async fn updates(server: &Server, op: Op) -> UpdateListResult {
    match server.admin(op).await {
        R::Updates(u) => u,
        other => panic!("{other:?}"),
    }
}

async fn import(server: &Server, dir: &std::path::Path) -> UpdateListResult {
    updates(
        server,
        Op::UpdateImport(UpdateImport {
            dir: dir.display().to_string(),
        }),
    )
    .await
}

async fn sync_now(server: &Server, agent: &Agent) {
    server
        .admin(Op::Push(PushRequest {
            device_id: agent.h().device_id().into(),
            kind: "sync-now".into(),
            wait_ms: 5_000,
            ..Default::default()
        }))
        .await;
}

fn content(dir: &std::path::Path, seed: u8) {
    std::fs::create_dir_all(dir.join("av")).unwrap();
    std::fs::write(dir.join("readme.txt"), format!("revision seed {seed}")).unwrap();
    // 2.5 blocks of 1 MiB.
    let big: Vec<u8> = (0..(5 << 19))
        .map(|i| (i as u8).wrapping_mul(seed))
        .collect();
    std::fs::write(dir.join("av/bases.bin"), big).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_revisions_are_signed_and_agents_refuse_rollback_and_tampering() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    let mut agent = Agent::start(
        test_agent_config(vec![], Some(server.addr()), "d1-a"),
        &server.token("agent", 1).await,
    )
    .await;
    agent.wait_checked().await;
    let src = tempfile::tempdir().unwrap();

    // Revision 1: two files, the big one in three blocks, component "av".
    content(src.path(), 3);
    let r1 = import(&server, src.path()).await;
    let rev = &r1.revisions[0];
    assert_eq!((rev.revision, rev.files), (1, 2));
    let bases = rev
        .file_list
        .iter()
        .find(|f| f.name == "av/bases.bin")
        .unwrap();
    assert_eq!(
        (bases.component.as_str(), bases.blocks, bases.size),
        ("av", 3, 5 << 19)
    );
    let s = within(
        "the agent holds revision 1",
        agent.h().wait_for(|s| s.update_revision == 1),
    )
    .await;
    assert_eq!(s.update_files, 2);

    // Revision 2 (other bytes) reaches it too.
    content(src.path(), 7);
    assert_eq!(import(&server, src.path()).await.revisions[0].revision, 2);
    within(
        "the agent holds revision 2",
        agent.h().wait_for(|s| s.update_revision == 2),
    )
    .await;
    let list = updates(&server, Op::UpdateList(Default::default())).await;
    assert_eq!(
        list.revisions
            .iter()
            .map(|r| r.revision)
            .collect::<Vec<_>>(),
        vec![2, 1]
    );

    // Revision 2 removed: the server's newest is 1 again; the agent refuses to go back.
    let removed = updates(&server, Op::UpdateRemove(UpdateRef { revision: 2 })).await;
    assert!(
        removed.message.contains("revision 2 removed"),
        "{}",
        removed.message
    );
    sync_now(&server, &agent).await;
    let s = within(
        "the agent refused the older revision",
        agent.h().wait_for(|s| s.update_error.contains("rollback")),
    )
    .await;
    assert_eq!(
        s.update_revision, 2,
        "it keeps what it held: {}",
        s.update_error
    );

    // Numbers are never reused: the next import is revision 3, and the agent takes it.
    content(src.path(), 9);
    assert_eq!(import(&server, src.path()).await.revisions[0].revision, 3);
    within(
        "the agent holds revision 3",
        agent
            .h()
            .wait_for(|s| s.update_revision == 3 && s.update_error.is_empty()),
    )
    .await;

    // Revision 4 altered in the store while the agent is away: refused when it returns.
    agent.stop().await;
    content(src.path(), 11);
    assert_eq!(import(&server, src.path()).await.revisions[0].revision, 4);
    if server.h().store().backend() == outpost_server::store::Backend::Sqlite {
        let path = server.data.join("outpost.db");
        let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let (mut body,): (Vec<u8>,) =
            sqlx::query_as("SELECT body FROM update_revisions WHERE revision = 4")
                .fetch_one(&mut db)
                .await
                .unwrap();
        // One byte of the manifest changed (a file's size, say).
        let at = body.len() / 2;
        body[at] ^= 0x01;
        sqlx::query("UPDATE update_revisions SET body = $1 WHERE revision = 4")
            .bind(body)
            .execute(&mut db)
            .await
            .unwrap();
        db.close().await.unwrap();
        agent.boot();
        let s = within(
            "the agent refused the altered manifest",
            agent
                .h()
                .wait_for(|s| s.update_error.contains("signature does not verify")),
        )
        .await;
        assert_eq!(s.update_revision, 3);
        // The server's own show refuses it too, saying so.
        let err = server
            .try_admin(Op::UpdateShow(UpdateRef { revision: 4 }))
            .await
            .map(|r| format!("{r:?}"))
            .unwrap_or_else(|e| e.to_string());
        assert!(err.contains("does not verify"), "{err}");
    }

    // Bad imports change nothing.
    for (dir, want) in [
        ("/no/such/dir".to_owned(), "not a directory"),
        (
            tempfile::tempdir().unwrap().path().display().to_string(),
            "no files",
        ),
    ] {
        let err = server
            .try_admin(Op::UpdateImport(UpdateImport { dir }))
            .await
            .map(|r| format!("{r:?}"))
            .unwrap_or_else(|e| e.to_string());
        assert!(err.contains(want), "{err}");
    }
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(bad.path().join("bad name.bin"), b"x").unwrap();
    let err = server
        .try_admin(Op::UpdateImport(UpdateImport {
            dir: bad.path().display().to_string(),
        }))
        .await
        .map(|r| format!("{r:?}"))
        .unwrap_or_else(|e| e.to_string());
    assert!(err.contains("rename it"), "{err}");
    let after = updates(&server, Op::UpdateList(Default::default())).await;
    assert_eq!(after.revisions.len(), 3, "revisions 4, 3, 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_an_expired_manifest_is_refused_as_a_frozen_repository() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |c| c.timing.manifest_ttl = Duration::from_secs(1)).await;
    let src = tempfile::tempdir().unwrap();
    content(src.path(), 5);
    let r = import(&server, src.path()).await;
    let expires = r.revisions[0].expires_at;
    until("the manifest expired", || async move {
        outpost_net::unix_now() >= expires
    })
    .await;
    // An agent that connects now is offered a manifest no longer current.
    let agent = Agent::start(
        test_agent_config(vec![], Some(server.addr()), "d1-f"),
        &server.token("agent", 1).await,
    )
    .await;
    let s = within(
        "the agent refused the expired manifest",
        agent.h().wait_for(|s| s.update_error.contains("expired")),
    )
    .await;
    assert_eq!(s.update_revision, 0);
    assert!(s.update_error.contains("frozen"), "{}", s.update_error);
}
