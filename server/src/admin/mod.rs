//! Admin actions (O3): served on `outpost-admin/1` connections from holders of an admin
//! certificate, one request per stream; and the client the `outpost-server admin` command
//! uses. Every action answers with data (`AdminResponse`); the command prints it for humans or
//! as JSON.

pub mod client;
pub mod keys;
pub mod render;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use outpost_net::stream;
use outpost_proto::error::RefusalCode;
use outpost_proto::pb::admin::{
    AdminError, AdminRequest, AdminResponse, DeviceInfo, DeviceListResult, Done, GroupInfo,
    GroupListResult, KeyFile, KeyImportResult, KeyInfo, KeyListResult, PushOutcome, PushResult,
    ServerStatusResult, TokenCreated, TokenInfo, TokenListResult, admin_request::Op,
    admin_response::Result as R,
};
use outpost_proto::pb::v1::{Push, PushKind, envelope::Msg};
use outpost_proto::session::msg_name;
use tracing::{Instrument, info, warn};

use crate::node::Shared;
use crate::push::{Delivery, await_ack};
use crate::store::{DeviceRow, KeyRow, StoreError, object_label};

/// Serves an admin connection.
pub async fn serve(shared: Arc<Shared>, conn: quinn::Connection, admin: DeviceRow) {
    loop {
        let (send, recv) = tokio::select! {
            s = conn.accept_bi() => match s { Ok(s) => s, Err(_) => return },
            _ = shared.shutdown.cancelled() => return,
        };
        let shared2 = shared.clone();
        let admin = admin.id.clone();
        shared.tasks.spawn(
            async move {
                let mut f = stream::framed(stream::bi(send, recv), shared2.config.limits.max_frame);
                // Hello first (S2), then one request.
                match f.next().await {
                    Some(Ok(Msg::Hello(h))) => {
                        match outpost_proto::version::negotiate(
                            outpost_proto::version::supported(),
                            h.min_version,
                            h.max_version,
                        ) {
                            Ok(v) => {
                                let ack = outpost_proto::pb::v1::HelloAck {
                                    version: v,
                                    software: format!(
                                        "outpost-server {}",
                                        outpost_proto::SOFTWARE_VERSION
                                    ),
                                    server_time_ms: outpost_net::unix_now_ms(),
                                    device_id: admin.clone(),
                                    ..Default::default()
                                };
                                if f.send(Msg::HelloAck(ack)).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                let _ = f
                                    .send(Msg::Refusal(outpost_proto::error::refusal(
                                        RefusalCode::UnsupportedVersion,
                                        e.to_string(),
                                    )))
                                    .await;
                                return;
                            }
                        }
                    }
                    _ => return,
                }
                let resp = match f.next().await {
                    Some(Ok(Msg::AdminRequest(req))) => handle(&shared2, &admin, req).await,
                    Some(Ok(other)) => error(
                        RefusalCode::UnexpectedMessage,
                        format!("expected AdminRequest, got {}", msg_name(&other)),
                    ),
                    Some(Err(e)) => error(RefusalCode::Malformed, e.to_string()),
                    None => return,
                };
                let _ = f.send(Msg::AdminResponse(resp)).await;
                let _ = f.close().await;
            }
            .in_current_span(),
        );
    }
}

fn error(code: RefusalCode, message: impl Into<String>) -> AdminResponse {
    AdminResponse {
        result: Some(R::Error(AdminError {
            code: code as i32,
            message: message.into(),
        })),
    }
}

fn ok(r: R) -> AdminResponse {
    AdminResponse { result: Some(r) }
}

fn done(message: impl Into<String>) -> AdminResponse {
    ok(R::Done(Done {
        message: message.into(),
    }))
}

fn from_store(e: StoreError) -> AdminResponse {
    if matches!(e, StoreError::Sqlx(_) | StoreError::Migrate(_)) {
        warn!(error = %e, "admin request failed in the store");
    }
    error(e.code(), e.to_string())
}

/// Executes one admin request.
pub async fn handle(shared: &Shared, admin: &str, req: AdminRequest) -> AdminResponse {
    let Some(op) = req.op else {
        return error(
            RefusalCode::InvalidArgument,
            "empty request (this server does not know the operation; upgrade it?)",
        );
    };
    let span = tracing::info_span!("admin", admin = %admin);
    let licence_related = matches!(
        op,
        Op::KeyImport(_)
            | Op::KeyAssign(_)
            | Op::KeyUnassign(_)
            | Op::KeyRemove(_)
            | Op::DeviceRevoke(_)
            | Op::DeviceRemove(_)
            | Op::DeviceMove(_)
            | Op::KeyAutoDistribute(_)
    );
    // `key renew` and `seats reclaim` move the licence epoch themselves, only when they change
    // something (the scheduled tasks share that code).
    match handle_op(shared, op).instrument(span).await {
        Ok(r) => {
            if licence_related {
                shared.licence_changed();
            }
            r
        }
        Err(e) => from_store(e),
    }
}

