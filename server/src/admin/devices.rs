//! Admin actions on devices, groups and enrollment tokens (S6, S7, S8, L4).

use outpost_proto::pb::admin::{
    AdminResponse, DeviceInfo, DeviceList, DeviceListResult, DeviceMove, DeviceRef, GroupCreate,
    GroupInfo, GroupListResult, TokenCreate, TokenCreated, TokenInfo, TokenListResult,
    admin_response::Result as R,
};
use tracing::info;

use super::{done, ok};
use crate::node::Node;
use crate::store::{DeviceRow, GaveBack, StoreError, TokenSpec};

type Answer = Result<AdminResponse, StoreError>;

pub(super) async fn token_create(node: &Node, t: TokenCreate) -> Answer {
    let spec = TokenSpec {
        role: if t.role.is_empty() {
            "agent".into()
        } else {
            t.role
        },
        group: t.group,
        ttl_secs: if t.ttl_secs == 0 { 86_400 } else { t.ttl_secs },
        uses: if t.uses == 0 { 1 } else { t.uses },
        comment: t.comment,
        allow_takeover: !t.no_takeover,
    };
    let now = outpost_net::unix_now();
    let (token, row) = node
        .store()
        .create_token(&spec, node.enrollment().ca_sha256(), now)
        .await?;
    info!(token = %token, role = %row.role, group = %row.group_path, uses = row.uses_total, "enrollment token created");
    Ok(ok(R::TokenCreated(TokenCreated {
        token_id: row.id,
        token: token.to_text(),
        expires_at: row.expires_at,
        uses: row.uses_total as u32,
        role: row.role,
        group: row.group_path,
    })))
}

pub(super) async fn token_list(node: &Node) -> Answer {
    let tokens = node
        .store()
        .tokens()
        .await?
        .into_iter()
        .map(|t| TokenInfo {
            token_id: t.id,
            role: t.role,
            group: t.group_path,
            expires_at: t.expires_at,
            uses_left: t.uses_left as u32,
            uses_total: t.uses_total as u32,
            comment: t.comment,
            created_at: t.created_at,
            allow_takeover: t.allow_takeover != 0,
        })
        .collect();
    Ok(ok(R::Tokens(TokenListResult { tokens })))
}

pub(super) async fn list(node: &Node, d: DeviceList) -> Answer {
    let store = node.store();
    let role = (!d.role.is_empty()).then_some(d.role.as_str());
    let mut out = vec![];
    for row in store.devices(role).await? {
        let events = if row.role == "agent" {
            store.event_count(&row.id).await? as u64
        } else {
            0
        };
        out.push(device_info(node, row, events));
    }
    Ok(ok(R::Devices(DeviceListResult { devices: out })))
}

pub(super) async fn revoke(node: &Node, d: DeviceRef) -> Answer {
    let ttl = node.licensing().grant_ttl();
    let now = outpost_net::unix_now();
    let seats = node
        .store()
        .revoke_device(&d.device_id, now, ttl, d.free_seat_now)
        .await?;
    let r = crate::node::revoked(&d.device_id);
    let online = node.sessions().registry().kick(&d.device_id, r.clone())
        | node.gateways().disconnect(&d.device_id, &r);
    node.store().announce_gone(&d.device_id, false).await;
    let online = online || held_elsewhere(node, &d.device_id).await;
    info!(device = %d.device_id, online, "device revoked");
    finish(node, "revoked", &d, online, seats).await
}

pub(super) async fn remove(node: &Node, d: DeviceRef) -> Answer {
    let ttl = node.licensing().grant_ttl();
    let now = outpost_net::unix_now();
    let seats = node
        .store()
        .remove_device(&d.device_id, now, ttl, d.free_seat_now)
        .await?;
    let r = crate::node::removed();
    let online = node.sessions().registry().kick(&d.device_id, r.clone())
        | node.gateways().disconnect(&d.device_id, &r);
    node.store().announce_gone(&d.device_id, true).await;
    let online = online || held_elsewhere(node, &d.device_id).await;
    info!(device = %d.device_id, online, "device removed");
    finish(node, "removed", &d, online, seats).await
}

