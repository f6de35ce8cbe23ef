//! The session driver: the async loop around `outpost_proto::session::ClientSession` for one
//! session (S2–S5, T7): hello, the licence check (its grants stored, L7), syncs of inventory
//! and queued events, pushes.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use outpost_net::{refuse, stream};
use outpost_proto::error::RefusalCode;
use outpost_proto::pb::v1::{PushKind, Role, SyncRequest, Versions};
use outpost_proto::session::{ClientEvent, ClientSession, SessionError, hello};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::connect::{Attempt, Via, refused_attempt};
use crate::node::{AgentEvent, Shared};

/// Largest frame the agent accepts from the server.
const MAX_FRAME: usize = 4 << 20;

pub(crate) async fn run_session<S>(
    shared: &Arc<Shared>,
    io: S,
    label: &str,
    conn: &quinn::Connection,
    preferred: &[(Via, String)],
) -> Attempt
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut f = stream::framed(io, MAX_FRAME);
    let timeout = shared.config.connect.sync_timeout;
    // The first sync goes with the hello: licensed and synced in one round trip.
    let mut sm = ClientSession::with_first_sync(
        hello(
            Role::Agent,
            &format!("outpost-agent {}", outpost_proto::SOFTWARE_VERSION),
            &[],
        ),
        sync_request(shared).await,
        timeout,
        Instant::now().into_std(),
    );
    let mut reconnect = shared.reconnect.subscribe();
    reconnect.mark_unchanged();
    let setup = shared.config.connect.setup_timeout;
    let setup_deadline = Instant::now() + setup;
    let mut established = false;
    let mut renewal = crate::certs::Renewal::default();
    // On a fallback path: watch for a preferred one to answer again (T8).
    let mut back = (!preferred.is_empty()).then(|| {
        AbortOnDrop(tokio::spawn(crate::paths::probe_preferred(
            shared.clone(),
            preferred.to_vec(),
        )))
    });
    let end = |reason: String, retry_after: Option<Duration>, established: bool| Attempt::Ended {
        reason,
        retry_after,
        established,
    };
    loop {
        // Drive the state machine until it has nothing more to say or do.
        loop {
            let mut progressed = false;
            while let Some(m) = sm.poll_transmit() {
                progressed = true;
                if let Err(e) = f.feed(m).await {
                    return end(format!("{label}: write failed: {e}"), None, established);
                }
            }
            if progressed && f.flush().await.is_err() {
                return end(format!("{label}: connection lost"), None, established);
            }
            while let Some(ev) = sm.poll_event() {
                progressed = true;
                on_event(shared, &mut sm, ev, label, &mut established, &mut renewal).await;
            }
            if !progressed {
                break;
            }
        }
        // Until the session is set up, the setup time-out bounds every wait: a machine timer
        // further out (the first sync's, a minute) must not keep a dead attempt "connecting".
        let deadline = match sm.poll_timeout() {
            Some(t) if !sm.is_ready() => Instant::from_std(t).min(setup_deadline),
            Some(t) => Instant::from_std(t),
            None if !sm.is_ready() => setup_deadline,
            None => Instant::now() + Duration::from_secs(3600),
        };
        // S9: renew over this session when the certificate is due (checked at least hourly).
        let renew_at = match renewal.next_check(shared) {
            Some(due) if sm.is_ready() => {
                let wait = (due - outpost_net::unix_now()).clamp(0, 3_600) as u64;
                Some(Instant::now() + Duration::from_secs(wait))
            }
            _ => None,
        };
        tokio::select! {
            label = moved_back(&mut back), if sm.is_ready() => {
                let _ = f.close().await;
                return Attempt::MovedBack(format!("{label} answers again"));
            }
            m = f.next() => match m {
                Some(Ok(msg)) => {
                    if let Err(e) = sm.handle_message(msg, Instant::now().into_std()) {
                        return match e {
                            SessionError::Refused(r) => {
                                warn!(refusal = %r, "session refused by the server");
                                if let Some(why) = dropped_reason(&r) {
                                    drop_grants(shared, &mut sm, &mut f, &r, why).await;
                                }
                                refused_attempt(shared, &r, established)
                            }
                            other => end(format!("{label}: {other}"), None, established),
                        };
                    }
                }
                Some(Err(e)) => return ended_by_peer(shared, conn, label, established, e.to_string()).await,
                None => return ended_by_peer(shared, conn, label, established, "the server ended the session".into()).await,
            },
            _ = tokio::time::sleep_until(deadline) => {
                if !sm.is_ready() && Instant::now() >= setup_deadline {
                    return end(format!("{label}: no licence check answer within {setup:?}"), None, established);
                }
                if let Err(e) = sm.handle_timeout(Instant::now().into_std()) {
                    return end(format!("{label}: {e}"), None, established);
                }
            }
            _ = sleep_opt(renew_at) => {
                if let Some(csr) = renewal.request_if_due(shared, outpost_net::unix_now()) {
                    sm.renew_certificate(csr);
                }
            }
            _ = shared.nudge.notified() => sm.request_sync(Instant::now().into_std()),
            _ = reconnect.changed() => {
                let _ = f.close().await;
                return Attempt::Reconnect;
            }
            _ = shared.shutdown.cancelled() => {
                let _ = f.close().await;
                return end("shutting down".into(), None, established);
            }
        }
    }
}

