//! The session driver: the async loop around `outpost_proto::session::ServerSession` for one
//! agent session — hello (S2), licence check (S3, L6), syncs (S4, S5), pushes (T7).
//!
//! One task per session. It owns the state machine and the framed stream; it reaches the rest
//! of the server only through the node's handles (licensing, sessions, config).

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use outpost_net::stream::{self, Framed};
use outpost_proto::error::{RefusalCode, Refused};
use outpost_proto::licence::recheck::Sent;
use outpost_proto::pb::v1::{Push, Role, envelope::Msg};
use outpost_proto::session::{ServerAction, ServerSession};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::node::Node;
use crate::store::{DeviceRow, StoreError};

/// Serves a direct agent connection: every bidi stream the agent opens is a session.
pub async fn serve_direct(node: Arc<Node>, conn: quinn::Connection, device: DeviceRow) {
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
        let device = device.clone();
        node.runtime().spawn(
            async move {
                run(n, device, "direct".into(), stream::bi(send, recv)).await;
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
pub async fn run<S>(node: Arc<Node>, device: DeviceRow, path: String, io: S)
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
    let span = info_span!("session", device = %device.id, path = %path);
    let mut driver = Driver {
        epoch: node.licensing().epoch(),
        sm: ServerSession::new(
            device.id.clone(),
            format!("outpost-server {}", outpost_proto::SOFTWARE_VERSION),
        ),
        framed: stream::framed(io, max_frame),
        node,
        device,
        path,
        registered: None,
        last_licence: None,
        last_touch: 0,
    };
    driver.run().instrument(span).await;
}

pub(super) struct Driver<S> {
    pub(super) node: Arc<Node>,
    sm: ServerSession,
    framed: Framed<S>,
    pub(super) device: DeviceRow,
    pub(super) path: String,
    /// Registry session id and the push receiver, once the licence check passed.
    registered: Option<(u64, mpsc::Receiver<Push>)>,
    /// What the agent was last told about its licence.
    pub(super) last_licence: Option<Sent>,
    /// The licence epoch; `has_changed` says whether a re-check is due (L9).
    pub(super) epoch: tokio::sync::watch::Receiver<u64>,
    /// When `last_seen` was last written for this device.
    pub(super) last_touch: i64,
}

enum Step {
    Continue,
    End,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Driver<S> {
    async fn run(&mut self) {
        let setup = tokio::time::sleep(self.node.config().timing.session_setup_timeout);
        tokio::pin!(setup);
        loop {
            if self.flush().await.is_err() {
                break;
            }
            let step = tokio::select! {
                msg = self.framed.next() => self.on_frame(msg),
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
        if let Some((sid, _)) = self.registered.take() {
            self.node
                .sessions()
                .registry()
                .unregister(&self.device.id, sid);
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
                if !e.is_internal() {
                    warn!(error = %e, "session action refused");
                }
                let r = e.to_refusal("session action failed");
                self.sm.refuse(r.code(), r.0.message);
                while let Some(m) = self.sm.poll_transmit() {
                    let _ = self.framed.feed(m).await;
                }
                let _ = self.framed.flush().await;
                return Err(());
            }
        }
    }

    fn on_frame(&mut self, msg: Option<Result<Msg, outpost_proto::FrameError>>) -> Step {
        match msg {
            None => Step::End,
            Some(Err(e)) => match e.to_refusal() {
                Some(r) => {
                    self.node.sessions().bad_frame();
                    warn!(error = %e, "bad frame from agent; closing its session");
                    self.sm.refuse(r.code(), r.0.message);
                    Step::End
                }
                None => {
                    debug!(error = %e, "session stream ended");
                    Step::End
                }
            },
            Some(Ok(m)) => match self.sm.handle_message(m, outpost_net::unix_now_ms()) {
                Ok(()) => Step::Continue,
                Err(e) => {
                    info!(error = %e, "session refused");
                    Step::End
                }
            },
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
                let (tx, rx) = mpsc::channel(self.node.config().limits.push_queue);
                let sid = self
                    .node
                    .sessions()
                    .registry()
                    .register(&self.device.id, tx);
                self.registered = Some((sid, rx));
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
        }
        Ok(())
    }
}

async fn recv_push(reg: &mut Option<(u64, mpsc::Receiver<Push>)>) -> Option<Push> {
    match reg {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}
