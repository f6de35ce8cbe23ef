//! `admin policy set/show` (D5).

use outpost_proto::pb::admin::{
    AdminResponse, GroupPolicyInfo, PolicyResult, PolicySet, PolicyShow,
    admin_response::Result as R,
};
use tracing::info;

use super::{done, ok};
use crate::node::Node;
use crate::store::StoreError;

type Answer = Result<AdminResponse, StoreError>;

pub(super) async fn set(node: &Node, p: PolicySet) -> Answer {
    let now = outpost_net::unix_now();
    let (group, revision) = node.store().set_policy(&p.group, &p.document, now).await?;
    // Devices of the group and below sync now, here and on the other instances.
    let devices = node.store().devices_under(&group).await?;
    let nudged = node.sessions().registry().nudge(&devices);
    node.store().announce_sync(&group).await;
    // The root's document goes down to secondaries (H4).
    node.peers().hand_down_changed();
    info!(%group, revision, nudged, "policy set");
    Ok(done(format!(
        "policy of {group} set (revision {revision}); {nudged} connected device(s) of the group \
         and below sync now, the others at their next connect"
    )))
}

pub(super) async fn show(node: &Node, p: PolicyShow) -> Answer {
    let groups = node
        .store()
        .policies()
        .await?
        .into_iter()
        .map(|g| GroupPolicyInfo {
            group: g.group,
            document: g.document.to_string(),
            revision: g.revision,
            updated_at: g.updated_at,
        })
        .collect();
    let mut r = PolicyResult {
        groups,
        ..Default::default()
    };
    if !p.device_id.is_empty() {
        if node.store().device(&p.device_id).await?.is_none() {
            return Err(StoreError::NotFound(format!(
                "no device {} (admin device list shows them)",
                p.device_id
            )));
        }
        let e = node.store().effective_policy(&p.device_id).await?;
        r.device_id = p.device_id;
        r.effective = serde_json::to_string_pretty(&e.document).unwrap_or_default();
        r.effective_revision = e.revision;
        r.from_groups = e.from;
    }
    Ok(ok(R::Policy(r)))
}
