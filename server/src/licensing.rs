//! The licence check as the session sees it (S3, L5, L6, L7, L8): run the store's seat
//! decision, sign the grants for what was committed, and describe the result for the agent.

use outpost_proto::pb::v1::{GrantBody, GrantSlot, KeyKind, LicenceStatus, SignedGrant};

use crate::node::Shared;
use crate::store::{CheckOutcome, GrantKey, Policy};

/// The licensing policy from the configuration.
pub fn policy(shared: &Shared) -> Policy {
    Policy {
        grant_ttl: shared.grant_ttl(),
        expiring_soon: shared.config.licensing.expiring_soon.as_secs() as i64,
    }
}

fn sign(shared: &Shared, device_id: &str, g: &GrantKey, slot: GrantSlot, now: i64) -> SignedGrant {
    shared.grants.sign(&GrantBody {
        device_id: device_id.to_owned(),
        key_id: g.key_id.clone(),
        components: g.components.clone(),
        issued_at: now,
        expires_at: g.expires_at,
        key_expires_at: g.key_expires_at,
        slot: slot as i32,
        licensee: g.licensee.clone(),
        product: g.product.clone(),
        kind: if g.kind == "demo" {
            KeyKind::Demo
        } else {
            KeyKind::Commercial
        } as i32,
        valid_from: g.valid_from,
    })
}

/// Checks a device's licence and returns the status to send it. Seats are committed before
/// this returns (P3).
pub async fn check(
    shared: &Shared,
    device_id: &str,
    path: Option<&str>,
) -> Result<LicenceStatus, crate::store::StoreError> {
    let now = outpost_net::unix_now();
    let outcome = shared
        .store
        .check_licence_via(device_id, path, now, &policy(shared))
        .await?;
    Ok(match outcome {
        CheckOutcome::Licensed(l) => LicenceStatus {
            licensed: true,
            active: Some(sign(shared, device_id, &l.active, GrantSlot::Active, now)),
            reserve: l
                .reserve
                .as_ref()
                .map(|r| sign(shared, device_id, r, GrantSlot::Reserve, now)),
            reason: String::new(),
            checked_at: now,
        },
        CheckOutcome::Unlicensed(reason) => LicenceStatus {
            licensed: false,
            active: None,
            reserve: None,
            reason,
            checked_at: now,
        },
    })
}
