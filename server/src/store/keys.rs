//! The licence key repository (L1, L2, L4): keys with their seat counts, and the objects they
//! are assigned to (a device, a group, "everyone"; stored in [`Object::stored`] form).

use outpost_proto::licence::{LicenceKey, Object};
use outpost_proto::pb::v1::KeyKind;

use super::backend::Tx;
use super::{Store, StoreError};

/// A key as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyRow {
    /// Key id.
    pub id: String,
    /// Licensee.
    pub licensee: String,
    /// Product.
    pub product: String,
    /// Comma-separated components.
    pub components: String,
    /// Seats on the key.
    pub seats: i64,
    /// Seats held by devices.
    pub seats_used: i64,
    /// Seats leased to neighbours.
    pub seats_leased_out: i64,
    /// Unix seconds.
    pub valid_from: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// commercial | demo.
    pub kind: String,
    /// Key it renews.
    pub renews: Option<String>,
    /// 1 when auto-distributed (L8).
    pub auto_distribute: i64,
    /// imported | renewal | neighbour | activation.
    pub origin: String,
    /// Name of the imported file.
    pub file_name: String,
    /// Unix seconds.
    pub imported_at: i64,
}

impl KeyRow {
    /// Free seats.
    pub fn free(&self) -> i64 {
        (self.seats - self.seats_used - self.seats_leased_out).max(0)
    }

    /// Components as a list.
    pub fn component_list(&self) -> Vec<String> {
        self.components
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Key kind.
    pub fn key_kind(&self) -> KeyKind {
        if self.kind == "demo" {
            KeyKind::Demo
        } else {
            KeyKind::Commercial
        }
    }
}

impl Store {
    /// Adds verified keys, all or nothing (L1). Fails if any key id is already present.
    pub async fn insert_keys(
        &self,
        keys: &[(String, LicenceKey)],
        auto_distribute: bool,
        assign_everyone: bool,
        origin: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        for (file_name, key) in keys {
            let b = &key.body;
            let exists: Option<(String,)> =
                sqlx::query_as("SELECT id FROM licence_keys WHERE id = $1")
                    .bind(&b.key_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if exists.is_some() {
                return Err(StoreError::Conflict(format!(
                    "key {} is already in the repository (remove it first to replace it); nothing was imported",
                    b.key_id
                )));
            }
            let file = String::from_utf8(key.file.clone())
                .map_err(|_| StoreError::Invalid("key file is not UTF-8".into()))?;
            sqlx::query(
                "INSERT INTO licence_keys (id, licensee, product, components, seats, valid_from,
                     expires_at, kind, renews, auto_distribute, origin, file_name, file, imported_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            )
            .bind(&b.key_id)
            .bind(&b.licensee)
            .bind(&b.product)
            .bind(b.components.join(","))
            .bind(i64::from(b.seats))
            .bind(b.valid_from)
            .bind(b.expires_at)
            .bind(if b.kind == KeyKind::Demo { "demo" } else { "commercial" })
            .bind(&b.renews)
            .bind(i64::from(auto_distribute))
            .bind(origin)
            .bind(file_name)
            .bind(file)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if assign_everyone {
                sqlx::query(
                    "INSERT INTO key_assignments (key_id, object) VALUES ($1, 'group:everyone')",
                )
                .bind(&b.key_id)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        self.licence_changed();
        Ok(())
    }

    /// All keys, ordered by id.
    pub async fn keys(&self) -> Result<Vec<KeyRow>, StoreError> {
        Ok(sqlx::query_as::<_, KeyRow>(
            "SELECT id, licensee, product, components, seats, seats_used, seats_leased_out,
                    valid_from, expires_at, kind, renews, auto_distribute, origin, file_name, imported_at
             FROM licence_keys ORDER BY id",
        )
        .fetch_all(&self.read)
        .await?)
    }

    /// One key.
    pub async fn key(&self, id: &str) -> Result<Option<KeyRow>, StoreError> {
        Ok(sqlx::query_as::<_, KeyRow>(
            "SELECT id, licensee, product, components, seats, seats_used, seats_leased_out,
                    valid_from, expires_at, kind, renews, auto_distribute, origin, file_name, imported_at
             FROM licence_keys WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.read)
        .await?)
    }

    /// Objects a key is assigned to.
    pub async fn key_objects(&self, id: &str) -> Result<Vec<Object>, StoreError> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT object FROM key_assignments WHERE key_id = $1 ORDER BY object")
                .bind(id)
                .fetch_all(&self.read)
                .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(o,)| Object::from_stored(&o))
            .collect())
    }

