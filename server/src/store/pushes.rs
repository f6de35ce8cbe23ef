//! Pushes queued for devices that were offline (T7): delivered at their next connect if they
//! have not expired, removed when acknowledged.

use outpost_proto::pb::v1::Push;

use super::backend::Pool;
use super::{Store, StoreError};

/// A queued push.
#[derive(Debug, Clone)]
pub struct QueuedPush {
    /// The push.
    pub push: Push,
    /// Unix seconds after which it is dropped.
    pub expires_at: i64,
}

/// Deletes acknowledged pushes in batches (one transaction per batch). Delivery is at least
/// once: a push whose deletion was not committed before a crash is delivered again.
pub(crate) async fn ack_writer(
    pool: Pool,
    mut acks: tokio::sync::mpsc::Receiver<(String, String)>,
) {
    let mut batch = Vec::with_capacity(512);
    while acks.recv_many(&mut batch, 512).await > 0 {
        let r: Result<(), sqlx::Error> = async {
            let mut tx = pool.begin().await?;
            for (device, id) in &batch {
                sqlx::query("DELETE FROM pushes WHERE id = $1 AND device_id = $2")
                    .bind(id)
                    .bind(device)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        }
        .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, pushes = batch.len(), "acknowledged pushes not deleted; they will be delivered again");
        }
        batch.clear();
    }
}

impl Store {
    /// Forgets an acknowledged push (batched; see `ack_writer`).
    pub async fn push_acked(&self, device_id: &str, push_id: &str) {
        let _ = self
            .acks
            .send((device_id.to_owned(), push_id.to_owned()))
            .await;
    }

    /// Stores a push for each of `devices` in one transaction (delivered live if they are
    /// online, at their next connect otherwise; removed when acknowledged).
    pub async fn queue_push(
        &self,
        devices: &[String],
        push: &Push,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        for device_id in devices {
            sqlx::query(
                "INSERT INTO pushes (id, device_id, kind, payload, created_at_ms, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id, device_id) DO NOTHING",
            )
            .bind(&push.id)
            .bind(device_id)
            .bind(i64::from(push.kind))
            .bind(&push.payload)
            .bind(push.created_at_ms)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Pushes waiting for a device that are still current, oldest first.
    pub async fn pending_pushes(&self, device_id: &str, now: i64) -> Result<Vec<Push>, StoreError> {
        let rows: Vec<(String, i64, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT id, kind, payload, created_at_ms FROM pushes
             WHERE device_id = $1 AND expires_at > $2 ORDER BY created_at_ms, id",
        )
        .bind(device_id)
        .bind(now)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, kind, payload, created_at_ms)| Push {
                id,
                kind: i32::try_from(kind).unwrap_or_default(),
                payload,
                created_at_ms,
            })
            .collect())
    }

    /// A push was acknowledged (or expired): forget it.
    pub async fn delete_push(&self, device_id: &str, push_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM pushes WHERE id = $1 AND device_id = $2")
            .bind(push_id)
            .bind(device_id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Drops expired pushes.
    pub async fn expire_pushes(&self, now: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM pushes WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.write)
            .await?
            .rows_affected())
    }
}
