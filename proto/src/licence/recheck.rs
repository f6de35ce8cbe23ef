//! When a live session re-runs the licence check, and when it sends the result (S3, L7, L9).
//!
//! A session checks at connect. Afterwards, at each sync, it checks again when something
//! licence-related changed on the server (the licence epoch moved: a key assigned, a seat
//! freed, a device moved …) or when the grant it last sent is past half its lifetime, so a
//! connected agent never runs out of grant. "Its lifetime" is the grant's own, from issue to
//! expiry: a grant cut short by its key's expiry is not re-checked at every sync for being
//! shorter than `grant_ttl` (re-signing could not lengthen it). It sends the new result only when it differs from
//! what the agent holds — licensed or not, key, reason — or the grant needs refreshing; an
//! unchanged licensed result costs the agent nothing. (An unlicensed agent holds no grant, so
//! its result counts as due for refreshing and goes out at every re-check.)

use prost::Message;

use crate::pb::v1::{GrantBody, LicenceStatus};

/// What a session last told its agent about the licence.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sent {
    /// Licensed or not.
    pub licensed: bool,
    /// Key of the active grant ("" when none).
    pub key_id: String,
    /// Why unlicensed ("" when licensed).
    pub reason: String,
    /// Issue time of the active grant, unix seconds (0 when none).
    pub grant_issued_at: i64,
    /// Expiry of the active grant, unix seconds (0 when none).
    pub grant_expires_at: i64,
}

impl Sent {
    /// What a status message tells the agent.
    pub fn of(status: &LicenceStatus) -> Sent {
        let (key_id, grant_issued_at, grant_expires_at) = status
            .active
            .as_ref()
            .and_then(|g| GrantBody::decode(g.body.as_slice()).ok())
            .map(|b| (b.key_id, b.issued_at, b.expires_at))
            .unwrap_or_default();
        Sent {
            licensed: status.licensed,
            key_id,
            reason: status.reason.clone(),
            grant_issued_at,
            grant_expires_at,
        }
    }

    /// Past half its own lifetime (always, without a grant).
    fn grant_needs_refresh(&self, now: i64) -> bool {
        let half = (self.grant_expires_at - self.grant_issued_at).max(0) / 2;
        now >= self.grant_issued_at.saturating_add(half)
    }
}

/// Whether a session must run the licence check again at this sync: nothing was sent yet,
/// the licence epoch moved since the last check, or the grant sent is past half its lifetime.
pub fn needs_recheck(last: Option<&Sent>, epoch_moved: bool, now: i64) -> bool {
    epoch_moved || last.is_none_or(|l| l.grant_needs_refresh(now))
}

/// Whether a fresh check result is worth sending: it differs from what was sent, or the grant
/// sent needs refreshing.
pub fn worth_sending(last: Option<&Sent>, fresh: &Sent, now: i64) -> bool {
    match last {
        None => true,
        Some(prev) => {
            prev.licensed != fresh.licensed
                || prev.key_id != fresh.key_id
                || prev.reason != fresh.reason
                || prev.grant_needs_refresh(now)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A grant issued at 0.
    fn licensed(key: &str, exp: i64) -> Sent {
        Sent {
            licensed: true,
            key_id: key.into(),
            reason: String::new(),
            grant_issued_at: 0,
            grant_expires_at: exp,
        }
    }

    fn unlicensed(reason: &str) -> Sent {
        Sent {
            reason: reason.into(),
            ..Sent::default()
        }
    }

    #[test]
    fn s3_first_sync_always_checks_and_sends() {
        assert!(needs_recheck(None, false, 0));
        assert!(worth_sending(None, &unlicensed("x"), 0));
    }

    #[test]
    fn l9_epoch_move_rechecks_but_unchanged_result_is_not_resent() {
        let sent = licensed("K", 900);
        assert!(!needs_recheck(Some(&sent), false, 100));
        assert!(needs_recheck(Some(&sent), true, 100));
        assert!(!worth_sending(Some(&sent), &licensed("K", 1100), 100));
        assert!(worth_sending(Some(&sent), &licensed("K2", 1100), 100));
        assert!(worth_sending(Some(&sent), &unlicensed("no free seat"), 100));
        let refused = unlicensed("no free seat on key K, 1 of 1 used");
        assert!(worth_sending(
            Some(&refused),
            &unlicensed("no licence key is assigned"),
            100
        ));
        // An unlicensed device holds no grant: each re-check result goes out, so the agent's
        // stored reason is always the latest one.
        assert!(worth_sending(Some(&refused), &refused.clone(), 100));
    }

    #[test]
    fn l7_grant_past_half_its_life_is_refreshed() {
        let sent = licensed("K", 1000);
        assert!(!needs_recheck(Some(&sent), false, 499));
        assert!(needs_recheck(Some(&sent), false, 501));
        assert!(worth_sending(Some(&sent), &licensed("K", 1501), 501));
        // An unlicensed device has no grant to refresh: it is re-checked every sync, which
        // is what lets it pick up a freed seat.
        assert!(needs_recheck(Some(&unlicensed("r")), false, 0));
    }

    #[test]
    fn l7_grant_cut_short_by_its_key_is_not_rechecked_at_every_sync() {
        // grant_ttl is 7 days, but the key expires a day after the grant was issued: the grant
        // lives a day and is refreshed after half a day, not at every sync.
        let sent = Sent {
            grant_issued_at: 10_000,
            ..licensed("K", 10_000 + 86_400)
        };
        assert!(!needs_recheck(Some(&sent), false, 10_001));
        assert!(!needs_recheck(Some(&sent), false, 10_000 + 43_199));
        assert!(needs_recheck(Some(&sent), false, 10_000 + 43_200));
        assert!(!worth_sending(
            Some(&sent),
            &licensed("K", 10_000 + 86_400),
            10_001
        ));
    }

    #[test]
    fn s3_sent_of_status_reads_the_active_grant() {
        let signer = crate::licence::GrantSigner::generate().0;
        let grant = signer.sign(&GrantBody {
            device_id: "a".into(),
            key_id: "K".into(),
            issued_at: 7,
            expires_at: 77,
            ..Default::default()
        });
        let s = LicenceStatus {
            licensed: true,
            active: Some(grant),
            ..Default::default()
        };
        assert_eq!(
            Sent::of(&s),
            Sent {
                grant_issued_at: 7,
                ..licensed("K", 77)
            }
        );
        assert_eq!(Sent::of(&LicenceStatus::default()), Sent::default());
    }
}
