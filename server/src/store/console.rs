//! The web console's state (O8): one-time login links, sessions, the audit log, and the paged
//! device search its device page runs. Secrets (link tokens, session cookies) are stored as
//! their SHA-256 only.

use super::{DeviceRow, Store, StoreError};

/// A signed-in console session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// Who: the admin device whose `console-login` made the link, or the account's name.
    pub admin: String,
    /// The account signed in with (empty for a one-time link).
    pub account: String,
    /// The token every form of this session carries (CSRF).
    pub csrf: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// One audit record.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// Who (an admin device id, or `-` before signing in).
    pub admin: String,
    /// The browser's address.
    pub address: String,
    /// What (`sign-in`, `revoke`, …).
    pub action: String,
    /// On what.
    pub target: String,
    /// `done`, or why it was refused.
    pub outcome: String,
}

/// Which devices the device page lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceFilter {
    /// Every device.
    #[default]
    All,
    /// Agents not licensed now.
    Unlicensed,
    /// Not seen since the given unix second.
    OfflineSince(i64),
    /// Revoked.
    Revoked,
}

impl Store {
    /// Records a login link (valid until `expires_at`, once).
    pub async fn add_console_login(
        &self,
        token_sha256: &str,
        admin: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM console_logins WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.write)
            .await?;
        sqlx::query(
            "INSERT INTO console_logins (token_sha256, admin, created_at, expires_at)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(token_sha256)
        .bind(admin)
        .bind(now)
        .bind(expires_at)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Uses a login link: it is gone afterwards, whether it was still valid or not. Returns the
    /// admin it was made for when it was valid.
    pub async fn take_console_login(
        &self,
        token_sha256: &str,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        let mut tx = self.write.begin().await?;
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT admin, expires_at FROM console_logins WHERE token_sha256 = $1")
                .bind(token_sha256)
                .fetch_optional(&mut *tx)
                .await?;
        sqlx::query("DELETE FROM console_logins WHERE token_sha256 = $1")
            .bind(token_sha256)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(row.and_then(|(admin, exp)| (exp > now).then_some(admin)))
    }

    /// Starts a session.
    pub async fn add_console_session(
        &self,
        id_sha256: &str,
        s: &ConsoleSession,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.write)
            .await?;
        sqlx::query(
            "INSERT INTO console_sessions
                    (id_sha256, csrf, admin, created_at, expires_at, last_seen, account)
             VALUES ($1, $2, $3, $4, $5, $4, $6)",
        )
        .bind(id_sha256)
        .bind(&s.csrf)
        .bind(&s.admin)
        .bind(now)
        .bind(s.expires_at)
        .bind(&s.account)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// A live session: not past its end, and used within `idle` seconds (then marked used now).
    pub async fn console_session(
        &self,
        id_sha256: &str,
        now: i64,
        idle: i64,
    ) -> Result<Option<ConsoleSession>, StoreError> {
        let row: Option<(String, String, i64, i64, String)> = sqlx::query_as(
            "SELECT admin, csrf, expires_at, last_seen, account FROM console_sessions
              WHERE id_sha256 = $1",
        )
        .bind(id_sha256)
        .fetch_optional(&self.read)
        .await?;
        let Some((admin, csrf, expires_at, last_seen, account)) = row else {
            return Ok(None);
        };
        if expires_at <= now || last_seen + idle <= now {
            self.end_console_session(id_sha256).await?;
            return Ok(None);
        }
        sqlx::query("UPDATE console_sessions SET last_seen = $2 WHERE id_sha256 = $1")
            .bind(id_sha256)
            .bind(now)
            .execute(&self.write)
            .await?;
        Ok(Some(ConsoleSession {
            admin,
            account,
            csrf,
            expires_at,
        }))
    }

    /// Ends a session (sign-out, expiry).
    pub async fn end_console_session(&self, id_sha256: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM console_sessions WHERE id_sha256 = $1")
            .bind(id_sha256)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Appends to the audit log.
    pub async fn console_audit(&self, r: &AuditRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO console_audit (id, at_ms, admin, address, action, target, outcome)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(format!("{:016x}", rand::random::<u64>()))
        .bind(r.at_ms)
        .bind(&r.admin)
        .bind(&r.address)
        .bind(&r.action)
        .bind(&r.target)
        .bind(&r.outcome)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// The newest audit records.
    pub async fn console_audit_log(&self, limit: i64) -> Result<Vec<AuditRow>, StoreError> {
        Ok(sqlx::query_as::<_, AuditRow>(
            "SELECT at_ms, admin, address, action, target, outcome FROM console_audit
             ORDER BY at_ms DESC, id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.read)
        .await?)
    }

    /// One page of devices matching `search` (in id, host name or group, case-insensitive)
    /// and `filter`, by id; and how many match in all.
    pub async fn device_page(
        &self,
        search: &str,
        filter: DeviceFilter,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<DeviceRow>, i64), StoreError> {
        let like = format!(
            "%{}%",
            search
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let (kind, since) = match filter {
            DeviceFilter::All => (0, 0),
            DeviceFilter::Unlicensed => (1, 0),
            DeviceFilter::OfflineSince(t) => (2, t),
            DeviceFilter::Revoked => (3, 0),
        };
        let cond = "($1 = '%%' OR LOWER(d.id) LIKE $1 ESCAPE '\\'
                       OR LOWER(d.hostname) LIKE $1 ESCAPE '\\'
                       OR LOWER(d.group_path) LIKE $1 ESCAPE '\\')
                  AND ($2 = 0
                       OR ($2 = 1 AND d.role = 'agent' AND d.revoked_at IS NULL
                           AND d.licence_state <> 'licensed')
                       OR ($2 = 2 AND d.last_seen < $3)
                       OR ($2 = 3 AND d.revoked_at IS NOT NULL))";
        let (total,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM devices d WHERE {cond}"
        )))
        .bind(&like)
        .bind(kind)
        .bind(since)
        .fetch_one(&self.read)
        .await?;
        let rows = sqlx::query_as::<_, DeviceRow>(sqlx::AssertSqlSafe(format!(
            "{} WHERE {cond} ORDER BY d.id LIMIT $4 OFFSET $5",
            super::devices::SELECT_DEVICE
        )))
        .bind(&like)
        .bind(kind)
        .bind(since)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.read)
        .await?;
        Ok((rows, total))
    }
}
