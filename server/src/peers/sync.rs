//! H8 on a server link: each side's `LeaseSync` compared with what this side recorded. The
//! receiver takes the giver's figures (a mismatch is notified); the giver notifies a receiver
//! that claims other figures and answers with its own.

use outpost_proto::lease::LeaseGrant;
use outpost_proto::pb::v1 as pb;
use tracing::warn;

use super::link::{Ctl, Link};

impl Link {
    pub(super) async fn on_sync(&mut self, ctl: &mut Ctl, s: pb::LeaseSync, now: i64) {
        let store = self.node.store().clone();
        // The neighbour's leases to this server: its figures win.
        if self.r.may_receive() {
            let mine = store
                .received_grants(&self.r.name)
                .await
                .unwrap_or_default();
            let listed: Vec<String> = s.given.iter().map(|g| g.lease_id.clone()).collect();
            for m in s.given {
                let Ok(theirs) = LeaseGrant::try_from(m.clone()) else {
                    continue;
                };
                match mine.iter().find(|x| x.lease_id == theirs.lease_id) {
                    Some(held) if theirs.seq <= held.seq && *held != theirs => {
                        self.mismatch(&theirs, theirs.seats, held.seats).await;
                        let _ = self.take(m, true, now).await;
                    }
                    _ => {
                        let _ = self.take(m, false, now).await;
                    }
                }
            }
            match store
                .drop_unlisted_received(&self.r.name, &listed, now)
                .await
            {
                Ok(gone) => {
                    for id in gone {
                        let _ = store
                            .notify(
                                "lease-sync-mismatch",
                                None,
                                &format!("lease {id} from {} is not given any more by it; its seats were dropped here (the giver's figure wins)", self.r.name),
                                serde_json::json!({ "server": self.r.name, "lease": id }),
                            )
                            .await;
                    }
                }
                Err(e) => warn!(error = %e, "lease sync: dropping unlisted leases failed"),
            }
        }
        // What the neighbour says it holds from this server.
        if self.r.may_give() && !s.received.is_empty() {
            let given = match store.given_grants(&self.r.name, now).await {
                Ok(g) => g,
                Err(e) => return warn!(error = %e, "lease sync skipped"),
            };
            let mut answer = false;
            for m in s.received {
                let Ok(theirs) = LeaseGrant::try_from(m) else {
                    continue;
                };
                self.confirmed(ctl, &theirs.lease_id, now).await;
                match given.iter().find(|g| g.lease_id == theirs.lease_id) {
                    Some(g)
                        if theirs.seq > g.seq
                            || (theirs.seq == g.seq
                                && (theirs.seats != g.seats
                                    || theirs.period_end != g.period_end)) =>
                    {
                        self.mismatch(g, g.seats, theirs.seats).await;
                        answer = true;
                    }
                    Some(g) if theirs.seq < g.seq => answer = true,
                    Some(_) => {}
                    None if theirs.period_end > now && theirs.seats > 0 => {
                        let gone = LeaseGrant {
                            seats: 0,
                            ..theirs.clone()
                        };
                        self.mismatch(&gone, 0, theirs.seats).await;
                        answer = true;
                    }
                    None => {}
                }
            }
            if answer {
                self.sync(ctl).await;
            }
        }
    }

    async fn mismatch(&self, g: &LeaseGrant, giver: u32, receiver: u32) {
        warn!(lease = %g.lease_id, giver, receiver, "lease figures differ (H8); the giver's figure wins");
        let _ = self
            .node
            .store()
            .notify(
                "lease-sync-mismatch",
                Some(&g.key_id),
                &format!(
                    "lease {} of key {} with server {}: the giver says {giver} seat(s), the receiver {receiver}; the giver's figure wins",
                    g.lease_id, g.key_id, self.r.name
                ),
                serde_json::json!({
                    "server": self.r.name, "lease": g.lease_id, "key": g.key_id,
                    "giver_seats": giver, "receiver_seats": receiver,
                }),
            )
            .await;
    }
}
