//! Leases on a virtual clock: the rules one by one, then a primary → regional → office chain
//! over a lossy link, hundreds of seeded runs, with L15 checked at every step.

use super::*;

const P: i64 = 100; // auto-renewal period
const KEY_EXPIRES: i64 = 1_000_000;

fn terms(seats: u32, end_at: i64) -> Terms {
    Terms {
        seats,
        end_at,
        period_secs: P,
    }
}

fn give(seats: u32, end_at: i64, now: i64) -> (Given, LeaseGrant) {
    Given::give(
        "L1",
        "K",
        terms(seats, end_at),
        50,
        Cap::key(KEY_EXPIRES),
        now,
    )
    .unwrap()
}

#[test]
fn h5_a_lease_holds_its_seats_for_the_period_it_promised() {
    let (g, first) = give(30, 10_000, 0);
    assert_eq!((first.seq, first.seats, first.period_end), (1, 30, P));
    assert_eq!(g.held(0), 30);
    assert_eq!(g.held(P - 1), 30);
    assert_eq!(
        g.held(P),
        0,
        "unrenewed, the seats are back after one period (H6)"
    );
    let r = Received::new(first);
    assert_eq!((r.usable(P - 1), r.usable(P)), (30, 0));
    assert_eq!(
        r.grant_cap(),
        P,
        "device grants on leased seats end with the period (L7)"
    );
}

#[test]
fn h5_what_cannot_be_given_is_refused_with_the_reason() {
    let cap = Cap::key(5_000);
    let e = |t: Terms, free: u32| Given::give("L", "K", t, free, cap, 100).unwrap_err();
    assert_eq!(e(terms(0, 1_000), 50), LeaseError::NoSeats);
    assert_eq!(
        e(terms(51, 1_000), 50),
        LeaseError::NotEnoughFree {
            wanted: 51,
            free: 50
        }
    );
    assert_eq!(e(terms(5, 100), 50), LeaseError::EndInPast);
    assert_eq!(
        e(terms(5, 5_001), 50),
        LeaseError::EndTooLate {
            end_at: 5_001,
            limit: 5_000
        }
    );
    let mut t = terms(5, 1_000);
    t.period_secs = 0;
    assert_eq!(e(t, 50), LeaseError::BadPeriod);
    assert!(e(terms(51, 1_000), 50).to_string().contains("only 50 free"));
}

#[test]
fn h6_renewed_each_period_until_the_end_date_then_the_seats_return() {
    let end = 4 * P + 30;
    let (mut g, first) = give(10, end, 0);
    let mut r = Received::new(first);
    let mut now = 0;
    let mut renewals = 0;
    while now < end + 2 * P {
        now += 10;
        if g.renew_due(now)
            && let Some(next) = g.renew(now, Cap::key(KEY_EXPIRES))
        {
            assert!(r.on_grant(&next));
            renewals += 1;
        }
        // A permanent relation that renews at half-period never lets the receiver lapse.
        if now < end {
            assert_eq!(r.usable(now), 10, "at {now}");
            assert_eq!(g.held(now), 10);
        }
    }
    assert!(renewals >= 7, "renewed every half period ({renewals})");
    assert_eq!(
        r.grant.period_end, end,
        "the last period stops at the end date"
    );
    assert_eq!(
        (r.usable(end), g.held(end)),
        (0, 0),
        "all seats back at the end date"
    );
    assert!(g.finished(end));
    assert!(!g.renew_due(end) && g.renew(end, Cap::key(KEY_EXPIRES)).is_none());
}

