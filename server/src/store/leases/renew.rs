//! A renewed key across the tree (L11 outcome 3, L12): every neighbour that holds a lease of
//! the old key gets a lease of the renewal beside it; the old lease is revoked once the
//! neighbour confirms the new one, and the old key is removed once no lease of it is given or
//! held. A neighbour that is offline keeps its old lease unrenewed (its seats come back after
//! one period, H6) and the old key stays in the repository until it reconnects and confirms —
//! or until an administrator revokes that lease, after which the key goes by itself.

use outpost_proto::lease::{Given, LeaseGrant, Terms};

use super::super::backend::Tx;
use super::super::keys::remove_key_in;
use super::super::{Store, StoreError};
use super::{insert_given, load_given, save_given, source};

/// What handing a renewal over did.
#[derive(Debug, Default)]
pub struct HandedOver {
    /// Grants of the renewal key to send, by neighbour.
    pub grants: Vec<(String, LeaseGrant)>,
    /// Leases of the old key that could not be handed over, with why (too few free seats).
    pub refused: Vec<(String, String)>,
    /// The old key was removed at once (no lease of it given or held).
    pub removed: bool,
}

impl Store {
    /// Hands the renewal `new` of key `old` to every neighbour holding a lease of `old`: a
    /// lease of `new` with the same seats and period, ending when the old one ends or — if the
    /// old one ran to the old key's limit — at the limit of `new`. `old` is marked as retiring
    /// and removed as soon as no lease of it is given or held (at once when there is none).
    pub async fn hand_over_leases(
        &self,
        old: &str,
        new: &str,
        now: i64,
    ) -> Result<HandedOver, StoreError> {
        let mut tx = self.write.begin().await?;
        let out = hand_over_in(&mut tx, old, new, now).await?;
        tx.commit().await?;
        self.licence_changed();
        Ok(out)
    }

    /// A neighbour confirmed lease `lease_id` (asked to renew it, or listed it at a sync). If
    /// the lease replaces one of a renewed key, that one is revoked now: returns its grant
    /// (seats 0) to send. Its seats come back when its promised period ends.
    pub async fn lease_confirmed(
        &self,
        server: &str,
        lease_id: &str,
        now: i64,
    ) -> Result<Option<LeaseGrant>, StoreError> {
        let pending: Option<(String,)> = sqlx::query_as(
            "SELECT replaces FROM leases_given WHERE id = $1 AND server = $2 AND replaces IS NOT NULL",
        )
        .bind(lease_id)
        .bind(server)
        .fetch_optional(&self.read)
        .await?;
        let Some((old_id,)) = pending else {
            return Ok(None);
        };
        let mut tx = self.write.begin().await?;
        sqlx::query("UPDATE leases_given SET replaces = NULL WHERE id = $1")
            .bind(lease_id)
            .execute(&mut *tx)
            .await?;
        let grant = match load_given(&mut tx, &old_id).await {
            Ok((mut g, _, held)) if !g.revoked => {
                let grant = g.revoke(now);
                save_given(&mut tx, &g, held, now).await?;
                Some(grant)
            }
            Ok(_) | Err(StoreError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        tx.commit().await?;
        Ok(grant)
    }

    /// On a server that received key `new` from a neighbour: if it renews a key held here
    /// (also received), the renewal is taken over the way its owner does (L11: "every server
    /// on which the new key is distributed"): given to the objects of the old key, handed to
    /// the neighbours this server passed the old key on to, and the old key retired. Returns
    /// the old key and what the hand-over did; `None` when `new` renews nothing held here or
    /// was taken over before.
    pub async fn adopt_renewal(
        &self,
        new: &str,
        renews: Option<&str>,
        now: i64,
    ) -> Result<Option<(String, HandedOver)>, StoreError> {
        let Some(old) = renews else { return Ok(None) };
        let held: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT retiring_for FROM licence_keys WHERE id = $1 AND origin = 'neighbour'",
        )
        .bind(old)
        .fetch_optional(&self.read)
        .await?;
        if !matches!(held, Some((None,))) {
            return Ok(None);
        }
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO key_assignments (key_id, object)
             SELECT $2, object FROM key_assignments WHERE key_id = $1
             ON CONFLICT (key_id, object) DO NOTHING",
        )
        .bind(old)
        .bind(new)
        .execute(&mut *tx)
        .await?;
        let out = hand_over_in(&mut tx, old, new, now).await?;
        tx.commit().await?;
        self.licence_changed();
        Ok(Some((old.to_owned(), out)))
    }
}

async fn hand_over_in(
    tx: &mut Tx<'_>,
    old: &str,
    new: &str,
    now: i64,
) -> Result<HandedOver, StoreError> {
    let mut out = HandedOver::default();
    let old_cap = source(tx, old, now).await?.cap;
    let mut src = source(tx, new, now).await?;
    // Open leases of the old key not handed over before.
    let open: Vec<(String,)> = sqlx::query_as(
        "SELECT g.id FROM leases_given g
         WHERE g.key_id = $1 AND g.revoked = 0 AND g.end_at > $2
           AND NOT EXISTS (SELECT 1 FROM leases_given n WHERE n.replaces = g.id)
         ORDER BY g.id",
    )
    .bind(old)
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    for (old_lease,) in open {
        let (g, server, _) = load_given(tx, &old_lease).await?;
        let end_at = if g.end_at >= old_cap.end_at {
            src.cap.end_at
        } else {
            g.end_at.min(src.cap.end_at)
        };
        let terms = Terms {
            seats: g.seats,
            end_at,
            period_secs: g.period_secs,
        };
        let id = format!("lease-{:016x}", rand::random::<u64>());
        let (n, grant) = match Given::give(&id, new, terms, src.free, src.cap, now) {
            Ok(x) => x,
            Err(e) => {
                out.refused
                    .push((server, format!("lease {old_lease}: {e}")));
                continue;
            }
        };
        let (follows,): (String,) =
            sqlx::query_as("SELECT follows FROM leases_given WHERE id = $1")
                .bind(&old_lease)
                .fetch_one(&mut **tx)
                .await?;
        insert_given(tx, &n, &server, &follows, Some(&old_lease), now).await?;
        src.free -= n.seats;
        out.grants.push((server, grant));
    }
    sqlx::query("UPDATE licence_keys SET retiring_for = $2 WHERE id = $1")
        .bind(old)
        .bind(new)
        .execute(&mut **tx)
        .await?;
    out.removed = !retire_in(tx, now).await?.is_empty();
    Ok(out)
}

/// Removes retiring keys that no lease is given or held on any more. Returns (old, new) for
/// each key removed.
pub(super) async fn retire_in(
    tx: &mut Tx<'_>,
    now: i64,
) -> Result<Vec<(String, String)>, StoreError> {
    let done: Vec<(String, String)> = sqlx::query_as(
        "SELECT k.id, k.retiring_for FROM licence_keys k
         WHERE k.retiring_for IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM leases_given g WHERE g.key_id = k.id)
           AND NOT EXISTS (SELECT 1 FROM leases_received r
                           WHERE r.key_id = k.id AND r.seats > 0 AND r.period_end > $1)",
    )
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    for (old, _) in &done {
        remove_key_in(tx, old).await?;
    }
    Ok(done)
}
