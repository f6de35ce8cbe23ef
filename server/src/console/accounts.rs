//! Named console accounts (O8): an administrator with an admin certificate creates an account
//! (`admin console-account set NAME`, the password on standard input); its holder then signs in
//! to the console with that name and password — no admin bundle on the machine with the
//! browser. The password is kept only as an argon2id hash with its own salt; checking runs off
//! the async threads. Five failures in a row lock the account for 15 minutes (every instance on
//! a shared store sees the lock); an unknown name costs the same hash as a known one and gets
//! the same answer, so a guesser learns nothing from either.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// Failed sign-ins in a row that lock an account.
pub const LOCK_AFTER: i64 = 5;
/// How long a lock lasts, seconds.
pub const LOCK_FOR: i64 = 15 * 60;
/// The shortest password accepted.
pub const MIN_PASSWORD: usize = 12;

/// Why a name or password is not accepted, in words for the admin.
pub fn check_new(name: &str, password: &str) -> Result<(), String> {
    let ok_name = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if !ok_name {
        return Err(format!(
            "account name {name:?}: 1 to 64 letters, digits, '.', '_', '-' or '@'"
        ));
    }
    if password.chars().count() < MIN_PASSWORD {
        return Err(format!(
            "the password is too short: at least {MIN_PASSWORD} characters (a passphrase of a few words is good)"
        ));
    }
    if password.trim() != password || password.contains(['\n', '\r']) {
        return Err(
            "the password starts or ends with white space, or holds a line break: \
                    check what was piped in"
                .into(),
        );
    }
    Ok(())
}

/// The argon2id PHC string of `password` with a fresh salt (CPU-heavy: call off the async
/// threads).
pub fn hash(password: &str) -> Result<String, String> {
    let salt =
        SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| format!("salt: {e}"))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("argon2: {e}"))
}

/// Whether `password` matches the PHC string `stored` (CPU-heavy: off the async threads).
pub fn verify(stored: &str, password: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash no password matches, checked for unknown names so they cost what known ones do.
pub fn decoy() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash(&crate::console::secret()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn o8_passwords_are_stored_as_salted_argon2id_and_weak_input_is_named() {
        let a = hash("correct horse battery").unwrap();
        let b = hash("correct horse battery").unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(!a.contains("correct"));
        assert!(verify(&a, "correct horse battery"));
        assert!(!verify(&a, "correct horse batterY"));
        assert!(!verify("not a hash", "anything"));
        assert!(!verify(decoy(), ""));
        assert!(
            check_new("alice", "short")
                .unwrap_err()
                .contains("at least 12")
        );
        assert!(
            check_new("a b", "long enough password")
                .unwrap_err()
                .contains("account name")
        );
        assert!(
            check_new("alice", "long enough password\n")
                .unwrap_err()
                .contains("white space")
        );
        assert!(check_new("alice@example.org", "long enough password").is_ok());
    }
}