/// Whether another instance on the shared store holds the device's session (it ends it on the
/// wake-up [`crate::store::Store::announce_gone`] sent).
async fn held_elsewhere(node: &Node, device: &str) -> bool {
    node.store()
        .holder(device, outpost_net::unix_now())
        .await
        .ok()
        .flatten()
        .is_some_and(|h| !h.here)
}

/// Says what became of a revoked or removed device's seats (L15), and records an override.
async fn finish(
    node: &Node,
    what: &str,
    d: &DeviceRef,
    online: bool,
    seats: Vec<(String, GaveBack)>,
) -> Answer {
    let id = &d.device_id;
    if d.free_seat_now && !seats.is_empty() {
        let keys: Vec<&str> = seats.iter().map(|(k, _)| k.as_str()).collect();
        node.store()
            .notify(
                "seat-freed-by-admin",
                keys.first().copied(),
                &format!(
                    "seats of {what} device {id} freed at once on key(s) {} (--free-seat-now): \
                     if it still holds a grant offline, these keys may be over-allocated until it expires",
                    keys.join(", ")
                ),
                serde_json::json!({ "device": id, "keys": keys, "why": what }),
            )
            .await?;
    }
    let mut parts = vec![];
    for (key, how) in &seats {
        parts.push(match how {
            GaveBack::Released => format!("seat on {key} freed"),
            GaveBack::Held(until) => format!(
                "seat on {key} held for its offline grant until {} at the latest (freed as soon as the device confirms it dropped it; --free-seat-now frees it at once)",
                outpost_proto::licence::key::format_time(*until)
            ),
        });
    }
    let seats = if parts.is_empty() {
        "it held no seat".to_owned()
    } else {
        parts.join("; ")
    };
    let session = if online {
        "its session was told and ended"
    } else {
        "it is told at its next connect"
    };
    Ok(done(format!("device {id} {what}; {session}; {seats}")))
}

pub(super) async fn move_to(node: &Node, d: DeviceMove) -> Answer {
    node.store().move_device(&d.device_id, &d.group).await?;
    // Its policy, tasks and group (D4, D5) follow at once, on whichever instance holds it.
    let group = node.store().device_group(&d.device_id).await?;
    node.sessions()
        .registry()
        .nudge(std::slice::from_ref(&d.device_id));
    node.store().announce_sync(&group).await;
    Ok(done(format!("device {} moved to {}", d.device_id, d.group)))
}

pub(super) async fn group_create(node: &Node, g: GroupCreate) -> Answer {
    let path = node
        .store()
        .create_group(&g.path, outpost_net::unix_now())
        .await?;
    Ok(done(format!("group {path} created")))
}

pub(super) async fn group_list(node: &Node) -> Answer {
    let groups = node
        .store()
        .groups()
        .await?
        .into_iter()
        .map(|(path, n)| GroupInfo {
            path,
            devices: n as u32,
        })
        .collect();
    Ok(ok(R::Groups(GroupListResult { groups })))
}

fn device_info(node: &Node, d: DeviceRow, events: u64) -> DeviceInfo {
    // A gateway's path is live: its NAT may have rebound since the uplink came up.
    let path = match d.role.as_str() {
        "gateway" => node.gateways().path(&d.id).unwrap_or(d.path),
        _ => d.path,
    };
    DeviceInfo {
        online: match d.role.as_str() {
            "gateway" => node.gateways().is_up(&d.id),
            _ => node.sessions().registry().is_online(&d.id),
        } || !d.held_by.is_empty(),
        instance: d.held_by,
        device_id: d.id,
        role: d.role,
        hostname: d.hostname,
        machine_id: d.machine_id,
        group: d.group_path,
        licence_state: d.licence_state,
        licence_key: d.licence_key.unwrap_or_default(),
        licence_reason: d.licence_reason,
        grant_expires_at: 0,
        last_seen: d.last_seen,
        enrolled_at: d.enrolled_at,
        revoked: d.revoked_at.is_some(),
        path,
        os: d.os,
        agent_version: d.agent_version,
        events_stored: events,
    }
}
