//! Gateways in a DMZ the server dials (T4), added by an administrator at run time.

use super::{Store, StoreError};

impl Store {
    /// The DMZ gateways added with `admin gateway dmz add`, oldest first.
    pub async fn dmz_targets(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT address FROM dmz_gateways ORDER BY added_at, address")
                .fetch_all(&self.read)
                .await?;
        Ok(rows.into_iter().map(|(a,)| a).collect())
    }

    /// Adds a DMZ gateway; false if it was there.
    pub async fn add_dmz_target(&self, address: &str, now: i64) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "INSERT INTO dmz_gateways (address, added_at) VALUES ($1, $2) ON CONFLICT (address) DO NOTHING",
        )
        .bind(address)
        .bind(now)
        .execute(&self.write)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Removes a DMZ gateway; false if it was not there.
    pub async fn remove_dmz_target(&self, address: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM dmz_gateways WHERE address = $1")
            .bind(address)
            .execute(&self.write)
            .await?;
        Ok(r.rows_affected() == 1)
    }
}
