//! Licence renewal decisions (L11, L12), as pure functions.
//!
//! A renewal key for key K may replace K automatically only when it licenses every component
//! of K (or more) and at least as many seats; otherwise it is added to the repository but not
//! distributed, and the administrator is told why. Distribution gives the renewal key to every
//! object of K that does not have it yet; objects that received it by hand keep it.

use super::key::KeyBody;
use super::object::Object;

/// Whether a renewal may replace the key it renews.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assessment {
    /// Every component and at least as many seats: distribute (L11 outcome 3).
    Distribute,
    /// Added but not distributed (L11 outcome 2), with the reason for the administrator.
    CannotRenewAutomatically(String),
}

/// Compares a renewal with the key it renews.
pub fn assess(old: &KeyBody, new: &KeyBody) -> Assessment {
    let missing: Vec<&str> = old
        .components
        .iter()
        .filter(|c| !new.components.contains(c))
        .map(String::as_str)
        .collect();
    let mut reasons = vec![];
    if !missing.is_empty() {
        reasons.push(format!(
            "renewal key {} lacks component(s) {} of key {}",
            new.key_id,
            missing.join(", "),
            old.key_id
        ));
    }
    if new.seats < old.seats {
        reasons.push(format!(
            "renewal key {} has {} seat(s), key {} has {}",
            new.key_id, new.seats, old.key_id, old.seats
        ));
    }
    if reasons.is_empty() {
        Assessment::Distribute
    } else {
        Assessment::CannotRenewAutomatically(format!(
            "key cannot be renewed automatically: {}; distribute it by hand if that is intended",
            reasons.join("; ")
        ))
    }
}

/// The objects of the old key that do not have the new key yet (L12 a/b): empty when the new
/// key is already on all of them.
pub fn objects_to_add(old_objects: &[Object], new_objects: &[Object]) -> Vec<Object> {
    old_objects
        .iter()
        .filter(|o| !new_objects.contains(o))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::v1::KeyKind;

    fn body(id: &str, components: &[&str], seats: u32) -> KeyBody {
        KeyBody {
            key_id: id.into(),
            licensee: "ACME".into(),
            product: "P".into(),
            components: components.iter().map(|c| c.to_string()).collect(),
            seats,
            valid_from: 0,
            expires_at: 10,
            kind: KeyKind::Commercial,
            renews: None,
        }
    }

    #[test]
    fn l11_outcome_3_same_or_more_distributes() {
        let old = body("K1", &["av", "fw"], 10);
        assert_eq!(
            assess(&old, &body("K2", &["av", "fw"], 10)),
            Assessment::Distribute
        );
        assert_eq!(
            assess(&old, &body("K2", &["av", "fw", "edr"], 20)),
            Assessment::Distribute
        );
    }

    #[test]
    fn l11_outcome_2_missing_component_or_fewer_seats_is_not_distributed() {
        let old = body("K1", &["av", "fw"], 10);
        match assess(&old, &body("K2", &["av"], 10)) {
            Assessment::CannotRenewAutomatically(r) => {
                assert!(r.contains("lacks component(s) fw"), "{r}");
                assert!(r.starts_with("key cannot be renewed automatically"), "{r}");
            }
            other => panic!("{other:?}"),
        }
        match assess(&old, &body("K2", &["av", "fw"], 9)) {
            Assessment::CannotRenewAutomatically(r) => assert!(r.contains("9 seat(s)"), "{r}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn l12_objects_to_add() {
        let a = Object::Device("a".into());
        let old = vec![Object::Everyone, a.clone()];
        assert!(
            objects_to_add(&old, &old.clone()).is_empty(),
            "L12 a: already everywhere"
        );
        assert_eq!(
            objects_to_add(&old, &[a, Object::Device("z".into())]),
            vec![Object::Everyone],
            "L12 b: given to the rest; device:z keeps it"
        );
    }
}
