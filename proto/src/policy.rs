//! Policy documents (D5): a JSON object of settings per group. A device's effective policy is
//! the documents of its group and of every group above it, merged from the root down, the
//! nearest group winning per setting: objects merge key by key (so a branch office can change
//! one setting of a section and inherit the rest), any other value replaces what came from
//! above, and `null` removes an inherited setting. The revision of an effective policy is a
//! hash of its canonical text (keys sorted), so an agent holding the same document is sent
//! nothing, whichever groups it came from.

use serde_json::Value;

/// Largest policy document accepted, bytes.
pub const MAX_DOCUMENT: usize = 256 * 1024;

/// Why a policy document is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Not JSON.
    #[error("the policy document is not JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object of settings.
    #[error("a policy document is a JSON object of settings ({{\"setting\": value, …}}), not {0}")]
    NotAnObject(&'static str),
    /// Too large.
    #[error("the policy document is {0} bytes; at most {MAX_DOCUMENT} are accepted")]
    TooLarge(usize),
}

/// Parses a document an administrator gives.
pub fn parse(text: &str) -> Result<Value, PolicyError> {
    if text.len() > MAX_DOCUMENT {
        return Err(PolicyError::TooLarge(text.len()));
    }
    let v: Value = serde_json::from_str(text).map_err(|e| PolicyError::NotJson(e.to_string()))?;
    match v {
        Value::Object(_) => Ok(v),
        Value::Array(_) => Err(PolicyError::NotAnObject("an array")),
        Value::String(_) => Err(PolicyError::NotAnObject("a string")),
        Value::Number(_) => Err(PolicyError::NotAnObject("a number")),
        Value::Bool(_) => Err(PolicyError::NotAnObject("a boolean")),
        Value::Null => Err(PolicyError::NotAnObject("null")),
    }
}

/// The groups whose documents apply to `group`, root first: `everyone/berlin/it` →
/// `everyone`, `everyone/berlin`, `everyone/berlin/it`.
pub fn chain(group: &str) -> Vec<String> {
    let mut out = vec![];
    let mut at = String::new();
    for part in group.split('/').filter(|p| !p.is_empty()) {
        if !at.is_empty() {
            at.push('/');
        }
        at.push_str(part);
        out.push(at.clone());
    }
    out
}

/// Merges documents given root first (see the module comment).
pub fn merge<'a>(documents: impl IntoIterator<Item = &'a Value>) -> Value {
    let mut out = Value::Object(Default::default());
    for d in documents {
        merge_into(&mut out, d);
    }
    out
}

fn merge_into(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(k);
                } else if let (Some(old @ Value::Object(_)), Value::Object(_)) = (b.get_mut(k), v) {
                    merge_into(old, v);
                } else {
                    b.insert(k.clone(), v.clone());
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The revision of an effective policy (never 0: 0 means "none held").
pub fn revision(doc: &Value) -> u64 {
    let text = serde_json::to_vec(doc).expect("a JSON value serialises");
    let d = ring::digest::digest(&ring::digest::SHA256, &text);
    u64::from_be_bytes(d.as_ref()[..8].try_into().expect("8 bytes")) | 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn d5_nearest_group_wins_per_setting_and_null_removes() {
        let root = json!({"scan": {"daily": true, "hour": 2}, "firewall": "on", "motd": "hi"});
        let berlin = json!({"scan": {"hour": 4}, "motd": null});
        let it = json!({"firewall": "off"});
        let eff = merge([&root, &berlin, &it]);
        assert_eq!(
            eff,
            json!({"scan": {"daily": true, "hour": 4}, "firewall": "off"})
        );
        assert_eq!(
            chain("everyone/berlin/it"),
            ["everyone", "everyone/berlin", "everyone/berlin/it"]
        );
        // Same document, same revision, however it was composed; a change moves it.
        assert_eq!(
            revision(&eff),
            revision(&json!({"firewall": "off", "scan": {"hour": 4, "daily": true}}))
        );
        assert_ne!(revision(&eff), revision(&merge([&root])));
        assert_ne!(revision(&merge([])), 0);
    }

    #[test]
    fn d5_documents_that_are_not_objects_are_refused_with_what_they_are() {
        assert!(parse(r#"{"a": 1}"#).is_ok());
        assert_eq!(parse("[1]"), Err(PolicyError::NotAnObject("an array")));
        assert!(matches!(parse("{"), Err(PolicyError::NotJson(_))));
        let big = format!(r#"{{"a": "{}"}}"#, "x".repeat(MAX_DOCUMENT));
        assert!(matches!(parse(&big), Err(PolicyError::TooLarge(_))));
    }
}
