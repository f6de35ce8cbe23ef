//! The seat decision at connect (L5, L6, L8), as a pure function.
//!
//! Input: the keys that could license a device — assigned to it, to its group or the group's
//! ancestors, or to "everyone" (nearest first); keys marked for automatic distribution; and
//! keys it still holds a seat on — each with its seat counts and the seat the device holds.
//! Output: the active seat (keep, take, or unlicensed with the reason), the reserve seat when
//! the active key expires soon, and the seats to give back.
//!
//! A reserve seat is a real seat: the device can switch to its reserve key offline the moment
//! its active key expires (L5) without any count being exceeded.
//!
//! The caller executes every `Take` as a conditional update (`seats_used + leased_out <
//! seats`) inside a transaction; if that update changes nothing (another server took the
//! last seat first, P2), it re-reads and asks again.

/// Which seat a device holds on a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The seat licensing the device now.
    Active,
    /// The seat that takes over when the active key expires.
    Reserve,
}

/// Why a key is a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Assigned to the device or one of its groups (candidates come nearest first).
    Assigned,
    /// Marked for automatic distribution (L8) and not assigned to the device's groups.
    Auto,
    /// Neither: the device only still holds a seat on it, which is given back.
    Stale,
}

/// One key that could license the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Key id.
    pub key_id: String,
    /// Seats on the key.
    pub seats_total: u32,
    /// Seats held by devices (active and reserve).
    pub seats_used: u32,
    /// Seats leased to neighbour servers (H5).
    pub seats_leased_out: u32,
    /// Key validity, unix seconds.
    pub valid_from: i64,
    /// Key expiry, unix seconds.
    pub expires_at: i64,
    /// The seat the device holds on this key, if any.
    pub held: Option<Slot>,
    /// Why it is a candidate.
    pub source: Source,
    /// For an assigned key, how near its assignment is to the device: 0 the device itself, 1
    /// its group, 2 the group's parent … (see `Object::nearness`). 0 for the other sources.
    pub distance: usize,
}

impl Candidate {
    fn free(&self) -> u32 {
        self.seats_total
            .saturating_sub(self.seats_used)
            .saturating_sub(self.seats_leased_out)
    }

    fn usable_at(&self, t: i64) -> bool {
        self.source != Source::Stale && self.valid_from <= t && t < self.expires_at
    }

    fn obtainable(&self) -> bool {
        self.held.is_some() || self.free() > 0
    }
}

/// What to do with a seat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeatDecision {
    /// The device keeps the seat it holds on this key (a held reserve seat becomes active).
    Keep(String),
    /// Take a free seat on this key.
    Take(String),
    /// No seat: the device is unlicensed for this reason.
    Unlicensed(String),
}

/// The whole decision for one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatPlan {
    /// The active seat.
    pub decision: SeatDecision,
    /// The reserve seat, when the active key expires within the "expiring soon" window and
    /// another key can take over (L5, L8). Never `Unlicensed`.
    pub reserve: Option<SeatDecision>,
    /// Keys on which the device's seat is released.
    pub release: Vec<String>,
    /// When unlicensed because a key was full: that key (counts towards its 110 % attempted
    /// usage, L10).
    pub wanted: Option<String>,
}

impl SeatPlan {
    /// The key licensing the device, if any.
    pub fn active_key(&self) -> Option<&str> {
        match &self.decision {
            SeatDecision::Keep(k) | SeatDecision::Take(k) => Some(k),
            SeatDecision::Unlicensed(_) => None,
        }
    }

    /// The reserve key, if any.
    pub fn reserve_key(&self) -> Option<&str> {
        match &self.reserve {
            Some(SeatDecision::Keep(k) | SeatDecision::Take(k)) => Some(k),
            _ => None,
        }
    }
}

fn seat(c: &Candidate) -> SeatDecision {
    if c.held.is_some() {
        SeatDecision::Keep(c.key_id.clone())
    } else {
        SeatDecision::Take(c.key_id.clone())
    }
}

