//! The licence check at connect (S3, L5, L6, L8) inside one write transaction: read every key
//! that could license the device in one statement, let `outpost_proto::licence` rank them and
//! decide, execute the decision with the conditional seat updates of [`super::seats`], and
//! record the result with the device. The batch writer ([`super::writer`]) runs many of these
//! in one transaction.

use std::collections::{BTreeSet, HashMap};

use outpost_proto::licence::{
    Candidate, Object, Origin, SeatDecision, Settled, Slot, Source, plan_seat, settle,
};

use super::backend::{Row, Tx};
use super::holds::{GaveBack, give_back};
use super::seats::{record_grant, set_slot, take_seat};
use super::{KeyRow, StoreError};

/// How the server licenses: grant lifetime and the "expiring soon" window.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Longest grant lifetime, seconds (L7).
    pub grant_ttl: i64,
    /// An active key expiring within this many seconds gets a reserve (L5, L8).
    pub expiring_soon: i64,
}

/// What a grant is signed from.
#[derive(Debug, Clone)]
pub struct GrantKey {
    /// Key id.
    pub key_id: String,
    /// Licensee.
    pub licensee: String,
    /// Product.
    pub product: String,
    /// Components.
    pub components: Vec<String>,
    /// commercial | demo.
    pub kind: String,
    /// Key expiry.
    pub key_expires_at: i64,
    /// Grant validity start.
    pub valid_from: i64,
    /// Grant expiry (never after the key's).
    pub expires_at: i64,
}

impl GrantKey {
    fn from_row(k: &KeyRow, valid_from: i64, expires_at: i64) -> GrantKey {
        GrantKey {
            key_id: k.id.clone(),
            licensee: k.licensee.clone(),
            product: k.product.clone(),
            components: k.component_list(),
            kind: k.kind.clone(),
            key_expires_at: k.expires_at,
            valid_from,
            expires_at: expires_at.min(k.expires_at),
        }
    }
}

/// The grants of a licensed device.
#[derive(Debug, Clone)]
pub struct Licensed {
    /// The active grant.
    pub active: GrantKey,
    /// The reserve grant, when the active key expires soon (L5).
    pub reserve: Option<GrantKey>,
    /// The active key is an auto-distributed key no longer in the repository (L8).
    pub kept: bool,
}

/// Result of a licence check.
#[derive(Debug, Clone)]
pub enum CheckOutcome {
    /// Licensed; seats committed.
    Licensed(Box<Licensed>),
    /// Unlicensed, with the reason.
    Unlicensed(String),
}

/// One row of the check's read: the device, and one candidate key (assigned to it or a group,
/// auto-distributed, or holding its seat) with the seat the device holds on it.
struct CheckRow {
    group_path: String,
    revoked_at: Option<i64>,
    /// The device's recorded result, to skip rewriting an unchanged one.
    recorded: Recorded,
    object: Option<String>,
    held: Option<String>,
    /// `grant_until` of the seat held on this key.
    held_until: Option<i64>,
    /// A leased key's current period end (H6, L7); `None` for keys this server owns.
    usable_until: Option<i64>,
    key: Option<KeyRow>,
}

#[derive(Clone, PartialEq)]
struct Recorded {
    state: String,
    key: Option<String>,
    reserve: Option<String>,
    wanted: Option<String>,
    reason: String,
    at: i64,
    path: String,
}

impl<'r> sqlx::FromRow<'r, Row> for CheckRow {
    fn from_row(row: &'r Row) -> Result<Self, sqlx::Error> {
        use sqlx::Row as _;
        let id: Option<String> = row.try_get("id")?;
        Ok(CheckRow {
            group_path: row.try_get("group_path")?,
            revoked_at: row.try_get("revoked_at")?,
            recorded: Recorded {
                state: row.try_get("licence_state")?,
                key: row.try_get("licence_key")?,
                reserve: row.try_get("licence_reserve_key")?,
                wanted: row.try_get("licence_wanted_key")?,
                reason: row.try_get("licence_reason")?,
                at: row.try_get("last_check_at")?,
                path: row.try_get("path")?,
            },
            object: row.try_get("object")?,
            held: row.try_get("held")?,
            held_until: row.try_get("held_until")?,
            usable_until: row.try_get("usable_until")?,
            key: match id {
                Some(_) => Some(KeyRow::from_row(row)?),
                None => None,
            },
        })
    }
}