/// The session stream ended without a refusal on it: if the whole connection is closing with a
/// refusal (revoked, shutting down …), that is the real reason.
async fn ended_by_peer(
    shared: &Shared,
    conn: &quinn::Connection,
    label: &str,
    established: bool,
    fallback: String,
) -> Attempt {
    // The stream can end a moment before the connection close arrives.
    let reason = match conn.close_reason() {
        Some(e) => Some(e),
        None => tokio::time::timeout(Duration::from_millis(250), conn.closed())
            .await
            .ok(),
    };
    match reason {
        Some(e) => match refuse::refusal_of(&e) {
            Some(r) => refused_attempt(shared, &r, established),
            None => Attempt::Ended {
                reason: format!("{label}: {}", refuse::explain(&e)),
                retry_after: None,
                established,
            },
        },
        None => Attempt::Ended {
            reason: format!("{label}: {fallback}"),
            retry_after: None,
            established,
        },
    }
}

/// A sync request: inventory, the queued events (a batch), what the agent holds.
async fn sync_request(shared: &Arc<Shared>) -> SyncRequest {
    let (q, batch) = (shared.queue.clone(), shared.config.queue.batch);
    let events = tokio::task::spawn_blocking(move || q.peek(batch, MAX_FRAME / 2))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let rev = shared
        .server_gateways
        .lock()
        .expect("gateways lock")
        .revision;
    SyncRequest {
        trust_sha256: shared.tls().trust_sha256.to_vec(),
        licence_checked_at_ms: shared.grants.checked_at_ms(),
        seq: 0,
        inventory: Some(shared.inventory.clone()),
        events,
        known: Some(Versions {
            gateways: rev,
            policy: shared.policy.lock().expect("policy lock").revision,
            tasks: shared.tasks.lock().expect("tasks lock").revision,
            manifest: shared.update.lock().expect("update lock").revision,
        }),
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn on_event(
    shared: &Arc<Shared>,
    sm: &mut ClientSession,
    ev: ClientEvent,
    label: &str,
    established: &mut bool,
    renewal: &mut crate::certs::Renewal,
) {
    let now = outpost_net::unix_now();
    match ev {
        ClientEvent::Established { version, device_id } => {
            if device_id != shared.device_id {
                warn!(server_says = %device_id, "the server knows this certificate under another device id");
            }
            *established = true;
            info!(path = %label, version, "session established");
            shared.status.send_modify(|s| {
                s.state = "connected".into();
                s.path = label.to_owned();
                s.sessions += 1;
                s.last_error.clear();
                s.updated_at = now;
            });
            let _ = shared.events.send(AgentEvent::Connected {
                path: label.to_owned(),
            });
        }
        ClientEvent::Licence(status) => {
            // File I/O with fsync: off the async worker threads.
            let sh = shared.clone();
            let stored = tokio::task::spawn_blocking(move || sh.grants.store(&status)).await;
            match stored {
                Ok(Ok(keys_changed)) => {
                    // In the status before the sync answer that follows is reported.
                    crate::grants::publish_state(shared, now);
                    shared.grants_changed.notify_one();
                    // Grants on other keys: tell the server at once which status is stored, so
                    // seats of the grants it replaced stop counting (L15). Otherwise the next
                    // sync tells it.
                    if keys_changed {
                        sm.request_sync(Instant::now().into_std());
                    }
                }
                Ok(Err(e)) => warn!(error = %e, "licence status from the server not stored"),
                Err(e) => warn!(error = %e, "licence store task failed"),
            }
        }
        ClientEvent::SyncDue => {
            let req = sync_request(shared).await;
            sm.send_sync(req, Instant::now().into_std());
        }
        ClientEvent::Synced(resp) if shared.die_before_ack && !resp.acked_event_ids.is_empty() => {
            warn!("test hook: dying before deleting acknowledged events");
            shared.status.send_modify(|s| s.state = "crashed".into());
            shared.shutdown.cancel();
        }
        ClientEvent::Synced(resp) => {
            let q = shared.queue.clone();
            let ids = resp.acked_event_ids.clone();
            let (acked, depth) = tokio::task::spawn_blocking(move || {
                let acked = q.ack(&ids).unwrap_or_else(|e| {
                    warn!(error = %e, "could not delete acknowledged events (they will be resent and de-duplicated)");
                    0
                });
                (acked, q.len())
            })
            .await
            .unwrap_or((0, 0));
            if let Some(g) = resp.gateways {
                let mut cur = shared.server_gateways.lock().expect("gateways lock");
                *cur = crate::node::Learned {
                    revision: g.revision,
                    gateways: g.addresses,
                    servers: g.servers,
                };
                cur.save(&shared.data);
            }
            if let Some(p) = resp.policy {
                crate::node::on_policy(shared, p);
            }
            if let Some(t) = resp.tasks {
                crate::tasks::on_tasks(shared, t);
            }
            if let Some(m) = resp.manifest {
                crate::updates::on_manifest(shared, m, &resp.update_key);
            }
            if !resp.group.is_empty() {
                *shared.group.lock().expect("group lock") = resp.group;
            }
            if let Some(t) = resp.trust {
                crate::certs::on_trust(shared, t);
            }
            if let Some(csr) = renewal.request_if_due(shared, now) {
                sm.renew_certificate(csr);
            }
            if depth > 0 && acked > 0 {
                // More waiting: keep draining.
                sm.request_sync(Instant::now().into_std());
            }
            shared.status.send_modify(|s| {
                s.last_sync = now;
                s.queue_depth = depth;
                s.updated_at = now;
            });
            let _ = shared.events.send(AgentEvent::Synced { acked });
        }
        ClientEvent::CertRenewed(r) => renewal.done(shared, r),
        ClientEvent::Push(p) => {
            on_push(shared, p, now);
        }
    }
}

/// Acts on a push that arrived in the session or as a broadcast (D4): shown, and handed to
/// observers, once — a push delivered twice (both ways, or after a missed acknowledgement) is
/// recognised by its id. Returns false for a repeat.
pub(crate) fn on_push(shared: &Shared, p: outpost_proto::pb::v1::Push, now: i64) -> bool {
    {
        let mut recent = shared.recent_pushes.lock().expect("pushes lock");
        if recent.contains(&p.id) {
            debug!(push = %p.id, "push received again; acknowledged, not acted on twice");
            return false;
        }
        if recent.len() >= RECENT_PUSHES {
            recent.pop_front();
        }
        recent.push_back(p.id.clone());
    }
    let kind = PushKind::try_from(p.kind)
        .map(|k| k.as_str_name())
        .unwrap_or("PUSH_KIND_UNKNOWN");
    let kind = kind
        .trim_start_matches("PUSH_KIND_")
        .to_lowercase()
        .replace('_', "-");
    let text = String::from_utf8_lossy(&p.payload).into_owned();
    info!(push = %p.id, %kind, %text, "push received");
    shared.status.send_modify(|s| {
        s.pushes_received += 1;
        s.last_push = if text.is_empty() {
            kind.clone()
        } else {
            format!("{kind}: {text}")
        };
        s.updated_at = now;
    });
    // D2: look for a new revision's files now.
    if p.kind == PushKind::UpdateAvailable as i32 {
        shared.update_wake.notify_one();
    }
    let _ = shared.events.send(AgentEvent::Push(p));
    true
}

/// How many push ids an agent remembers to recognise one delivered twice.
const RECENT_PUSHES: usize = 256;

/// What the agent shows when the server said it is revoked or removed (S8); `None` for every
/// other refusal.
fn dropped_reason(r: &outpost_proto::error::Refused) -> Option<&'static str> {
    match r.code() {
        RefusalCode::Revoked => Some("revoked"),
        RefusalCode::Removed => Some("removed"),
        _ => None,
    }
}

/// The server said this device is revoked or removed (S8): drop every grant durably, then
/// confirm it on the same stream so the server frees the seats it held for them (L15).
async fn drop_grants<S>(
    shared: &Arc<Shared>,
    sm: &mut ClientSession,
    f: &mut outpost_net::stream::Framed<S>,
    r: &outpost_proto::error::Refused,
    why: &'static str,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let sh = shared.clone();
    let now = outpost_net::unix_now();
    let dropped = tokio::task::spawn_blocking(move || sh.grants.drop_all(why, now)).await;
    match dropped {
        Ok(Ok(())) => {
            shared.grants_changed.notify_one();
            warn!(reason = why, "licence grants dropped: {r}");
            sm.licence_dropped(r.code());
            let _ = outpost_net::stream::send_queued(f, sm).await;
            let _ = f.close().await;
            // The server ends the stream once it has the confirmation: wait for that (briefly),
            // so closing the connection does not discard it in flight.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(Ok(_)) = f.next().await {}
            })
            .await;
        }
        Ok(Err(e)) => warn!(error = %e, "could not drop the licence grants"),
        Err(e) => warn!(error = %e, "licence store task failed"),
    }
}

/// A task aborted when its handle is dropped (the probe ends with the session).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves with the label of a preferred path once the probe found one answering.
async fn moved_back(probe: &mut Option<AbortOnDrop<String>>) -> String {
    match probe {
        Some(p) => match (&mut p.0).await {
            Ok(label) => label,
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}
