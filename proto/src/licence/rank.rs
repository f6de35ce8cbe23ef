//! Which keys are candidates for a device, in the order the seat decision tries them (L4, L6,
//! L8): keys assigned to the device or its groups, nearest first; then keys marked for
//! automatic distribution; then keys the device only still holds a seat on (to be given back).
//! Within each, the key valid longest comes first. A key found several ways keeps its best
//! place.
//!
//! The store reads every key that could matter in one query and hands the rows here; this
//! module only orders them.

use super::object::Object;
use super::seat::{Candidate, Source};

/// How the store found a key for a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Assigned to this object (which may not cover the device: such rows are dropped).
    Assigned(Object),
    /// Marked for automatic distribution.
    Auto,
    /// The device holds a seat on it.
    Held,
}

/// Orders the keys found for device `device_id` in group `group_path` into seat-decision
/// candidates (their `source` set from `origin`).
pub fn rank(found: Vec<(Origin, Candidate)>, device_id: &str, group_path: &str) -> Vec<Candidate> {
    let mut ranked: Vec<(u8, usize, Candidate)> = found
        .into_iter()
        .filter_map(|(origin, mut c)| {
            let (class, near, source) = match origin {
                Origin::Assigned(o) => (0, o.nearness(device_id, group_path)?, Source::Assigned),
                Origin::Auto => (1, 0, Source::Auto),
                Origin::Held => (2, 0, Source::Stale),
            };
            c.source = source;
            c.distance = near;
            Some((class, near, c))
        })
        .collect();
    ranked.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(a.1.cmp(&b.1))
            .then(b.2.expires_at.cmp(&a.2.expires_at))
            .then(a.2.key_id.cmp(&b.2.key_id))
    });
    let mut seen = std::collections::HashSet::new();
    ranked
        .into_iter()
        .filter(|(_, _, c)| seen.insert(c.key_id.clone()))
        .map(|(_, _, c)| c)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::licence::seat::Slot;

    fn key(id: &str, expires_at: i64) -> Candidate {
        Candidate {
            key_id: id.into(),
            seats_total: 5,
            seats_used: 0,
            seats_leased_out: 0,
            valid_from: 0,
            expires_at,
            held: None,
            source: Source::Stale,
            distance: 0,
        }
    }

    fn ids(c: &[Candidate]) -> Vec<(&str, Source)> {
        c.iter().map(|c| (c.key_id.as_str(), c.source)).collect()
    }

    const GROUP: &str = "everyone/berlin";

    #[test]
    fn l4_nearest_assignment_first_then_auto_then_held() {
        let found = vec![
            (Origin::Held, key("OLD", 100)),
            (Origin::Auto, key("AUTO", 100)),
            (Origin::Assigned(Object::Everyone), key("ALL", 100)),
            (
                Origin::Assigned(Object::Group(GROUP.into())),
                key("BERLIN", 100),
            ),
            (
                Origin::Assigned(Object::Device("a-1".into())),
                key("MINE", 100),
            ),
        ];
        assert_eq!(
            ids(&rank(found, "a-1", GROUP)),
            vec![
                ("MINE", Source::Assigned),
                ("BERLIN", Source::Assigned),
                ("ALL", Source::Assigned),
                ("AUTO", Source::Auto),
                ("OLD", Source::Stale),
            ]
        );
    }

    #[test]
    fn l4_assignments_that_do_not_cover_the_device_are_dropped() {
        let found = vec![
            (
                Origin::Assigned(Object::Group("everyone/paris".into())),
                key("PARIS", 100),
            ),
            (
                Origin::Assigned(Object::Device("a-2".into())),
                key("OTHER", 100),
            ),
            (
                Origin::Assigned(Object::Server("s-1".into())),
                key("LEASE", 100),
            ),
        ];
        assert!(rank(found, "a-1", GROUP).is_empty());
    }

    #[test]
    fn l6_same_distance_longest_valid_first_and_duplicates_keep_best_place() {
        let mut held = key("K1", 50);
        held.held = Some(Slot::Active);
        let found = vec![
            (Origin::Held, held.clone()),
            (Origin::Assigned(Object::Everyone), held),
            (Origin::Assigned(Object::Everyone), key("K2", 90)),
            (Origin::Auto, key("K2", 90)),
        ];
        let r = rank(found, "a-1", GROUP);
        assert_eq!(
            ids(&r),
            vec![("K2", Source::Assigned), ("K1", Source::Assigned)]
        );
        assert_eq!(r[1].held, Some(Slot::Active), "the seat held is kept");
    }
}
