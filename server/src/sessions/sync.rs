//! One sync of a live session (S4, S5): inventory written when it changed, events stored and
//! acknowledged after their commit, the licence re-checked when due
//! (`outpost_proto::licence::recheck`), and what changed since the agent's known versions.

use outpost_proto::licence::recheck::{self, Sent};
use outpost_proto::pb::v1::{
    GatewayList, LicenceStatus, Policy, SyncRequest, SyncResponse, TaskList, TrustUpdate, Versions,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::driver::Driver;
use crate::store::StoreError;

/// How often a connected device's `last_seen` is refreshed when nothing else changes.
const TOUCH_EVERY_SECS: i64 = 60;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Driver<S> {
    /// Runs the licence check (it also records `last_seen` and the path).
    pub(super) async fn check(&mut self) -> Result<LicenceStatus, StoreError> {
        // Mark the epoch seen first: a change during the check triggers another one later.
        self.epoch.borrow_and_update();
        let status = self
            .node
            .licensing()
            .check(&self.device.id, Some(&self.path))
            .await?;
        self.last_touch = outpost_net::unix_now();
        self.device.path = self.path.clone();
        Ok(status)
    }

    pub(super) async fn sync(&mut self, req: SyncRequest) -> Result<SyncResponse, StoreError> {
        let now = outpost_net::unix_now();
        let store = self.node.store().clone();
        // Inventory: written when it changed; otherwise only last_seen, now and then.
        if let Some(inv) = &req.inventory {
            let d = &self.device;
            let addresses = outpost_proto::discovery::addresses_of(inv);
            let changed = d.hostname != inv.hostname
                || d.os != inv.os
                || d.agent_version != inv.agent_version
                || d.addresses != addresses;
            if changed {
                store.update_inventory(&d.id, inv, &self.path, now).await?;
                self.device.hostname = inv.hostname.clone();
                self.device.os = inv.os.clone();
                self.device.agent_version = inv.agent_version.clone();
                self.device.addresses = addresses;
                self.last_touch = now;
            }
        }
        // The agent stored a newer licence status: grants it replaced no longer count (L15).
        if req.licence_checked_at_ms > self.confirmed_checked_at {
            self.confirmed_checked_at = req.licence_checked_at_ms;
            store
                .grants_replaced(&self.device.id, req.licence_checked_at_ms)
                .await?;
        }
        let max = self.node.config().limits.max_events_per_sync as usize;
        let events = &req.events[..req.events.len().min(max)];
        let acked = store.store_events(&self.device.id, events, now).await?;
        // The licence can change while connected (key assigned, seat freed, grant half-way to
        // expiry): re-check when due, send only what changed.
        let epoch_moved = self.epoch.has_changed().unwrap_or(false);
        let licence = if recheck::needs_recheck(self.last_licence.as_ref(), epoch_moved, now) {
            let status = self.check().await?;
            let fresh = Sent::of(&status);
            recheck::worth_sending(self.last_licence.as_ref(), &fresh, now).then(|| {
                self.last_licence = Some(fresh);
                status
            })
        } else {
            if now - self.last_touch >= TOUCH_EVERY_SECS {
                store.touch(&self.device.id, &self.path, now).await?;
                self.last_touch = now;
            }
            None
        };
        // D5: the effective policy, when the device holds another revision.
        let effective = store.effective_policy(&self.device.id).await?;
        let policy = (known_policy(&req) != effective.revision).then(|| Policy {
            revision: effective.revision,
            document: effective.document.to_string(),
        });
        // D5: the task list, when the device holds another revision.
        let (tasks, tasks_rev) = store.tasks_for(&self.device.id).await?;
        let tasks = (req.known.as_ref().map_or(0, |k| k.tasks) != tasks_rev).then_some(TaskList {
            revision: tasks_rev,
            tasks,
        });
        let gw = &self.node.config().gateways;
        let servers = self.node.server_addresses();
        let gw_rev = gateways_revision(gw, &servers);
        let known = req.known.unwrap_or_default();
        let gateways = (known.gateways != gw_rev && gw_rev != 0).then(|| GatewayList {
            revision: gw_rev,
            addresses: gw.clone(),
            servers,
        });
        // S9: the CAs to trust, when the device holds another set (a roll-over).
        let certs = self.node.enrollment().certs().current();
        let trust =
            (req.trust_sha256.as_slice() != certs.trust_sha256.as_slice()).then(|| TrustUpdate {
                ca_der: certs.trusted_der().iter().map(|c| c.to_vec()).collect(),
            });
        // D4: the group decides which broadcasts are for the device.
        let group = store.device_group(&self.device.id).await?;
        // D1: the newest update manifest, when the device holds another revision.
        let known_manifest = req.known.as_ref().map_or(0, |k| k.manifest);
        let (manifest, manifest_revision) = self.node_manifest(known_manifest).await?;
        Ok(SyncResponse {
            group,
            trust,
            seq: req.seq,
            acked_event_ids: acked,
            licence,
            policy,
            tasks,
            manifest_revision,
            update_key: if manifest.is_some() {
                self.node.updates().public_key()
            } else {
                vec![]
            },
            manifest,
            gateways,
            next_sync_secs: self.node.config().timing.sync_interval.as_secs().max(1) as u32,
            current: Some(Versions {
                gateways: gw_rev,
                policy: effective.revision,
                tasks: tasks_rev,
                manifest: manifest_revision,
            }),
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Driver<S> {
    /// The newest manifest if it is not the revision the device knows, and the newest
    /// revision (0: none).
    async fn node_manifest(
        &self,
        known: u64,
    ) -> Result<(Option<outpost_proto::pb::v1::SignedManifest>, u64), StoreError> {
        let newest = self.node.store().newest_update_revision().await?;
        if newest == known || newest == 0 {
            return Ok((None, newest));
        }
        let signed = self.node.store().update_manifest(Some(newest)).await?;
        Ok((signed, newest))
    }
}

fn known_policy(req: &SyncRequest) -> u64 {
    req.known.as_ref().map_or(0, |k| k.policy)
}

/// A stable revision number for the gateway and server lists (0 = no list).
fn gateways_revision(list: &[String], servers: &[String]) -> u64 {
    if list.is_empty() && servers.is_empty() {
        return 0;
    }
    let all = format!("{}\n--\n{}", list.join("\n"), servers.join("\n"));
    let d = ring::digest::digest(&ring::digest::SHA256, all.as_bytes());
    u64::from_be_bytes(d.as_ref()[..8].try_into().expect("8 bytes")) | 1
}
