//! What a server sends up its main server besides leases: usage reports (H9) and its
//! notifications (H4), and how the main server takes them.

use outpost_proto::pb::v1 as pb;
use outpost_proto::pb::v1::envelope::Msg;
use tokio::time::{Duration, Instant};
use tracing::{debug, warn};

use super::link::{Ctl, Link};

impl Link {
    /// Sends the next batch of notifications up to the main server (H4), unless one is on its
    /// way: oldest first after the last acknowledged, so none is lost across reconnects and a
    /// batch sent twice is stored once.
    pub(super) async fn relay_notices(&mut self, ctl: &mut Ctl) {
        let waiting = self
            .notices_in_flight
            .is_some_and(|t| t.elapsed() < Duration::from_secs(30));
        if self.r.kind != "primary" || waiting {
            return;
        }
        match self.node.store().notices_to_relay(&self.r.name, 100).await {
            Ok(batch) if !batch.is_empty() => {
                self.notices_in_flight = Some(Instant::now());
                ctl.send(Msg::NoticesUp(pb::NoticesUp {
                    notices: batch.iter().map(pb::NoticeUp::from).collect(),
                }));
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "notifications not relayed; next tick"),
        }
    }

    /// Sends this server's usage report up when one is owed (H9).
    pub(super) async fn report_if_due(&mut self, ctl: &mut Ctl) {
        if !self.report_due || self.r.kind != "primary" {
            return;
        }
        self.report_due = false;
        match super::report::make(&self.node).await {
            Ok(r) => ctl.send(Msg::UsageReport(r)),
            Err(e) => warn!(error = %e, "usage report not made; next period"),
        }
    }

    pub(super) async fn on_notices_up(&mut self, ctl: &mut Ctl, batch: pb::NoticesUp) {
        if self.r.kind != "secondary" {
            return debug!("notifications from a server that is not below this one ignored");
        }
        let now_ms = outpost_net::unix_now_ms();
        let mut last = None;
        for n in &batch.notices {
            if let Err(e) = self
                .node
                .store()
                .store_relayed(&self.r.name, n, now_ms)
                .await
            {
                // Not acknowledged: the batch comes again.
                return warn!(error = %e, "relayed notification not stored");
            }
            last = Some((n.at_ms, n.id.clone()));
        }
        if let Some((at_ms, id)) = last {
            ctl.send(Msg::NoticesAck(pb::NoticesAck { at_ms, id }));
        }
    }

    pub(super) async fn on_notices_ack(&mut self, ctl: &mut Ctl, ack: pb::NoticesAck) {
        if self.r.kind != "primary" {
            return;
        }
        match self
            .node
            .store()
            .notices_relayed(&self.r.name, ack.at_ms, &ack.id)
            .await
        {
            Ok(()) => {
                self.notices_in_flight = None;
                self.relay_notices(ctl).await;
            }
            Err(e) => warn!(error = %e, "notification acknowledgement not recorded"),
        }
    }
}
