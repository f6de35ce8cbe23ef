//! Named web console accounts (O8): argon2id password hashes (never the password), failures
//! in a row and the lock they lead to, the last sign-in. Hashing and checking are the
//! console's (`console::accounts`); this keeps the rows.

use super::{Store, StoreError};

/// One account as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccountRow {
    /// Its name.
    pub name: String,
    /// The argon2id PHC string.
    pub password_hash: String,
    /// Unix seconds.
    pub created_at: i64,
    /// When its password was last set.
    pub changed_at: i64,
    /// Failed sign-ins in a row.
    pub failures: i64,
    /// Refused until then (unix seconds; 0: not locked).
    pub locked_until: i64,
    /// 0: never.
    pub last_sign_in: i64,
}

impl Store {
    /// Creates an account or sets its password; a new password unlocks it and ends its
    /// sessions. Returns whether it was new.
    pub async fn set_console_account(
        &self,
        name: &str,
        password_hash: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write.begin().await?;
        let changed = sqlx::query(
            "UPDATE console_accounts SET password_hash = $2, changed_at = $3, failures = 0,
                    locked_until = 0 WHERE name = $1",
        )
        .bind(name)
        .bind(password_hash)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            sqlx::query(
                "INSERT INTO console_accounts (name, password_hash, created_at, changed_at)
                 VALUES ($1, $2, $3, $3)",
            )
            .bind(name)
            .bind(password_hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM console_sessions WHERE account = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(changed == 0)
    }

    /// Removes an account and ends its sessions; false when there was none.
    pub async fn remove_console_account(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.write.begin().await?;
        let gone = sqlx::query("DELETE FROM console_accounts WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM console_sessions WHERE account = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(gone > 0)
    }

    /// One account.
    pub async fn console_account(&self, name: &str) -> Result<Option<AccountRow>, StoreError> {
        Ok(sqlx::query_as::<_, AccountRow>(
            "SELECT name, password_hash, created_at, changed_at, failures, locked_until,
                    last_sign_in FROM console_accounts WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.write)
        .await?)
    }

    /// Every account, by name.
    pub async fn console_accounts(&self) -> Result<Vec<AccountRow>, StoreError> {
        Ok(sqlx::query_as::<_, AccountRow>(
            "SELECT name, password_hash, created_at, changed_at, failures, locked_until,
                    last_sign_in FROM console_accounts ORDER BY name",
        )
        .fetch_all(&self.read)
        .await?)
    }

    /// Records a failed sign-in; the `lock_after`-th in a row locks the account until
    /// `now + lock_for`. Returns the lock's end (0: not locked).
    pub async fn console_sign_in_failed(
        &self,
        name: &str,
        now: i64,
        lock_after: i64,
        lock_for: i64,
    ) -> Result<i64, StoreError> {
        let row: Option<(i64,)> = sqlx::query_as(
            "UPDATE console_accounts SET failures = failures + 1,
                    locked_until = CASE WHEN failures + 1 >= $3 THEN $2 + $4 ELSE locked_until END
              WHERE name = $1 RETURNING locked_until",
        )
        .bind(name)
        .bind(now)
        .bind(lock_after)
        .bind(lock_for)
        .fetch_optional(&self.write)
        .await?;
        Ok(row.map_or(0, |(t,)| if t > now { t } else { 0 }))
    }

    /// Records a sign-in: the failures in a row start again.
    pub async fn console_signed_in(&self, name: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE console_accounts SET failures = 0, locked_until = 0, last_sign_in = $2
              WHERE name = $1",
        )
        .bind(name)
        .bind(now)
        .execute(&self.write)
        .await?;
        Ok(())
    }
}
