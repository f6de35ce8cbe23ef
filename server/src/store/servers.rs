//! Neighbour servers (H1–H3): the relations of this server, each pinned by the SHA-256 of the
//! neighbour's link certificate.

use super::{Store, StoreError};

/// A relation as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ServerRow {
    /// Name chosen by the administrator.
    pub name: String,
    /// What the neighbour is to this server: `primary`, `secondary` or `peer`.
    pub kind: String,
    /// Its link certificate's SHA-256 (hex).
    pub cert_sha256: String,
    /// Where to dial it ('' when it dials this server).
    pub address: String,
    /// 1 when this server dials it.
    pub dials: i64,
    /// `permanent` or `periodic`.
    pub connection: String,
    /// Periodic relations: seconds between connections.
    pub interval_secs: i64,
    /// Peers: this side sends licences (H2).
    pub sends: i64,
    /// Peers: this side receives licences (H2).
    pub receives: i64,
    /// Unix seconds.
    pub added_at: i64,
    /// Last time a link to it was up (unix seconds, 0 = never).
    pub last_contact: i64,
}

impl ServerRow {
    /// Whether this server may give the neighbour seats (H2: a primary always sends to its
    /// secondaries; a peer only with its send flag).
    pub fn may_give(&self) -> bool {
        match self.kind.as_str() {
            "secondary" => true,
            "peer" => self.sends == 1,
            _ => false,
        }
    }

    /// Whether this server takes seats the neighbour gives (H2: a secondary always receives
    /// from its primary; from a peer only with its receive flag).
    pub fn may_receive(&self) -> bool {
        match self.kind.as_str() {
            "primary" => true,
            "peer" => self.receives == 1,
            _ => false,
        }
    }
}

macro_rules! server_columns {
    () => {
        "name, kind, cert_sha256, address, dials, connection, interval_secs, sends,
                       receives, added_at, last_contact"
    };
}

impl Store {
    /// Adds a relation. A name or certificate already known is a conflict (remove it first).
    pub async fn add_server(&self, s: &ServerRow) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        let clash: Option<(String,)> =
            sqlx::query_as("SELECT name FROM servers WHERE name = $1 OR cert_sha256 = $2")
                .bind(&s.name)
                .bind(&s.cert_sha256)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some((name,)) = clash {
            return Err(StoreError::Conflict(format!(
                "server {name} is already a relation with this name or certificate; \
                 `server remove {name}` first to add it again"
            )));
        }
        if s.kind == "primary" {
            let primary: Option<(String,)> =
                sqlx::query_as("SELECT name FROM servers WHERE kind = 'primary'")
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some((p,)) = primary {
                return Err(StoreError::Conflict(format!(
                    "this server already has a primary ({p}); `server remove {p}` first"
                )));
            }
        }
        sqlx::query(concat!(
            "INSERT INTO servers (",
            server_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(&s.name)
        .bind(&s.kind)
        .bind(&s.cert_sha256)
        .bind(&s.address)
        .bind(s.dials)
        .bind(&s.connection)
        .bind(s.interval_secs)
        .bind(s.sends)
        .bind(s.receives)
        .bind(s.added_at)
        .bind(s.last_contact)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every relation, by name.
    pub async fn servers(&self) -> Result<Vec<ServerRow>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            server_columns!(),
            " FROM servers ORDER BY name"
        ))
        .fetch_all(&self.read)
        .await?)
    }

    /// The relation with this name.
    pub async fn server(&self, name: &str) -> Result<ServerRow, StoreError> {
        sqlx::query_as(concat!(
            "SELECT ",
            server_columns!(),
            " FROM servers WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.read)
        .await?
        .ok_or_else(|| {
            StoreError::NotFound(format!(
                "no server relation named {name} (`server list` shows them)"
            ))
        })
    }

    /// The relation whose link certificate has this fingerprint (hex).
    pub async fn server_by_cert(&self, fp: &str) -> Result<Option<ServerRow>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            server_columns!(),
            " FROM servers WHERE cert_sha256 = $1"
        ))
        .bind(fp)
        .fetch_optional(&self.read)
        .await?)
    }

    /// Records that a link to `name` was up at `now`.
    pub async fn touch_server(&self, name: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE servers SET last_contact = $2 WHERE name = $1")
            .bind(name)
            .bind(now)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Removes a relation. Refused while this server gives it seats that may still be in use
    /// (revoke the leases and wait for their period to end); leases received from it end
    /// now, and devices licensed on them are re-checked.
    pub async fn remove_server(&self, name: &str, now: i64) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        let given: Option<(String, i64)> = sqlx::query_as(
            "SELECT id, held FROM leases_given WHERE server = $1 AND held > 0 LIMIT 1",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((id, held)) = given {
            return Err(StoreError::Conflict(format!(
                "lease {id} still holds {held} seat(s) given to {name}: `lease revoke {id}` and \
                 wait for its current period to end, then remove the server"
            )));
        }
        sqlx::query("DELETE FROM key_assignments WHERE object = $1")
            .bind(outpost_proto::licence::Object::Server(name.to_owned()).stored())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM usage_reports WHERE server = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM leases_given WHERE server = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let keys: Vec<(String,)> =
            sqlx::query_as("SELECT DISTINCT key_id FROM leases_received WHERE server = $1")
                .bind(name)
                .fetch_all(&mut *tx)
                .await?;
        sqlx::query("DELETE FROM leases_received WHERE server = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        for (key,) in &keys {
            super::leases::settle_received_key(&mut tx, key, now).await?;
        }
        // What it handed down goes with it (H4); revisions taken from it stay, as this
        // server's own.
        for sql in [
            "DELETE FROM inherited_policy WHERE source = $1",
            "DELETE FROM tasks WHERE origin = $1",
            "DELETE FROM upstream_updates WHERE source = $1",
        ] {
            sqlx::query(sql).bind(name).execute(&mut *tx).await?;
        }
        let n = sqlx::query("DELETE FROM servers WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!(
                "no server relation named {name} (`server list` shows them)"
            )));
        }
        tx.commit().await?;
        self.licence_changed();
        Ok(())
    }
}
