//! Licence leases between servers (H5–H7), without I/O: both sides of one lease as state
//! machines over a clock the caller passes in (unix seconds).
//!
//! A *giver* gives N seats of a key to a neighbour until an end date. Each grant it sends is
//! good for one *auto-renewal period* (never past the end date, nor past what the giver itself
//! holds when the seats are leased to it in turn); it is renewed period after period while the
//! neighbour is there. The receiver licenses devices on the seats, with device grants that
//! expire no later than the current grant's period end (L7). So:
//!
//! - the giver cannot use the seats while any grant it sent may still be in force: it counts
//!   the largest seat count among the grants whose period has not ended ([`Given::held`]);
//!   lowering the seats, ending or revoking the lease therefore frees seats only at the end of
//!   the periods already promised — never earlier, because devices below may hold grants until
//!   then, and L15 must hold across the whole tree;
//! - a receiver that vanishes loses the seats after at most one period, and the giver gets them
//!   back then (H6);
//! - every grant carries a sequence number: a repeated or late message never extends a lease
//!   twice nor rolls a receiver back ([`Given::on_request`], [`Received::on_grant`]);
//! - on a periodic relation the receiver contacts the giver the *early-renewal interval* before
//!   its grant runs out (H7, [`Received::early_renewal_at`]); on a permanent relation it asks
//!   when half the time its grant was given for has passed ([`Received::renewal_at`]). The
//!   giver renews only when asked: a request is the proof that the receiver is there, so one
//!   that vanished — even behind a connection that still looks open — is not renewed (H6).
//!
//! The store keeps one row per lease on each side and applies these transitions inside its
//! transactions; the peer link carries [`LeaseGrant`]s down and [`RenewRequest`]s up.

use std::fmt;

pub mod demand;

/// One grant of a lease, as sent down to the receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The lease, unique on the giver.
    pub lease_id: String,
    /// The key the seats are from.
    pub key_id: String,
    /// Increases with every grant of this lease.
    pub seq: u64,
    /// Seats the receiver may use (0: the lease is over).
    pub seats: u32,
    /// Until when this grant is good (unix seconds); device grants end no later.
    pub period_end: i64,
    /// The lease's end date.
    pub end_at: i64,
}

/// A receiver asking for the next grant of a lease it holds at `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewRequest {
    /// The lease.
    pub lease_id: String,
    /// The newest grant the receiver holds.
    pub seq: u64,
}

/// What a lease is made with or changed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    /// Seats given.
    pub seats: u32,
    /// End date (unix seconds).
    pub end_at: i64,
    /// Auto-renewal period, seconds.
    pub period_secs: i64,
}

/// How far a giver can promise: for a key it owns, the key's expiry both ways; for seats it
/// holds on a lease itself (a chain), that lease's end date and its current period end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    /// Latest end date.
    pub end_at: i64,
    /// Latest period end of a grant sent now.
    pub period_end: i64,
}

impl Cap {
    /// Seats of a key this server owns, expiring at `expires_at`.
    pub fn key(expires_at: i64) -> Cap {
        Cap {
            end_at: expires_at,
            period_end: expires_at,
        }
    }

    /// Seats this server holds on a lease itself.
    pub fn leased(held: &Received) -> Cap {
        Cap {
            end_at: held.grant.end_at,
            period_end: held.grant.period_end,
        }
    }
}

/// Why a lease cannot be given or changed as asked. The texts name the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseError {
    /// Zero seats.
    NoSeats,
    /// More seats than are free on the key.
    NotEnoughFree {
        /// Seats the lease would take on top of what it holds.
        wanted: u32,
        /// Seats free on the key now.
        free: u32,
    },
    /// The end date is not in the future.
    EndInPast,
    /// The end date is after what the giver holds (the key's expiry, or its own lease's end).
    EndTooLate {
        /// Asked end date.
        end_at: i64,
        /// Latest possible.
        limit: i64,
    },
    /// The period is not positive.
    BadPeriod,
    /// The lease was revoked or has ended.
    Over,
}

