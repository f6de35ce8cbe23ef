//! Helpers for the licence-manager tests (SPEC §3): issuing keys, admin requests that must
//! succeed or be refused, a licence authority service to renew from, hooks.

use std::path::Path;

use outpost_proto::licence::LicenceKey;
use outpost_proto::pb::admin::{
    Empty, GroupCreate, KeyAssign, KeyImport, NotificationInfo, NotificationList, RenewalReport,
    admin_request::Op, admin_response::Result as R,
};
use outpost_server::authority::{AuthorityService, IssueSpec};

use crate::{Agent, Authority, Server, test_agent_config};

/// A day in seconds.
pub const DAY: i64 = 86_400;

/// A key with everything chosen by the test.
pub fn issue(
    auth: &Authority,
    id: &str,
    seats: u32,
    valid_for: i64,
    components: &[&str],
    demo: bool,
    renews: Option<&str>,
) -> LicenceKey {
    let now = outpost_net::unix_now();
    outpost_server::authority::issue(
        &auth.key,
        &IssueSpec {
            key_id: id.into(),
            licensee: "ACME GmbH".into(),
            product: "Outpost Endpoint".into(),
            components: components.iter().map(|c| c.to_string()).collect(),
            seats,
            valid_from: now - 1,
            expires_at: now + valid_for,
            demo,
            renews: renews.map(str::to_owned),
        },
    )
    .expect("issue key")
}

/// The components of the keys most tests use.
pub const AV_FW: &[&str] = &["antivirus", "firewall"];

/// Imports a key: auto-distributed, assigned to everyone, or as an activation reserve.
pub async fn import(
    server: &Server,
    key: &LicenceKey,
    auto: bool,
    everyone: bool,
    activation: bool,
) {
    let r = server
        .try_admin(Op::KeyImport(KeyImport {
            file_name: format!("{}.key", key.body.key_id),
            content: key.file.clone(),
            auto_distribute: auto,
            assign_everyone: everyone,
            activation_reserve: activation,
        }))
        .await
        .expect("admin");
    assert!(matches!(r, R::KeyImport(_)), "import refused: {r:?}");
}

/// Runs an admin request that must be refused; returns the refusal.
pub async fn refused(server: &Server, op: Op) -> String {
    match server.try_admin(op).await {
        Err(e) => e.to_string(),
        Ok(r) => panic!("accepted, expected a refusal: {r:?}"),
    }
}

/// Imports a plain commercial key (antivirus, firewall), optionally assigned to everyone.
pub async fn add_key(
    server: &Server,
    auth: &Authority,
    id: &str,
    seats: u32,
    valid_for: i64,
    everyone: bool,
) {
    import(
        server,
        &issue(auth, id, seats, valid_for, AV_FW, false, None),
        false,
        everyone,
        false,
    )
    .await;
}

/// Assigns a key to an object; panics on refusal.
pub async fn assign(server: &Server, key: &str, object: &str) {
    let r = server
        .admin(Op::KeyAssign(KeyAssign {
            key_id: key.into(),
            object: object.into(),
        }))
        .await;
    assert!(matches!(r, R::Done(_)), "assign refused: {r:?}");
}

/// Creates a group; panics on refusal.
pub async fn group(server: &Server, path: &str) {
    let r = server
        .admin(Op::GroupCreate(GroupCreate { path: path.into() }))
        .await;
    assert!(matches!(r, R::Done(_)), "group create refused: {r:?}");
}

/// The ids of the keys in the repository.
pub async fn key_ids(server: &Server) -> Vec<String> {
    match server.admin(Op::KeyList(Empty {})).await {
        R::Keys(k) => k.keys.into_iter().map(|k| k.key_id).collect(),
        other => panic!("unexpected {other:?}"),
    }
}

/// The notifications of one kind, newest first.
pub async fn notices(server: &Server, kind: &str) -> Vec<NotificationInfo> {
    match server
        .admin(Op::NotificationList(NotificationList {
            kind: kind.into(),
            limit: 1000,
        }))
        .await
    {
        R::Notifications(n) => n.notifications,
        other => panic!("unexpected {other:?}"),
    }
}

/// An agent connecting directly to the server, with this machine id.
pub async fn agent(server: &Server, token: &str, machine: &str) -> Agent {
    Agent::start(
        test_agent_config(vec![], Some(server.addr()), machine),
        token,
    )
    .await
}

/// Restarts an agent and waits for the licence check of its new session.
pub async fn reconnect(a: &mut Agent) -> outpost_agent::status::AgentStatus {
    a.stop().await;
    a.boot();
    a.wait_checked().await
}

/// Runs `key renew`; panics on refusal.
pub async fn renew(server: &Server) -> Vec<RenewalReport> {
    match server.admin(Op::KeyRenew(Empty {})).await {
        R::Renewals(r) => r.reports,
        other => panic!("renewal refused: {other:?}"),
    }
}

/// A device's (licence state, licence key) from a device list.
pub fn device_row(list: &outpost_proto::pb::admin::DeviceListResult, id: &str) -> (String, String) {
    let d = list
        .devices
        .iter()
        .find(|d| d.device_id == id)
        .expect("device listed");
    (d.licence_state.clone(), d.licence_key.clone())
}

/// A licence authority service holding renewals, and a server that fetches from it.
pub async fn with_authority(
    auth: &Authority,
    tweak: impl FnOnce(&mut outpost_server::config::ServerConfig),
) -> (AuthorityService, Server) {
    let svc = outpost_server::authority::serve(auth.dir.path(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("authority serve");
    let (addr, pin) = (svc.addr.to_string(), svc.tls_sha256.clone());
    let server = Server::start(auth, |c| {
        c.licensing.authority = addr;
        c.licensing.authority_tls_sha256 = pin;
        tweak(c);
    })
    .await;
    (svc, server)
}

/// Puts a renewal key on offer at the authority, as `outpost-server authority offer` does.
pub fn offer(auth: &Authority, key: &LicenceKey) {
    let f = auth.dir.path().join(format!("{}.upload", key.body.key_id));
    std::fs::write(&f, &key.file).unwrap();
    outpost_server::authority::offer(auth.dir.path(), &f).expect("offer");
}

/// Writes an executable shell hook.
pub fn write_hook(dir: &Path, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.to_str().unwrap().to_owned()
}