    /// The signed file of a key, byte for byte (L2 export).
    pub async fn key_file(&self, id: &str) -> Result<(String, Vec<u8>), StoreError> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT file_name, file FROM licence_keys WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.read)
                .await?;
        row.map(|(n, f)| (n, f.into_bytes()))
            .ok_or_else(|| StoreError::NotFound(format!("no key {id} in the repository")))
    }

    /// Assigns a key to an object (L4) as an admin typed it. Returns the object resolved.
    pub async fn assign_key(&self, id: &str, object: &str) -> Result<Object, StoreError> {
        let object = self.resolve_object(object).await?;
        self.assign_object(id, &object).await?;
        Ok(object)
    }

    /// Assigns a key to an object already resolved (renewal hands the old key's objects on).
    pub async fn assign_object(&self, id: &str, object: &Object) -> Result<(), StoreError> {
        if self.key(id).await?.is_none() {
            return Err(StoreError::NotFound(format!(
                "no key {id} in the repository (see `admin key list`)"
            )));
        }
        sqlx::query("INSERT INTO key_assignments (key_id, object) VALUES ($1, $2) ON CONFLICT (key_id, object) DO NOTHING")
            .bind(id)
            .bind(object.stored())
            .execute(&self.write)
            .await?;
        self.licence_changed();
        Ok(())
    }

    /// Removes an assignment. Devices keep their seats until their next check moves them.
    pub async fn unassign_key(&self, id: &str, object: &str) -> Result<Object, StoreError> {
        let object = self.resolve_object(object).await?;
        let r = sqlx::query("DELETE FROM key_assignments WHERE key_id = $1 AND object = $2")
            .bind(id)
            .bind(object.stored())
            .execute(&self.write)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "key {id} is not assigned to {object}"
            )));
        }
        self.licence_changed();
        Ok(object)
    }

    /// An object as an admin typed it, checked against what exists: groups resolved to their
    /// full path, devices looked up.
    async fn resolve_object(&self, typed: &str) -> Result<Object, StoreError> {
        let object = Object::parse(typed).map_err(|e| StoreError::Invalid(e.to_string()))?;
        Ok(match object {
            Object::Group(g) => match self.resolve_group(&g).await?.as_str() {
                "everyone" => Object::Everyone,
                path => Object::Group(path.to_owned()),
            },
            Object::Device(d) => {
                if self.device(&d).await?.is_none() {
                    return Err(StoreError::NotFound(format!(
                        "no device {d} (see `admin device list`)"
                    )));
                }
                Object::Device(d)
            }
            Object::Server(s) => {
                // L4: a key assigned to a neighbour goes there as a lease that follows demand.
                let r = self.server(&s).await?;
                if !r.may_give() {
                    return Err(StoreError::Invalid(format!(
                        "server:{s}: seats do not go from this server to {s} (its primary, or a \
                         peer without --send); assign keys to secondaries or sending peers"
                    )));
                }
                Object::Server(s)
            }
            Object::Everyone => Object::Everyone,
        })
    }

    /// Removes a key from the repository (L2): its database entry, assignments and seats go;
    /// the file in the data directory stays (the caller does not delete it). Refused while a
    /// lease of it given to a neighbour still holds seats (they come back when its promised
    /// period ends, or revoke it first); leases of it whose seats are all back go with it.
    pub async fn remove_key(&self, id: &str) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        remove_key_in(&mut tx, id).await?;
        tx.commit().await?;
        self.licence_changed();
        Ok(())
    }

    /// Marks a key for automatic distribution (L8) or not.
    pub async fn set_auto_distribute(&self, id: &str, on: bool) -> Result<(), StoreError> {
        let origin: Option<(String,)> =
            sqlx::query_as("SELECT origin FROM licence_keys WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.read)
                .await?;
        match origin {
            None => {
                return Err(StoreError::NotFound(format!(
                    "no key {id} in the repository"
                )));
            }
            Some((o,)) if on && o == "activation" => {
                return Err(StoreError::Invalid(format!(
                    "key {id} was added as reserve through an activation code and is never distributed"
                )));
            }
            _ => {}
        }
        sqlx::query("UPDATE licence_keys SET auto_distribute = $2 WHERE id = $1")
            .bind(id)
            .bind(i64::from(on))
            .execute(&self.write)
            .await?;
        self.licence_changed();
        Ok(())
    }

    /// Keys this server owns (imported by hand or obtained by auto-renewal, L11), with files.
    pub async fn owned_keys(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, file FROM licence_keys WHERE origin IN ('imported', 'renewal') ORDER BY id",
        )
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(|(i, f)| (i, f.into_bytes())).collect())
    }
}

/// [`Store::remove_key`] inside a transaction.
pub(super) async fn remove_key_in(tx: &mut Tx<'_>, id: &str) -> Result<(), StoreError> {
    let (leases, held): (i64, Option<i64>) = sqlx::query_as(
        "SELECT COUNT(*), CAST(SUM(held) AS BIGINT) FROM leases_given WHERE key_id = $1",
    )
    .bind(id)
    .fetch_one(&mut **tx)
    .await?;
    if held.unwrap_or(0) > 0 {
        return Err(StoreError::Conflict(format!(
            "key {id} has {} seat(s) on {leases} lease(s) given to neighbour servers: they come back \
             when the periods promised end (`lease revoke` stops renewals); remove the key then",
            held.unwrap_or(0)
        )));
    }
    sqlx::query("DELETE FROM leases_given WHERE key_id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    // L8: devices that received an auto-distributed key keep it.
    sqlx::query(
        "INSERT INTO kept_keys (device_id, key_id, licensee, product, components, kind, expires_at)
         SELECT s.device_id, k.id, k.licensee, k.product, k.components, k.kind, k.expires_at
         FROM seats s JOIN licence_keys k ON k.id = s.key_id
         WHERE k.id = $1 AND k.auto_distribute = 1 AND s.slot = 'active'
         ON CONFLICT (device_id) DO UPDATE SET key_id = excluded.key_id, licensee = excluded.licensee,
             product = excluded.product, components = excluded.components, kind = excluded.kind,
             expires_at = excluded.expires_at",
    )
    .bind(id)
    .execute(&mut **tx)
    .await?;
    for sql in [
        "DELETE FROM seats WHERE key_id = $1",
        "UPDATE devices SET licence_state = 'unknown', licence_key = NULL WHERE licence_key = $1",
        "UPDATE devices SET licence_reserve_key = NULL WHERE licence_reserve_key = $1",
        "DELETE FROM key_state WHERE key_id = $1",
    ] {
        sqlx::query(sql).bind(id).execute(&mut **tx).await?;
    }
    let r = sqlx::query("DELETE FROM licence_keys WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    if r.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!(
            "no key {id} in the repository"
        )));
    }
    Ok(())
}
