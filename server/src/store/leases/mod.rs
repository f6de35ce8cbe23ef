//! Licence leases between servers (H5–H8), both sides, as transactions around the state
//! machines of `outpost_proto::lease`.
//!
//! **Giver.** A lease row keeps the giver's machine ([`Given`]) including the grants promised
//! whose period has not ended; `held` is what the lease counts in its key's
//! `seats_leased_out`. Every change moves `seats_leased_out` by the difference with a
//! conditional update, in the same transaction as the row, so the key's CHECK
//! (`seats_used + seats_leased_out <= seats`) holds whatever the caller does.
//!
//! **Receiver.** The newest grant per lease is kept in `leases_received`; the key arrives as
//! its signed file and is stored with origin `neighbour`, its `seats` the seats usable now and
//! `usable_until` the earliest period end among its leases: device grants on it end no later
//! (L7), so L15 holds across the tree. When the seats shrink or the period ends unrenewed,
//! seats beyond the new count are taken back at once; the devices' grants were issued for the
//! old period, which the giver keeps counting until it ends.

use outpost_proto::lease::{Cap, Given, LeaseGrant, RenewRequest, Terms};

use super::backend::Tx;
use super::{Store, StoreError};

mod demand;
mod received;
mod renew;
pub(super) use received::settle_received_key;
pub use renew::HandedOver;

/// What time passing did to leases ([`Store::refresh_leases`]).
#[derive(Debug, Default)]
pub struct Refreshed {
    /// Leases given whose seats all came back: (lease, key, server).
    pub returned: Vec<(String, String, String)>,
    /// Renewed keys removed now that no lease of them is given or held (L11): (old, new).
    pub retired: Vec<(String, String)>,
}

/// A lease for listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The lease id.
    pub id: String,
    /// The neighbour.
    pub server: String,
    /// The key.
    pub key_id: String,
    /// `given` or `received`.
    pub direction: &'static str,
    /// Seats given now.
    pub seats: u32,
    /// Seats the giver counts as away (given: `held`; received: usable now).
    pub held: u32,
    /// End date.
    pub end_at: i64,
    /// End of the current period.
    pub period_end: i64,
    /// Sequence number of the newest grant.
    pub seq: u64,
    /// Revoked by the giver's administrator.
    pub revoked: bool,
    /// Given leases whose seats follow demand: `assigned` (L4) or `auto` (L8); else ''.
    pub follows: String,
}

type GivenRow = (
    String,
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    String,
    i64,
);

macro_rules! given_columns {
    () => {
        "id, key_id, server, seats, end_at, period_secs, seq, period_end, revoked, promised, held"
    };
}

fn restore(r: &GivenRow) -> Given {
    let promised =
        r.9.split(',')
            .filter_map(|p| {
                let (s, u) = p.split_once(':')?;
                Some((s.parse().ok()?, u.parse().ok()?))
            })
            .collect();
    Given::restore(
        &r.0,
        &r.1,
        Terms {
            seats: r.3 as u32,
            end_at: r.4,
            period_secs: r.5,
        },
        r.6 as u64,
        r.7,
        r.8 == 1,
        promised,
    )
}

