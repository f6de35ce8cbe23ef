//! The licence check as the session sees it (S3, L6, L7): run the store's seat decision, sign
//! the grant for what was committed, and describe the result for the agent.

use outpost_proto::pb::v1::{GrantBody, GrantSlot, LicenceStatus};

use crate::node::Shared;
use crate::store::CheckOutcome;

/// Checks a device's licence and returns the status to send it. The seat and the grant are
/// committed before this returns (P3).
pub async fn check(
    shared: &Shared,
    device_id: &str,
    path: Option<&str>,
) -> Result<LicenceStatus, crate::store::StoreError> {
    let now = outpost_net::unix_now();
    let outcome = shared
        .store
        .check_licence_via(device_id, path, now, shared.grant_ttl())
        .await?;
    Ok(match outcome {
        CheckOutcome::Licensed(l) => {
            let body = GrantBody {
                device_id: device_id.to_owned(),
                key_id: l.key.id.clone(),
                components: l.key.component_list(),
                issued_at: l.issued_at,
                expires_at: l.grant_expires_at,
                key_expires_at: l.key.expires_at,
                slot: GrantSlot::Active as i32,
                licensee: l.key.licensee.clone(),
                product: l.key.product.clone(),
                kind: l.key.key_kind() as i32,
                valid_from: l.issued_at.min(l.key.valid_from.max(l.issued_at)),
            };
            LicenceStatus {
                licensed: true,
                active: Some(shared.grants.sign(&body)),
                reserve: None,
                reason: String::new(),
                checked_at: now,
            }
        }
        CheckOutcome::Unlicensed(reason) => LicenceStatus {
            licensed: false,
            active: None,
            reserve: None,
            reason,
            checked_at: now,
        },
    })
}
