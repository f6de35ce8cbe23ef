//! Licence-usage reports (H9): this server's own usage, made on demand, and the newest report
//! of every server below it.

use outpost_proto::pb::admin::{KeyUsage, UsageReport};
use prost::Message;

use super::{Store, StoreError};

impl Store {
    /// This server's usage now: every key's seats, the agents licensed on it that were active
    /// within `active_secs` (0: every agent), and a device summary (H4).
    pub async fn own_usage(&self, now: i64, active_secs: i64) -> Result<UsageReport, StoreError> {
        let since = if active_secs > 0 {
            now - active_secs
        } else {
            i64::MIN
        };
        let keys: Vec<(String, i64, i64, i64, String)> = sqlx::query_as(
            "SELECT id, seats, seats_used, seats_leased_out, origin FROM licence_keys ORDER BY id",
        )
        .fetch_all(&self.read)
        .await?;
        let active: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT licence_key, COUNT(*) FROM devices
             WHERE role = 'agent' AND revoked_at IS NULL AND licence_state = 'licensed'
               AND last_seen >= $1
             GROUP BY licence_key",
        )
        .bind(since)
        .fetch_all(&self.read)
        .await?;
        let (devices, licensed, recent): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*),
                    CAST(SUM(CASE WHEN licence_state = 'licensed' THEN 1 ELSE 0 END) AS BIGINT),
                    CAST(SUM(CASE WHEN last_seen >= $1 THEN 1 ELSE 0 END) AS BIGINT)
             FROM devices WHERE role = 'agent' AND revoked_at IS NULL",
        )
        .bind(since)
        .fetch_one(&self.read)
        .await?;
        let count = |k: &str| {
            active
                .iter()
                .find(|(id, _)| id.as_deref() == Some(k))
                .map(|(_, n)| *n as u32)
                .unwrap_or(0)
        };
        Ok(UsageReport {
            made_at: now,
            active_period_secs: active_secs.max(0) as u64,
            keys: keys
                .iter()
                .map(|(id, seats, used, leased, origin)| KeyUsage {
                    key_id: id.clone(),
                    seats: *seats as u32,
                    seats_used: *used as u32,
                    seats_leased_out: *leased as u32,
                    active_licensed: count(id),
                    origin: origin.clone(),
                })
                .collect(),
            devices: devices as u32,
            devices_licensed: licensed.unwrap_or(0) as u32,
            devices_active: recent.unwrap_or(0) as u32,
            below: vec![],
        })
    }

    /// Keeps the newest report of `server` (a server below this one). An older one arriving
    /// late changes nothing.
    pub async fn store_report(
        &self,
        server: &str,
        report: &UsageReport,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO usage_reports (server, made_at, received_at, report) VALUES ($1, $2, $3, $4)
             ON CONFLICT (server) DO UPDATE SET made_at = excluded.made_at,
                 received_at = excluded.received_at, report = excluded.report
             WHERE excluded.made_at >= usage_reports.made_at",
        )
        .bind(server)
        .bind(report.made_at)
        .bind(now)
        .bind(report.encode_to_vec())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// The newest report of every server below this one: (server, received at, report).
    pub async fn reports_below(&self) -> Result<Vec<(String, i64, UsageReport)>, StoreError> {
        let rows: Vec<(String, i64, Vec<u8>)> =
            sqlx::query_as("SELECT server, received_at, report FROM usage_reports ORDER BY server")
                .fetch_all(&self.read)
                .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(s, at, bytes)| Some((s, at, UsageReport::decode(bytes.as_slice()).ok()?)))
            .collect())
    }

    /// Records the report terms the main server `server` set (H9).
    pub async fn set_report_terms(
        &self,
        server: &str,
        report_secs: i64,
        active_secs: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE servers SET report_period_secs = $2, active_period_secs = $3 WHERE name = $1",
        )
        .bind(server)
        .bind(report_secs)
        .bind(active_secs)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// The report terms the main server `server` set: (report period, active period), seconds.
    pub async fn report_terms(&self, server: &str) -> Result<(i64, i64), StoreError> {
        Ok(sqlx::query_as(
            "SELECT report_period_secs, active_period_secs FROM servers WHERE name = $1",
        )
        .bind(server)
        .fetch_optional(&self.read)
        .await?
        .unwrap_or((0, 0)))
    }
}