async fn handle_op(shared: &Shared, op: Op) -> Result<AdminResponse, StoreError> {
    let store = &shared.store;
    let now = outpost_net::unix_now();
    Ok(match op {
        Op::TokenCreate(t) => {
            let spec = crate::store::TokenSpec {
                role: if t.role.is_empty() {
                    "agent".into()
                } else {
                    t.role
                },
                group: t.group,
                ttl_secs: if t.ttl_secs == 0 { 86_400 } else { t.ttl_secs },
                uses: if t.uses == 0 { 1 } else { t.uses },
                comment: t.comment,
            };
            let (token, row) = store.create_token(&spec, shared.ca_sha256, now).await?;
            info!(token = %token, role = %row.role, group = %row.group_path, uses = row.uses_total, "enrollment token created");
            ok(R::TokenCreated(TokenCreated {
                token_id: row.id,
                token: token.to_text(),
                expires_at: row.expires_at,
                uses: row.uses_total as u32,
                role: row.role,
                group: row.group_path,
            }))
        }
        Op::TokenList(_) => ok(R::Tokens(TokenListResult {
            tokens: store
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
                })
                .collect(),
        })),
        Op::KeyImport(k) => {
            let ids = keys::import(
                shared,
                &k.file_name,
                &k.content,
                k.auto_distribute,
                k.assign_everyone,
                k.activation_reserve,
            )
            .await?;
            info!(keys = ?ids, file = %k.file_name, "licence keys imported");
            let mut out = vec![];
            for id in ids {
                if let Some(row) = store.key(&id).await? {
                    out.push(key_info(shared, row, now).await?);
                }
            }
            ok(R::KeyImport(KeyImportResult { keys: out }))
        }
        Op::KeyList(_) => {
            let mut out = vec![];
            for row in store.keys().await? {
                out.push(key_info(shared, row, now).await?);
            }
            ok(R::Keys(KeyListResult { keys: out }))
        }
        Op::KeyAssign(a) => {
            let obj = store.assign_key(&a.key_id, &a.object).await?;
            info!(key = %a.key_id, object = %obj, "key assigned");
            done(format!(
                "key {} assigned to {}",
                a.key_id,
                object_label(&obj)
            ))
        }
        Op::KeyUnassign(a) => {
            let obj = store.unassign_key(&a.key_id, &a.object).await?;
            info!(key = %a.key_id, object = %obj, "key unassigned");
            done(format!(
                "key {} no longer assigned to {}",
                a.key_id,
                object_label(&obj)
            ))
        }
        Op::KeyRemove(k) => {
            store.remove_key(&k.key_id).await?;
            info!(key = %k.key_id, "key removed from the repository (its file stays in the data directory)");
            done(format!(
                "key {} removed; its file stays in {}",
                k.key_id,
                shared.data.keys().display()
            ))
        }
        Op::KeyExport(k) => {
            let (file_name, content) = store.key_file(&k.key_id).await?;
            ok(R::KeyFile(KeyFile {
                key_id: k.key_id,
                file_name,
                content,
            }))
        }
        Op::DeviceList(d) => {
            let role = (!d.role.is_empty()).then_some(d.role.as_str());
            let mut out = vec![];
            for row in store.devices(role).await? {
                let events = if row.role == "agent" {
                    store.event_count(&row.id).await? as u64
                } else {
                    0
                };
                out.push(device_info(shared, row, events));
            }
            ok(R::Devices(DeviceListResult { devices: out }))
        }
        Op::DeviceRevoke(d) => {
            store.revoke_device(&d.device_id, now).await?;
            shared.registry.kick(&d.device_id);
            info!(device = %d.device_id, "device revoked; its seats are free");
            done(format!(
                "device {} revoked; its seats are free",
                d.device_id
            ))
        }
        Op::DeviceRemove(d) => {
            store.remove_device(&d.device_id).await?;
            shared.registry.kick(&d.device_id);
            info!(device = %d.device_id, "device removed; its seats are free");
            done(format!(
                "device {} removed; its seats are free",
                d.device_id
            ))
        }
        Op::DeviceMove(d) => {
            store.move_device(&d.device_id, &d.group).await?;
            done(format!("device {} moved to {}", d.device_id, d.group))
        }
        Op::GroupCreate(g) => {
            let path = store.create_group(&g.path, now).await?;
            done(format!("group {path} created"))
        }
        Op::GroupList(_) => ok(R::Groups(GroupListResult {
            groups: store
                .groups()
                .await?
                .into_iter()
                .map(|(path, n)| GroupInfo {
                    path,
                    devices: n as u32,
                })
                .collect(),
        })),
        Op::Push(p) => push(shared, p).await?,
        Op::KeyRenew(_) => {
            let reports = crate::renewal::run(shared)
                .await
                .map_err(|e| StoreError::Invalid(format!("{e:#}")))?;
            ok(R::Renewals(outpost_proto::pb::admin::RenewalResult {
                reports,
            }))
        }
        Op::NotificationList(n) => ok(R::Notifications(
            outpost_proto::pb::admin::NotificationListResult {
                notifications: store
                    .notices(
                        (!n.kind.is_empty()).then_some(n.kind.as_str()),
                        if n.limit == 0 { 50 } else { n.limit.into() },
                    )
                    .await?
                    .into_iter()
                    .map(|n| outpost_proto::pb::admin::NotificationInfo {
                        id: n.id,
                        at_ms: n.at_ms,
                        kind: n.kind,
                        key_id: n.key_id.unwrap_or_default(),
                        message: n.message,
                    })
                    .collect(),
            },
        )),
        Op::KeyAutoDistribute(k) => {
            store.set_auto_distribute(&k.key_id, k.on).await?;
            done(format!(
                "key {} is {} distributed automatically",
                k.key_id,
                if k.on { "now" } else { "no longer" }
            ))
        }
        Op::SeatsReclaim(_) => {
            let after = shared.config.licensing.reclaim_after;
            if after.is_zero() {
                return Ok(error(
                    RefusalCode::InvalidArgument,
                    "licensing.reclaim_after is 0s: reclaiming is off",
                ));
            }
            let n = crate::licence_tasks::reclaim(shared, now - after.as_secs() as i64, now)
                .await
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            done(format!(
                "{n} seat(s) of devices inactive for {} freed",
                humantime::format_duration(after)
            ))
        }
        Op::ServerStatus(_) => {
            let links: Vec<outpost_proto::pb::admin::GatewayLinkInfo> = shared
                .gateways
                .lock()
                .expect("gateways lock")
                .iter()
                .map(|(id, l)| outpost_proto::pb::admin::GatewayLinkInfo {
                    device_id: id.clone(),
                    remote: l.connection.remote_address().to_string(),
                    rtt_ms: l.connection.rtt().as_millis() as u32,
                    agents_connected: l.report.agents_connected,
                    sessions_relayed: l.report.sessions_relayed,
                    connected_since: l.since,
                    direction: l.direction.into(),
                    connection_id: l.connection.stable_id() as u64,
                })
                .collect();
            let gateways_connected = links.len() as u32;
            let devices = store.devices(None).await?.len() as u64;
            ok(R::ServerStatus(ServerStatusResult {
                software: format!("outpost-server {}", outpost_proto::SOFTWARE_VERSION),
                listen: shared.local_addr.to_string(),
                sessions: shared.registry.online_count() as u32,
                gateways_connected,
                devices,
                uptime_secs: shared.started.elapsed().as_secs(),
                sessions_refused: shared
                    .stats
                    .sessions_refused
                    .load(std::sync::atomic::Ordering::Relaxed),
                gateways: links,
            }))
        }
    })
}

