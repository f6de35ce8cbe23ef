//! Agent sessions on the server: the async driver around `outpost_proto::session::ServerSession`.
//!
//! A session is one stream: a QUIC bidi stream of a direct agent connection, or the inner TLS
//! session inside a stream relayed by a gateway (S1). Either way the same bytes flow and the
//! same driver runs: hello (S2), licence check (S3, L6), syncs (S4, S5), pushes (T7).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use outpost_net::stream::{self, Framed};
use outpost_proto::error::{RefusalCode, Refused};
use outpost_proto::pb::v1::{
    GatewayList, LicenceStatus, Push, Role, SyncRequest, SyncResponse, Versions, envelope::Msg,
};
use outpost_proto::session::{ServerAction, ServerSession};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::licensing;
use crate::node::Shared;
use crate::store::DeviceRow;

/// Serves a direct agent connection: every bidi stream the agent opens is a session.
pub async fn serve_direct(shared: Arc<Shared>, conn: quinn::Connection, device: DeviceRow) {
    loop {
        let (send, recv) = tokio::select! {
            s = conn.accept_bi() => match s {
                Ok(s) => s,
                Err(e) => {
                    debug!(reason = %outpost_net::refuse::explain(&e), "agent connection ended");
                    return;
                }
            },
            _ = shared.shutdown.cancelled() => return,
        };
        let shared2 = shared.clone();
        let device = device.clone();
        shared.tasks.spawn(
            async move {
                run(shared2, device, "direct".into(), stream::bi(send, recv)).await;
            }
            .in_current_span(),
        );
    }
}

/// Sends a refusal on a fresh stream and ends it.
pub async fn refuse_stream<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    max_frame: usize,
    r: &Refused,
) {
    let mut f = stream::framed(stream, max_frame);
    let _ = f.send(Msg::Refusal(r.0.clone())).await;
    let _ = f.close().await;
}

/// Runs one session to its end.
pub async fn run<S>(shared: Arc<Shared>, device: DeviceRow, path: String, io: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let max_frame = shared.config.limits.max_frame;
    let Ok(_permit) = shared.sessions.clone().try_acquire_owned() else {
        shared
            .stats
            .sessions_refused
            .fetch_add(1, Ordering::Relaxed);
        let r = shared.come_back_later(
            RefusalCode::Overloaded,
            &format!(
                "server is at its session limit ({}); come back later",
                shared.config.limits.max_sessions
            ),
        );
        refuse_stream(io, max_frame, &r).await;
        return;
    };
    shared
        .stats
        .sessions_started
        .fetch_add(1, Ordering::Relaxed);
    let span = info_span!("session", device = %device.id, path = %path);
    let mut driver = Driver {
        shared: shared.clone(),
        sm: ServerSession::new(
            device.id.clone(),
            format!("outpost-server {}", outpost_proto::SOFTWARE_VERSION),
        ),
        framed: stream::framed(io, max_frame),
        device,
        path,
        registered: None,
        last_licence: None,
        gateways_revision: 0,
        checked_epoch: 0,
        last_touch: 0,
    };
    driver.run().instrument(span).await;
}

struct Driver<S> {
    shared: Arc<Shared>,
    sm: ServerSession,
    framed: Framed<S>,
    device: DeviceRow,
    path: String,
    /// Registry session id and the push receiver, once the licence check passed.
    registered: Option<(u64, mpsc::Receiver<Push>)>,
    /// The licence state last sent: (licensed, key, reason, grant expiry).
    last_licence: Option<(bool, String, String, i64)>,
    gateways_revision: u64,
    /// `Shared::licence_epoch` when this session last ran the licence check.
    checked_epoch: u64,
    /// When `last_seen` was last written for this device.
    last_touch: i64,
}

/// How often a connected device's `last_seen` is refreshed when nothing else changes.
const TOUCH_EVERY_SECS: i64 = 60;

