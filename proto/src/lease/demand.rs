//! Leases that follow demand (L4 `server:<name>`, L8, L9): a key assigned to a neighbour server,
//! or an auto-distributed key given to a secondary, is given as a lease whose seats follow what
//! the neighbour reports its devices need — growing as seats free here, never past them, and
//! shrinking when the neighbour needs fewer (the seats given back return when the periods
//! already promised end, [`super::Given::held`]).

/// What a neighbour needs from one key, as it last reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Need {
    /// Seats of the key in use there (devices, and seats passed further down), plus devices
    /// there unlicensed for want of a free seat on it.
    pub on_key: u32,
    /// Devices there unlicensed because no key at all applies to them (counted towards one
    /// lease only).
    pub without_key: u32,
    /// Seats of the same key given to the neighbour by leases an administrator sized.
    pub fixed: u32,
}

impl Need {
    /// Seats a demand lease should have to cover the need.
    pub fn seats(&self) -> u32 {
        (self.on_key + self.without_key).saturating_sub(self.fixed)
    }
}

/// The seats a lease following demand gets: `current` now, `need` wanted, `free` free on the key
/// here. Grows by at most what is free; shrinks to the need at once. 0: the lease ends.
pub fn follow(current: u32, need: u32, free: u32) -> u32 {
    if need > current {
        current + (need - current).min(free)
    } else {
        need
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l9_a_demand_lease_grows_by_what_is_free_and_never_past_it() {
        assert_eq!(follow(0, 10, 4), 4);
        assert_eq!(follow(4, 10, 0), 4, "nothing free: no change");
        assert_eq!(follow(4, 10, 3), 7, "freed seats go to the neighbour");
        assert_eq!(follow(7, 10, 50), 10, "never more than it needs");
    }

    #[test]
    fn l9_a_demand_lease_shrinks_to_the_need_and_ends_at_zero() {
        assert_eq!(follow(10, 6, 0), 6);
        assert_eq!(follow(6, 0, 10), 0);
        assert_eq!(follow(6, 6, 10), 6);
    }

    #[test]
    fn l4_seats_given_by_hand_count_against_the_need() {
        let n = Need {
            on_key: 12,
            without_key: 3,
            fixed: 5,
        };
        assert_eq!(n.seats(), 10);
        let n = Need {
            on_key: 2,
            without_key: 0,
            fixed: 5,
        };
        assert_eq!(n.seats(), 0);
    }
}
