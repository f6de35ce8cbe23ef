//! Devices: the registry that maps a certificate to its device, inventory, revocation and
//! removal (S8) with their seats given back (L15). Enrollment is in `enroll`.

use super::backend::Tx;
use super::holds::{GaveBack, give_back_all};
use super::{Store, StoreError};

/// Gives back every seat of a device that loses them: held for offline grants (L15), or
/// freed at once when an administrator says so.
async fn give_back_seats(
    tx: &mut Tx<'_>,
    id: &str,
    now: i64,
    reason: &str,
    grant_ttl: i64,
    free_now: bool,
) -> Result<Vec<(String, GaveBack)>, StoreError> {
    if free_now {
        let keys = super::seats::release_all_seats(tx, id).await?;
        return Ok(keys.into_iter().map(|k| (k, GaveBack::Released)).collect());
    }
    give_back_all(tx, id, now, reason, grant_ttl).await
}

/// A device as stored.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct DeviceRow {
    /// Device id (`a-…` agent, `g-…` gateway, `admin-…`).
    pub id: String,
    /// agent | gateway | admin.
    pub role: String,
    /// Hex SHA-256 of its current certificate.
    pub cert_sha256: String,
    /// Administration group.
    pub group_path: String,
    /// Machine identity reported by the device.
    pub machine_id: String,
    /// Host name.
    pub hostname: String,
    /// Operating system.
    pub os: String,
    /// Agent version.
    pub agent_version: String,
    /// Comma-separated addresses.
    pub addresses: String,
    /// Unix seconds.
    pub enrolled_at: i64,
    /// Unix seconds of the last session activity.
    pub last_seen: i64,
    /// Set when revoked.
    pub revoked_at: Option<i64>,
    /// licensed | unlicensed | unknown.
    pub licence_state: String,
    /// Key licensing it.
    pub licence_key: Option<String>,
    /// Why unlicensed.
    pub licence_reason: String,
    /// Unix seconds of the last licence check.
    pub last_check_at: i64,
    /// How it last connected.
    pub path: String,
    /// The server instance holding its session or uplink now (P2), empty when none does.
    pub held_by: String,
}

/// A device row with the instance holding it (`held` is written by running instances only;
/// rows of an instance gone for good are purged by the others' heartbeats).
pub(super) const SELECT_DEVICE: &str =
    "SELECT d.id, d.role, d.cert_sha256, d.group_path, d.machine_id,
        d.hostname, d.os, d.agent_version, d.addresses, d.enrolled_at, d.last_seen, d.revoked_at,
        d.licence_state, d.licence_key, d.licence_reason, d.last_check_at, d.path,
        COALESCE(i.name, '') AS held_by
    FROM devices d LEFT JOIN held h ON h.device_id = d.id
    LEFT JOIN instances i ON i.id = h.instance";

impl Store {
    /// The device holding the certificate with this fingerprint.
    pub async fn device_by_cert(&self, cert_sha256: &str) -> Result<Option<DeviceRow>, StoreError> {
        let row = sqlx::query_as::<_, DeviceRow>(sqlx::AssertSqlSafe(format!(
            "{SELECT_DEVICE} WHERE d.cert_sha256 = $1"
        )))
        .bind(cert_sha256)
        .fetch_optional(&self.read)
        .await?;
        Ok(row)
    }

