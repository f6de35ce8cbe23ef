//! Server↔server links (H1–H4): the relations this server has with neighbour servers, kept in
//! the store, each pinned by the neighbour's link certificate (`certs::Link`).
//!
//! Whoever the relation says dials (a secondary its primary; a primary a secondary in a DMZ;
//! for peers the side given an address) keeps one connection up with jittered backoff, as a
//! gateway keeps its uplink; the other side accepts it on the shared UDP port under ALPN
//! `outpost-peer/1`. Once up, both ends run the same link ([`link`]): who gives seats is the
//! relation's business, not the connection's. Relations are added and removed at run time;
//! [`Peers::reload`] brings the listener's pins and the diallers in line with the store.
//!
//! Files: `link` (the link loop, leases both ways), `sync` (H8), `renewal` (L11 across the
//! tree), `demand` (leases that follow demand: L4, L8, L9), `up` (what goes up to the
//! main server: reports, notifications), `hand_down` (what goes down to secondaries: policy,
//! tasks, update revisions), `report` (H9 reports and the tree for `admin report`).

mod demand;
mod hand_down;
mod link;
mod renewal;
pub mod report;
mod sync;
mod up;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_net::{endpoint, refuse, transport};
use outpost_proto::alpn;
use outpost_proto::backoff::{Backoff, BackoffConfig};
use outpost_proto::error::{RefusalCode, Refused};
use outpost_proto::pb::v1::envelope::Msg;
use outpost_proto::pki::{self, Trust};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::node::Node;
use crate::store::{ServerRow, StoreError};

pub use link::{refresh_loop, serve as serve_link};

/// Messages waiting to go out on one link before further ones are dropped (counted; the next
/// sync sends every lease again).
const LINK_QUEUE: usize = 256;

struct Live {
    id: u64,
    tx: mpsc::Sender<Msg>,
    /// Ends the link (its relation was removed, or a newer link replaced it).
    stop: CancellationToken,
}

struct Dialler {
    address: String,
    stop: CancellationToken,
}

/// The links of this server.
pub struct Peers {
    ep: quinn::Endpoint,
    live: Mutex<HashMap<String, Live>>,
    diallers: Mutex<BTreeMap<String, Dialler>>,
    /// Last state per relation ("connected", "dialling", an error), for `server list`.
    states: Mutex<HashMap<String, String>>,
    dropped: std::sync::atomic::AtomicU64,
    /// Moves when this server's report changed (a report from below, seats given to it): the
    /// link to its main server sends a new one (H9).
    reports: tokio::sync::watch::Sender<u64>,
    /// Moves when an administrator changed what follows demand (a key assigned to or taken
    /// from `server:<name>`, automatic distribution switched): links re-check at once.
    demand: tokio::sync::watch::Sender<u64>,
    /// Moves when what this server hands down changed (root policy, root tasks, newest update
    /// revision): links to secondaries send it again (H4).
    hand_down: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").finish_non_exhaustive()
    }
}

impl Peers {
    /// Links dialled from `ep`.
    pub fn new(ep: quinn::Endpoint) -> Peers {
        Peers {
            ep,
            live: Mutex::new(HashMap::new()),
            diallers: Mutex::new(BTreeMap::new()),
            states: Mutex::new(HashMap::new()),
            dropped: Default::default(),
            reports: tokio::sync::watch::Sender::new(0),
            demand: tokio::sync::watch::Sender::new(0),
            hand_down: tokio::sync::watch::Sender::new(0),
        }
    }

    /// This server's usage report changed: the main server gets a new one now (H9).
    pub fn report_changed(&self) {
        self.reports.send_modify(|n| *n += 1);
    }