/// How fresh an unchanged recorded check result may be before it is rewritten.
const RECHECK_RECORD_SECS: i64 = 60;

/// Runs one device's check inside `tx`. Keys whose counts changed go into `touched` (their
/// usage thresholds are re-evaluated before the commit, L10).
pub(super) async fn check_in_tx(
    tx: &mut Tx<'_>,
    device_id: &str,
    path: Option<&str>,
    now: i64,
    policy: &Policy,
    touched: &mut BTreeSet<String>,
) -> Result<CheckOutcome, StoreError> {
    // A conditional take can only fail when another writer (another server instance on a
    // shared database, P2) took the last seat between our read and our update: re-plan.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (first, keys) = read_candidates(tx, device_id, now).await?;
        if first.revoked_at.is_some() {
            return Err(StoreError::Revoked(format!(
                "device {device_id} was revoked by an administrator"
            )));
        }
        let recorded = first.recorded;
        let candidates = outpost_proto::licence::rank(keys.found, device_id, &first.group_path);
        let plan = plan_seat(&candidates, now, policy.expiring_soon);
        let held = |id: &str| {
            candidates
                .iter()
                .find(|c| c.key_id == id)
                .and_then(|c| c.held)
        };
        // Seats the device no longer uses: freed, or held while its grant may be valid (L15).
        for k in &plan.release {
            let how = give_back(tx, k, device_id, now, "superseded", policy.grant_ttl).await?;
            if how == Some(GaveBack::Released) {
                touched.insert(k.clone());
            }
        }
        // Active seat, then reserve seat; each is held afterwards unless its take lost.
        let mut ok = [true, true];
        for (i, (decision, slot)) in [
            (Some(&plan.decision), Slot::Active),
            (plan.reserve.as_ref(), Slot::Reserve),
        ]
        .into_iter()
        .enumerate()
        {
            match decision {
                Some(SeatDecision::Keep(k)) if held(k).is_some_and(|h| h != slot) => {
                    // A reserve taking over from an expired active key, or an active seat
                    // becoming the reserve of a nearer key (L5).
                    set_slot(tx, k, device_id, super::seats::slot_name(slot)).await?;
                }
                Some(SeatDecision::Take(k)) => {
                    if take_seat(tx, k, device_id, super::seats::slot_name(slot), now).await? {
                        touched.insert(k.clone());
                    } else {
                        ok[i] = false;
                    }
                }
                _ => {}
            }
        }
        let key = |id: &str| keys.rows.get(id);
        let mut outcome = match settle(&plan, ok[0], ok[1], attempts) {
            Settled::Retry => continue,
            Settled::Unlicensed(reason) => CheckOutcome::Unlicensed(reason),
            Settled::Licensed { active, reserve } => {
                let a = key(&active).expect("planned keys come from the rows read");
                let cap = |id: &str| keys.usable.get(id).copied().unwrap_or(i64::MAX);
                let grant = GrantKey::from_row(
                    a,
                    now,
                    now.saturating_add(policy.grant_ttl).min(cap(&active)),
                );
                // Valid from when it may be used, long enough to cover the time after the
                // active key expires.
                let reserve = reserve.as_deref().and_then(key).map(|r| {
                    GrantKey::from_row(
                        r,
                        now.max(r.valid_from),
                        a.expires_at
                            .max(now)
                            .saturating_add(policy.grant_ttl)
                            .min(cap(&r.id)),
                    )
                });
                // How long the device may hold these grants offline (L15).
                let recorded = |id: &str| keys.until.get(id).copied().unwrap_or(0);
                record_grant(
                    tx,
                    &active,
                    device_id,
                    grant.expires_at,
                    recorded(&active),
                    a.expires_at.min(cap(&active)),
                )
                .await?;
                if let Some(r) = &reserve {
                    record_grant(
                        tx,
                        &r.key_id,
                        device_id,
                        r.expires_at,
                        recorded(&r.key_id),
                        r.key_expires_at.min(cap(&r.key_id)),
                    )
                    .await?;
                }
                CheckOutcome::Licensed(Box::new(Licensed {
                    active: grant,
                    reserve,
                    kept: false,
                }))
            }
        };
        // L8: a device keeps an auto-distributed key it received after the key left the
        // repository.
        if matches!(outcome, CheckOutcome::Unlicensed(_))
            && let Some(kept) = kept_key(tx, device_id, now, policy).await?
        {
            outcome = CheckOutcome::Licensed(Box::new(Licensed {
                active: kept,
                reserve: None,
                kept: true,
            }));
        }
        let wanted = match &outcome {
            CheckOutcome::Unlicensed(_) => plan.wanted.clone(),
            _ => None,
        };
        if wanted != recorded.wanted {
            touched.extend(wanted.iter().cloned());
            touched.extend(recorded.wanted.iter().cloned());
        }
        record(tx, device_id, path, now, &outcome, wanted, &recorded).await?;
        return Ok(outcome);
    }
}