impl fmt::Display for LeaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseError::NoSeats => write!(f, "a lease needs at least one seat"),
            LeaseError::NotEnoughFree { wanted, free } => write!(
                f,
                "{wanted} more seat(s) wanted but only {free} free on the key; free seats first or lease fewer"
            ),
            LeaseError::EndInPast => write!(f, "the end date must be in the future"),
            LeaseError::EndTooLate { end_at, limit } => write!(
                f,
                "end date {} is after {}, the latest the key (or this server's own lease) allows",
                crate::licence::key::format_time(*end_at),
                crate::licence::key::format_time(*limit)
            ),
            LeaseError::BadPeriod => write!(f, "the auto-renewal period must be at least 1 second"),
            LeaseError::Over => write!(f, "the lease was revoked or has ended; give a new one"),
        }
    }
}

impl std::error::Error for LeaseError {}

/// The giver's side of one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Given {
    /// The lease id.
    pub lease_id: String,
    /// The key.
    pub key_id: String,
    /// Seats given now.
    pub seats: u32,
    /// End date.
    pub end_at: i64,
    /// Auto-renewal period, seconds.
    pub period_secs: i64,
    /// Sequence number of the newest grant.
    pub seq: u64,
    /// Period end of the newest grant.
    pub period_end: i64,
    /// No more renewals (an administrator revoked it).
    pub revoked: bool,
    /// Grants sent whose period may not have ended: (seats, period end).
    promised: Vec<(u32, i64)>,
}

impl Given {
    /// Gives `terms.seats` seats of `key_id` at `now`, `free` seats being free on the key and
    /// `cap` how far the giver can promise. Returns the first grant.
    pub fn give(
        lease_id: &str,
        key_id: &str,
        terms: Terms,
        free: u32,
        cap: Cap,
        now: i64,
    ) -> Result<(Given, LeaseGrant), LeaseError> {
        check_terms(terms, cap, now)?;
        if terms.seats > free {
            return Err(LeaseError::NotEnoughFree {
                wanted: terms.seats,
                free,
            });
        }
        let mut g = Given {
            lease_id: lease_id.to_owned(),
            key_id: key_id.to_owned(),
            seats: terms.seats,
            end_at: terms.end_at,
            period_secs: terms.period_secs,
            seq: 0,
            period_end: now,
            revoked: false,
            promised: vec![],
        };
        let grant = g.next_grant(now, cap);
        Ok((g, grant))
    }

