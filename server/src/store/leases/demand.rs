//! Leases that follow demand (L4 `server:<name>`, L8, L9), both sides: the receiver counts what
//! its devices need from each neighbour it receives from; the giver records it and sizes the
//! leases that follow demand with `outpost_proto::lease::demand` — a key assigned to
//! `server:<name>`, and, for a secondary holding no key it can license with, the
//! auto-distributed keys.

use outpost_proto::lease::demand::{Need, follow};
use outpost_proto::lease::{Given, LeaseGrant, Terms};
use outpost_proto::licence::Object;
use outpost_proto::pb::v1::{KeyNeed, SeatNeeds};

use super::super::backend::Tx;
use super::super::{Store, StoreError};
use super::{insert_given, load_given, save_given, source};

impl Store {
    /// What this server's devices need from the neighbour `giver` (sent to it, L9).
    pub async fn seat_needs(&self, giver: &str, now: i64) -> Result<SeatNeeds, StoreError> {
        let keys: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT k.id, k.seats_used + k.seats_leased_out,
                    (SELECT COUNT(*) FROM devices d WHERE d.licence_state = 'unlicensed'
                       AND d.revoked_at IS NULL AND d.licence_wanted_key = k.id)
             FROM licence_keys k
             WHERE k.id IN (SELECT key_id FROM leases_received WHERE server = $1)
             ORDER BY k.id",
        )
        .bind(giver)
        .fetch_all(&self.read)
        .await?;
        // Unlicensed for want of a key, or of a seat on a key not from the giver (a key the
        // giver sends would be a candidate beside it: assigned to everyone on arrival).
        let (without_key,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM devices WHERE licence_state = 'unlicensed' AND revoked_at IS NULL
               AND (licence_wanted_key IS NULL OR licence_wanted_key NOT IN
                    (SELECT key_id FROM leases_received WHERE server = $1))",
        )
        .bind(giver)
        .fetch_one(&self.read)
        .await?;
        let has_key: Option<(i64,)> = sqlx::query_as(
            "SELECT 1 FROM licence_keys WHERE seats > 0 AND expires_at > $1
               AND (usable_until IS NULL OR usable_until > $1) AND retiring_for IS NULL LIMIT 1",
        )
        .bind(now)
        .fetch_optional(&self.read)
        .await?;
        Ok(SeatNeeds {
            without_key: without_key as u32,
            has_key: has_key.is_some(),
            keys: keys
                .into_iter()
                .map(|(key_id, used, wanted)| KeyNeed {
                    key_id,
                    used: used as u32,
                    wanted: wanted as u32,
                })
                .collect(),
        })
    }

    /// Records what the neighbour `server` reported it needs.
    pub async fn record_needs(
        &self,
        server: &str,
        needs: &SeatNeeds,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        sqlx::query("UPDATE servers SET wants = $2, has_key = $3, wants_at = $4 WHERE name = $1")
            .bind(server)
            .bind(i64::from(needs.without_key))
            .bind(i64::from(needs.has_key))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE leases_given SET needed = 0 WHERE server = $1")
            .bind(server)
            .execute(&mut *tx)
            .await?;
        for k in &needs.keys {
            sqlx::query("UPDATE leases_given SET needed = $3 WHERE server = $1 AND key_id = $2")
                .bind(server)
                .bind(&k.key_id)
                .bind(i64::from(k.used) + i64::from(k.wanted))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Sizes the leases to `server` that follow demand to what it last reported, as seats are
    /// free here (L9); gives a lease of each key assigned to it that it needs and has none of
    /// (L4), and — to a secondary holding no key it can license with — of an auto-distributed
    /// key (L8). New leases are granted for `period_secs` at a time. Returns the grants to send.
    pub async fn follow_demand(
        &self,
        server: &str,
        period_secs: i64,
        now: i64,
    ) -> Result<Vec<LeaseGrant>, StoreError> {
        let mut tx = self.write.begin().await?;
        let Some((kind, without_key, has_key)): Option<(String, i64, i64)> =
            sqlx::query_as("SELECT kind, wants, has_key FROM servers WHERE name = $1")
                .bind(server)
                .fetch_optional(&mut *tx)
                .await?
        else {
            return Ok(vec![]);
        };
        let mut without_key = without_key.max(0) as u32;
        let mut grants = vec![];
        let open: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT g.id, g.follows,
                    CASE WHEN EXISTS (SELECT 1 FROM key_assignments a
                                      WHERE a.key_id = g.key_id AND a.object = $3)
                         THEN 1 ELSE 0 END
             FROM leases_given g
             WHERE g.server = $1 AND g.follows != '' AND g.revoked = 0 AND g.end_at > $2
             ORDER BY g.key_id, g.id",
        )
        .bind(server)
        .bind(now)
        .bind(Object::Server(server.to_owned()).stored())
        .fetch_all(&mut *tx)
        .await?;
        for (id, follows, assigned) in &open {
            let (mut g, _, held) = load_given(&mut tx, id).await?;
            let need = need(&mut tx, server, &g.key_id, id, without_key).await?;
            without_key = 0;
            let src = source(&mut tx, &g.key_id, now).await?;
            let seats = if follows == "assigned" && *assigned == 0 {
                0 // the assignment was removed: the lease ends
            } else {
                follow(g.seats, need, src.free)
            };
            let grant = if seats == 0 {
                Some(g.revoke(now))
            } else if seats != g.seats {
                let terms = Terms {
                    seats,
                    end_at: g.end_at,
                    period_secs: g.period_secs,
                };
                g.change(terms, src.free, src.cap, now).ok()
            } else {
                None
            };
            if let Some(grant) = grant {
                save_given(&mut tx, &g, held, now).await?;
                grants.push(grant);
            }
        }
        // Keys assigned to the neighbour it has no lease of yet (L4), then, for a secondary with
        // no key at all, the auto-distributed keys (L8): the first with free seats.
        let assigned: Vec<(String,)> = sqlx::query_as(
            "SELECT a.key_id FROM key_assignments a JOIN licence_keys k ON k.id = a.key_id
             WHERE a.object = $1 AND k.expires_at > $3 AND k.retiring_for IS NULL
               AND NOT EXISTS (SELECT 1 FROM leases_given g WHERE g.server = $2
                               AND g.key_id = a.key_id AND g.revoked = 0 AND g.end_at > $3)
             ORDER BY a.key_id",
        )
        .bind(Object::Server(server.to_owned()).stored())
        .bind(server)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut new: Vec<(String, &str)> =
            assigned.into_iter().map(|(k,)| (k, "assigned")).collect();
        if kind == "secondary" && has_key == 0 && open.is_empty() && new.is_empty() {
            let auto: Vec<(String,)> = sqlx::query_as(
                "SELECT id FROM licence_keys
                 WHERE auto_distribute = 1 AND expires_at > $1 AND retiring_for IS NULL
                   AND seats > seats_used + seats_leased_out
                 ORDER BY expires_at DESC, id LIMIT 1",
            )
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            new.extend(auto.into_iter().map(|(k,)| (k, "auto")));
        }
        for (key, follows) in new {
            let need = need(&mut tx, server, &key, "", without_key).await?;
            let src = source(&mut tx, &key, now).await?;
            let seats = follow(0, need, src.free);
            if seats == 0 {
                continue;
            }
            without_key = 0;
            let terms = Terms {
                seats,
                end_at: src.cap.end_at,
                period_secs,
            };
            let id = format!("lease-{:016x}", rand::random::<u64>());
            let Ok((g, grant)) = Given::give(&id, &key, terms, src.free, src.cap, now) else {
                continue;
            };
            insert_given(&mut tx, &g, server, follows, None, now).await?;
            grants.push(grant);
        }
        tx.commit().await?;
        if !grants.is_empty() {
            self.licence_changed();
        }
        Ok(grants)
    }
}

/// The need a demand lease `lease` (or a new one: `""`) of `key` to `server` covers.
async fn need(
    tx: &mut Tx<'_>,
    server: &str,
    key: &str,
    lease: &str,
    without_key: u32,
) -> Result<u32, StoreError> {
    let (needed, fixed): (Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT MAX(needed), CAST(SUM(CASE WHEN follows = '' AND id != $3 THEN seats ELSE 0 END) AS BIGINT)
         FROM leases_given WHERE server = $1 AND key_id = $2 AND revoked = 0",
    )
    .bind(server)
    .bind(key)
    .bind(lease)
    .fetch_one(&mut **tx)
    .await?;
    Ok(Need {
        on_key: needed.unwrap_or(0).max(0) as u32,
        without_key,
        fixed: fixed.unwrap_or(0).max(0) as u32,
    }
    .seats())
}