    fn report_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reports.subscribe()
    }

    /// What follows demand changed here: every link re-checks now (L4, L8, L9).
    pub fn demand_changed(&self) {
        self.demand.send_modify(|n| *n += 1);
    }

    fn demand_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.demand.subscribe()
    }

    /// What this server hands down changed: links to secondaries send it now (H4).
    pub fn hand_down_changed(&self) {
        self.hand_down.send_modify(|n| *n += 1);
    }

    fn hand_down_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.hand_down.subscribe()
    }

    /// Brings the listener's pins and the diallers in line with the relations in the store.
    pub async fn reload(&self, node: &Arc<Node>) -> Result<(), StoreError> {
        let relations = node.store().servers().await?;
        let pins = relations
            .iter()
            .filter_map(|r| hex::decode(&r.cert_sha256).ok()?.try_into().ok());
        node.enrollment().certs().pins().set(pins);
        let mut diallers = self.diallers.lock().expect("peers lock");
        diallers.retain(|name, d| {
            let keep = relations
                .iter()
                .any(|r| &r.name == name && r.dials == 1 && r.address == d.address);
            if !keep {
                d.stop.cancel();
            }
            keep
        });
        for r in relations
            .iter()
            .filter(|r| r.dials == 1 && !r.address.is_empty())
        {
            if diallers.contains_key(&r.name) {
                continue;
            }
            let stop = node.runtime().child_token();
            node.runtime().spawn(dial_loop(
                node.clone(),
                self.ep.clone(),
                r.clone(),
                stop.clone(),
            ));
            diallers.insert(
                r.name.clone(),
                Dialler {
                    address: r.address.clone(),
                    stop,
                },
            );
        }
        drop(diallers);
        // Links of relations that are gone end now.
        let names: Vec<&str> = relations.iter().map(|r| r.name.as_str()).collect();
        self.live.lock().expect("peers lock").retain(|name, l| {
            let keep = names.contains(&name.as_str());
            if !keep {
                l.stop.cancel();
            }
            keep
        });
        Ok(())
    }

    /// Queues `msg` for the live link to `server`. Returns false when no link is up (the
    /// next connect's sync carries the lease) or its queue is full (counted).
    pub fn send(&self, server: &str, msg: Msg) -> bool {
        let live = self.live.lock().expect("peers lock");
        let Some(l) = live.get(server) else {
            return false;
        };
        match l.tx.try_send(msg) {
            Ok(()) => true,
            Err(_) => {
                self.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                false
            }
        }
    }

    /// Sends a lease grant, with its key's signed file, on the live link to `server`. Returns
    /// whether it went now (else the next connect's sync carries it).
    pub async fn deliver(
        &self,
        node: &Node,
        server: &str,
        g: &outpost_proto::lease::LeaseGrant,
    ) -> Result<bool, StoreError> {
        let (_, file) = node.store().key_file(&g.key_id).await?;
        let mut m = outpost_proto::pb::v1::LeaseGrant::from(g);
        m.key_file = String::from_utf8_lossy(&file).into_owned();
        Ok(self.send(server, Msg::LeaseGrant(m)))
    }

    /// Sends grants to their neighbours (see [`Peers::deliver`]); failures are logged: the
    /// next sync carries every lease again.
    pub async fn deliver_all(
        &self,
        node: &Node,
        grants: &[(String, outpost_proto::lease::LeaseGrant)],
    ) {
        for (server, g) in grants {
            if let Err(e) = self.deliver(node, server, g).await {
                warn!(%server, lease = %g.lease_id, error = %e, "lease grant not sent; the next sync carries it");
            }
        }
    }

    /// The state of the link to `server`, for `server list`.
    pub fn state(&self, r: &ServerRow) -> String {
        if self.live.lock().expect("peers lock").contains_key(&r.name) {
            return "connected".into();
        }
        if let Some(s) = self.states.lock().expect("peers lock").get(&r.name) {
            return s.clone();
        }
        if r.dials == 1 {
            "dialling".into()
        } else {
            "waiting for it to dial in".into()
        }
    }

    /// Messages dropped because a link's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn live_id(&self, name: &str) -> Option<u64> {
        self.live
            .lock()
            .expect("peers lock")
            .get(name)
            .map(|l| l.id)
    }

    fn set_state(&self, name: &str, s: String) {
        self.states
            .lock()
            .expect("peers lock")
            .insert(name.to_owned(), s);
    }

    /// Registers a link that came up; a second link for the same relation replaces the first,
    /// which ends. Returns its outbox and what ends it.
    fn attach(&self, name: &str, id: u64) -> (mpsc::Receiver<Msg>, CancellationToken) {
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let stop = CancellationToken::new();
        let old = self.live.lock().expect("peers lock").insert(
            name.to_owned(),
            Live {
                id,
                tx,
                stop: stop.clone(),
            },
        );
        if let Some(old) = old {
            old.stop.cancel();
        }
        (rx, stop)
    }

    fn detach(&self, name: &str, id: u64, why: String) {
        let mut live = self.live.lock().expect("peers lock");
        if live.get(name).is_some_and(|l| l.id == id) {
            live.remove(name);
        }
        drop(live);
        self.set_state(name, why);
    }
}

/// The client configuration a link is dialled with: this server's link certificate, the
/// neighbour verified by its pinned one.
fn client_config(node: &Node, r: &ServerRow) -> Result<quinn::ClientConfig, String> {
    let pin: [u8; 32] = hex::decode(&r.cert_sha256)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| format!("relation {}: stored fingerprint is not SHA-256 hex", r.name))?;
    let link = node.enrollment().certs().link();
    let tls = pki::client_config(
        Some(&link.identity),
        &Trust::PinnedServer {
            pin,
            relation: r.name.clone(),
        },
        &[alpn::PEER],
    )
    .map_err(|e| e.to_string())?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
        .map_err(|e| e.to_string())?;
    let mut c = quinn::ClientConfig::new(Arc::new(quic));
    c.transport_config(transport::peer(
        Duration::from_secs(15),
        Duration::from_secs(45),
    ));
    Ok(c)
}