#[test]
fn h6_repeated_and_late_messages_never_count_twice() {
    let (mut g, first) = give(10, 10_000, 0);
    let mut r = Received::new(first.clone());
    let cap = Cap::key(KEY_EXPIRES);
    let req = r.renew_request();
    let a = g.on_request(&req, 60, cap).unwrap();
    assert_eq!((a.seq, a.period_end), (2, 160));
    // The answer was lost; the receiver asks again with the same sequence number.
    let b = g.on_request(&req, 70, cap).unwrap();
    assert_eq!(b, a, "the same grant again, not a second extension");
    assert!(r.on_grant(&a));
    assert!(!r.on_grant(&b), "a duplicate changes nothing");
    assert!(
        !r.on_grant(&first),
        "a late old grant does not roll the receiver back"
    );
    assert_eq!(r.grant.seq, 2);
    // Another lease's request is not this one's business.
    let other = RenewRequest {
        lease_id: "L9".into(),
        seq: 2,
    };
    assert_eq!(g.on_request(&other, 80, cap), None);
}

#[test]
fn h5_fewer_seats_or_a_revocation_free_seats_only_when_the_promised_period_ends() {
    let cap = Cap::key(KEY_EXPIRES);
    let (mut g, first) = give(30, 10_000, 0);
    let mut r = Received::new(first);
    let lower = g.change(terms(10, 10_000), 20, cap, 50).unwrap();
    assert!(r.on_grant(&lower));
    assert_eq!(r.usable(60), 10);
    assert_eq!(
        g.held(60),
        30,
        "devices below may hold grants on 30 until t={P}"
    );
    assert_eq!(
        g.held(P),
        10,
        "after the first promised period only 10 are held"
    );
    // Back up to 30 while 30 are still held: no free seats needed.
    assert!(g.change(terms(30, 10_000), 0, cap, 60).is_ok());
    // 40 needs 10 more than held.
    assert_eq!(
        g.change(terms(40, 10_000), 5, cap, 60),
        Err(LeaseError::NotEnoughFree {
            wanted: 10,
            free: 5
        })
    );
    let revoked = g.revoke(70);
    assert!(r.on_grant(&revoked));
    assert_eq!(r.usable(71), 0, "the receiver stops using them at once");
    assert!(
        g.held(71) > 0 && !g.finished(71),
        "but they are held until promised periods end"
    );
    // The change at t=60 promised 30 seats until t=160.
    assert_eq!(g.held(159), 30);
    assert_eq!(g.held(160), 0);
    assert!(g.finished(160));
    assert!(g.renew(80, cap).is_none());
    assert_eq!(
        g.change(terms(5, 10_000), 50, cap, 80),
        Err(LeaseError::Over)
    );
}

#[test]
fn h7_early_renewal_keeps_a_periodic_receiver_and_without_it_the_lease_lapses() {
    // The receiver connects every 150 s, longer than the 100 s period.
    for early in [Some(20), None] {
        let (mut g, first) = give(10, 100_000, 0);
        let mut r = Received::new(first);
        let mut lapsed_at = None;
        let mut next_tick = 150;
        let mut now = 0;
        while now < 2_000 {
            let contact = match early.and_then(|e| r.early_renewal_at(e)) {
                Some(at) => at.min(next_tick),
                None => next_tick,
            };
            // Between contacts: does the lease lapse?
            if r.usable(contact - 1) == 0 && lapsed_at.is_none() {
                lapsed_at = Some(r.grant.period_end);
            }
            now = contact;
            if now >= next_tick {
                next_tick += 150;
            }
            if let Some(next) = g.on_request(&r.renew_request(), now, Cap::key(KEY_EXPIRES)) {
                r.on_grant(&next);
            }
        }
        match early {
            Some(_) => assert_eq!(lapsed_at, None, "early renewal keeps it (H7)"),
            None => assert_eq!(lapsed_at, Some(P), "without it the grant runs out first"),
        }
    }
}

