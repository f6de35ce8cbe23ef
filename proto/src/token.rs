//! Enrollment tokens (S6).
//!
//! Text form: `opt1.<id>.<secret>.<ca>` where `id` is 8 hex characters, `secret` 32 random
//! bytes and `ca` the SHA-256 of the deployment's CA certificate, both base64url. The CA hash
//! lets a fresh device verify the server before it holds any certificate. The server stores
//! only the SHA-256 of the secret. Only the id is ever logged (`Display` shows `opt1.<id>.…`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64U;
use ring::rand::SecureRandom;

const PREFIX: &str = "opt1";

/// A parsed enrollment token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// Public identifier, safe to log.
    pub id: String,
    /// The secret (32 bytes).
    pub secret: Vec<u8>,
    /// SHA-256 of the CA certificate the holder should trust.
    pub ca_sha256: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({self})")
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}.{}.…", self.id)
    }
}

/// Why a token string was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "enrollment token is malformed ({0}); copy the whole token printed by `outpost-server admin token create`"
)]
pub struct TokenFormatError(&'static str);

impl Token {
    /// Creates a new random token for a CA.
    pub fn generate(ca_sha256: [u8; 32]) -> Token {
        let rng = ring::rand::SystemRandom::new();
        let mut id = [0u8; 4];
        let mut secret = vec![0u8; 32];
        rng.fill(&mut id).expect("system random");
        rng.fill(&mut secret).expect("system random");
        Token {
            id: hex::encode(id),
            secret,
            ca_sha256,
        }
    }

    /// The full text form (give it to the device; never log it).
    pub fn to_text(&self) -> String {
        format!(
            "{PREFIX}.{}.{}.{}",
            self.id,
            B64U.encode(&self.secret),
            B64U.encode(self.ca_sha256)
        )
    }

    /// Parses the text form.
    pub fn parse(text: &str) -> Result<Token, TokenFormatError> {
        let mut parts = text.trim().split('.');
        if parts.next() != Some(PREFIX) {
            return Err(TokenFormatError("it does not start with \"opt1.\""));
        }
        let id = parts.next().ok_or(TokenFormatError("no id"))?;
        if id.len() != 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenFormatError("bad id"));
        }
        let secret = parts
            .next()
            .and_then(|s| B64U.decode(s).ok())
            .filter(|s| s.len() == 32)
            .ok_or(TokenFormatError("bad secret"))?;
        let ca: [u8; 32] = parts
            .next()
            .and_then(|s| B64U.decode(s).ok())
            .and_then(|v| v.try_into().ok())
            .ok_or(TokenFormatError("bad CA fingerprint"))?;
        if parts.next().is_some() {
            return Err(TokenFormatError("trailing data"));
        }
        Ok(Token {
            id: id.to_lowercase(),
            secret,
            ca_sha256: ca,
        })
    }

    /// What the server stores instead of the secret.
    pub fn secret_hash(&self) -> Vec<u8> {
        ring::digest::digest(&ring::digest::SHA256, &self.secret)
            .as_ref()
            .to_vec()
    }
}

/// Compares a presented secret with a stored hash in constant time.
pub fn secret_matches(secret: &[u8], stored_hash: &[u8]) -> bool {
    let h = ring::digest::digest(&ring::digest::SHA256, secret);
    let a = h.as_ref();
    a.len() == stored_hash.len()
        && a.iter()
            .zip(stored_hash)
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s6_token_round_trip_and_redaction() {
        let t = Token::generate([7; 32]);
        let text = t.to_text();
        let back = Token::parse(&text).unwrap();
        assert_eq!(back, t);
        let shown = format!("{t} {t:?}");
        assert!(!shown.contains(&text[14..]), "secret never shown: {shown}");
        assert!(secret_matches(&t.secret, &t.secret_hash()));
        assert!(!secret_matches(b"other", &t.secret_hash()));
        for bad in [
            "",
            "opt2.a.b.c",
            "opt1.zz.x.y",
            &text[..text.len() - 3],
            &format!("{text}.x"),
        ] {
            assert!(Token::parse(bad).is_err(), "{bad}");
        }
    }
}
