//! The session driver: the async loop around `outpost_proto::session::ServerSession` for one
//! agent session — hello (S2), licence check (S3, L6), syncs (S4, S5), pushes (T7), a freed
//! seat offered at once (L9), and the end of a revoked or removed device (S8): the refusal,
//! then its confirmation that it dropped its grants, which frees the seats held for them
//! (L15).
//!
//! One task per session. It owns the state machine and the framed stream; it reaches the rest
//! of the server only through the node's handles (licensing, sessions, config).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use outpost_net::stream::{self, Framed};
use outpost_proto::error::{RefusalCode, Refused};
use outpost_proto::licence::recheck::{self, Sent};
use outpost_proto::pb::v1::{Push, Role, envelope::Msg};
use outpost_proto::session::{ServerAction, ServerSession};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use super::registry::Registration;
use crate::node::Node;
use crate::store::{DeviceRow, StoreError};

/// How long a refused device has to confirm it dropped its grants.
const DROP_CONFIRM_WAIT: Duration = Duration::from_secs(10);
/// Freed-seat re-checks of many unlicensed sessions spread over this long (L9).
const RECHECK_SPREAD: Duration = Duration::from_millis(500);

/// Who is on the other end of a session stream.
#[derive(Debug, Clone)]
pub enum Peer {
    /// A registered, active device.
    Device(Box<DeviceRow>),
    /// A device told at once that it is revoked or removed (S8): the stream only waits for
    /// its confirmation that it dropped its grants. `device_id` may be a removed record's.
    Refused {
        /// The device's id (as far as known) for logs and holds.
        device_id: String,
        /// Its certificate's fingerprint (hex): holds of a removed device are found by it.
        cert_sha256: String,
        /// What it is told.
        refusal: Refused,
    },
}

