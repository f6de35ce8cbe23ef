//! The receiver's side of leases (H5–H8): grants taken from a neighbour, the key they carry
//! stored with origin `neighbour`, renewal requests, and the seats brought in line with what
//! is held.

use outpost_proto::lease::{LeaseGrant, Received, RenewRequest};
use outpost_proto::licence::LicenceKey;
use outpost_proto::pb::v1::KeyKind;

use super::super::backend::Tx;
use super::super::{Store, StoreError};

impl Store {
    /// The newest grant of every lease held from `server`.
    pub async fn received_grants(&self, server: &str) -> Result<Vec<LeaseGrant>, StoreError> {
        let rows: Vec<(String, String, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT id, key_id, seq, seats, period_end, end_at FROM leases_received
             WHERE server = $1 ORDER BY id",
        )
        .bind(server)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(lease_id, key_id, seq, seats, period_end, end_at)| LeaseGrant {
                    lease_id,
                    key_id,
                    seq: seq as u64,
                    seats: seats as u32,
                    period_end,
                    end_at,
                },
            )
            .collect())
    }

    /// The renewal requests due for leases held from `server` (half-way to the period end
    /// since the grant arrived, [`Received::renewal_at`]; a lapsed one is asked for too: the
    /// giver decides); with `all`, every lease there is something to renew on (a periodic
    /// contact). Leases of a key being replaced by its renewal (L11) are not renewed.
    pub async fn renewals_due(
        &self,
        server: &str,
        now: i64,
        all: bool,
    ) -> Result<Vec<RenewRequest>, StoreError> {
        let rows: Vec<(String, String, i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT id, key_id, seq, seats, period_end, end_at, received_at FROM leases_received r
             WHERE server = $1 AND seats > 0 AND period_end < end_at
               AND EXISTS (SELECT 1 FROM licence_keys k
                           WHERE k.id = r.key_id AND k.retiring_for IS NULL)",
        )
        .bind(server)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(lease_id, key_id, seq, seats, period_end, end_at, at)| {
                let r = Received::new(LeaseGrant {
                    lease_id,
                    key_id,
                    seq: seq as u64,
                    seats: seats as u32,
                    period_end,
                    end_at,
                });
                (all || now >= r.renewal_at(at)?).then(|| r.renew_request())
            })
            .collect())
    }

    /// Takes a grant from the neighbour `server` (whose key file the caller verified). A
    /// repeated or late grant changes nothing; with `overrule` (the giver's figures at a sync,
    /// H8) the giver's grant replaces whatever is recorded. Returns whether anything changed.
    pub async fn take_grant(
        &self,
        server: &str,
        grant: &LeaseGrant,
        key: &LicenceKey,
        overrule: bool,
        now: i64,
    ) -> Result<bool, StoreError> {
        let b = &key.body;
        if b.key_id != grant.key_id {
            return Err(StoreError::Invalid(format!(
                "lease {} is for key {} but carries the file of key {}",
                grant.lease_id, grant.key_id, b.key_id
            )));
        }
        let mut tx = self.write.begin().await?;
        let held: Option<(i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT seq, seats, period_end, end_at FROM leases_received WHERE server = $1 AND id = $2",
        )
        .bind(server)
        .bind(&grant.lease_id)
        .fetch_optional(&mut *tx)
        .await?;
        let changed = match held {
            None => true,
            Some((seq, seats, period_end, end_at)) => {
                let mut r = Received::new(LeaseGrant {
                    lease_id: grant.lease_id.clone(),
                    key_id: grant.key_id.clone(),
                    seq: seq as u64,
                    seats: seats as u32,
                    period_end,
                    end_at,
                });
                if overrule {
                    r.overrule(grant)
                } else {
                    r.on_grant(grant)
                }
            }
        };
        if !changed {
            return Ok(false);
        }
        let origin: Option<(String,)> =
            sqlx::query_as("SELECT origin FROM licence_keys WHERE id = $1")
                .bind(&b.key_id)
                .fetch_optional(&mut *tx)
                .await?;
        match origin {
            Some((o,)) if o != "neighbour" => {
                return Err(StoreError::Conflict(format!(
                    "key {} is in this server's own repository; a lease of it from {server} is refused",
                    b.key_id
                )));
            }
            Some(_) => {}
            // A withdrawal (seats 0) of a lease of a key no longer here — removed after its
            // renewal took over (L11) — is recorded, but brings no key back.
            None if grant.seats == 0 => {}
            None => {
                let file = String::from_utf8(key.file.clone())
                    .map_err(|_| StoreError::Invalid("key file is not UTF-8".into()))?;
                sqlx::query(
                    "INSERT INTO licence_keys (id, licensee, product, components, seats, valid_from,
                         expires_at, kind, renews, auto_distribute, origin, file_name, file,
                         imported_at, usable_until)
                     VALUES ($1, $2, $3, $4, 0, $5, $6, $7, $8, 0, 'neighbour', $9, $10, $11, $11)",
                )
                .bind(&b.key_id)
                .bind(&b.licensee)
                .bind(&b.product)
                .bind(b.components.join(","))
                .bind(b.valid_from)
                .bind(b.expires_at)
                .bind(if b.kind == KeyKind::Demo { "demo" } else { "commercial" })
                .bind(&b.renews)
                .bind(format!("{}.key (leased from {server})", b.key_id))
                .bind(file)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                // Seats that come down the tree are for this server's devices: everyone,
                // until its administrator assigns the key otherwise.
                sqlx::query(
                    "INSERT INTO key_assignments (key_id, object) VALUES ($1, 'group:everyone')",
                )
                .bind(&b.key_id)
                .execute(&mut *tx)
                .await?;
            }
        }
        sqlx::query(
            "INSERT INTO leases_received (server, id, key_id, seq, seats, period_end, end_at, received_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (server, id) DO UPDATE SET seq = excluded.seq, seats = excluded.seats,
                 period_end = excluded.period_end, end_at = excluded.end_at,
                 received_at = excluded.received_at",
        )
        .bind(server)
        .bind(&grant.lease_id)
        .bind(&grant.key_id)
        .bind(grant.seq as i64)
        .bind(i64::from(grant.seats))
        .bind(grant.period_end)
        .bind(grant.end_at)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        settle_received_key(&mut tx, &grant.key_id, now).await?;
        tx.commit().await?;
        self.licence_changed();
        Ok(true)
    }

    /// Drops leases held from `server` that the giver no longer lists (H8: its figure wins).
    /// Returns the ids dropped.
    pub async fn drop_unlisted_received(
        &self,
        server: &str,
        listed: &[String],
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        let held = self.received_grants(server).await?;
        let gone: Vec<LeaseGrant> = held
            .into_iter()
            .filter(|g| !listed.contains(&g.lease_id))
            .collect();
        if gone.is_empty() {
            return Ok(vec![]);
        }
        let mut tx = self.write.begin().await?;
        for g in &gone {
            sqlx::query("DELETE FROM leases_received WHERE server = $1 AND id = $2")
                .bind(server)
                .bind(&g.lease_id)
                .execute(&mut *tx)
                .await?;
            settle_received_key(&mut tx, &g.key_id, now).await?;
        }
        tx.commit().await?;
        self.licence_changed();
        Ok(gone.into_iter().map(|g| g.lease_id).collect())
    }
}

