//! Agent events (S5): stored with the agent's id for each; a second delivery of the same id is
//! ignored, so an agent that resends after a crash or a lost acknowledgement never creates a
//! duplicate. The caller acknowledges only after this returns (the commit happened).

use outpost_proto::pb::v1::Event;

use super::{Store, StoreError};

/// An event as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredEvent {
    /// Device that sent it.
    pub device_id: String,
    /// Agent-chosen id.
    pub id: String,
    /// Kind.
    pub kind: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// When the agent queued it.
    pub created_at_ms: i64,
    /// When the server stored it.
    pub received_at: i64,
}

impl Store {
    /// Stores events and returns the ids to acknowledge (all of them: new and already known).
    pub async fn store_events(
        &self,
        device_id: &str,
        events: &[Event],
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        if events.is_empty() {
            return Ok(vec![]);
        }
        let mut tx = self.write.begin().await?;
        for e in events {
            let stored = sqlx::query(
                "INSERT INTO events (device_id, id, kind, payload, created_at_ms, received_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (device_id, id) DO NOTHING",
            )
            .bind(device_id)
            .bind(&e.id)
            .bind(&e.kind)
            .bind(&e.payload)
            .bind(e.created_at_ms)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            // D5: a task's result is kept with its event, once.
            if stored > 0 && e.kind == outpost_proto::task::RESULT_EVENT {
                super::tasks::record_result(&mut tx, device_id, &e.payload, now).await?;
            }
        }
        tx.commit().await?;
        Ok(events.iter().map(|e| e.id.clone()).collect())
    }

    /// Events of one device, oldest first.
    pub async fn events_of(&self, device_id: &str) -> Result<Vec<StoredEvent>, StoreError> {
        Ok(sqlx::query_as::<_, StoredEvent>(
            "SELECT device_id, id, kind, payload, created_at_ms, received_at FROM events
             WHERE device_id = $1 ORDER BY created_at_ms, id",
        )
        .bind(device_id)
        .fetch_all(&self.read)
        .await?)
    }

    /// The newest `limit` events of one device, newest first (the console's device page).
    pub async fn recent_events(
        &self,
        device_id: &str,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        Ok(sqlx::query_as::<_, StoredEvent>(
            "SELECT device_id, id, kind, payload, created_at_ms, received_at FROM events
             WHERE device_id = $1 ORDER BY created_at_ms DESC, id DESC LIMIT $2",
        )
        .bind(device_id)
        .bind(limit)
        .fetch_all(&self.read)
        .await?)
    }

    /// Number of events stored for a device.
    pub async fn event_count(&self, device_id: &str) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM events WHERE device_id = $1")
            .bind(device_id)
            .fetch_one(&self.read)
            .await?;
        Ok(n)
    }
}
