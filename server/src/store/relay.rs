//! Notifications travelling up the hierarchy (H4): the batches a server sends its main server
//! after the last one acknowledged, and the relayed ones a main server stores — once per origin
//! and id, so a batch sent again after a lost acknowledgement changes nothing.

use outpost_proto::pb::v1::NoticeUp;

use super::notices::Notice;
use super::{Store, StoreError};

impl Store {
    /// Up to `limit` notifications after the cursor of relation `server` (oldest first); a
    /// cursor never moved starts when the relation was added.
    pub async fn notices_to_relay(
        &self,
        server: &str,
        limit: i64,
    ) -> Result<Vec<Notice>, StoreError> {
        let (ms, id, added): (i64, String, i64) = sqlx::query_as(
            "SELECT notices_sent_ms, notices_sent_id, added_at FROM servers WHERE name = $1",
        )
        .bind(server)
        .fetch_optional(&self.read)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no server relation named {server}")))?;
        let ms = if ms == 0 { added * 1000 } else { ms };
        Ok(sqlx::query_as(
            "SELECT id, at_ms, kind, key_id, message, details FROM notifications
             WHERE at_ms > $1 OR (at_ms = $1 AND id > $2)
             ORDER BY at_ms, id LIMIT $3",
        )
        .bind(ms)
        .bind(id)
        .bind(limit)
        .fetch_all(&self.read)
        .await?)
    }

    /// The main server `server` acknowledged everything up to (`at_ms`, `id`).
    pub async fn notices_relayed(
        &self,
        server: &str,
        at_ms: i64,
        id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE servers SET notices_sent_ms = $2, notices_sent_id = $3
             WHERE name = $1 AND (notices_sent_ms < $2 OR (notices_sent_ms = $2 AND notices_sent_id < $3))",
        )
        .bind(server)
        .bind(at_ms)
        .bind(id)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Stores a notification relayed by `from` (a server below this one), tagged with it:
    /// id `<from>/<its id>`, `details.server` the path it came along. Returns it when it is
    /// new (for delivery), `None` when it was stored already.
    pub async fn store_relayed(
        &self,
        from: &str,
        n: &NoticeUp,
        now_ms: i64,
    ) -> Result<Option<Notice>, StoreError> {
        let (origin, _) = n.id.rsplit_once('/').unwrap_or(("", &n.id));
        let path = if origin.is_empty() {
            from.to_owned()
        } else {
            format!("{from}/{origin}")
        };
        let mut details = serde_json::from_str::<serde_json::Value>(&n.details)
            .ok()
            .filter(|d| d.is_object())
            .unwrap_or_else(|| serde_json::json!({}));
        details["server"] = serde_json::Value::String(path.clone());
        details["at_ms_there"] = serde_json::Value::from(n.at_ms);
        // A notification relayed from further below carries its path already: replace it.
        let text = match n.message.strip_prefix('[').and_then(|m| m.split_once("] ")) {
            Some((_, rest)) if !origin.is_empty() => rest,
            _ => n.message.as_str(),
        };
        let stored = Notice {
            id: format!("{from}/{}", n.id),
            at_ms: now_ms,
            kind: n.kind.clone(),
            key_id: (!n.key_id.is_empty()).then(|| n.key_id.clone()),
            message: format!("[{path}] {text}"),
            details: details.to_string(),
        };
        let done = sqlx::query(
            "INSERT INTO notifications (id, at_ms, kind, key_id, message, details)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&stored.id)
        .bind(stored.at_ms)
        .bind(&stored.kind)
        .bind(&stored.key_id)
        .bind(&stored.message)
        .bind(&stored.details)
        .execute(&self.write)
        .await?
        .rows_affected();
        if done == 0 {
            return Ok(None);
        }
        self.deliver(stored.clone());
        Ok(Some(stored))
    }
}

impl From<&Notice> for NoticeUp {
    fn from(n: &Notice) -> NoticeUp {
        NoticeUp {
            id: n.id.clone(),
            at_ms: n.at_ms,
            kind: n.kind.clone(),
            key_id: n.key_id.clone().unwrap_or_default(),
            message: n.message.clone(),
            details: n.details.clone(),
        }
    }
}