    /// One device by id.
    pub async fn device(&self, id: &str) -> Result<Option<DeviceRow>, StoreError> {
        let row = sqlx::query_as::<_, DeviceRow>(sqlx::AssertSqlSafe(format!(
            "{SELECT_DEVICE} WHERE d.id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.read)
        .await?;
        Ok(row)
    }

    /// Devices by role and state (`active`, `revoked`), counted (metrics).
    pub async fn device_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT role, CASE WHEN revoked_at IS NULL THEN 'active' ELSE 'revoked' END AS state,
                    COUNT(*) FROM devices GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .fetch_all(&self.read)
        .await?)
    }

    /// All devices, optionally of one role, ordered by id.
    pub async fn devices(&self, role: Option<&str>) -> Result<Vec<DeviceRow>, StoreError> {
        let rows = sqlx::query_as::<_, DeviceRow>(sqlx::AssertSqlSafe(format!(
            "{SELECT_DEVICE} WHERE ($1 = '' OR d.role = $1) ORDER BY d.id"
        )))
        .bind(role.unwrap_or(""))
        .fetch_all(&self.read)
        .await?;
        Ok(rows)
    }

    /// Registers a device created locally (the admin identity at init).
    pub async fn insert_local_device(
        &self,
        id: &str,
        role: &str,
        cert_sha256: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO devices (id, role, cert_sha256, group_path, enrolled_at)
             VALUES ($1, $2, $3, 'everyone', $4)",
        )
        .bind(id)
        .bind(role)
        .bind(cert_sha256)
        .bind(now)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Records a sync's inventory and the time the device was last seen.
    pub async fn update_inventory(
        &self,
        id: &str,
        inv: &outpost_proto::pb::v1::Inventory,
        path: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE devices SET hostname = $2, os = $3, agent_version = $4, addresses = $5,
                    last_seen = $6, path = $7
             WHERE id = $1",
        )
        .bind(id)
        .bind(&inv.hostname)
        .bind(&inv.os)
        .bind(&inv.agent_version)
        .bind(outpost_proto::discovery::addresses_of(inv))
        .bind(now)
        .bind(path)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Marks a device seen now (gateways, admins).
    pub async fn touch(&self, id: &str, path: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE devices SET last_seen = $2, path = $3 WHERE id = $1")
            .bind(id)
            .bind(now)
            .bind(path)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Revokes a device (S8): its next connect is refused; its seats are freed, or held while
    /// it may still hold unexpired grants offline (L15) unless `free_now`. Returns each key
    /// and what became of its seat.
    pub async fn revoke_device(
        &self,
        id: &str,
        now: i64,
        grant_ttl: i64,
        free_now: bool,
    ) -> Result<Vec<(String, GaveBack)>, StoreError> {
        let mut tx = self.write.begin().await?;
        let r = sqlx::query(
            "UPDATE devices SET revoked_at = $2, licence_state = 'unlicensed', licence_key = NULL,
                    licence_reserve_key = NULL, licence_reason = 'revoked'
             WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            let exists: Option<(String,)> = sqlx::query_as("SELECT id FROM devices WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            return Err(match exists {
                Some(_) => StoreError::Conflict(format!("device {id} is already revoked")),
                None => StoreError::NotFound(format!("no device {id} (see `admin device list`)")),
            });
        }
        let seats = give_back_seats(&mut tx, id, now, "revoked", grant_ttl, free_now).await?;
        tx.commit().await?;
        self.licence_changed();
        Ok(seats)
    }

    /// Removes a device record (S8); its seats are freed, or held while it may still hold
    /// unexpired grants offline (L15) unless `free_now`. Returns each key and what became of
    /// its seat.
    pub async fn remove_device(
        &self,
        id: &str,
        now: i64,
        grant_ttl: i64,
        free_now: bool,
    ) -> Result<Vec<(String, GaveBack)>, StoreError> {
        let mut tx = self.write.begin().await?;
        let seats = give_back_seats(&mut tx, id, now, "removed", grant_ttl, free_now).await?;
        let r = sqlx::query("DELETE FROM devices WHERE id = $1 AND role <> 'admin'")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "no removable device {id} (see `admin device list`)"
            )));
        }
        tx.commit().await?;
        self.licence_changed();
        Ok(seats)
    }

    /// Frees at once the seats held for a revoked or removed device's offline grants (an
    /// administrator's override, L15). Returns the keys.
    pub async fn free_held_seats(&self, id: &str) -> Result<Vec<String>, StoreError> {
        self.grants_dropped(id, "").await
    }

    /// Moves a device to another group.
    pub async fn move_device(&self, id: &str, group: &str) -> Result<(), StoreError> {
        let group = self.resolve_group(group).await?;
        let r = sqlx::query("UPDATE devices SET group_path = $2 WHERE id = $1")
            .bind(id)
            .bind(&group)
            .execute(&self.write)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("no device {id}")));
        }
        self.licence_changed();
        Ok(())
    }
}

