//! Leases that follow demand on a server link (L4 `server:<name>`, L8, L9): a server tells each
//! neighbour it receives seats from what its devices need, on connect and when that changed
//! (checked every `hierarchy.demand_check`); the giver records it and sizes its leases that
//! follow demand, and re-checks on the same period, since seats free here over time.

use outpost_proto::pb::v1 as pb;
use outpost_proto::pb::v1::envelope::Msg;
use tracing::{info, warn};

use super::link::{Ctl, Link};

impl Link {
    /// Both directions of one demand check: this server's needs to the neighbour (when they
    /// changed), and the leases to it sized again.
    pub(super) async fn demand(&mut self, ctl: &mut Ctl) {
        let now = outpost_net::unix_now();
        if self.r.may_receive() {
            match self.node.store().seat_needs(&self.r.name, now).await {
                Ok(n) if self.needs_sent.as_ref() != Some(&n) => {
                    ctl.send(Msg::SeatNeeds(n.clone()));
                    self.needs_sent = Some(n);
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "seat needs not counted; retrying at the next check"),
            }
        }
        self.follow_demand(ctl, now).await;
    }

    pub(super) async fn on_needs(&mut self, ctl: &mut Ctl, n: pb::SeatNeeds, now: i64) {
        if !self.r.may_give() {
            return;
        }
        if let Err(e) = self.node.store().record_needs(&self.r.name, &n, now).await {
            return warn!(error = %e, "seat needs of the neighbour not recorded");
        }
        self.follow_demand(ctl, now).await;
    }

    async fn follow_demand(&mut self, ctl: &mut Ctl, now: i64) {
        if !self.r.may_give() {
            return;
        }
        let period = self.node.config().hierarchy.lease_period.as_secs() as i64;
        match self
            .node
            .store()
            .follow_demand(&self.r.name, period, now)
            .await
        {
            Ok(grants) => {
                for g in grants {
                    info!(lease = %g.lease_id, key = %g.key_id, seats = g.seats,
                        "lease following the neighbour's demand sized");
                    self.send_grant(ctl, &g).await;
                }
            }
            Err(e) => {
                warn!(error = %e, "leases following demand not sized; retrying at the next check")
            }
        }
    }
}
