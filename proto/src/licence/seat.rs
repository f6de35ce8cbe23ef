//! The seat decision at connect (L6), as a pure function.
//!
//! Input: the keys that could license a device, nearest assignment first (device, its group,
//! the group's ancestors, "everyone"), each with its seat counts and whether the device already
//! holds a seat on it. Output: keep a seat, take one (and which seats to give back), or
//! unlicensed with the reason. The caller executes a `Take` as a conditional update
//! (`seats_used + leased_out < seats`) inside a transaction; if that update changes nothing
//! (another server took the last seat first), it re-reads and asks again.

/// One key that could license the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Key id.
    pub key_id: String,
    /// Seats on the key.
    pub seats_total: u32,
    /// Seats held by devices.
    pub seats_used: u32,
    /// Seats leased to neighbour servers (H5).
    pub seats_leased_out: u32,
    /// Key validity, unix seconds.
    pub valid_from: i64,
    /// Key expiry, unix seconds.
    pub expires_at: i64,
    /// The device already holds a seat on this key.
    pub held: bool,
}

impl Candidate {
    fn free(&self) -> u32 {
        self.seats_total
            .saturating_sub(self.seats_used)
            .saturating_sub(self.seats_leased_out)
    }
}

/// What to do with the device's seat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeatDecision {
    /// The device keeps the seat it holds on this key.
    Keep(String),
    /// Take a free seat on this key.
    Take(String),
    /// No seat: the device is unlicensed for this reason.
    Unlicensed(String),
}

/// The decision plus the seats the device holds on other keys and must give back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatPlan {
    /// Keep, take or unlicensed.
    pub decision: SeatDecision,
    /// Keys on which the device's seat is released.
    pub release: Vec<String>,
}

/// Decides the seat for a device at `now` (L6). The nearest usable key wins: a device keeps
/// its seat on it, or takes a free one; if the nearest is full, farther keys are tried. Seats
/// held on keys that no longer apply (expired, unassigned, or farther than the winner) are
/// released, so a device never holds two.
pub fn plan_seat(candidates: &[Candidate], now: i64) -> SeatPlan {
    let usable = |c: &&Candidate| c.valid_from <= now && now < c.expires_at;
    let winner = candidates
        .iter()
        .filter(usable)
        .find(|c| c.held || c.free() > 0);
    let release = |keep: Option<&str>| {
        candidates
            .iter()
            .filter(|c| c.held && Some(c.key_id.as_str()) != keep)
            .map(|c| c.key_id.clone())
            .collect()
    };
    match winner {
        Some(c) if c.held => SeatPlan {
            decision: SeatDecision::Keep(c.key_id.clone()),
            release: release(Some(&c.key_id)),
        },
        Some(c) => SeatPlan {
            decision: SeatDecision::Take(c.key_id.clone()),
            release: release(Some(&c.key_id)),
        },
        None => SeatPlan {
            decision: SeatDecision::Unlicensed(unlicensed_reason(candidates, now)),
            release: release(None),
        },
    }
}

fn unlicensed_reason(candidates: &[Candidate], now: i64) -> String {
    use super::key::format_time;
    if candidates.is_empty() {
        return "no licence key is assigned to this device, its groups or \"everyone\"".into();
    }
    if let Some(full) = candidates
        .iter()
        .find(|c| c.valid_from <= now && now < c.expires_at)
    {
        let mut s = format!(
            "no free seat on key {}, {} of {} used",
            full.key_id,
            full.seats_used + full.seats_leased_out,
            full.seats_total
        );
        if full.seats_leased_out > 0 {
            s.push_str(&format!(" ({} leased out)", full.seats_leased_out));
        }
        return s;
    }
    let c = &candidates[0];
    if now >= c.expires_at {
        format!("key {} expired at {}", c.key_id, format_time(c.expires_at))
    } else {
        format!(
            "key {} is not valid before {}",
            c.key_id,
            format_time(c.valid_from)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, total: u32, used: u32, held: bool) -> Candidate {
        Candidate {
            key_id: id.into(),
            seats_total: total,
            seats_used: used,
            seats_leased_out: 0,
            valid_from: 0,
            expires_at: 1000,
            held,
        }
    }

    #[test]
    fn l6_holder_keeps_its_seat_even_when_key_is_full() {
        let p = plan_seat(&[key("K", 2, 2, true)], 10);
        assert_eq!(p.decision, SeatDecision::Keep("K".into()));
        assert!(p.release.is_empty());
    }

    #[test]
    fn l6_free_seat_is_taken() {
        let p = plan_seat(&[key("K", 2, 1, false)], 10);
        assert_eq!(p.decision, SeatDecision::Take("K".into()));
    }

    #[test]
    fn l6_full_key_gives_reason_with_counts() {
        let p = plan_seat(&[key("K", 40, 40, false)], 10);
        assert_eq!(
            p.decision,
            SeatDecision::Unlicensed("no free seat on key K, 40 of 40 used".into())
        );
        let mut leased = key("K", 40, 30, false);
        leased.seats_leased_out = 10;
        match plan_seat(&[leased], 10).decision {
            SeatDecision::Unlicensed(r) => {
                assert_eq!(r, "no free seat on key K, 40 of 40 used (10 leased out)")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn l6_nearest_key_wins_and_farther_seat_is_released() {
        let p = plan_seat(&[key("NEAR", 5, 0, false), key("FAR", 5, 3, true)], 10);
        assert_eq!(p.decision, SeatDecision::Take("NEAR".into()));
        assert_eq!(p.release, vec!["FAR".to_string()]);
    }

    #[test]
    fn l6_full_nearest_falls_back_to_farther() {
        let p = plan_seat(&[key("NEAR", 5, 5, false), key("FAR", 5, 3, false)], 10);
        assert_eq!(p.decision, SeatDecision::Take("FAR".into()));
    }

    #[test]
    fn l6_expired_key_is_not_used_and_its_seat_released() {
        let mut k = key("OLD", 5, 1, true);
        k.expires_at = 5;
        let p = plan_seat(&[k], 10);
        assert!(matches!(p.decision, SeatDecision::Unlicensed(ref r) if r.contains("expired")));
        assert_eq!(p.release, vec!["OLD".to_string()]);
        let p = plan_seat(&[], 10);
        assert!(
            matches!(p.decision, SeatDecision::Unlicensed(ref r) if r.contains("no licence key is assigned"))
        );
    }

    #[test]
    fn l6_never_over_allocates_in_a_simulated_storm() {
        // 2 x S devices ask one after another against the running counts: exactly S win.
        let seats = 37u32;
        let mut used = 0u32;
        let mut licensed = 0;
        for _ in 0..(2 * seats) {
            match plan_seat(&[key("K", seats, used, false)], 10).decision {
                SeatDecision::Take(_) => {
                    used += 1;
                    licensed += 1;
                }
                SeatDecision::Unlicensed(_) => {}
                SeatDecision::Keep(_) => unreachable!(),
            }
        }
        assert_eq!(licensed, seats);
    }
}