/// Certificates of the registry (S9).
impl Store {
    /// Records a renewed certificate for `id`; the current one stays valid until the device
    /// first connects with the new one ([`Store::promote_cert`]).
    pub async fn set_next_cert(
        &self,
        id: &str,
        cert: &super::IssuedCert,
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        let done = sqlx::query(
            "UPDATE devices SET next_cert_sha256 = $2, next_cert_expires_at = $3,
                    next_cert_ca_sha256 = $4
             WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(&cert.sha256)
        .bind(cert.expires_at)
        .bind(&cert.ca_sha256)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::NotFound(format!(
                "device {id} (removed or revoked meanwhile)"
            )));
        }
        tx.commit().await?;
        Ok(())
    }

    /// A device connected with its renewed certificate: it becomes the current one and the
    /// old one is no longer accepted. Returns the device as updated.
    pub async fn promote_cert(&self, next_sha256: &str) -> Result<Option<DeviceRow>, StoreError> {
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "UPDATE devices SET cert_sha256 = next_cert_sha256, cert_expires_at = next_cert_expires_at,
                    cert_ca_sha256 = next_cert_ca_sha256, next_cert_sha256 = NULL,
                    next_cert_expires_at = 0, next_cert_ca_sha256 = ''
             WHERE next_cert_sha256 = $1",
        )
        .bind(next_sha256)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.device_by_cert(next_sha256).await
    }

    /// Whether a certificate is a renewed one not used yet.
    pub async fn is_next_cert(&self, sha256: &str) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM devices WHERE next_cert_sha256 = $1")
            .bind(sha256)
            .fetch_one(&self.read)
            .await?;
        Ok(n > 0)
    }

    /// Active devices whose certificate was not issued by the CA `ca_sha256` (a roll-over
    /// waits for them), with the soonest certificate expiry of all active devices.
    pub async fn cert_summary(&self, ca_sha256: &str) -> Result<CertSummary, StoreError> {
        let (on_other_ca, soonest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COALESCE(CAST(SUM(CASE WHEN cert_ca_sha256 <> $1 THEN 1 ELSE 0 END) AS BIGINT), 0),
                    MIN(CASE WHEN cert_expires_at > 0 THEN cert_expires_at END)
             FROM devices WHERE revoked_at IS NULL",
        )
        .bind(ca_sha256)
        .fetch_one(&self.read)
        .await?;
        let waiting: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM devices WHERE revoked_at IS NULL AND cert_ca_sha256 <> $1
             ORDER BY id LIMIT 10",
        )
        .bind(ca_sha256)
        .fetch_all(&self.read)
        .await?;
        Ok(CertSummary {
            on_other_ca: on_other_ca as u64,
            first_on_other_ca: waiting,
            soonest_expiry: soonest.unwrap_or(0),
        })
    }
}

/// Certificates across the registry (S9), for `status` and the roll-over.
#[derive(Debug, Clone, Default)]
pub struct CertSummary {
    /// Active devices holding a certificate from another CA than the one asked about.
    pub on_other_ca: u64,
    /// The first ten of them.
    pub first_on_other_ca: Vec<String>,
    /// The soonest expiry of an active device's certificate (0: none known).
    pub soonest_expiry: i64,
}

impl Store {
    /// Records the expiry and issuing CA of a device's current certificate (devices created
    /// locally, like the admin identity).
    pub async fn record_cert(
        &self,
        id: &str,
        expires_at: i64,
        ca_sha256: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE devices SET cert_expires_at = $2, cert_ca_sha256 = $3 WHERE id = $1")
            .bind(id)
            .bind(expires_at)
            .bind(ca_sha256)
            .execute(&self.write)
            .await?;
        Ok(())
    }
}