    /// A lease as the store kept it (the fields, and [`Given::promised`]).
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        lease_id: &str,
        key_id: &str,
        terms: Terms,
        seq: u64,
        period_end: i64,
        revoked: bool,
        promised: Vec<(u32, i64)>,
    ) -> Given {
        Given {
            lease_id: lease_id.to_owned(),
            key_id: key_id.to_owned(),
            seats: terms.seats,
            end_at: terms.end_at,
            period_secs: terms.period_secs,
            seq,
            period_end,
            revoked,
            promised,
        }
    }

    /// The grants sent whose period may not have ended, (seats, period end): what the store
    /// keeps so that [`Given::held`] survives a restart.
    pub fn promised(&self) -> &[(u32, i64)] {
        &self.promised
    }

    /// Seats the giver cannot use at `now`: the most seats of any grant whose period has not
    /// ended (the receiver, and devices below it, may be using them until then).
    pub fn held(&self, now: i64) -> u32 {
        self.promised
            .iter()
            .filter(|(_, until)| *until > now)
            .map(|(s, _)| *s)
            .max()
            .unwrap_or(0)
    }

    /// Whether the lease is over for good at `now` (revoked or past its end) and every seat
    /// is back: the row can go.
    pub fn finished(&self, now: i64) -> bool {
        (self.revoked || now >= self.end_at) && self.held(now) == 0
    }

    /// Whether half the period is gone and something is left to extend: when a giver renews
    /// for a receiver that asks (the simulation's giver renews on its own at this point).
    pub fn renew_due(&self, now: i64) -> bool {
        !self.revoked
            && self.period_end < self.end_at
            && now >= self.period_end - self.period_secs / 2
    }

    /// Renews at `now` (a permanent relation at [`Given::renew_due`], or a receiver's request):
    /// the next grant, or `None` when nothing can be extended (revoked, past the end, capped by
    /// `cap`).
    pub fn renew(&mut self, now: i64, cap: Cap) -> Option<LeaseGrant> {
        if self.revoked || now >= self.end_at {
            return None;
        }
        let end = self.new_period_end(now, cap);
        if end <= self.period_end {
            return None;
        }
        Some(self.next_grant(now, cap))
    }

    /// A receiver's renewal request. Idempotent by sequence number: a request for the newest
    /// grant renews; a repeated or stale one gets the newest grant again (its answer was lost),
    /// never a second extension. `None` for another lease.
    pub fn on_request(&mut self, req: &RenewRequest, now: i64, cap: Cap) -> Option<LeaseGrant> {
        if req.lease_id != self.lease_id {
            return None;
        }
        if req.seq == self.seq
            && let Some(g) = self.renew(now, cap)
        {
            return Some(g);
        }
        Some(self.current())
    }

    /// Changes seats and end date at `now`. More seats need them free (`free`: free on the key
    /// now, not counting this lease); fewer seats stay held until the periods already promised
    /// end. Returns the grant to send.
    pub fn change(
        &mut self,
        terms: Terms,
        free: u32,
        cap: Cap,
        now: i64,
    ) -> Result<LeaseGrant, LeaseError> {
        if self.revoked || now >= self.end_at {
            return Err(LeaseError::Over);
        }
        check_terms(terms, cap, now)?;
        let more = terms.seats.saturating_sub(self.held(now));
        if more > free {
            return Err(LeaseError::NotEnoughFree { wanted: more, free });
        }
        self.seats = terms.seats;
        self.end_at = terms.end_at;
        self.period_secs = terms.period_secs;
        Ok(self.next_grant(now, cap))
    }

    /// Revokes at `now`: no more renewals; the receiver is told (seats 0). The seats come back
    /// when the periods already promised end ([`Given::held`]).
    pub fn revoke(&mut self, now: i64) -> LeaseGrant {
        self.revoked = true;
        self.seq += 1;
        self.prune(now);
        self.current()
    }

    /// The newest grant (to send again after a reconnect).
    pub fn current(&self) -> LeaseGrant {
        LeaseGrant {
            lease_id: self.lease_id.clone(),
            key_id: self.key_id.clone(),
            seq: self.seq,
            seats: if self.revoked { 0 } else { self.seats },
            period_end: if self.revoked {
                self.period_end.min(self.end_at)
            } else {
                self.period_end
            },
            end_at: self.end_at,
        }
    }

    fn new_period_end(&self, now: i64, cap: Cap) -> i64 {
        now.saturating_add(self.period_secs)
            .min(self.end_at)
            .min(cap.period_end)
    }

    fn next_grant(&mut self, now: i64, cap: Cap) -> LeaseGrant {
        // A period already promised is never shortened: devices below may use it.
        self.period_end = self.new_period_end(now, cap).max(self.period_end);
        self.seq += 1;
        self.prune(now);
        self.promised.push((self.seats, self.period_end));
        self.current()
    }

    fn prune(&mut self, now: i64) {
        self.promised.retain(|(_, until)| *until > now);
    }
}

fn check_terms(terms: Terms, cap: Cap, now: i64) -> Result<(), LeaseError> {
    if terms.seats == 0 {
        return Err(LeaseError::NoSeats);
    }
    if terms.period_secs < 1 {
        return Err(LeaseError::BadPeriod);
    }
    if terms.end_at <= now {
        return Err(LeaseError::EndInPast);
    }
    if terms.end_at > cap.end_at {
        return Err(LeaseError::EndTooLate {
            end_at: terms.end_at,
            limit: cap.end_at,
        });
    }
    Ok(())
}

/// The receiver's side of one lease: the newest grant it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The grant in force.
    pub grant: LeaseGrant,
}

impl Received {
    /// A lease first heard of.
    pub fn new(grant: LeaseGrant) -> Received {
        Received { grant }
    }

    /// Takes a grant of this lease if it is newer than the one held (repeated and late grants
    /// change nothing). Returns whether it was taken.
    pub fn on_grant(&mut self, g: &LeaseGrant) -> bool {
        if g.lease_id != self.grant.lease_id || g.seq <= self.grant.seq {
            return false;
        }
        self.grant = g.clone();
        true
    }