fn promised_text(g: &Given) -> String {
    g.promised()
        .iter()
        .map(|(s, u)| format!("{s}:{u}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The key a lease is given from, with how far the giver can promise.
struct Source {
    free: u32,
    cap: Cap,
    /// For a key this server holds on a lease itself: the seats it may pass on.
    leased_seats: Option<u32>,
}

async fn source(tx: &mut Tx<'_>, key_id: &str, now: i64) -> Result<Source, StoreError> {
    let row: Option<(i64, i64, i64, i64, String, Option<i64>)> = sqlx::query_as(
        "SELECT seats, seats_used, seats_leased_out, expires_at, origin, usable_until
         FROM licence_keys WHERE id = $1",
    )
    .bind(key_id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((seats, used, leased, expires, origin, usable)) = row else {
        return Err(StoreError::NotFound(format!(
            "key {key_id} is not in this server's repository (`key list` shows them)"
        )));
    };
    let free = (seats - used - leased).max(0) as u32;
    if origin != "neighbour" {
        return Ok(Source {
            free,
            cap: Cap::key(expires),
            leased_seats: None,
        });
    }
    // Seats held on a lease (a chain): no further than this server's own lease.
    let (end, seats_held): (Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT MAX(end_at), CAST(SUM(seats) AS BIGINT) FROM leases_received WHERE key_id = $1 AND period_end > $2",
    )
    .bind(key_id)
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    let until = usable.unwrap_or(now);
    Ok(Source {
        free,
        cap: Cap {
            end_at: end.unwrap_or(now).min(expires),
            period_end: until.min(expires),
        },
        leased_seats: Some(seats_held.unwrap_or(0) as u32),
    })
}

/// Writes a giver's lease after a transition and moves its key's `seats_leased_out` by the
/// change in `held` (conditionally: never past the key's seats).
async fn save_given(tx: &mut Tx<'_>, g: &Given, old_held: u32, now: i64) -> Result<(), StoreError> {
    let held = g.held(now);
    let delta = i64::from(held) - i64::from(old_held);
    if delta != 0 {
        let n = sqlx::query(
            "UPDATE licence_keys SET seats_leased_out = seats_leased_out + $2
             WHERE id = $1 AND seats_used + seats_leased_out + $2 <= seats
               AND seats_leased_out + $2 >= 0",
        )
        .bind(&g.key_id)
        .bind(delta)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::Conflict(format!(
                "key {} has no {delta} free seat(s) left for lease {} (taken meanwhile); try again",
                g.key_id, g.lease_id
            )));
        }
    }
    sqlx::query(
        "UPDATE leases_given SET seats = $2, end_at = $3, period_secs = $4, seq = $5,
                period_end = $6, revoked = $7, promised = $8, held = $9
         WHERE id = $1",
    )
    .bind(&g.lease_id)
    .bind(i64::from(g.seats))
    .bind(g.end_at)
    .bind(g.period_secs)
    .bind(g.seq as i64)
    .bind(g.period_end)
    .bind(i64::from(g.revoked))
    .bind(promised_text(g))
    .bind(i64::from(held))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Inserts a new lease given with its first grant's state; `follows` and `replaces` as in
/// migration 0008.
async fn insert_given(
    tx: &mut Tx<'_>,
    g: &Given,
    server: &str,
    follows: &str,
    replaces: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(concat!(
        "INSERT INTO leases_given (",
        given_columns!(),
        ", created_at, follows, replaces)
         VALUES ($1, $2, $3, 0, 0, 0, 0, 0, 0, '', 0, $4, $5, $6)"
    ))
    .bind(&g.lease_id)
    .bind(&g.key_id)
    .bind(server)
    .bind(now)
    .bind(follows)
    .bind(replaces)
    .execute(&mut **tx)
    .await?;
    save_given(tx, g, 0, now).await
}

async fn load_given(tx: &mut Tx<'_>, id: &str) -> Result<(Given, String, u32), StoreError> {
    let r: Option<GivenRow> = sqlx::query_as(concat!(
        "SELECT ",
        given_columns!(),
        " FROM leases_given WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    let r = r.ok_or_else(|| {
        StoreError::NotFound(format!(
            "no lease {id} given by this server (`lease list` shows them)"
        ))
    })?;
    Ok((restore(&r), r.2.clone(), r.10 as u32))
}

fn lease_err(e: outpost_proto::lease::LeaseError) -> StoreError {
    StoreError::Invalid(e.to_string())
}

impl Store {
    /// Gives `seats` seats of `key_id` to the neighbour `server` until `end_at` (H5), granted
    /// for `period_secs` at a time (H6). Returns the first grant, to send.
    pub async fn give_lease(
        &self,
        server: &str,
        key_id: &str,
        terms: Terms,
        now: i64,
    ) -> Result<LeaseGrant, StoreError> {
        let relation = self.server(server).await?;
        if !relation.may_give() {
            return Err(StoreError::Invalid(match relation.kind.as_str() {
                "primary" => format!(
                    "{server} is this server's primary: seats come down from it, not up to it"
                ),
                _ => format!(
                    "the relation with peer {server} does not send licences from this side \
                     (re-add it with --send)"
                ),
            }));
        }
        let mut tx = self.write.begin().await?;
        let src = source(&mut tx, key_id, now).await?;
        let id = format!("lease-{:016x}", rand::random::<u64>());
        let (g, grant) =
            Given::give(&id, key_id, terms, src.free, src.cap, now).map_err(lease_err)?;
        insert_given(&mut tx, &g, server, "", None, now).await?;
        tx.commit().await?;
        self.licence_changed();
        Ok(grant)
    }

    /// Changes a lease's seats and/or end date (H5). Returns the neighbour and the grant to
    /// send. Fewer seats come back when the periods already promised end.
    pub async fn change_lease(
        &self,
        id: &str,
        seats: Option<u32>,
        end_at: Option<i64>,
        now: i64,
    ) -> Result<(String, LeaseGrant), StoreError> {
        let mut tx = self.write.begin().await?;
        let (mut g, server, old) = load_given(&mut tx, id).await?;
        let src = source(&mut tx, &g.key_id, now).await?;
        let terms = Terms {
            seats: seats.unwrap_or(g.seats),
            end_at: end_at.unwrap_or(g.end_at),
            period_secs: g.period_secs,
        };
        let grant = g.change(terms, src.free, src.cap, now).map_err(lease_err)?;
        save_given(&mut tx, &g, old, now).await?;
        tx.commit().await?;
        self.licence_changed();
        Ok((server, grant))
    }

    /// Revokes a lease: no more renewals, the neighbour is told; the seats come back when the
    /// current period ends.
    pub async fn revoke_lease(
        &self,
        id: &str,
        now: i64,
    ) -> Result<(String, LeaseGrant), StoreError> {
        let mut tx = self.write.begin().await?;
        let (mut g, server, old) = load_given(&mut tx, id).await?;
        let grant = g.revoke(now);
        save_given(&mut tx, &g, old, now).await?;
        tx.commit().await?;
        Ok((server, grant))
    }

    /// The current grant of every lease given to `server` that is not over (sent on every
    /// connect and at every sync, H8).
    pub async fn given_grants(
        &self,
        server: &str,
        now: i64,
    ) -> Result<Vec<LeaseGrant>, StoreError> {
        let rows: Vec<GivenRow> = sqlx::query_as(concat!(
            "SELECT ",
            given_columns!(),
            " FROM leases_given WHERE server = $1 ORDER BY id"
        ))
        .bind(server)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .iter()
            .map(restore)
            .filter(|g| !g.finished(now))
            .map(|g| g.current())
            .collect())
    }

    /// A receiver's renewal request (H7), idempotent by sequence number.
    pub async fn lease_request(
        &self,
        server: &str,
        req: &RenewRequest,
        now: i64,
    ) -> Result<Option<LeaseGrant>, StoreError> {
        self.renew_lease(&req.lease_id, (server, req), now).await
    }

    async fn renew_lease(
        &self,
        id: &str,
        request: (&str, &RenewRequest),
        now: i64,
    ) -> Result<Option<LeaseGrant>, StoreError> {
        let mut tx = self.write.begin().await?;
        let (mut g, server, old) = match load_given(&mut tx, id).await {
            Ok(x) => x,
            Err(StoreError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if request.0 != server {
            return Ok(None);
        }
        let src = source(&mut tx, &g.key_id, now).await?;
        // A chain: never pass on more seats than this server holds itself.
        if let Some(held) = src.leased_seats
            && held < g.seats
            && held > 0
            && !g.revoked
        {
            let terms = Terms {
                seats: held,
                end_at: g.end_at.min(src.cap.end_at.max(now + 1)),
                period_secs: g.period_secs,
            };
            let _ = g.change(terms, 0, src.cap, now);
        }
        let grant = if src.leased_seats == Some(0) {
            // Nothing held to pass on: the current grant, no extension.
            Some(g.current())
        } else {
            g.on_request(request.1, now, src.cap)
        };
        save_given(&mut tx, &g, old, now).await?;
        tx.commit().await?;
        Ok(grant)
    }

    /// Time passed: given leases whose promised periods ended free their seats (finished ones
    /// are deleted), and received leases whose period ended unrenewed take their seats back.
    /// Renewed keys that nothing holds any more are removed (L11).
    pub async fn refresh_leases(&self, now: i64) -> Result<Refreshed, StoreError> {
        let rows: Vec<GivenRow> =
            sqlx::query_as(concat!("SELECT ", given_columns!(), " FROM leases_given"))
                .fetch_all(&self.read)
                .await?;
        let stale: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM licence_keys
             WHERE origin = 'neighbour' AND usable_until <= $1 AND seats > seats_leased_out",
        )
        .bind(now)
        .fetch_all(&self.read)
        .await?;
        let moved: Vec<&str> = rows
            .iter()
            .filter(|r| {
                let g = restore(r);
                g.held(now) as i64 != r.10 || g.finished(now)
            })
            .map(|r| r.0.as_str())
            .collect();
        let retiring: Option<(i64,)> =
            sqlx::query_as("SELECT 1 FROM licence_keys WHERE retiring_for IS NOT NULL LIMIT 1")
                .fetch_optional(&self.read)
                .await?;
        let mut out = Refreshed::default();
        if moved.is_empty() && stale.is_empty() && retiring.is_none() {
            return Ok(out);
        }
        let moved_any = !moved.is_empty();
        let mut tx = self.write.begin().await?;
        for id in moved {
            // Read again inside the transaction: an admin change may have committed since.
            let (g, server, old) = match load_given(&mut tx, id).await {
                Ok(x) => x,
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            save_given(&mut tx, &g, old, now).await?;
            if old > 0 && g.held(now) == 0 {
                out.returned
                    .push((g.lease_id.clone(), g.key_id.clone(), server));
            }
            if g.finished(now) {
                sqlx::query("DELETE FROM leases_given WHERE id = $1")
                    .bind(&g.lease_id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        for (key,) in &stale {
            settle_received_key(&mut tx, key, now).await?;
        }
        out.retired = renew::retire_in(&mut tx, now).await?;
        tx.commit().await?;
        if moved_any || !stale.is_empty() || !out.retired.is_empty() {
            self.licence_changed();
        }
        Ok(out)
    }

    /// Every lease, given and received, for `lease list`.
    pub async fn leases(&self, now: i64) -> Result<Vec<LeaseInfo>, StoreError> {
        let given: Vec<GivenRow> = sqlx::query_as(concat!(
            "SELECT ",
            given_columns!(),
            " FROM leases_given ORDER BY server, id"
        ))
        .fetch_all(&self.read)
        .await?;
        let follows: std::collections::HashMap<String, String> =
            sqlx::query_as("SELECT id, follows FROM leases_given")
                .fetch_all(&self.read)
                .await?
                .into_iter()
                .collect();
        let mut out: Vec<LeaseInfo> = given
            .iter()
            .map(|r| {
                let g = restore(r);
                LeaseInfo {
                    id: g.lease_id.clone(),
                    server: r.2.clone(),
                    key_id: g.key_id.clone(),
                    direction: "given",
                    seats: g.seats,
                    held: g.held(now),
                    end_at: g.end_at,
                    period_end: g.period_end,
                    seq: g.seq,
                    revoked: g.revoked,
                    follows: follows.get(&g.lease_id).cloned().unwrap_or_default(),
                }
            })
            .collect();
        let received: Vec<(String, String, String, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT server, id, key_id, seq, seats, period_end, end_at FROM leases_received
             ORDER BY server, id",
        )
        .fetch_all(&self.read)
        .await?;
        out.extend(received.into_iter().map(
            |(server, id, key_id, seq, seats, period_end, end_at)| LeaseInfo {
                id,
                server,
                key_id,
                direction: "received",
                seats: seats as u32,
                held: if period_end > now { seats as u32 } else { 0 },
                end_at,
                period_end,
                seq: seq as u64,
                revoked: false,
                follows: String::new(),
            },
        ));
        Ok(out)
    }
}