enum Step {
    Continue,
    End,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Driver<S> {
    async fn run(&mut self) {
        let setup = tokio::time::sleep(self.shared.config.timing.session_setup_timeout);
        tokio::pin!(setup);
        loop {
            if self.flush().await.is_err() {
                break;
            }
            let step = tokio::select! {
                msg = self.framed.next() => self.on_frame(msg).await,
                push = recv_push(&mut self.registered) => {
                    match push {
                        Some(p) => { self.sm.push(p); Step::Continue }
                        None => Step::End,
                    }
                }
                _ = &mut setup, if !self.sm.is_ready() => {
                    self.sm.refuse(RefusalCode::Timeout, "session setup took too long");
                    Step::End
                }
                _ = self.shared.shutdown.cancelled() => {
                    let r = self.shared.come_back_later(RefusalCode::ShuttingDown, "server is restarting; come back later");
                    let _ = self.framed.send(Msg::Refusal(r.0)).await;
                    Step::End
                }
            };
            if matches!(step, Step::End) {
                let _ = self.flush().await;
                break;
            }
        }
        let _ = self.framed.close().await;
        if let Some((sid, _)) = self.registered.take() {
            self.shared.registry.unregister(&self.device.id, sid);
        }
        debug!("session ended");
    }

    async fn flush(&mut self) -> Result<(), ()> {
        loop {
            let mut wrote = false;
            while let Some(m) = self.sm.poll_transmit() {
                wrote = true;
                if let Err(e) = self.framed.feed(m).await {
                    debug!(error = %e, "write failed");
                    return Err(());
                }
            }
            if wrote {
                self.framed.flush().await.map_err(|_| ())?;
            }
            let Some(action) = self.sm.poll_action() else {
                return Ok(());
            };
            if let Err(e) = self.act(action).await {
                warn!(error = %e, "session action failed");
                let code = e
                    .downcast_ref::<crate::store::StoreError>()
                    .map(|s| s.code())
                    .unwrap_or(RefusalCode::Internal);
                self.sm.refuse(code, e.to_string());
                while let Some(m) = self.sm.poll_transmit() {
                    let _ = self.framed.feed(m).await;
                }
                let _ = self.framed.flush().await;
                return Err(());
            }
        }
    }

    async fn on_frame(&mut self, msg: Option<Result<Msg, outpost_proto::FrameError>>) -> Step {
        match msg {
            None => Step::End,
            Some(Err(outpost_proto::FrameError::Io(e))) => {
                debug!(error = %e, "session stream ended");
                Step::End
            }
            Some(Err(e)) => {
                self.shared.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "bad frame from agent; closing its session");
                let code = match e {
                    outpost_proto::FrameError::TooLarge { .. } => RefusalCode::FrameTooLarge,
                    _ => RefusalCode::Malformed,
                };
                self.sm.refuse(code, e.to_string());
                Step::End
            }
            Some(Ok(m)) => match self.sm.handle_message(m, outpost_net::unix_now_ms()) {
                Ok(()) => Step::Continue,
                Err(e) => {
                    info!(error = %e, "session refused");
                    Step::End
                }
            },
        }
    }

    async fn act(&mut self, action: ServerAction) -> anyhow::Result<()> {
        match action {
            ServerAction::CheckLicence { hello, version } => {
                if hello.role != Role::Agent as i32 {
                    self.sm.refuse(
                        RefusalCode::WrongRole,
                        "this stream carries agent sessions; the hello claimed another role",
                    );
                    return Ok(());
                }
                let status = self.check().await?;
                info!(
                    version,
                    software = %hello.software,
                    licensed = status.licensed,
                    reason = %status.reason,
                    "licence checked at connect"
                );
                self.remember(&status);
                self.sm.licence_checked(status);
                let (tx, rx) = mpsc::channel(self.shared.config.limits.push_queue);
                let sid = self.shared.registry.register(&self.device.id, tx);
                self.registered = Some((sid, rx));
                // Pushes that waited for this device (T7, D4).
                for p in self
                    .shared
                    .store
                    .pending_pushes(&self.device.id, outpost_net::unix_now())
                    .await?
                {
                    self.sm.push(p);
                }
            }
            ServerAction::Sync(req) => {
                let resp = self.sync(req).await?;
                self.sm.sync_done(resp);
            }
            ServerAction::PushAcked(id) => {
                self.shared.registry.acked(&self.device.id, &id);
                self.shared.store.push_acked(&self.device.id, &id).await;
            }
        }
        Ok(())
    }

    fn remember(&mut self, s: &LicenceStatus) {
        self.last_licence = Some(licence_key(s));
    }