/// Serves a direct agent connection: every bidi stream the agent opens is a session.
pub async fn serve_direct(node: Arc<Node>, conn: quinn::Connection, peer: Peer) {
    loop {
        let (send, recv) = tokio::select! {
            s = conn.accept_bi() => match s {
                Ok(s) => s,
                Err(e) => {
                    debug!(reason = %outpost_net::refuse::explain(&e), "agent connection ended");
                    return;
                }
            },
            _ = node.runtime().cancelled() => return,
        };
        let n = node.clone();
        let peer = peer.clone();
        node.runtime().spawn(
            async move {
                run(n, peer, "direct".into(), stream::bi(send, recv)).await;
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
pub async fn run<S>(node: Arc<Node>, peer: Peer, path: String, io: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let max_frame = node.config().limits.max_frame;
    let Some(_permit) = node.sessions().admit() else {
        let r = node.come_back_later(
            RefusalCode::Overloaded,
            &format!(
                "server is at its session limit ({}); come back later",
                node.sessions().limit()
            ),
        );
        refuse_stream(io, max_frame, &r).await;
        return;
    };
    let software = format!("outpost-server {}", outpost_proto::SOFTWARE_VERSION);
    let (device, sm, drop_deadline) = match peer {
        Peer::Device(d) => {
            let sm = ServerSession::new(d.id.clone(), software);
            (*d, sm, None)
        }
        Peer::Refused {
            device_id,
            cert_sha256,
            refusal,
        } => {
            let mut sm = ServerSession::new(device_id.clone(), software);
            sm.refuse_device(refusal);
            let d = DeviceRow {
                id: device_id,
                cert_sha256,
                ..DeviceRow::default()
            };
            (d, sm, Some(Instant::now() + DROP_CONFIRM_WAIT))
        }
    };
    let span = info_span!("session", device = %device.id, path = %path);
    let mut driver = Driver {
        epoch: node.licensing().epoch(),
        sm,
        framed: stream::framed(io, max_frame),
        node,
        device,
        path,
        registered: None,
        last_licence: None,
        last_touch: 0,
        drop_deadline,
        recheck_at: None,
        confirmed_checked_at: 0,
    };
    driver.run().instrument(span).await;
}

pub(super) struct Driver<S> {
    pub(super) node: Arc<Node>,
    sm: ServerSession,
    framed: Framed<S>,
    pub(super) device: DeviceRow,
    pub(super) path: String,
    /// The registry entry (pushes, kicks), once the licence check passed.
    registered: Option<Registration>,
    /// What the agent was last told about its licence.
    pub(super) last_licence: Option<Sent>,
    /// The licence epoch; a change means a re-check is due (L9).
    pub(super) epoch: tokio::sync::watch::Receiver<u64>,
    /// When `last_seen` was last written for this device.
    pub(super) last_touch: i64,
    /// While the device was told it is revoked or removed: how long it has to confirm.
    drop_deadline: Option<Instant>,
    /// A freed-seat re-check of an unlicensed device, due at this time (L9).
    recheck_at: Option<Instant>,
    /// The newest licence status the agent confirmed storing (L15).
    pub(super) confirmed_checked_at: i64,
}

enum Step {
    Continue,
    End,
}

/// What the registry delivered to a session.
enum Command {
    Push(Push),
    Kicked(Refused),
    /// A newer session of the same device took over, or the registry let go.
    Gone,
}

async fn next_command(reg: &mut Option<Registration>) -> Command {
    let Some(r) = reg else {
        return std::future::pending().await;
    };
    // A kick drops the push sender too: look at the kick first.
    tokio::select! {
        biased;
        k = &mut r.kicked => k.map(Command::Kicked).unwrap_or(Command::Gone),
        p = r.pushes.recv() => p.map(Command::Push).unwrap_or(Command::Gone),
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Driver<S> {
    async fn run(&mut self) {
        let setup = tokio::time::sleep(self.node.config().timing.session_setup_timeout);
        tokio::pin!(setup);
        loop {
            if self.flush().await.is_err() || self.sm.is_closed() {
                break;
            }
            // A freed seat is offered to an unlicensed device without waiting for its next
            // sync (L9): re-check soon after the epoch moved, spread a little.
            let unlicensed = self.last_licence.as_ref().is_some_and(|l| !l.licensed);
            let watch_epoch = self.sm.is_ready() && unlicensed && self.recheck_at.is_none();
            let step = tokio::select! {
                msg = self.framed.next() => self.on_frame(msg),
                cmd = next_command(&mut self.registered) => match cmd {
                    Command::Push(p) => { self.sm.push(p); Step::Continue }
                    Command::Kicked(r) => {
                        info!(refusal = %r, "session ended by an administrator");
                        self.registered = None;
                        if !self.node.sessions().registry().is_online(&self.device.id) {
                            self.node.store().released_here(&self.device.id);
                        }
                        self.sm.refuse_device(r);
                        self.drop_deadline = Some(Instant::now() + DROP_CONFIRM_WAIT);
                        Step::Continue
                    }
                    Command::Gone => Step::End,
                },
                r = self.epoch.changed(), if watch_epoch => {
                    if r.is_ok() {
                        self.recheck_at = Some(Instant::now() + RECHECK_SPREAD.mul_f64(outpost_net::jitter_unit()));
                    }
                    Step::Continue
                }
                _ = sleep_until(self.recheck_at) => {
                    self.recheck_at = None;
                    match self.offer_freed_seat().await {
                        Ok(()) => Step::Continue,
                        Err(e) => { self.fail(e).await; Step::End }
                    }
                }
                _ = sleep_until(self.drop_deadline) => {
                    debug!("the device did not confirm dropping its grants; they are held until they expire");
                    Step::End
                }
                _ = &mut setup, if !self.sm.is_ready() && self.drop_deadline.is_none() => {
                    self.sm.refuse(RefusalCode::Timeout, "session setup took too long");
                    Step::End
                }
                _ = self.node.runtime().cancelled() => {
                    let r = self.node.come_back_later(RefusalCode::ShuttingDown, "server is restarting; come back later");
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
        if let Some(r) = self.registered.take() {
            let registry = self.node.sessions().registry();
            registry.unregister(&self.device.id, r.session);
            if !registry.is_online(&self.device.id) {
                self.node.store().released_here(&self.device.id);
            }
        }
        debug!("session ended");
    }

    async fn flush(&mut self) -> Result<(), ()> {
        loop {
            if stream::send_queued(&mut self.framed, &mut self.sm)
                .await
                .is_err()
            {
                return Err(());
            }
            let Some(action) = self.sm.poll_action() else {
                return Ok(());
            };
            if let Err(e) = self.act(action).await {
                self.fail(e).await;
                return Err(());
            }
        }
    }

    /// Ends the session over a store error, telling the agent only what it may know.
    async fn fail(&mut self, e: StoreError) {
        if !e.is_internal() {
            warn!(error = %e, "session action refused");
        }
        let r = e.to_refusal("session action failed");
        self.sm.refuse(r.code(), r.0.message);
        let _ = stream::send_queued(&mut self.framed, &mut self.sm).await;
    }

    fn on_frame(&mut self, msg: Option<Result<Msg, outpost_proto::FrameError>>) -> Step {
        match msg {
            None => {
                debug!("the agent ended the session stream");
                Step::End
            }
            Some(Err(e)) => match e.to_refusal() {
                Some(r) => {
                    self.node.sessions().bad_frame();
                    warn!(error = %e, "bad frame from agent; closing its session");
                    self.sm.refuse(r.code(), r.0.message);
                    Step::End
                }
                None => {
                    debug!(error = %e, "session stream failed");
                    Step::End
                }
            },
            Some(Ok(m)) => {
                let name = outpost_proto::session::msg_name(&m);
                match self.sm.handle_message(m, outpost_net::unix_now_ms()) {
                    Ok(()) => Step::Continue,
                    Err(e) => {
                        info!(error = %e, got = name, "session refused");
                        Step::End
                    }
                }
            }
        }
    }

    async fn act(&mut self, action: ServerAction) -> Result<(), StoreError> {
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
                self.last_licence = Some(Sent::of(&status));
                self.sm.licence_checked(status);
                let queue = self.node.config().limits.push_queue;
                self.registered = Some(self.node.sessions().registry().register(
                    &self.device.id,
                    queue,
                    self.path.strip_prefix("via "),
                ));
                self.node
                    .store()
                    .held_here(&self.device.id, outpost_net::unix_now());
                // Pushes that waited for this device (T7, D4).
                for p in self
                    .node
                    .store()
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
                self.node.sessions().registry().acked(&self.device.id, &id);
                self.node.store().push_acked(&self.device.id, &id).await;
            }
            ServerAction::RenewCertificate(csr) => {
                if let Some(r) = crate::certs::renew_device(&self.node, &self.device, &csr).await {
                    self.sm.cert_renewed(r);
                }
            }
            ServerAction::LicenceDropped => {
                let freed = self
                    .node
                    .store()
                    .grants_dropped(&self.device.id, &self.device.cert_sha256)
                    .await?;
                info!(keys = ?freed, "the device dropped its grants; the seats held for them are free");
            }
        }
        Ok(())
    }

    /// The L9 re-check of an unlicensed session: sends the result if it changed.
    async fn offer_freed_seat(&mut self) -> Result<(), StoreError> {
        let now = outpost_net::unix_now();
        let status = self.check().await?;
        let fresh = Sent::of(&status);
        let changed = self.last_licence.as_ref().is_none_or(|l| {
            l.licensed != fresh.licensed || l.key_id != fresh.key_id || l.reason != fresh.reason
        });
        if changed
            || recheck::worth_sending(self.last_licence.as_ref(), &fresh, now) && fresh.licensed
        {
            if fresh.licensed {
                info!(key = %fresh.key_id, "a freed seat went to this device");
            }
            self.last_licence = Some(fresh);
            self.sm.licence_changed(status);
        }
        Ok(())
    }
}