    /// H8: the giver's figure wins. Replaces the grant held by the giver's current one even
    /// when its sequence number is not newer (a damaged or forged record). Returns whether
    /// anything changed.
    pub fn overrule(&mut self, g: &LeaseGrant) -> bool {
        if g.lease_id != self.grant.lease_id || *g == self.grant {
            return false;
        }
        self.grant = g.clone();
        true
    }

    /// Seats usable at `now` (0 once the grant's period ended).
    pub fn usable(&self, now: i64) -> u32 {
        if now < self.grant.period_end {
            self.grant.seats
        } else {
            0
        }
    }

    /// The latest expiry a device grant on these seats may have (L7).
    pub fn grant_cap(&self) -> i64 {
        self.grant.period_end
    }

    /// The request for the next grant.
    pub fn renew_request(&self) -> RenewRequest {
        RenewRequest {
            lease_id: self.grant.lease_id.clone(),
            seq: self.grant.seq,
        }
    }

    /// On a permanent relation: when to ask for the next grant, the grant having arrived at
    /// `received_at` — half-way to its period end; `None` when there is nothing to renew.
    pub fn renewal_at(&self, received_at: i64) -> Option<i64> {
        (self.grant.seats > 0 && self.grant.period_end < self.grant.end_at)
            .then(|| received_at + (self.grant.period_end - received_at).max(0) / 2)
    }

    /// On a periodic relation (H7): when to contact the giver to renew, `early` seconds before
    /// the grant runs out; `None` when there is nothing to renew (the end date reached, seats
    /// withdrawn).
    pub fn early_renewal_at(&self, early: i64) -> Option<i64> {
        (self.grant.seats > 0 && self.grant.period_end < self.grant.end_at)
            .then(|| self.grant.period_end - early.max(0))
    }
}

/// A lease message from the wire that cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid lease message: {0}")]
pub struct BadLeaseMessage(&'static str);

impl From<&LeaseGrant> for crate::pb::v1::LeaseGrant {
    fn from(g: &LeaseGrant) -> Self {
        crate::pb::v1::LeaseGrant {
            lease_id: g.lease_id.clone(),
            key_id: g.key_id.clone(),
            seq: g.seq,
            seats: g.seats,
            period_end: g.period_end,
            end_at: g.end_at,
            key_file: String::new(),
        }
    }
}

impl TryFrom<crate::pb::v1::LeaseGrant> for LeaseGrant {
    type Error = BadLeaseMessage;

    fn try_from(m: crate::pb::v1::LeaseGrant) -> Result<Self, Self::Error> {
        if m.lease_id.is_empty() || m.key_id.is_empty() {
            return Err(BadLeaseMessage("lease and key ids are required"));
        }
        if m.seq == 0 {
            return Err(BadLeaseMessage("sequence numbers start at 1"));
        }
        if m.period_end > m.end_at {
            return Err(BadLeaseMessage("a period cannot end after the lease"));
        }
        Ok(LeaseGrant {
            lease_id: m.lease_id,
            key_id: m.key_id,
            seq: m.seq,
            seats: m.seats,
            period_end: m.period_end,
            end_at: m.end_at,
        })
    }
}

impl From<&RenewRequest> for crate::pb::v1::LeaseRenewal {
    fn from(r: &RenewRequest) -> Self {
        crate::pb::v1::LeaseRenewal {
            lease_id: r.lease_id.clone(),
            seq: r.seq,
        }
    }
}

impl TryFrom<crate::pb::v1::LeaseRenewal> for RenewRequest {
    type Error = BadLeaseMessage;

    fn try_from(m: crate::pb::v1::LeaseRenewal) -> Result<Self, Self::Error> {
        if m.lease_id.is_empty() {
            return Err(BadLeaseMessage("the lease id is required"));
        }
        Ok(RenewRequest {
            lease_id: m.lease_id,
            seq: m.seq,
        })
    }
}

/// H8: the seats a giver and a receiver each say are given on one lease. A mismatch (an error,
/// or a forged receiver database) is reported, and the giver's figure wins.
pub fn sync_check(giver_says: u32, receiver_says: u32) -> Result<(), (u32, u32)> {
    if giver_says == receiver_says {
        Ok(())
    } else {
        Err((giver_says, receiver_says))
    }
}

#[cfg(test)]
mod tests;
