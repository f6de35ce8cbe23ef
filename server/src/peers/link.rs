//! One server link, either end: the control stream (channel `Peer`), then leases both ways
//! (H5–H8). The giver sends a grant when a lease is given, changed or revoked, and a renewed
//! one when the receiver asks — half-way through each grant on a permanent relation: the
//! request is the proof the receiver is there (H6). Both ends
//! send a `LeaseSync` on connect and every synchronisation period (H8): the receiver takes the
//! giver's figures (a mismatch is notified), the giver notifies a receiver that claims other
//! figures and answers with its own.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use outpost_net::stream;
use outpost_proto::control::{
    Acceptor, AcceptorEvent, Channel, ControlError, Opener, OpenerEvent, Outgoing,
};
use outpost_proto::lease::{LeaseGrant, RenewRequest};
use outpost_proto::licence::verify_key_file;
use outpost_proto::pb::v1 as pb;
use outpost_proto::pb::v1::envelope::Msg;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::node::Node;
use crate::store::{ServerRow, StoreError};

pub(super) enum Ctl {
    Open(Opener),
    Accept(Acceptor),
}

impl Outgoing for Ctl {
    fn poll_transmit(&mut self) -> Option<Msg> {
        match self {
            Ctl::Open(o) => o.poll_transmit(),
            Ctl::Accept(a) => a.poll_transmit(),
        }
    }
}

impl Ctl {
    /// Feeds a message; returns the application messages it carried and whether the hello
    /// exchange is done.
    fn handle(&mut self, m: Msg) -> Result<(Vec<Msg>, bool), ControlError> {
        let mut out = vec![];
        let mut up = false;
        match self {
            Ctl::Open(o) => {
                o.handle_message(m)?;
                while let Some(ev) = o.poll_event() {
                    match ev {
                        OpenerEvent::Established { .. } => up = true,
                        OpenerEvent::Message(m) => out.push(*m),
                    }
                }
            }
            Ctl::Accept(a) => {
                a.handle_message(m, outpost_net::unix_now_ms())?;
                while let Some(ev) = a.poll_event() {
                    match ev {
                        AcceptorEvent::Established { .. } => up = true,
                        AcceptorEvent::Message(m) => out.push(*m),
                    }
                }
            }
        }
        Ok((out, up))
    }

    pub(super) fn send(&mut self, m: Msg) {
        let r = match self {
            Ctl::Open(o) => o.send(m),
            Ctl::Accept(a) => a.send(m),
        };
        if let Err(e) = r {
            debug!(error = %e, "message not sent on the server link");
        }
    }
}

/// How often a link looks for leases to renew: often enough for the shortest period.
pub(super) fn tick(node: &Node) -> Duration {
    (node.config().hierarchy.lease_period / 8)
        .clamp(Duration::from_millis(250), Duration::from_secs(30))
}

/// Serves one link until it closes. `opener`: this side dialled and opens the stream; on a
/// periodic relation it leaves once the exchange is done. Returns whether the link came up.
pub async fn serve(node: Arc<Node>, conn: quinn::Connection, r: ServerRow, opener: bool) -> bool {
    let span = info_span!("link", server = %r.name, conn = conn.stable_id());
    async move {
        let periodic = r.connection == "periodic";
        let id = conn.stable_id() as u64;
        let result = run(&node, &conn, &r, opener).await;
        let was_up = node.peers().live_id(&r.name) == Some(id);
        let why = match result {
            Ok(()) if periodic && opener => {
                let bye = outpost_proto::error::Refused::new(
                    outpost_proto::error::RefusalCode::ShuttingDown,
                    "periodic exchange done",
                );
                outpost_net::refuse::close(&conn, &bye);
                "periodic exchange done".to_owned()
            }
            Ok(()) => "closed".to_owned(),
            Err(e) => e,
        };
        node.peers()
            .detach(&r.name, id, format!("link ended: {why}"));
        // A periodic relation comes and goes by design: no offline notification each time.
        if was_up && !periodic {
            info!(reason = %why, "server link down");
            let _ = node
                .store()
                .notify(
                    "neighbour-offline",
                    None,
                    &format!("server {} is offline ({why})", r.name),
                    serde_json::json!({ "server": r.name, "reason": why }),
                )
                .await;
        }
        was_up
    }
    .instrument(span)
    .await
}