async fn key_info(shared: &Shared, row: KeyRow, now: i64) -> Result<KeyInfo, StoreError> {
    let objects = shared
        .store
        .key_objects(&row.id)
        .await?
        .iter()
        .map(|o| object_label(o))
        .collect();
    Ok(KeyInfo {
        seats_free: row.free() as u32,
        key_id: row.id.clone(),
        licensee: row.licensee.clone(),
        product: row.product.clone(),
        components: row.component_list(),
        seats_total: row.seats as u32,
        seats_used: row.seats_used as u32,
        seats_leased_out: row.seats_leased_out as u32,
        valid_from: row.valid_from,
        expires_at: row.expires_at,
        kind: row.kind.clone(),
        renews: row.renews.clone().unwrap_or_default(),
        auto_distribute: row.auto_distribute != 0,
        objects,
        file_name: row.file_name.clone(),
        expired: now >= row.expires_at,
    })
}

fn device_info(shared: &Shared, d: DeviceRow, events: u64) -> DeviceInfo {
    DeviceInfo {
        online: match d.role.as_str() {
            "gateway" => shared
                .gateways
                .lock()
                .expect("gateways lock")
                .contains_key(&d.id),
            _ => shared.registry.is_online(&d.id),
        },
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
        path: d.path,
        os: d.os,
        agent_version: d.agent_version,
        events_stored: events,
    }
}

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

async fn push(
    shared: &Shared,
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
        shared
            .store
            .devices(Some("agent"))
            .await?
            .into_iter()
            .filter(|d| d.revoked_at.is_none())
            .map(|d| d.id)
            .collect()
    } else {
        match shared.store.device(&p.device_id).await? {
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
    let expires = outpost_net::unix_now() + shared.config.timing.push_ttl.as_secs() as i64;
    let wait = if p.wait_ms == 0 {
        shared.config.timing.push_wait
    } else {
        Duration::from_millis(p.wait_ms.into())
    };
    // Stored first: survives a restart, reaches an offline device at its next connect.
    shared.store.queue_push(&targets, &push, expires).await?;
    let started = tokio::time::Instant::now();
    let mut waiting = vec![];
    let mut outcomes = vec![];
    for dev in targets {
        let rx = shared.registry.wait_ack(&dev, &push_id);
        match shared.registry.send(&dev, push.clone()) {
            Delivery::Sent => waiting.push((dev, rx)),
            Delivery::Offline | Delivery::QueueFull => {
                shared.registry.forget_ack(&dev, &push_id);
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
        let reg = &shared.registry;
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