/// Brings a leased key in line with the leases it is held on: `seats` the seats usable now
/// (never below what this server passed on), `usable_until` the earliest period end; seats
/// beyond the count are taken back from devices (holds first, then the newest seats).
pub(in crate::store) async fn settle_received_key(
    tx: &mut Tx<'_>,
    key_id: &str,
    now: i64,
) -> Result<(), StoreError> {
    let (usable, until): (Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT CAST(SUM(seats) AS BIGINT), MIN(period_end) FROM leases_received
         WHERE key_id = $1 AND period_end > $2 AND seats > 0",
    )
    .bind(key_id)
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    let usable = usable.unwrap_or(0);
    let until = until.unwrap_or(now);
    let Some((used, leased)): Option<(i64, i64)> = sqlx::query_as(
        "SELECT seats_used, seats_leased_out FROM licence_keys WHERE id = $1 AND origin = 'neighbour'",
    )
    .bind(key_id)
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Ok(());
    };
    let target = usable.max(leased);
    let excess = used + leased - target;
    if excess > 0 {
        // Holds first: their grants were issued for a period the giver still counts.
        let holds = take_back(tx, NEWEST_HOLDS, key_id, excess).await?;
        let seats = take_back(tx, NEWEST_SEATS, key_id, excess - holds).await?;
        let freed = holds + seats;
        sqlx::query("UPDATE licence_keys SET seats_used = seats_used - $2 WHERE id = $1")
            .bind(key_id)
            .bind(freed)
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query("UPDATE licence_keys SET seats = $2, usable_until = $3 WHERE id = $1")
        .bind(key_id)
        .bind(target)
        .bind(until)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

const NEWEST_HOLDS: &str = "DELETE FROM seat_holds WHERE key_id = $1 AND device_id IN
    (SELECT device_id FROM seat_holds WHERE key_id = $1 ORDER BY since_ms DESC LIMIT $2)";
const NEWEST_SEATS: &str = "DELETE FROM seats WHERE key_id = $1 AND device_id IN
    (SELECT device_id FROM seats WHERE key_id = $1 ORDER BY taken_at DESC, device_id LIMIT $2)";

/// Runs one of the deletes above for `n` rows of key `key_id`; returns how many went.
async fn take_back(
    tx: &mut Tx<'_>,
    delete: &'static str,
    key_id: &str,
    n: i64,
) -> Result<i64, StoreError> {
    if n <= 0 {
        return Ok(0);
    }
    let r = sqlx::query(delete)
        .bind(key_id)
        .bind(n)
        .execute(&mut **tx)
        .await?;
    Ok(r.rows_affected() as i64)
}