/// Decides a device's seats at `now` (L5, L6, L8).
///
/// Active: the keys assigned nearest to the device among those valid now are its budget (L6):
/// it keeps its seat on one of them or takes a free one; when all are full it is unlicensed,
/// naming the key — never a farther key. A device with no assigned key valid now gets an
/// automatically distributed key (L8). Reserve: when the active key expires
/// within `expiring_soon` seconds, the next assigned (then auto-distributed) key that is valid
/// when the active one expires and lasts beyond it. Everything else held is released, so a
/// device never holds more than one active and one reserve seat.
pub fn plan_seat(candidates: &[Candidate], now: i64, expiring_soon: i64) -> SeatPlan {
    let pick = |source: Source| {
        candidates
            .iter()
            .filter(|c| c.source == source && c.usable_at(now))
            .find(|c| c.obtainable())
    };
    // Candidates come ranked (see `rank`): assigned nearest first, then auto, then stale.
    let nearest = candidates
        .iter()
        .filter(|c| c.source == Source::Assigned && c.usable_at(now))
        .map(|c| c.distance)
        .min();
    let active = match nearest {
        Some(d) => candidates
            .iter()
            .filter(|c| c.source == Source::Assigned && c.usable_at(now) && c.distance == d)
            .find(|c| c.obtainable()),
        None => pick(Source::Auto),
    };
    let reserve = active.and_then(|a| {
        if a.expires_at - now > expiring_soon {
            return None;
        }
        let follows = |c: &&Candidate| {
            c.key_id != a.key_id
                && c.source != Source::Stale
                && c.valid_from <= a.expires_at
                && c.expires_at > a.expires_at
                && c.obtainable()
        };
        candidates
            .iter()
            .filter(|c| c.source == Source::Assigned)
            .find(follows)
            .or_else(|| {
                candidates
                    .iter()
                    .filter(|c| c.source == Source::Auto)
                    .find(follows)
            })
    });
    let keep: Vec<&str> = active
        .iter()
        .chain(reserve.iter())
        .map(|c| c.key_id.as_str())
        .collect();
    let release = candidates
        .iter()
        .filter(|c| c.held.is_some() && !keep.contains(&c.key_id.as_str()))
        .map(|c| c.key_id.clone())
        .collect();
    match active {
        Some(a) => SeatPlan {
            decision: seat(a),
            reserve: reserve.map(seat),
            release,
            wanted: None,
        },
        None => {
            let (reason, wanted) = unlicensed_reason(candidates, now);
            SeatPlan {
                decision: SeatDecision::Unlicensed(reason),
                reserve: None,
                release,
                wanted,
            }
        }
    }
}

/// How many times a check re-plans after losing a conditional update to another writer.
pub const MAX_ATTEMPTS: u32 = 5;

/// What a check reports once the store executed a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Licensed by `active`, with `reserve` when that seat was obtained too.
    Licensed {
        /// The active key.
        active: String,
        /// The reserve key.
        reserve: Option<String>,
    },
    /// Unlicensed, for this reason.
    Unlicensed(String),
    /// A conditional update lost to another writer: read again and re-plan.
    Retry,
}

/// Settles attempt number `attempt` (from 1) of executing `plan`: `active_ok` / `reserve_ok`
/// say whether the store holds those seats now (kept or taken). A seat lost to another writer
/// is re-planned up to [`MAX_ATTEMPTS`]; after that, a device whose active seat is held is
/// licensed without a reserve (the reserve is retried at its next check) — it is never
/// reported unlicensed while it holds its active seat.
pub fn settle(plan: &SeatPlan, active_ok: bool, reserve_ok: bool, attempt: u32) -> Settled {
    let active = match &plan.decision {
        SeatDecision::Unlicensed(r) => return Settled::Unlicensed(r.clone()),
        SeatDecision::Keep(k) | SeatDecision::Take(k) => k,
    };
    let retry = attempt < MAX_ATTEMPTS;
    if !active_ok {
        return if retry {
            Settled::Retry
        } else {
            Settled::Unlicensed(format!(
                "no free seat on key {active}: the last seats were taken concurrently; the next check tries again"
            ))
        };
    }
    let reserve = plan.reserve_key().map(str::to_owned);
    if reserve.is_some() && !reserve_ok && retry {
        return Settled::Retry;
    }
    Settled::Licensed {
        active: active.clone(),
        reserve: reserve.filter(|_| reserve_ok),
    }
}