#[test]
fn h5_a_chain_never_promises_past_what_it_holds() {
    let (mut top, g1) = give(30, 5_000, 0);
    let regional = Received::new(g1);
    // The regional passes 10 on; it cannot promise past its own period or end date.
    let too_late = Given::give("L2", "K", terms(10, 6_000), 30, Cap::leased(&regional), 10);
    assert!(matches!(too_late, Err(LeaseError::EndTooLate { .. })));
    let (mut mid, g2) =
        Given::give("L2", "K", terms(10, 5_000), 30, Cap::leased(&regional), 10).unwrap();
    assert_eq!(g2.period_end, P, "capped by the regional's own period end");
    let mut office = Received::new(g2);
    // The top renews the regional; only then can the regional extend the office.
    assert!(mid.renew(60, Cap::leased(&regional)).is_none());
    let mut regional = regional;
    regional.on_grant(&top.renew(60, Cap::key(KEY_EXPIRES)).unwrap());
    let g3 = mid.renew(60, Cap::leased(&regional)).unwrap();
    assert!(office.on_grant(&g3));
    assert_eq!(office.grant.period_end, 160);
}

#[test]
fn h8_the_givers_figure_wins_a_mismatch() {
    assert_eq!(sync_check(10, 10), Ok(()));
    assert_eq!(sync_check(10, 15), Err((10, 15)));
}

/// A tiny deterministic generator (no dependency in the core).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Device grants of one server: their expiries.
#[derive(Default)]
struct Devices(Vec<i64>);
impl Devices {
    fn live(&mut self, now: i64) -> u32 {
        self.0.retain(|e| *e > now);
        self.0.len() as u32
    }
    /// Licenses devices while fewer than `capacity` hold unexpired grants.
    fn fill(&mut self, now: i64, capacity: u32, cap: i64, rng: &mut Rng) {
        while self.live(now) < capacity && rng.chance(70) {
            let expiry = (now + 30 + rng.below(200) as i64).min(cap);
            if expiry <= now {
                return;
            }
            self.0.push(expiry);
        }
    }
}

/// A link that loses, repeats and reorders what crosses it, and goes down for a while.
struct Link<T> {
    queue: Vec<T>,
    up: bool,
}
impl<T: Clone> Link<T> {
    fn send(&mut self, m: T, rng: &mut Rng) {
        if !self.up || rng.chance(15) {
            return;
        }
        self.queue.push(m.clone());
        if rng.chance(10) {
            self.queue.push(m);
        }
    }
    fn deliver(&mut self, rng: &mut Rng) -> Vec<T> {
        if !self.up {
            self.queue.clear();
            return vec![];
        }
        let mut out = std::mem::take(&mut self.queue);
        if out.len() > 1 && rng.chance(30) {
            out.swap(0, 1);
        }
        out
    }
}