/// The keys found for a device: as ranking input, their rows by id, and the recorded grant
/// bound of the seats it holds.
struct Found {
    found: Vec<(Origin, Candidate)>,
    rows: HashMap<String, KeyRow>,
    until: HashMap<String, i64>,
    /// Leased keys: the current period's end, which no grant on them outlives (L7).
    usable: HashMap<String, i64>,
}

/// Everything the decision needs in one statement: the device, the keys assigned to it or to
/// any group (the ranking drops groups not in its chain), the auto-distributed keys, and the
/// keys it holds seats on.
async fn read_candidates(
    tx: &mut Tx<'_>,
    device_id: &str,
    now: i64,
) -> Result<(CheckRow, Found), StoreError> {
    let device_object = Object::Device(device_id.to_owned()).stored();
    let rows: Vec<CheckRow> = sqlx::query_as(
        "SELECT d.group_path, d.revoked_at, d.licence_state, d.licence_key, d.licence_reserve_key,
                d.licence_wanted_key, d.licence_reason, d.last_check_at, d.path, c.object,
                (SELECT s.slot FROM seats s WHERE s.key_id = k.id AND s.device_id = d.id) AS held,
                (SELECT s.grant_until FROM seats s WHERE s.key_id = k.id AND s.device_id = d.id) AS held_until,
                k.id, k.licensee, k.product, k.components, k.seats, k.seats_used,
                k.seats_leased_out, k.valid_from, k.expires_at, k.kind, k.renews,
                k.auto_distribute, k.origin, k.file_name, k.imported_at, k.usable_until
         FROM devices d
         LEFT JOIN (SELECT object, key_id FROM key_assignments WHERE object = $2 OR object LIKE 'group:%'
                    UNION ALL
                    SELECT 'auto', id FROM licence_keys WHERE auto_distribute = 1
                    UNION ALL
                    SELECT NULL, key_id FROM seats WHERE device_id = $1) c ON 1 = 1
         LEFT JOIN licence_keys k ON k.id = c.key_id
         WHERE d.id = $1",
    )
    .bind(device_id)
    .bind(&device_object)
    .fetch_all(&mut **tx)
    .await?;
    let mut rows = rows.into_iter();
    let Some(mut first) = rows.next() else {
        return Err(StoreError::NotFound(format!(
            "device {device_id} is not registered"
        )));
    };
    let mut found = Found {
        found: vec![],
        rows: HashMap::new(),
        until: HashMap::new(),
        usable: HashMap::new(),
    };
    let first_row = (
        first.object.take(),
        first.held.take(),
        first.held_until.take(),
        first.usable_until.take(),
        first.key.take(),
    );
    let rest = rows.map(|r| (r.object, r.held, r.held_until, r.usable_until, r.key));
    for (object, held, held_until, usable_until, key) in std::iter::once(first_row).chain(rest) {
        let Some(k) = key else { continue };
        if let Some(u) = usable_until {
            // A leased key whose period ended unrenewed licenses nobody (H6); one in force
            // issues grants that end with its period (L7).
            if u <= now {
                continue;
            }
            found.usable.insert(k.id.clone(), u);
        }
        if let Some(u) = held_until {
            found.until.insert(k.id.clone(), u);
        }
        let origin = match object.as_deref() {
            Some("auto") => Origin::Auto,
            Some(o) => match Object::from_stored(o) {
                Some(o) => Origin::Assigned(o),
                None => continue,
            },
            None => Origin::Held,
        };
        let held = held.map(|h| {
            if h == "reserve" {
                Slot::Reserve
            } else {
                Slot::Active
            }
        });
        found.found.push((
            origin,
            Candidate {
                key_id: k.id.clone(),
                seats_total: k.seats as u32,
                seats_used: k.seats_used as u32,
                seats_leased_out: k.seats_leased_out as u32,
                valid_from: k.valid_from,
                expires_at: k.expires_at,
                held,
                source: Source::Stale,
                distance: 0,
            },
        ));
        found.rows.insert(k.id.clone(), k);
    }
    Ok((first, found))
}

