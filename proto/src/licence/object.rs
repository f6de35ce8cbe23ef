//! Objects a licence key is assigned to (L4): everyone, an administration group, one device,
//! or a neighbour server (a lease, H5). Groups form a tree under "everyone"; a device's
//! effective key is the one assigned nearest to it.
//!
//! Three spellings exist and this module owns all of them:
//! - what an admin types: `everyone`, `group:<path or last name>`, `device:<id>`,
//!   `server:<id>` ([`Object::parse`]; a group given by its last name is resolved by the
//!   caller, who knows the groups);
//! - what the store keeps: `group:everyone`, `group:everyone/berlin`, `device:a-…`,
//!   `server:s-…` ([`Object::stored`], [`Object::from_stored`]);
//! - what humans read: `everyone`, `group:everyone/berlin`, … ([`Object`]'s `Display`).

use std::fmt;

/// What a key can be assigned to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Object {
    /// The root group: every device.
    Everyone,
    /// An administration group below "everyone", by full path (`everyone/berlin`), or, right
    /// after [`Object::parse`], possibly by its last name only (`berlin`).
    Group(String),
    /// One device, by id.
    Device(String),
    /// A neighbour server, by id (a lease, H5).
    Server(String),
}

/// An object the admin typed that has no meaning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "object {0:?}: use \"everyone\", \"group:<path>\", \"device:<device id>\" or \"server:<server id>\""
)]
pub struct ObjectError(pub String);

impl Object {
    /// Parses what an admin typed. Group names are not resolved here.
    pub fn parse(text: &str) -> Result<Object, ObjectError> {
        let t = text.trim();
        let bad = || ObjectError(text.to_owned());
        if t == "everyone" {
            return Ok(Object::Everyone);
        }
        let (kind, value) = t.split_once(':').ok_or_else(bad)?;
        let value = value.trim();
        if value.is_empty() {
            return Err(bad());
        }
        Ok(match kind {
            "group" if value == "everyone" => Object::Everyone,
            "group" => Object::Group(value.to_owned()),
            "device" => Object::Device(value.to_owned()),
            "server" => Object::Server(value.to_owned()),
            _ => return Err(bad()),
        })
    }

    /// The form kept in the store.
    pub fn stored(&self) -> String {
        match self {
            Object::Everyone => "group:everyone".into(),
            Object::Group(p) => format!("group:{p}"),
            Object::Device(d) => format!("device:{d}"),
            Object::Server(s) => format!("server:{s}"),
        }
    }

    /// Reads the stored form back; `None` for text no version of Outpost writes.
    pub fn from_stored(text: &str) -> Option<Object> {
        let (kind, value) = text.split_once(':')?;
        if value.is_empty() {
            return None;
        }
        Some(match kind {
            "group" if value == "everyone" => Object::Everyone,
            "group" => Object::Group(value.to_owned()),
            "device" => Object::Device(value.to_owned()),
            "server" => Object::Server(value.to_owned()),
            _ => return None,
        })
    }

    /// How near this object is to a device in group `group_path`: 0 for the device itself, 1
    /// for its group, 2 for the group's parent, … ending with "everyone". `None` when the
    /// object does not cover the device.
    pub fn nearness(&self, device_id: &str, group_path: &str) -> Option<usize> {
        match self {
            Object::Device(d) => (d == device_id).then_some(0),
            Object::Everyone => group_chain(group_path)
                .iter()
                .position(|g| g == "everyone")
                .map(|i| i + 1),
            Object::Group(g) => group_chain(group_path)
                .iter()
                .position(|c| c == g)
                .map(|i| i + 1),
            Object::Server(_) => None,
        }
    }
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Everyone => f.write_str("everyone"),
            other => f.write_str(&other.stored()),
        }
    }
}

/// The groups of a device in group `path`, nearest first, ending with "everyone".
pub fn group_chain(path: &str) -> Vec<String> {
    let mut out = vec![];
    let mut p = path;
    loop {
        out.push(p.to_owned());
        match p.rfind('/') {
            Some(i) => p = &p[..i],
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l4_group_chain_nearest_first() {
        assert_eq!(
            group_chain("everyone/berlin/floor2"),
            vec!["everyone/berlin/floor2", "everyone/berlin", "everyone"]
        );
        assert_eq!(group_chain("everyone"), vec!["everyone"]);
    }

    #[test]
    fn l4_parse_stored_and_label_agree() {
        for (typed, stored, label) in [
            ("everyone", "group:everyone", "everyone"),
            ("group:everyone", "group:everyone", "everyone"),
            (
                "group:everyone/berlin",
                "group:everyone/berlin",
                "group:everyone/berlin",
            ),
            ("device:a-1", "device:a-1", "device:a-1"),
            ("server:s-1", "server:s-1", "server:s-1"),
        ] {
            let o = Object::parse(typed).unwrap();
            assert_eq!(o.stored(), stored, "{typed}");
            assert_eq!(o.to_string(), label, "{typed}");
            assert_eq!(Object::from_stored(stored), Some(o), "{typed}");
        }
        for bad in ["", "berlin", "device:", "group:", "host:x", "auto"] {
            assert!(Object::parse(bad).is_err(), "{bad:?}");
            assert_eq!(Object::from_stored(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn l4_nearness_device_then_groups_then_everyone() {
        let g = "everyone/berlin/floor2";
        assert_eq!(Object::Device("a".into()).nearness("a", g), Some(0));
        assert_eq!(Object::Device("b".into()).nearness("a", g), None);
        assert_eq!(Object::Group(g.into()).nearness("a", g), Some(1));
        assert_eq!(
            Object::Group("everyone/berlin".into()).nearness("a", g),
            Some(2)
        );
        assert_eq!(Object::Everyone.nearness("a", g), Some(3));
        assert_eq!(
            Object::Group("everyone/paris".into()).nearness("a", g),
            None
        );
        assert_eq!(Object::Server("s".into()).nearness("a", g), None);
    }
}
