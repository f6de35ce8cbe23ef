//! `admin push` (T7): stored first, then handed to live sessions; the answer says per device
//! whether it was acknowledged, sent, or queued for the next connect.

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
    let targets: Vec<String> = if p.all {
        node.store()
            .devices(Some("agent"))
            .await?
            .into_iter()
            .filter(|d| d.revoked_at.is_none())
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
    let expires = outpost_net::unix_now() + node.config().timing.push_ttl.as_secs() as i64;
    let wait = if p.wait_ms == 0 {
        node.config().timing.push_wait
    } else {
        Duration::from_millis(p.wait_ms.into())
    };
    // Stored first: survives a restart, reaches an offline device at its next connect.
    node.store().queue_push(&targets, &push, expires).await?;
    let started = tokio::time::Instant::now();
    let mut waiting = vec![];
    let mut outcomes = vec![];
    for dev in targets {
        let rx = node.sessions().registry().wait_ack(&dev, &push_id);
        match node.sessions().registry().send(&dev, push.clone()) {
            Delivery::Sent => waiting.push((dev, rx)),
            Delivery::Offline | Delivery::QueueFull => {
                node.sessions().registry().forget_ack(&dev, &push_id);
                // Another instance on a shared database may hold its session (P2).
                node.store().announce_push(&dev, &push_id).await;
                outcomes.push(PushOutcome {
                    device_id: dev,
                    state: "queued".into(),
                    latency_ms: 0,
                    latency_us: 0,
                });
            }
        }
    }
    let results = futures_util::future::join_all(waiting.into_iter().map(|(dev, rx)| {
        let reg = node.sessions().registry();
        let push_id = push_id.clone();
        async move {
            let lat = await_ack(reg, &dev, &push_id, rx, started, wait).await;
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
    info!(push = %push_id, kind = ?kind, targets = outcomes.len(), "push sent");
    Ok(ok(R::Push(PushResult { push_id, outcomes })))
}
