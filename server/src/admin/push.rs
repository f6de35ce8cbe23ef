//! `admin push` (T7, D4): stored first, then handed to live sessions — a push for many agents
//! (`--all`, `--group`) once per gateway for it to fan out ([`crate::broadcast`]); the answer
//! says per device whether it was acknowledged, sent, or queued for the next connect.

use std::time::Duration;

use outpost_proto::error::RefusalCode;
use outpost_proto::pb::admin::{
    AdminResponse, PushOutcome, PushResult, admin_response::Result as R,
};
use outpost_proto::pb::v1::{Push, PushKind};
use tracing::info;

use super::{error, ok};
use crate::node::Node;
use crate::sessions::{Delivery, await_ack};
use crate::store::StoreError;

/// Parses a push kind name.
pub fn push_kind(name: &str) -> Option<PushKind> {
    Some(match name {
        "sync-now" | "" => PushKind::SyncNow,
        "licence-changed" | "license-changed" => PushKind::LicenceChanged,
        "run-task" => PushKind::RunTask,
        "update-available" => PushKind::UpdateAvailable,
        "message" => PushKind::Message,
        _ => return None,
    })
}

pub(super) async fn push(
    node: &Node,
    p: outpost_proto::pb::admin::PushRequest,
) -> Result<AdminResponse, StoreError> {
    let Some(kind) = push_kind(&p.kind) else {
        return Ok(error(
            RefusalCode::InvalidArgument,
            format!(
                "push kind {:?}: use sync-now, licence-changed, run-task, update-available or message",
                p.kind
            ),
        ));
    };
    let broadcast = p.all || !p.group.is_empty();
    let targets: Vec<String> = if broadcast {
        let group = if p.group.is_empty() {
            None
        } else {
            Some(crate::store::normalize_group(&p.group)?)
        };
        let under = match &group {
            Some(g) => {
                if !node.store().groups().await?.iter().any(|(p, _)| p == g) {
                    return Ok(error(
                        RefusalCode::NotFound,
                        format!("no group {g} (see `admin group list`)"),
                    ));
                }
                Some(node.store().devices_under(g).await?)
            }
            None => None,
        };
        node.store()
            .devices(Some("agent"))
            .await?
            .into_iter()
            .filter(|d| d.revoked_at.is_none())
            .filter(|d| under.as_ref().is_none_or(|u| u.contains(&d.id)))
            .map(|d| d.id)
            .collect()
    } else {
        match node.store().device(&p.device_id).await? {
            Some(d) if d.role == "agent" && d.revoked_at.is_none() => vec![d.id],
            Some(d) => {
                return Ok(error(
                    RefusalCode::InvalidArgument,
                    format!("device {} is not an active agent", d.id),
                ));
            }
            None => {
                return Ok(error(
                    RefusalCode::NotFound,
                    format!("no device {} (see `admin device list`)", p.device_id),
                ));
            }
        }
    };
    let push_id = format!("p-{:016x}", rand::random::<u64>());
    let now_ms = outpost_net::unix_now_ms();
    let push = Push {
        id: push_id.clone(),
        kind: kind as i32,
        payload: p.message.into_bytes(),
        created_at_ms: now_ms,
    };
    let ttl = node.config().timing.push_ttl;
    let expires = outpost_net::unix_now() + ttl.as_secs() as i64;
    let wait = if p.wait_ms == 0 {
        node.config().timing.push_wait
    } else {
        Duration::from_millis(p.wait_ms.into())
    };
    // Stored first: survives a restart, reaches an offline device at its next connect.
    node.store().queue_push(&targets, &push, expires).await?;
    let started = tokio::time::Instant::now();
    let registry = node.sessions().registry();
    let mut paths = registry.by_path(&targets);
    // D4: once up each gateway's uplink, signed, for the gateway to fan out.
    let (fanned, fanned_out_via) = if broadcast {
        let group = crate::store::normalize_group(&p.group).unwrap_or_default();
        crate::broadcast::fan_out(node, &push, &group, expires * 1000, &mut paths)
    } else {
        (vec![], 0)
    };
    let mut in_session = std::mem::take(&mut paths.direct);
    in_session.extend(paths.via.into_values().flatten());
    let mut outcomes = vec![];
    for dev in paths.offline {
        // Another instance on a shared database may hold its session (P2).
        node.store().announce_push(&dev, &push_id).await;
        outcomes.push(queued(dev));
    }
    let mut waiting = vec![];
    for dev in in_session {
        let rx = registry.wait_ack(&dev, &push_id);
        match registry.send(&dev, push.clone()) {
            Delivery::Sent => waiting.push((dev, rx, false)),
            Delivery::Offline | Delivery::QueueFull => {
                registry.forget_ack(&dev, &push_id);
                node.store().announce_push(&dev, &push_id).await;
                outcomes.push(queued(dev));
            }
        }
    }
    waiting.extend(fanned.into_iter().map(|(d, rx)| (d, rx, true)));
    let results = futures_util::future::join_all(waiting.into_iter().map(|(dev, rx, fanned)| {
        let push = push.clone();
        async move {
            let lat = await_ack(registry, &dev, &push.id, rx, started, wait).await;
            // Fanned out but not acknowledged (the gateway lost it, or the agent did not
            // know yet that it is in the group): its own session carries it.
            if lat.is_none() && fanned {
                let _ = registry.send(&dev, push);
            }
            if let Some(d) = lat {
                node.instruments().push_latency.observe(d.as_secs_f64());
            }
            PushOutcome {
                device_id: dev,
                state: if lat.is_some() { "acked" } else { "sent" }.into(),
                latency_ms: lat.map(|d| d.as_millis() as u32).unwrap_or(0),
                latency_us: lat.map(|d| d.as_micros() as u64).unwrap_or(0),
            }
        }
    }))
    .await;
    outcomes.extend(results);
    outcomes.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    info!(push = %push_id, kind = ?kind, targets = outcomes.len(), fanned_out_via, "push sent");
    Ok(ok(R::Push(PushResult {
        push_id,
        outcomes,
        fanned_out_via: fanned_out_via as u32,
    })))
}

fn queued(device_id: String) -> PushOutcome {
    PushOutcome {
        device_id,
        state: "queued".into(),
        latency_ms: 0,
        latency_us: 0,
    }
}