#[test]
fn l15_holds_across_a_chain_over_a_lossy_link_in_300_seeded_runs() {
    const TOTAL: u32 = 50;
    for seed in 1..=300u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let end = 3_000 + rng.below(3_000) as i64;
        let (mut top, g1) = Given::give("A", "K", terms(30, end), TOTAL, Cap::key(KEY_EXPIRES), 0)
            .expect("30 of 50 free");
        let mut regional = Received::new(g1);
        let (mut mid, g2) =
            Given::give("B", "K", terms(10, end), 30, Cap::leased(&regional), 0).expect("10 of 30");
        let mut office = Received::new(g2);
        let (mut down1, mut down2) = (
            Link::<LeaseGrant> {
                queue: vec![],
                up: true,
            },
            Link::<LeaseGrant> {
                queue: vec![],
                up: true,
            },
        );
        let (mut dev_top, mut dev_mid, mut dev_office) =
            (Devices::default(), Devices::default(), Devices::default());
        let mut now = 0;
        while now < end + 2 * P {
            now += 1 + rng.below(P as u64 / 3) as i64;
            // Links go down and come back; a renewal goes out when due (permanent relations),
            // and now and then an administrator changes or revokes.
            for l in [&mut down1.up, &mut down2.up] {
                if rng.chance(8) {
                    *l = !*l;
                }
            }
            if top.renew_due(now)
                && let Some(g) = top.renew(now, Cap::key(KEY_EXPIRES))
            {
                down1.send(g, &mut rng);
            }
            if rng.chance(3) {
                let seats = 1 + rng.below(40) as u32;
                let free = TOTAL - dev_top.live(now) - top.held(now);
                if let Ok(g) = top.change(terms(seats, end), free, Cap::key(KEY_EXPIRES), now) {
                    down1.send(g, &mut rng);
                }
            }
            if rng.chance(1) && !top.revoked {
                let g = top.revoke(now);
                down1.send(g, &mut rng);
            }
            for g in down1.deliver(&mut rng) {
                regional.on_grant(&g);
            }
            if mid.renew_due(now)
                && let Some(g) = mid.renew(now, Cap::leased(&regional))
            {
                down2.send(g, &mut rng);
            }
            for g in down2.deliver(&mut rng) {
                office.on_grant(&g);
            }
            // Each server licenses devices on what it may use.
            let top_free = TOTAL - top.held(now);
            dev_top.fill(now, top_free, KEY_EXPIRES, &mut rng);
            let mid_cap = regional.usable(now).saturating_sub(mid.held(now));
            dev_mid.fill(now, mid_cap, regional.grant_cap(), &mut rng);
            dev_office.fill(now, office.usable(now), office.grant_cap(), &mut rng);
            let live = dev_top.live(now) + dev_mid.live(now) + dev_office.live(now);
            assert!(
                live <= TOTAL,
                "seed {seed} t={now}: {live} devices hold unexpired grants on {TOTAL} seats"
            );
        }
        // Everything given comes back.
        assert_eq!(top.held(end + 2 * P), 0, "seed {seed}");
        assert!(top.finished(end + 2 * P), "seed {seed}");
    }
}

#[test]
fn h4_lease_messages_cross_a_server_link_only_and_bad_ones_are_refused() {
    use crate::control::Channel;
    use crate::pb::v1 as pb;
    let (mut g, first) = give(10, 5_000, 0);
    let wire = pb::LeaseGrant::from(&first);
    assert_eq!(LeaseGrant::try_from(wire.clone()), Ok(first.clone()));
    let revoked = pb::LeaseGrant::from(&g.revoke(10));
    assert_eq!(LeaseGrant::try_from(revoked).unwrap().seats, 0);
    let req = Received::new(first).renew_request();
    assert_eq!(
        RenewRequest::try_from(pb::LeaseRenewal::from(&req)),
        Ok(req)
    );
    for (bad, why) in [
        (
            pb::LeaseGrant {
                lease_id: String::new(),
                ..wire.clone()
            },
            "ids are required",
        ),
        (
            pb::LeaseGrant {
                seq: 0,
                ..wire.clone()
            },
            "start at 1",
        ),
        (
            pb::LeaseGrant {
                period_end: wire.end_at + 1,
                ..wire.clone()
            },
            "after the lease",
        ),
    ] {
        let e = LeaseGrant::try_from(bad).unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
    }
    assert!(RenewRequest::try_from(pb::LeaseRenewal::default()).is_err());
    // Every server-link message goes both ways on a server link (either end may dial), and
    // nowhere else.
    for m in [
        crate::Msg::LeaseGrant(wire),
        crate::Msg::LeaseRenewal(pb::LeaseRenewal::default()),
        crate::Msg::LeaseSync(pb::LeaseSync::default()),
        crate::Msg::UsageReport(crate::pb::admin::UsageReport::default()),
        crate::Msg::NoticesUp(pb::NoticesUp::default()),
        crate::Msg::NoticesAck(pb::NoticesAck::default()),
    ] {
        assert!(
            Channel::Peer.opener_may_send(&m) && Channel::Peer.acceptor_may_send(&m),
            "{m:?}"
        );
        for other in [Channel::Uplink, Channel::Admin] {
            assert!(
                !other.opener_may_send(&m) && !other.acceptor_may_send(&m),
                "{m:?}"
            );
        }
    }
}
