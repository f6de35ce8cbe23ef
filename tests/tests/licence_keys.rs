//! Licence keys (SPEC §3 "Keys": L1, L2, L3) driven through the real server: signed key files
//! and archives imported all or nothing, the repository's counts, removal that keeps the file,
//! byte-identical export, demo keys.

use std::time::Duration;

use outpost_proto::licence::verify_key_file;
use outpost_proto::pb::admin::{KeyImport, KeyRef, admin_request::Op, admin_response::Result as R};
use outpost_tests::licensing::*;
use outpost_tests::*;

/// L1 for archives: a zip holding one tampered key imports nothing; a key signed by another
/// authority is refused; the repository is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_zip_with_one_tampered_key_imports_nothing() {
    use std::io::Write;
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    let good = issue(&auth, "K-Z1", 5, 30 * DAY, AV_FW, false, None);
    let also_good = issue(&auth, "K-Z2", 5, 30 * DAY, AV_FW, false, None);
    let tampered = String::from_utf8(issue(&auth, "K-Z3", 5, 30 * DAY, AV_FW, false, None).file)
        .unwrap()
        .replace("seats = 5", "seats = 50");
    let zip = |entries: &[(&str, &[u8])]| {
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut z = zip::ZipWriter::new(&mut buf);
        for (name, bytes) in entries {
            z.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(bytes).unwrap();
        }
        z.finish().unwrap();
        buf.into_inner()
    };
    let bad_zip = zip(&[
        ("K-Z1.key", &good.file),
        ("K-Z2.key", &also_good.file),
        ("K-Z3.key", tampered.as_bytes()),
    ]);
    let e = refused(
        &server,
        Op::KeyImport(KeyImport {
            file_name: "order-4711.zip".into(),
            content: bad_zip,
            ..Default::default()
        }),
    )
    .await;
    assert!(
        e.contains("K-Z3.key: signature does not verify"),
        "names the bad entry: {e}"
    );
    assert!(e.contains("nothing was imported"), "{e}");
    assert!(
        key_ids(&server).await.is_empty(),
        "nothing of the zip imported"
    );
    for k in ["K-Z1", "K-Z2", "K-Z3"] {
        assert!(!server.data.join("keys").join(format!("{k}.key")).exists());
    }

    let other = Authority::new();
    let foreign = other.key("K-FOREIGN", 5, Duration::from_secs(86_400));
    let e = refused(
        &server,
        Op::KeyImport(KeyImport {
            file_name: "K-FOREIGN.key".into(),
            content: foreign.file.clone(),
            ..Default::default()
        }),
    )
    .await;
    assert!(e.contains("signature does not verify"), "{e}");
    assert!(key_ids(&server).await.is_empty());

    let ok_zip = zip(&[("K-Z1.key", &good.file), ("K-Z2.key", &also_good.file)]);
    let r = server
        .admin(Op::KeyImport(KeyImport {
            file_name: "order-4712.zip".into(),
            content: ok_zip,
            ..Default::default()
        }))
        .await;
    assert!(
        matches!(r, R::KeyImport(ref k) if k.keys.len() == 2),
        "{r:?}"
    );
    let mut ids = key_ids(&server).await;
    ids.sort();
    assert_eq!(ids, ["K-Z1", "K-Z2"]);
}

/// L2: the repository shows seats and objects; removal keeps the file; export is the signed
/// file, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_repository_counts_remove_keeps_file_export_is_byte_identical() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    let key = issue(&auth, "K-L2", 3, 30 * DAY, AV_FW, false, None);
    import(&server, &key, false, true, false).await;
    let token = server.token("agent", 1).await;
    let mut a = agent(&server, &token, "l2").await;
    assert_eq!(a.wait_checked().await.licence.key, "K-L2");

    let info = server.key_info("K-L2").await;
    assert_eq!(
        (
            info.seats_total,
            info.seats_used,
            info.seats_leased_out,
            info.seats_free
        ),
        (3, 1, 0, 2)
    );
    assert_eq!(info.components, ["antivirus", "firewall"]);
    assert_eq!(info.objects, ["everyone"]);
    assert_eq!(info.expires_at, key.body.expires_at);
    assert_eq!(info.kind, "commercial");

    let R::KeyFile(f) = server
        .admin(Op::KeyExport(KeyRef {
            key_id: "K-L2".into(),
        }))
        .await
    else {
        panic!("export refused")
    };
    assert_eq!(f.content, key.file, "export is byte-identical");
    let other_place = verify_key_file(&f.content, auth.key.public_key()).expect("verifies");
    assert_eq!(other_place.body, key.body);

    // Through the CLI too: the exported file verifies with the authority's public key.
    let out = server.data.join("exported.key");
    let (ok, _, err) = run_bin(
        "outpost-server",
        &[
            "admin",
            "--data-dir",
            server.data.to_str().unwrap(),
            "key",
            "export",
            "K-L2",
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), key.file);

    let r = server
        .admin(Op::KeyRemove(KeyRef {
            key_id: "K-L2".into(),
        }))
        .await;
    assert!(matches!(r, R::Done(_)), "{r:?}");
    assert!(key_ids(&server).await.is_empty(), "gone from the manager");
    let kept = server.data.join("keys").join("K-L2.key");
    assert_eq!(
        std::fs::read(&kept).expect("file stays in the data directory"),
        key.file
    );
    let s = reconnect(&mut a).await;
    assert_eq!(
        s.licence.state, "unlicensed",
        "a removed key licenses nobody"
    );
    a.stop().await;
}

/// L3: a demo key works like any key and ends with its short validity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l3_demo_key_licenses_fully_until_its_short_validity_ends() {
    init_logs();
    let auth = Authority::new();
    let server = Server::start(&auth, |_| {}).await;
    let key = issue(&auth, "K-DEMO", 1, 4, AV_FW, true, None);
    import(&server, &key, false, true, false).await;
    assert_eq!(server.key_info("K-DEMO").await.kind, "demo");
    let token = server.token("agent", 1).await;
    let mut a = agent(&server, &token, "l3").await;
    let s = a.wait_checked().await;
    assert_eq!(s.licence.state, "licensed");
    assert_eq!(
        s.licence.components,
        ["antivirus", "firewall"],
        "full function"
    );
    assert!(
        s.licence.expires_at <= key.body.expires_at,
        "grant ends with the key"
    );
    let s = within(
        "demo key expiry",
        a.h().wait_for(|s| s.licence.state == "unlicensed"),
    )
    .await;
    assert!(outpost_net::unix_now() >= key.body.expires_at);
    assert!(s.licence.reason.contains("K-DEMO"), "{}", s.licence.reason);
    let s = reconnect(&mut a).await;
    assert_eq!(
        s.licence.state, "unlicensed",
        "no new grant from an expired key"
    );
    assert!(server.key_info("K-DEMO").await.expired);
    a.stop().await;
}