async fn kept_key(
    tx: &mut Tx<'_>,
    device_id: &str,
    now: i64,
    policy: &Policy,
) -> Result<Option<GrantKey>, StoreError> {
    let row: Option<(String, String, String, String, String, i64)> = sqlx::query_as(
        "SELECT key_id, licensee, product, components, kind, expires_at FROM kept_keys
         WHERE device_id = $1 AND expires_at > $2",
    )
    .bind(device_id)
    .bind(now)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(
        |(key_id, licensee, product, components, kind, exp)| GrantKey {
            key_id,
            licensee,
            product,
            components: components
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect(),
            kind,
            key_expires_at: exp,
            valid_from: now,
            expires_at: now.saturating_add(policy.grant_ttl).min(exp),
        },
    ))
}

/// Records the result with the device (S3). An unchanged result checked within the last
/// minute is not rewritten: the record keeps `last_check_at` to the minute, and a storm of
/// reconnects costs no writes per device.
async fn record(
    tx: &mut Tx<'_>,
    device_id: &str,
    path: Option<&str>,
    now: i64,
    outcome: &CheckOutcome,
    wanted: Option<String>,
    recorded: &Recorded,
) -> Result<(), StoreError> {
    let (state, key, reserve, reason) = match outcome {
        CheckOutcome::Licensed(l) => (
            "licensed",
            Some(l.active.key_id.clone()),
            l.reserve.as_ref().map(|r| r.key_id.clone()),
            String::new(),
        ),
        CheckOutcome::Unlicensed(r) => ("unlicensed", None, None, r.clone()),
    };
    let same = recorded.state == state
        && recorded.key == key
        && recorded.reserve == reserve
        && recorded.wanted == wanted
        && recorded.reason == reason
        && now - recorded.at < RECHECK_RECORD_SECS
        && path.is_none_or(|p| p == recorded.path);
    if same {
        return Ok(());
    }
    sqlx::query(
        "UPDATE devices SET licence_state = $2, licence_key = $3, licence_reason = $4,
                last_check_at = $5, last_seen = $5, path = COALESCE($6, path),
                licence_reserve_key = $7, licence_wanted_key = $8
         WHERE id = $1",
    )
    .bind(device_id)
    .bind(state)
    .bind(key)
    .bind(reason)
    .bind(now)
    .bind(path)
    .bind(reserve)
    .bind(wanted)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
