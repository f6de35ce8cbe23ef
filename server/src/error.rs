//! Errors that must not reach a peer in detail.
//!
//! A fault on this side (the database failed, a file is unreadable, a bug) is logged here with
//! an incident id; the peer gets a refusal naming only the id, so an operator can find the
//! details in the server's log while nothing internal leaks to devices or admin tools.

use outpost_proto::error::{RefusalCode, Refused};

/// Logs `err` with a fresh incident id and returns the refusal to send instead.
pub fn incident(context: &str, err: &dyn std::fmt::Display) -> Refused {
    let id = format!("{:08x}", rand::random::<u32>());
    tracing::error!(incident = %id, error = %err, "{context}");
    Refused::new(
        RefusalCode::Internal,
        format!("internal error on the server (incident {id}; the server's log has the details)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn o6_incident_names_only_the_id() {
        let r = incident("test", &"database: disk I/O error at /secret/path");
        assert_eq!(r.code(), RefusalCode::Internal);
        assert!(r.0.message.contains("incident "), "{}", r.0.message);
        assert!(!r.0.message.contains("secret"), "{}", r.0.message);
    }
}
