//! A renewed key on a server link (L11 outcome 3 across the tree): the giver revokes the old
//! key's lease once the neighbour shows it holds the renewal's; a receiver takes a renewal of a
//! key it holds over the way the key's owner does.

use tracing::{info, warn};

use super::link::{Ctl, Link};

impl Link {
    /// The neighbour showed it holds lease `lease_id`; if that lease replaces one of a renewed
    /// key, the old one is revoked now (L11) and the neighbour told.
    pub(super) async fn confirmed(&mut self, ctl: &mut Ctl, lease_id: &str, now: i64) {
        match self
            .node
            .store()
            .lease_confirmed(&self.r.name, lease_id, now)
            .await
        {
            Ok(Some(old)) => {
                info!(lease = %old.lease_id, key = %old.key_id, replaced_by = %lease_id,
                    "the neighbour holds the renewal's lease: the old key's lease is revoked");
                self.send_grant(ctl, &old).await;
            }
            Ok(None) => {}
            Err(e) => warn!(lease = %lease_id, error = %e, "confirming a renewal lease failed"),
        }
    }

    /// A key that came down renews a key held here (L11 outcome 3 across the tree): it takes
    /// the old key's objects, the neighbours this server passed the old key on to get it, and
    /// the old key goes once nothing holds it. Notified "key renewed automatically" here too.
    pub(super) async fn adopt_renewal(&mut self, key: &outpost_proto::licence::KeyBody, now: i64) {
        let store = self.node.store();
        let (old, done) = match store
            .adopt_renewal(&key.key_id, key.renews.as_deref(), now)
            .await
        {
            Ok(Some(x)) => x,
            Ok(None) => return,
            Err(e) => {
                return warn!(key = %key.key_id, error = %e, "renewal from the neighbour not taken over");
            }
        };
        let new = &key.key_id;
        let msg = format!(
            "key {old} renewed automatically by key {new} (from {}); {}",
            self.r.name,
            if done.removed {
                format!("key {old} removed")
            } else {
                format!(
                    "key {old} kept until the servers holding leases of it move over ({} lease(s) handed over)",
                    done.grants.len()
                )
            }
        );
        info!("{msg}");
        let _ = store
            .notify(
                "key-renewed",
                Some(new),
                &msg,
                serde_json::json!({ "old": old, "new": new, "from": self.r.name }),
            )
            .await;
        for (server, why) in &done.refused {
            let _ = store
                .notify(
                    "key-cannot-renew",
                    Some(new),
                    &format!("key {new} not handed to {server}: {why}"),
                    serde_json::json!({ "old": old, "new": new, "server": server }),
                )
                .await;
        }
        self.node
            .peers()
            .deliver_all(&self.node, &done.grants)
            .await;
    }
}
