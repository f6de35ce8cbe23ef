//! Enrollment tokens (S6): created by an admin with expiry, use count and target group. Only
//! the SHA-256 of the secret is stored; the full token is shown once, at creation.

use outpost_proto::token::Token;

use super::{Store, StoreError};

/// What an admin asks for.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    /// agent | gateway.
    pub role: String,
    /// Target group (path or name).
    pub group: String,
    /// Lifetime in seconds.
    pub ttl_secs: u64,
    /// How many devices may enroll with it.
    pub uses: u32,
    /// Free text.
    pub comment: String,
    /// Whether a machine already enrolled may take over its record with this token (S7).
    pub allow_takeover: bool,
}

/// A stored token (without its secret).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenRow {
    /// Public id.
    pub id: String,
    /// agent | gateway.
    pub role: String,
    /// Target group.
    pub group_path: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// Uses left.
    pub uses_left: i64,
    /// Uses at creation.
    pub uses_total: i64,
    /// Free text.
    pub comment: String,
    /// Unix seconds.
    pub created_at: i64,
    /// 1 when a machine already enrolled may take over its record with it (S7).
    pub allow_takeover: i64,
}

impl Store {
    /// Creates a token for the CA with this fingerprint. Returns the token (show it once) and
    /// the stored row.
    pub async fn create_token(
        &self,
        spec: &TokenSpec,
        ca_sha256: [u8; 32],
        now: i64,
    ) -> Result<(Token, TokenRow), StoreError> {
        if spec.role != "agent" && spec.role != "gateway" {
            return Err(StoreError::Invalid(format!(
                "token role {:?}: use \"agent\" or \"gateway\"",
                spec.role
            )));
        }
        if spec.uses == 0 || spec.ttl_secs == 0 {
            return Err(StoreError::Invalid(
                "a token needs at least one use and a lifetime above zero".into(),
            ));
        }
        let group = self.resolve_group(&spec.group).await?;
        let token = Token::generate(ca_sha256);
        let ttl = i64::try_from(spec.ttl_secs).unwrap_or(i64::MAX / 2);
        let row = TokenRow {
            id: token.id.clone(),
            role: spec.role.clone(),
            group_path: group,
            expires_at: now.saturating_add(ttl),
            uses_left: spec.uses.into(),
            uses_total: spec.uses.into(),
            comment: spec.comment.clone(),
            created_at: now,
            allow_takeover: i64::from(spec.allow_takeover),
        };
        sqlx::query(
            "INSERT INTO tokens (id, secret_sha256, role, group_path, expires_at, uses_left,
                                 uses_total, comment, created_at, allow_takeover)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&row.id)
        .bind(hex::encode(token.secret_hash()))
        .bind(&row.role)
        .bind(&row.group_path)
        .bind(row.expires_at)
        .bind(row.uses_left)
        .bind(row.uses_total)
        .bind(&row.comment)
        .bind(row.created_at)
        .bind(row.allow_takeover)
        .execute(&self.write)
        .await?;
        Ok((token, row))
    }

    /// All tokens, newest first.
    pub async fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        Ok(sqlx::query_as::<_, TokenRow>(
            "SELECT id, role, group_path, expires_at, uses_left, uses_total, comment, created_at,
                    allow_takeover
             FROM tokens ORDER BY created_at DESC, id",
        )
        .fetch_all(&self.read)
        .await?)
    }
}
