//! Enrollment (S6) and one record per machine (S7).
//!
//! A device joins with a token; the server issues its certificate. A machine that enrolls
//! again with the same machine identity (re-imaged, reinstalled) takes over its old record and
//! seat instead of holding a second licence — but never while the old record has a live
//! session (two machines claiming one identity: a cloned VM, or someone holding a token and
//! guessing a machine id), never with a token created with takeover disallowed, and always
//! recorded in the notification log with the old and the new certificate.

use outpost_proto::error::RefusalCode;
use outpost_proto::token::{Token, secret_matches};

use super::{Store, StoreError};

/// Inventory of a device enrolling.
#[derive(Debug, Clone, Default)]
pub struct NewDevice {
    /// agent | gateway.
    pub role: String,
    /// Machine identity (S7 key).
    pub machine_id: String,
    /// Host name.
    pub hostname: String,
    /// Operating system.
    pub os: String,
    /// Agent version.
    pub agent_version: String,
    /// Addresses.
    pub addresses: String,
}

/// A certificate the CA issued for a device (S6, S9).
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// Its SHA-256, hex: how the registry knows it.
    pub sha256: String,
    /// Its not-after, Unix seconds.
    pub expires_at: i64,
    /// SHA-256 (hex) of the CA that issued it.
    pub ca_sha256: String,
}

/// Result of an enrollment.
#[derive(Debug, Clone)]
pub struct EnrollOutcome {
    /// Device id (an existing one when the machine took over its old record).
    pub device_id: String,
    /// Group the device belongs to.
    pub group: String,
    /// The issued certificate, DER.
    pub cert_der: Vec<u8>,
    /// The certificate (hex SHA-256) of the record taken over, when one was (S7).
    pub took_over_from: Option<String>,
}