    /// Runs the licence check (it also records `last_seen` and the path).
    async fn check(&mut self) -> Result<LicenceStatus, crate::store::StoreError> {
        // Read the epoch first: a change during the check triggers another one later.
        let epoch = self.shared.licence_epoch.load(Ordering::Acquire);
        let status = licensing::check(&self.shared, &self.device.id, Some(&self.path)).await?;
        self.checked_epoch = epoch;
        self.last_touch = outpost_net::unix_now();
        self.device.path = self.path.clone();
        Ok(status)
    }

    async fn sync(&mut self, req: SyncRequest) -> anyhow::Result<SyncResponse> {
        let now = outpost_net::unix_now();
        let store = self.shared.store.clone();
        // Inventory: written when it changed; otherwise only last_seen, now and then.
        if let Some(inv) = &req.inventory {
            let d = &self.device;
            let changed = d.hostname != inv.hostname
                || d.os != inv.os
                || d.agent_version != inv.agent_version
                || d.addresses != inv.addresses.join(",");
            if changed {
                store.update_inventory(&d.id, inv, &self.path, now).await?;
                self.device.hostname = inv.hostname.clone();
                self.device.os = inv.os.clone();
                self.device.agent_version = inv.agent_version.clone();
                self.device.addresses = inv.addresses.join(",");
                self.last_touch = now;
            }
        }
        let max = self.shared.config.limits.max_events_per_sync as usize;
        let events = &req.events[..req.events.len().min(max)];
        let acked = store.store_events(&self.device.id, events, now).await?;
        // The licence can change while connected (key assigned, seat freed, grant half-way to
        // expiry): re-check when something licence-related changed on the server.
        let half_ttl = self.shared.grant_ttl() / 2;
        let stale = self
            .last_licence
            .as_ref()
            .is_none_or(|l| l.3 - now < half_ttl);
        let epoch = self.shared.licence_epoch.load(Ordering::Acquire);
        let licence = if stale || epoch != self.checked_epoch {
            let status = self.check().await?;
            let key = licence_key(&status);
            let changed = match &self.last_licence {
                Some(prev) => {
                    prev.0 != key.0 || prev.1 != key.1 || prev.2 != key.2 || prev.3 - now < half_ttl
                }
                None => true,
            };
            changed.then(|| {
                self.remember(&status);
                status
            })
        } else {
            if now - self.last_touch >= TOUCH_EVERY_SECS {
                store.touch(&self.device.id, &self.path, now).await?;
                self.last_touch = now;
            }
            None
        };
        let gw = &self.shared.config.gateways;
        let gw_rev = gateways_revision(gw);
        let known = req.known.unwrap_or_default();
        let gateways = (known.gateways != gw_rev && gw_rev != 0).then(|| GatewayList {
            revision: gw_rev,
            addresses: gw.clone(),
        });
        self.gateways_revision = gw_rev;
        Ok(SyncResponse {
            seq: req.seq,
            acked_event_ids: acked,
            licence,
            policy: None,
            tasks: None,
            manifest_revision: 0,
            gateways,
            next_sync_secs: self.shared.config.timing.sync_interval.as_secs().max(1) as u32,
            current: Some(Versions {
                gateways: gw_rev,
                ..Default::default()
            }),
        })
    }
}

fn licence_key(s: &LicenceStatus) -> (bool, String, String, i64) {
    let (key, exp) = s
        .active
        .as_ref()
        .and_then(|g| {
            <outpost_proto::pb::v1::GrantBody as prost::Message>::decode(g.body.as_slice()).ok()
        })
        .map(|b| (b.key_id, b.expires_at))
        .unwrap_or_default();
    (s.licensed, key, s.reason.clone(), exp)
}

/// A stable revision number for a gateway list (0 = no list).
fn gateways_revision(list: &[String]) -> u64 {
    if list.is_empty() {
        return 0;
    }
    let d = ring::digest::digest(&ring::digest::SHA256, list.join("\n").as_bytes());
    u64::from_be_bytes(d.as_ref()[..8].try_into().expect("8 bytes")) | 1
}

async fn recv_push(reg: &mut Option<(u64, mpsc::Receiver<Push>)>) -> Option<Push> {
    match reg {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Time to wait for a relayed session's inner TLS handshake.
pub const INNER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