async fn run(
    node: &Arc<Node>,
    conn: &quinn::Connection,
    r: &ServerRow,
    opener: bool,
) -> Result<(), String> {
    let max = node.config().limits.max_frame;
    let software = format!("outpost-server {}", outpost_proto::SOFTWARE_VERSION);
    let setup = node.config().timing.session_setup_timeout;
    let (send, recv) = tokio::time::timeout(setup, async {
        if opener {
            conn.open_bi().await
        } else {
            conn.accept_bi().await
        }
    })
    .await
    .map_err(|_| "no control stream in time".to_owned())?
    .map_err(|e| outpost_net::refuse::explain(&e))?;
    let mut f = stream::framed(stream::bi(send, recv), max);
    let mut ctl = if opener {
        Ctl::Open(Opener::new(Channel::Peer, &software))
    } else {
        Ctl::Accept(
            Acceptor::new(
                Channel::Peer,
                r.name.clone(),
                software,
                Instant::now().into_std(),
                setup,
            )
            .with_connection_id(conn.stable_id() as u64),
        )
    };
    let flush = |e: outpost_proto::frame::FrameError| e.to_string();
    stream::send_queued(&mut f, &mut ctl).await.map_err(flush)?;
    // The hello exchange.
    let mut pending = vec![];
    loop {
        let m = tokio::time::timeout(setup, f.next())
            .await
            .map_err(|_| "no hello in time".to_owned())?;
        let m = match m {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed during the hello".into()),
        };
        let res = ctl.handle(m);
        stream::send_queued(&mut f, &mut ctl).await.map_err(flush)?;
        let (msgs, up) = res.map_err(|e| e.to_string())?;
        pending.extend(msgs);
        if up {
            break;
        }
    }
    let id = conn.stable_id() as u64;
    let (mut outbox, ended) = node.peers().attach(&r.name, id);
    info!(remote = %conn.remote_address(), "server link up");
    let now = outpost_net::unix_now();
    let periodic = r.connection == "periodic";
    let _ = node.store().touch_server(&r.name, now).await;
    if !periodic {
        let _ = node
            .store()
            .notify(
                "neighbour-online",
                None,
                &format!("server {} is online", r.name),
                serde_json::json!({ "server": r.name }),
            )
            .await;
    }
    node.runtime().spawn(
        super::hand_down::serve_streams(node.clone(), conn.clone(), r.kind == "secondary")
            .in_current_span(),
    );
    let (fetch_done, mut fetch_results) = super::hand_down::channel();
    let mut link = Link {
        node: node.clone(),
        r: r.clone(),
        conn: conn.clone(),
        taking: Default::default(),
        fetch_done,
        files: HashMap::new(),
        asked: HashSet::new(),
        asked_ever: HashSet::new(),
        peer_synced: false,
        report_due: r.kind == "primary",
        report_every: node.config().hierarchy.report_period,
        notices_in_flight: None,
        needs_sent: None,
    };
    if r.kind == "primary"
        && let Ok((secs, _)) = node.store().report_terms(&r.name).await
        && secs > 0
    {
        link.report_every = Duration::from_secs(secs as u64);
    }
    if periodic {
        // The next contact may be far: ask now for every lease held from the neighbour.
        link.ask_all(&mut ctl).await;
    }
    // Before the sync: a periodic secondary's exchange is done at the sync unless a fetch of
    // what this hands down has begun by then.
    link.hand_down(&mut ctl, true).await;
    link.sync(&mut ctl).await;
    // A periodic exchange ends once the neighbour's figures and the answers to this side's
    // requests are in (its own requests, sent before its sync, were answered by then).
    let exchange_deadline = Instant::now() + setup;
    let exchange_done =
        |l: &Link| periodic && opener && l.peer_synced && l.asked.is_empty() && !l.taking.fetching;
    for m in pending {
        link.on_message(&mut ctl, m).await;
    }
    link.report_if_due(&mut ctl).await;
    link.relay_notices(&mut ctl).await;
    link.demand(&mut ctl).await;
    stream::send_queued(&mut f, &mut ctl).await.map_err(flush)?;
    if exchange_done(&link) {
        return Ok(());
    }
    let demand_every = node.config().hierarchy.demand_check;
    let mut next_demand = Instant::now() + demand_every;
    let mut demand_changes = node.peers().demand_watch();
    demand_changes.mark_unchanged();
    let mut next_report = Instant::now() + link.report_every;
    let mut report_changes = node.peers().report_watch();
    report_changes.mark_unchanged();
    let mut hand_down_changes = node.peers().hand_down_watch();
    hand_down_changes.mark_unchanged();
    let mut ticker = tokio::time::interval(tick(node));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sync_every = node.config().hierarchy.sync_period;
    let mut next_sync = Instant::now() + sync_every;
    loop {
        tokio::select! {
            m = f.next() => match m {
                Some(Ok(m)) => {
                    let (msgs, _) = ctl.handle(m).map_err(|e| e.to_string())?;
                    for m in msgs {
                        link.on_message(&mut ctl, m).await;
                    }
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => return Ok(()),
            },
            Some(m) = outbox.recv() => ctl.send(m),
            Some(r) = fetch_results.recv() => link.fetched(r).await,
            Ok(()) = hand_down_changes.changed(), if r.kind == "secondary" => {
                link.hand_down(&mut ctl, false).await;
            }
            Ok(()) = report_changes.changed(), if r.kind == "primary" => link.report_due = true,
            _ = ticker.tick() => {
                let now = outpost_net::unix_now();
                if link.r.may_receive() {
                    match node.store().renewals_due(&r.name, now, false).await {
                        Ok(asks) => for a in asks {
                            ctl.send(Msg::LeaseRenewal(pb::LeaseRenewal::from(&a)));
                        },
                        Err(e) => warn!(error = %e, "lease renewal requests skipped; retrying at the next tick"),
                    }
                }
                if Instant::now() >= next_sync {
                    next_sync = Instant::now() + sync_every;
                    link.sync(&mut ctl).await;
                    // Changes made on another instance of this server arrive this way.
                    link.hand_down(&mut ctl, false).await;
                    let _ = node.store().touch_server(&r.name, now).await;
                }
                if r.kind == "primary" && Instant::now() >= next_report {
                    link.report_due = true;
                }
                link.relay_notices(&mut ctl).await;
                link.take_offer().await;
                if Instant::now() >= next_demand {
                    next_demand = Instant::now() + demand_every;
                    link.demand(&mut ctl).await;
                }
            }
            Ok(()) = demand_changes.changed() => link.demand(&mut ctl).await,
            _ = tokio::time::sleep_until(exchange_deadline), if periodic && opener && !link.taking.fetching => {
                return Err("the periodic exchange did not finish in time".into());
            }
            _ = node.runtime().cancelled() => return Ok(()),
            _ = ended.cancelled() => {
                let bye = outpost_proto::error::Refused::new(
                    outpost_proto::error::RefusalCode::ShuttingDown,
                    "the relation was removed or replaced by a newer link",
                );
                outpost_net::refuse::close(conn, &bye);
                return Err("relation removed or link replaced".into());
            }
        }
        if link.report_due {
            next_report = Instant::now() + link.report_every;
            link.report_if_due(&mut ctl).await;
        }
        stream::send_queued(&mut f, &mut ctl).await.map_err(flush)?;
        if exchange_done(&link) {
            return Ok(());
        }
    }
}

pub(super) struct Link {
    pub(super) node: Arc<Node>,
    pub(super) r: ServerRow,
    pub(super) conn: quinn::Connection,
    /// Update revisions taken from the primary, and what was last handed down (H4).
    pub(super) taking: super::hand_down::Taking,
    /// Where a fetch of the primary's revision reports.
    pub(super) fetch_done: tokio::sync::mpsc::Sender<super::hand_down::Fetched>,
    /// Key files sent on this link, by key id.
    pub(super) files: HashMap<String, String>,
    /// Leases this side asked to renew and has no answer for yet.
    pub(super) asked: HashSet<String>,
    /// Leases asked for during this connection (a periodic exchange asks once per lease).
    pub(super) asked_ever: HashSet<String>,
    /// The neighbour's `LeaseSync` arrived.
    pub(super) peer_synced: bool,
    /// A usage report is owed to the main server (H9): on connect, each report period, when
    /// the seats given to this server changed.
    pub(super) report_due: bool,
    /// The report period the main server set (else this server's own setting).
    pub(super) report_every: Duration,
    /// When a batch of notifications went up whose acknowledgement has not come back (H4);
    /// sent again after a while (the main server may have failed to store it).
    pub(super) notices_in_flight: Option<Instant>,
    /// What this server last told the neighbour its devices need (L9).
    pub(super) needs_sent: Option<pb::SeatNeeds>,
}

impl Link {
    async fn key_file(&mut self, key_id: &str) -> String {
        if let Some(f) = self.files.get(key_id) {
            return f.clone();
        }
        match self.node.store().key_file(key_id).await {
            Ok((_, bytes)) => {
                let f = String::from_utf8_lossy(&bytes).into_owned();
                self.files.insert(key_id.to_owned(), f.clone());
                f
            }
            Err(e) => {
                warn!(key = %key_id, error = %e, "key file not found for a lease");
                String::new()
            }
        }
    }

    pub(super) async fn wire(&mut self, g: &LeaseGrant) -> pb::LeaseGrant {
        let mut m = pb::LeaseGrant::from(g);
        m.key_file = self.key_file(&g.key_id).await;
        m
    }

    pub(super) async fn send_grant(&mut self, ctl: &mut Ctl, g: &LeaseGrant) {
        let m = self.wire(g).await;
        ctl.send(Msg::LeaseGrant(m));
    }

    /// Both lists, as this side sees them (H8).
    pub(super) async fn sync(&mut self, ctl: &mut Ctl) {
        let now = outpost_net::unix_now();
        let store = self.node.store().clone();
        let given = match store.given_grants(&self.r.name, now).await {
            Ok(g) => g,
            Err(e) => return warn!(error = %e, "lease sync skipped"),
        };
        let received = store
            .received_grants(&self.r.name)
            .await
            .unwrap_or_default();
        let mut msg = pb::LeaseSync::default();
        for g in &given {
            msg.given.push(self.wire(g).await);
        }
        msg.received = received.iter().map(pb::LeaseGrant::from).collect();
        ctl.send(Msg::LeaseSync(msg));
    }

    /// Asks for the next grant of every lease held from the neighbour (periodic relations).
    async fn ask_all(&mut self, ctl: &mut Ctl) {
        if !self.r.may_receive() {
            return;
        }
        let now = outpost_net::unix_now();
        let due = self
            .node
            .store()
            .renewals_due(&self.r.name, now, true)
            .await;
        for req in due.unwrap_or_default() {
            if !self.asked_ever.contains(&req.lease_id) {
                self.asked.insert(req.lease_id.clone());
                self.asked_ever.insert(req.lease_id.clone());
                ctl.send(Msg::LeaseRenewal(pb::LeaseRenewal::from(&req)));
            }
        }
    }

    async fn on_message(&mut self, ctl: &mut Ctl, m: Msg) {
        let now = outpost_net::unix_now();
        match m {
            Msg::LeaseGrant(g) => {
                self.asked.remove(&g.lease_id);
                let _ = self.take(g, false, now).await;
            }
            Msg::LeaseRenewal(req) => {
                let Ok(req) = RenewRequest::try_from(req) else {
                    return warn!("malformed lease renewal request ignored");
                };
                if !self.r.may_give() {
                    return;
                }
                self.confirmed(ctl, &req.lease_id, now).await;
                match self
                    .node
                    .store()
                    .lease_request(&self.r.name, &req, now)
                    .await
                {
                    Ok(Some(g)) => self.send_grant(ctl, &g).await,
                    Ok(None) => {}
                    Err(e) => warn!(error = %e, "lease renewal request failed"),
                }
            }
            Msg::SeatNeeds(n) => self.on_needs(ctl, n, now).await,
            Msg::HandDown(m) => self.on_hand_down(m).await,
            Msg::NoticesUp(batch) => self.on_notices_up(ctl, batch).await,
            Msg::NoticesAck(ack) => self.on_notices_ack(ctl, ack).await,
            Msg::UsageReport(rep) => {
                if self.r.kind != "secondary" {
                    return debug!("usage report from a server that is not below this one ignored");
                }
                match self
                    .node
                    .store()
                    .store_report(&self.r.name, &rep, now)
                    .await
                {
                    // Passed up with this server's own at once.
                    Ok(()) => self.node.peers().report_changed(),
                    Err(e) => warn!(error = %e, "usage report not stored"),
                }
            }
            Msg::LeaseSync(s) => {
                if self.r.kind == "primary" && s.report_period_secs > 0 {
                    let every = Duration::from_secs(s.report_period_secs);
                    if every != self.report_every {
                        self.report_every = every;
                        let _ = self
                            .node
                            .store()
                            .set_report_terms(
                                &self.r.name,
                                s.report_period_secs as i64,
                                s.active_period_secs as i64,
                            )
                            .await;
                        self.report_due = true;
                    }
                }
                self.on_sync(ctl, s, now).await;
                if self.r.connection == "periodic" {
                    // Leases first heard of in this sync are renewed in the same exchange.
                    self.ask_all(ctl).await;
                }
                self.peer_synced = true;
            }
            other => debug!(
                msg = outpost_proto::session::msg_name(&other),
                "ignored on a server link"
            ),
        }
    }

    /// A grant from the neighbour: verified, then taken (H5; `overrule`: H8).
    pub(super) async fn take(
        &mut self,
        m: pb::LeaseGrant,
        overrule: bool,
        now: i64,
    ) -> Result<bool, ()> {
        if !self.r.may_receive() {
            warn!(lease = %m.lease_id, "{} offered seats but this server does not receive licences from it (H2); ignored", self.r.name);
            return Err(());
        }
        let file = m.key_file.clone();
        let grant =
            LeaseGrant::try_from(m).map_err(|e| warn!(error = %e, "lease grant refused"))?;
        let key = verify_key_file(file.as_bytes(), self.node.licensing().authority_public())
            .map_err(|e| {
                warn!(lease = %grant.lease_id, key = %grant.key_id, error = %e,
                    "lease grant refused: its key file does not verify against this server's licence authority")
            })?;
        match self
            .node
            .store()
            .take_grant(&self.r.name, &grant, &key, overrule, now)
            .await
        {
            Ok(changed) => {
                if changed {
                    self.node.peers().report_changed();
                }
                if changed {
                    info!(lease = %grant.lease_id, key = %grant.key_id, seats = grant.seats,
                        period_end = grant.period_end, "lease grant taken");
                    if grant.seats > 0 {
                        self.adopt_renewal(&key.body, now).await;
                    }
                }
                Ok(changed)
            }
            Err(e) => {
                warn!(lease = %grant.lease_id, error = %e, "lease grant not taken");
                Err(())
            }
        }
    }
}

/// Keeps lease counts in step with time on this server: promised periods that ended give
/// seats back; leases received whose period ended unrenewed take their seats back (H6).
pub async fn refresh_loop(node: Arc<Node>) {
    let mut ticker = tokio::time::interval(tick(&node));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = node.runtime().cancelled() => return,
        }
        match node.store().refresh_leases(outpost_net::unix_now()).await {
            Ok(done) => {
                for (old, new) in done.retired {
                    info!(%old, %new, "renewed key removed: no neighbour holds a lease of it any more");
                    let _ = node
                        .store()
                        .notify(
                            "key-retired",
                            Some(&old),
                            &format!("key {old} removed: it was renewed by {new} and no neighbour server holds a lease of it any more"),
                            serde_json::json!({ "old": old, "new": new }),
                        )
                        .await;
                }
                for (lease, key, server) in done.returned {
                    info!(%lease, %key, %server, "leased seats returned");
                    let _ = node
                        .store()
                        .notify(
                            "lease-returned",
                            Some(&key),
                            &format!("the seats of lease {lease} (key {key}) given to {server} are back: its last promised period ended"),
                            serde_json::json!({ "lease": lease, "key": key, "server": server }),
                        )
                        .await;
                }
            }
            Err(StoreError::Closed) => {}
            Err(e) => warn!(error = %e, "lease refresh failed; retrying at the next tick"),
        }
    }
}