fn new_id(role: &str) -> String {
    let prefix = match role {
        "gateway" => "g",
        "admin" => "admin",
        _ => "a",
    };
    format!("{prefix}-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

fn token_refused(code: RefusalCode, msg: String) -> StoreError {
    StoreError::Token(code, msg)
}

impl Store {
    /// Enrolls a device with a token (S6). `issue` signs the certificate for the chosen device
    /// id and returns it with its fingerprint (hex). `live` says whether a device id has a live
    /// session or uplink now. A machine that enrolled before takes over its record, seats
    /// included (S7), within the safeguards in the module comment; a revoked one is refused.
    pub async fn enroll<F>(
        &self,
        token: &Token,
        new: &NewDevice,
        now: i64,
        live: &(dyn Fn(&str) -> bool + Sync),
        issue: F,
    ) -> Result<EnrollOutcome, StoreError>
    where
        F: FnOnce(&str) -> Result<IssuedCert, String>,
    {
        let mut tx = self.write.begin().await?;
        let row: Option<(String, String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT secret_sha256, role, group_path, expires_at, uses_left, allow_takeover
             FROM tokens WHERE id = $1",
        )
        .bind(&token.id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((secret_hex, role, group, expires_at, uses_left, allow_takeover)) = row else {
            return Err(token_refused(
                RefusalCode::TokenInvalid,
                format!(
                    "enrollment token {token} is unknown to this server (deleted, or created on another server)"
                ),
            ));
        };
        let stored = hex::decode(&secret_hex).unwrap_or_default();
        if !secret_matches(&token.secret, &stored) {
            return Err(token_refused(
                RefusalCode::TokenInvalid,
                format!("enrollment token {token} does not match (mistyped?)"),
            ));
        }
        if now >= expires_at {
            return Err(token_refused(
                RefusalCode::TokenExpired,
                format!(
                    "enrollment token {token} expired at {}; create a new one with `outpost-server admin token create`",
                    outpost_proto::licence::key::format_time(expires_at)
                ),
            ));
        }
        if role != new.role {
            return Err(token_refused(
                RefusalCode::TokenInvalid,
                format!(
                    "enrollment token {token} is for {role} devices, not {}",
                    new.role
                ),
            ));
        }
        if uses_left <= 0 {
            return Err(token_refused(
                RefusalCode::TokenUsedUp,
                format!("enrollment token {token} has no uses left; create a new one"),
            ));
        }
        // S7: the same machine enrolling again takes over its record, within safeguards.
        let existing: Option<(String, Option<i64>, String, String)> = if new.machine_id.is_empty() {
            None
        } else {
            sqlx::query_as(
                "SELECT id, revoked_at, group_path, cert_sha256 FROM devices
                 WHERE role = $1 AND machine_id = $2 ORDER BY enrolled_at DESC LIMIT 1",
            )
            .bind(&new.role)
            .bind(&new.machine_id)
            .fetch_optional(&mut *tx)
            .await?
        };
        let (device_id, group, took_over_from) = match existing {
            Some((id, Some(_), _, _)) => {
                return Err(StoreError::Revoked(format!(
                    "this machine was enrolled as device {id}, which is revoked; remove it first \
                     (`outpost-server admin device remove {id}`) to enroll it again"
                )));
            }
            Some((id, None, _, _)) if allow_takeover == 0 => {
                return Err(StoreError::Conflict(format!(
                    "machine id {:?} is already enrolled as device {id}, and token {token} does not \
                     allow taking over an existing record: remove the device first \
                     (`outpost-server admin device remove {id}`) or use a token created without --no-takeover",
                    new.machine_id
                )));
            }
            Some((id, None, _, _)) if live(&id) => {
                return Err(StoreError::Conflict(format!(
                    "machine id {:?} is enrolled as device {id}, which is connected right now: a \
                     second machine with the same machine id (a cloned VM?) cannot take it over. \
                     Give this machine its own identity (--machine-id, or a fresh /etc/machine-id), \
                     or stop the other one first",
                    new.machine_id
                )));
            }
            Some((id, None, g, old_cert)) => (id, g, Some(old_cert)),
            None => (new_id(&new.role), group, None),
        };
        let cert = issue(&device_id).map_err(StoreError::Invalid)?;
        let fp = cert.sha256.clone();
        let used = sqlx::query(
            "UPDATE tokens SET uses_left = uses_left - 1 WHERE id = $1 AND uses_left > 0",
        )
        .bind(&token.id)
        .execute(&mut *tx)
        .await?;
        if used.rows_affected() != 1 {
            return Err(token_refused(
                RefusalCode::TokenUsedUp,
                format!("enrollment token {token} has no uses left; create a new one"),
            ));
        }
        let notice = if let Some(old_cert) = &took_over_from {
            sqlx::query(
                "UPDATE devices SET cert_sha256 = $2, hostname = $3, os = $4, agent_version = $5,
                        addresses = $6, enrolled_at = $7, next_cert_sha256 = NULL,
                        cert_expires_at = $8, cert_ca_sha256 = $9
                 WHERE id = $1",
            )
            .bind(&device_id)
            .bind(&fp)
            .bind(&new.hostname)
            .bind(&new.os)
            .bind(&new.agent_version)
            .bind(&new.addresses)
            .bind(now)
            .bind(cert.expires_at)
            .bind(&cert.ca_sha256)
            .execute(&mut *tx)
            .await?;
            let what = format!(
                "{} {device_id} (machine id {:?}) was taken over by a new enrollment with token {}: \
                 old certificate {}…, new certificate {}…",
                new.role,
                new.machine_id,
                token.id,
                &old_cert[..old_cert.len().min(16)],
                &fp[..fp.len().min(16)]
            );
            let details = serde_json::json!({
                "device": device_id,
                "role": new.role,
                "machine_id": new.machine_id,
                "old_cert_sha256": old_cert,
                "new_cert_sha256": fp,
                "token": token.id,
                "host": new.hostname,
            });
            let at = now.saturating_mul(1000);
            Some(
                super::notices::insert(&mut tx, "device-taken-over", None, &what, details, at)
                    .await?,
            )
        } else {
            sqlx::query(
                "INSERT INTO devices (id, role, cert_sha256, group_path, machine_id, hostname, os,
                                      agent_version, addresses, enrolled_at, cert_expires_at,
                                      cert_ca_sha256)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(&device_id)
            .bind(&new.role)
            .bind(&fp)
            .bind(&group)
            .bind(&new.machine_id)
            .bind(&new.hostname)
            .bind(&new.os)
            .bind(&new.agent_version)
            .bind(&new.addresses)
            .bind(now)
            .bind(cert.expires_at)
            .bind(&cert.ca_sha256)
            .execute(&mut *tx)
            .await?;
            None
        };
        tx.commit().await?;
        if let Some(n) = notice {
            self.deliver(n);
        }
        Ok(EnrollOutcome {
            device_id,
            group,
            cert_der: cert.der,
            took_over_from,
        })
    }
}