fn unlicensed_reason(candidates: &[Candidate], now: i64) -> (String, Option<String>) {
    use super::key::format_time;
    let assigned: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.source == Source::Assigned)
        .collect();
    let full = assigned
        .iter()
        .copied()
        .find(|c| c.usable_at(now))
        .or_else(|| {
            candidates
                .iter()
                .find(|c| c.source == Source::Auto && c.usable_at(now))
        });
    if let Some(full) = full {
        let mut s = format!(
            "no free seat on {}key {}, {} of {} used",
            if full.source == Source::Auto {
                "auto-distributed "
            } else {
                ""
            },
            full.key_id,
            full.seats_used + full.seats_leased_out,
            full.seats_total
        );
        if full.seats_leased_out > 0 {
            s.push_str(&format!(" ({} leased out)", full.seats_leased_out));
        }
        return (s, Some(full.key_id.clone()));
    }
    let Some(c) = assigned.first() else {
        return (
            "no licence key is assigned to this device, its groups or \"everyone\"".into(),
            None,
        );
    };
    let reason = if now >= c.expires_at {
        format!("key {} expired at {}", c.key_id, format_time(c.expires_at))
    } else {
        format!(
            "key {} is not valid before {}",
            c.key_id,
            format_time(c.valid_from)
        )
    };
    (reason, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOON: i64 = 100;

    fn key(id: &str, total: u32, used: u32, held: bool) -> Candidate {
        Candidate {
            key_id: id.into(),
            seats_total: total,
            seats_used: used,
            seats_leased_out: 0,
            valid_from: 0,
            expires_at: 10_000,
            held: held.then_some(Slot::Active),
            source: Source::Assigned,
            distance: 1,
        }
    }

    fn at(mut c: Candidate, distance: usize) -> Candidate {
        c.distance = distance;
        c
    }

    fn plan(c: &[Candidate], now: i64) -> SeatPlan {
        plan_seat(c, now, SOON)
    }

    #[test]
    fn l6_holder_keeps_its_seat_even_when_key_is_full() {
        let p = plan(&[key("K", 2, 2, true)], 10);
        assert_eq!(p.decision, SeatDecision::Keep("K".into()));
        assert!(p.release.is_empty());
    }

    #[test]
    fn l6_free_seat_is_taken() {
        assert_eq!(
            plan(&[key("K", 2, 1, false)], 10).decision,
            SeatDecision::Take("K".into())
        );
    }

    #[test]
    fn l6_full_key_gives_reason_with_counts() {
        let p = plan(&[key("K", 40, 40, false)], 10);
        assert_eq!(
            p.decision,
            SeatDecision::Unlicensed("no free seat on key K, 40 of 40 used".into())
        );
        assert_eq!(p.wanted.as_deref(), Some("K"));
        let mut leased = key("K", 40, 30, false);
        leased.seats_leased_out = 10;
        match plan(&[leased], 10).decision {
            SeatDecision::Unlicensed(r) => {
                assert_eq!(r, "no free seat on key K, 40 of 40 used (10 leased out)")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn l6_nearest_key_wins_and_farther_seat_is_released() {
        let p = plan(
            &[
                at(key("NEAR", 5, 0, false), 1),
                at(key("FAR", 5, 3, true), 2),
            ],
            10,
        );
        assert_eq!(p.decision, SeatDecision::Take("NEAR".into()));
        assert_eq!(p.release, vec!["FAR".to_string()]);
    }

    #[test]
    fn l6_full_nearest_is_unlicensed_naming_it_never_farther() {
        let near = at(key("NEAR", 5, 5, false), 1);
        let far = at(key("FAR", 5, 3, false), 2);
        let p = plan(&[near.clone(), far.clone()], 10);
        assert_eq!(
            p.decision,
            SeatDecision::Unlicensed("no free seat on key NEAR, 5 of 5 used".into())
        );
        assert_eq!(p.wanted.as_deref(), Some("NEAR"));
        // A seat the device still holds on the farther key is given back, not kept.
        let mut holding = far;
        holding.held = Some(Slot::Active);
        let p = plan(&[near, holding], 10);
        assert!(matches!(p.decision, SeatDecision::Unlicensed(_)));
        assert_eq!(p.release, vec!["FAR".to_string()]);
    }

    #[test]
    fn l6_keys_assigned_at_the_same_distance_share_the_budget() {
        let a = at(key("A", 5, 5, false), 1);
        let b = at(key("B", 5, 2, false), 1);
        assert_eq!(plan(&[a, b], 10).decision, SeatDecision::Take("B".into()));
    }

    #[test]
    fn l6_an_expired_nearest_key_is_no_budget() {
        let mut old = at(key("OLD", 5, 0, false), 1);
        old.expires_at = 5;
        let far = at(key("FAR", 5, 0, false), 2);
        assert_eq!(
            plan(&[old, far], 10).decision,
            SeatDecision::Take("FAR".into())
        );
    }

    #[test]
    fn l6_expired_key_is_not_used_and_its_seat_released() {
        let mut k = key("OLD", 5, 1, true);
        k.expires_at = 5;
        let p = plan(&[k], 10);
        assert!(matches!(p.decision, SeatDecision::Unlicensed(ref r) if r.contains("expired")));
        assert_eq!(p.release, vec!["OLD".to_string()]);
        let p = plan(&[], 10);
        assert!(
            matches!(p.decision, SeatDecision::Unlicensed(ref r) if r.contains("no licence key is assigned"))
        );
    }

    #[test]
    fn l5_reserve_seat_taken_only_when_active_expires_soon() {
        let mut active = key("K1", 5, 1, true);
        active.expires_at = 1000;
        let mut next = key("K2", 5, 0, false);
        next.valid_from = 1000; // starts when K1 ends
        next.expires_at = 5000;
        let far = plan(&[active.clone(), next.clone()], 10);
        assert_eq!(far.decision, SeatDecision::Keep("K1".into()));
        assert_eq!(far.reserve, None, "not yet within the expiring-soon window");
        let soon = plan(&[active.clone(), next.clone()], 950);
        assert_eq!(soon.reserve, Some(SeatDecision::Take("K2".into())));
        // Held reserve is kept; once K1 expired the reserve seat becomes the active one.
        next.held = Some(Slot::Reserve);
        next.seats_used = 1;
        assert_eq!(
            plan(&[active.clone(), next.clone()], 960).reserve,
            Some(SeatDecision::Keep("K2".into()))
        );
        let after = plan(&[active, next], 1000);
        assert_eq!(after.decision, SeatDecision::Keep("K2".into()));
        assert_eq!(after.release, vec!["K1".to_string()]);
        assert_eq!(after.reserve, None);
    }

    #[test]
    fn l5_reserve_must_cover_the_time_after_expiry() {
        let mut active = key("K1", 5, 1, true);
        active.expires_at = 1000;
        let mut short = key("K2", 5, 0, false);
        short.expires_at = 1000; // ends with K1: useless as reserve
        let mut gap = key("K3", 5, 0, false);
        gap.valid_from = 1200; // starts after a gap: not a reserve
        gap.expires_at = 9000;
        assert_eq!(plan(&[active, short, gap], 950).reserve, None);
    }

    #[test]
    fn l8_auto_key_licenses_a_device_without_valid_active_key() {
        let mut auto = key("AUTO", 3, 0, false);
        auto.source = Source::Auto;
        let p = plan(&[auto.clone()], 10);
        assert_eq!(p.decision, SeatDecision::Take("AUTO".into()));
        // An assigned key with a free seat comes first.
        assert_eq!(
            plan(&[key("K", 1, 0, false), auto.clone()], 10).decision,
            SeatDecision::Take("K".into())
        );
        // A full assigned key is the device's budget (L6): the auto key does not fill in.
        assert!(matches!(
            plan(&[key("K", 1, 1, false), auto.clone()], 10).decision,
            SeatDecision::Unlicensed(_)
        ));
        // An assigned key that is no longer valid is no budget: the auto key licenses.
        let mut expired = key("K", 1, 0, false);
        expired.expires_at = 5;
        assert_eq!(
            plan(&[expired, auto.clone()], 10).decision,
            SeatDecision::Take("AUTO".into())
        );
        // As reserve for a device whose active key expires soon and has no reserve.
        let mut active = key("K", 1, 1, true);
        active.expires_at = 1000;
        let p = plan(&[active, auto], 950);
        assert_eq!(p.decision, SeatDecision::Keep("K".into()));
        assert_eq!(p.reserve, Some(SeatDecision::Take("AUTO".into())));
    }

    #[test]
    fn l5_reserve_lost_to_a_race_keeps_the_active_seat() {
        let mut a = key("A", 5, 1, true);
        a.expires_at = 1000;
        let r = key("R", 5, 0, false);
        let p = plan(&[a, r], 950);
        assert_eq!(p.reserve, Some(SeatDecision::Take("R".into())));
        for attempt in 1..MAX_ATTEMPTS {
            assert_eq!(settle(&p, true, false, attempt), Settled::Retry);
        }
        assert_eq!(
            settle(&p, true, false, MAX_ATTEMPTS),
            Settled::Licensed {
                active: "A".into(),
                reserve: None
            },
            "the active seat is held: licensed, never unlicensed"
        );
        assert_eq!(
            settle(&p, true, true, 1),
            Settled::Licensed {
                active: "A".into(),
                reserve: Some("R".into())
            }
        );
    }

    #[test]
    fn l6_active_lost_to_a_race_is_retried_then_unlicensed() {
        let p = plan(&[key("K", 5, 4, false)], 10);
        assert_eq!(settle(&p, false, false, 1), Settled::Retry);
        match settle(&p, false, false, MAX_ATTEMPTS) {
            Settled::Unlicensed(r) => assert!(r.contains("key K"), "{r}"),
            other => panic!("{other:?}"),
        }
        let none = plan(&[key("K", 5, 5, false)], 10);
        assert!(matches!(
            settle(&none, false, false, 1),
            Settled::Unlicensed(_)
        ));
    }

    #[test]
    fn l5_never_more_than_one_active_and_one_reserve() {
        let mut a = key("A", 5, 1, true);
        a.expires_at = 1000;
        let mut r1 = key("R1", 5, 1, false);
        r1.held = Some(Slot::Reserve);
        let mut r2 = key("R2", 5, 1, false);
        r2.held = Some(Slot::Reserve);
        let mut stale = key("S", 5, 1, true);
        stale.source = Source::Stale;
        let p = plan(&[a, r1, r2, stale], 950);
        assert_eq!(p.decision, SeatDecision::Keep("A".into()));
        assert_eq!(p.reserve, Some(SeatDecision::Keep("R1".into())));
        assert_eq!(p.release, vec!["R2".to_string(), "S".to_string()]);
    }
}