/// Keeps the link to one neighbour up until `stop` (relation removed or changed, shutdown);
/// on a periodic relation connects every interval (and the early-renewal interval before a
/// lease between the two runs out, H7), exchanges, and leaves.
async fn dial_loop(node: Arc<Node>, ep: quinn::Endpoint, r: ServerRow, stop: CancellationToken) {
    let mut backoff = Backoff::new(BackoffConfig::default());
    let periodic = r.connection == "periodic";
    let span = info_span!("peer", server = %r.name, address = %r.address);
    async move {
        loop {
            let conn = match client_config(&node, &r) {
                Ok(client) => tokio::select! {
                    c = dial(&ep, &client, &r.address) => c,
                    _ = stop.cancelled() => return,
                },
                Err(e) => Err(e),
            };
            let mut exchanged = false;
            match conn {
                Ok(conn) => {
                    backoff.on_connected(Instant::now().into_std());
                    tokio::select! {
                        ok = link::serve(node.clone(), conn.clone(), r.clone(), true) => {
                            exchanged = ok;
                        }
                        _ = stop.cancelled() => {
                            let bye = Refused::new(RefusalCode::ShuttingDown, "the relation was changed or removed, or the server is stopping");
                            refuse::close(&conn, &bye);
                            return;
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot reach the neighbour server");
                    node.peers().set_state(&r.name, format!("cannot reach it: {e}"));
                }
            }
            let delay = if periodic && exchanged {
                backoff.on_connected(Instant::now().into_std());
                next_contact(&node, &r).await
            } else {
                backoff.on_disconnected(Instant::now().into_std());
                backoff.next_delay(outpost_net::jitter_unit())
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
    .instrument(span)
    .await
}

/// How long until a periodic relation's next contact: its interval, or sooner when a lease
/// between the two would run out before (H7: `hierarchy.early_renewal` before its end).
async fn next_contact(node: &Node, r: &ServerRow) -> Duration {
    let now = outpost_net::unix_now();
    let interval = r.interval_secs.max(1);
    let early = node.config().hierarchy.early_renewal.as_secs() as i64;
    let mut at = now + interval;
    if early > 0 {
        let store = node.store();
        let given = store.given_grants(&r.name, now).await.unwrap_or_default();
        let received = store.received_grants(&r.name).await.unwrap_or_default();
        let deadline = given
            .iter()
            .chain(&received)
            .filter(|g| g.seats > 0 && g.period_end < g.end_at && g.period_end > now)
            .map(|g| g.period_end)
            .min();
        if let Some(d) = deadline {
            let early_at = d - early;
            // Already inside the early window (a period shorter than it): half-way to the end.
            let due = if early_at > now {
                early_at
            } else {
                now + (d - now) / 2
            };
            at = at.min(due.max(now + 1));
        }
    }
    node.peers().set_state(
        &r.name,
        format!(
            "periodic: next contact {}",
            outpost_proto::licence::key::format_time(at)
        ),
    );
    Duration::from_secs((at - now).max(1) as u64)
}

async fn dial(
    ep: &quinn::Endpoint,
    client: &quinn::ClientConfig,
    target: &str,
) -> Result<quinn::Connection, String> {
    let addr = endpoint::resolve(target).await.map_err(|e| e.to_string())?;
    let connecting = ep
        .connect_with(client.clone(), addr, pki::SERVER_NAME)
        .map_err(|e| refuse::explain_connect(&e))?;
    let conn = connecting.await.map_err(|e| refuse::explain(&e))?;
    info!(remote = %conn.remote_address(), "link to the neighbour server up");
    Ok(conn)
}

/// An incoming `outpost-peer/1` connection: the certificate must be a relation's pinned one.
pub async fn accept(node: Arc<Node>, conn: quinn::Connection) {
    let Some(leaf) = endpoint::peer_leaf(&conn) else {
        let r = Refused::new(
            RefusalCode::Unauthenticated,
            "a server link needs the server's link certificate",
        );
        refuse::close(&conn, &r);
        return;
    };
    let fp = crate::store::fp_hex(&pki::fingerprint(&leaf));
    match node.store().server_by_cert(&fp).await {
        Ok(Some(r)) => {
            tracing::Span::current().record("device", r.name.as_str());
            info!(server = %r.name, "neighbour server dialled in");
            link::serve(node, conn, r, false).await;
        }
        Ok(None) => {
            let r = Refused::new(
                RefusalCode::Unauthenticated,
                format!(
                    "link certificate sha256 {fp} is not pinned for any server relation here \
                     (add this server there with its `server export-cert` file)"
                ),
            );
            warn!(refusal = %r, "server link refused");
            refuse::close(&conn, &r);
        }
        Err(e) => refuse::close(&conn, &e.to_refusal("server relation lookup failed")),
    }
}
