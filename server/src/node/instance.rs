//! This instance in the shared database (P2): its row in `instances` with a heartbeat, and the
//! periodic reconcile of the connections it holds (see [`crate::store::instances`]).

use std::sync::Arc;

use tracing::{info, warn};

use super::Node;
use crate::store::instances::HEARTBEAT;

/// Heartbeats between two reconciles of `held` (about a minute).
const RECONCILE_EVERY: u32 = 12;

/// What this instance holds now: agent sessions and gateway uplinks.
fn held_now(node: &Node) -> Vec<String> {
    let mut v = node.sessions().registry().online();
    v.extend(node.gateways().ids());
    v
}

/// Runs until shutdown; then forgets this instance in the database.
pub(super) async fn run(node: Arc<Node>) {
    let name = node.client_address();
    if let Err(e) = node
        .store()
        .instance_started(&name, outpost_net::unix_now())
        .await
    {
        warn!(error = %e, "this instance could not record itself in the database; retrying at the next heartbeat");
    }
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beats = 0u32;
    let mut dropped = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = node.runtime().cancelled() => break,
        }
        let now = outpost_net::unix_now();
        let store = node.store();
        // Re-insert: a database restored or an instance purged after a long stall.
        let r = match store.instance_heartbeat(now).await {
            Ok(0) => store.instance_started(&name, now).await,
            Ok(gone) => {
                info!(
                    gone,
                    "instances without a heartbeat forgotten with the connections they held"
                );
                store.instance_started(&name, now).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            warn!(error = %e, "heartbeat not recorded");
            continue;
        }
        if node.store().backend() == crate::store::backend::Backend::Postgres {
            match store.instances(now).await {
                // Only a deployment that runs several instances hands their addresses out: one
                // instance alone behaves as on the embedded store (agents keep their paths).
                Ok(v) if v.len() >= 2 => {
                    node.set_instances(v.into_iter().map(|i| i.name).collect())
                }
                Ok(_) => node.set_instances(vec![]),
                Err(e) => warn!(error = %e, "running instances not read"),
            }
        }
        beats += 1;
        let now_dropped = store.held_dropped();
        if beats.is_multiple_of(RECONCILE_EVERY) || now_dropped != dropped {
            dropped = now_dropped;
            match store.reconcile_held(&held_now(&node), now).await {
                Ok(0) => {}
                Ok(fixed) => info!(fixed, "record of the connections held here corrected"),
                Err(e) => warn!(error = %e, "record of the connections held here not checked"),
            }
        }
    }
    if let Err(e) = node.store().instance_stopped().await {
        warn!(error = %e, "this instance could not remove itself from the database; the others forget it within a minute");
    }
}
