//! The notification log (L14): every licence event is stored here first; delivery to the
//! configured channels (log, user hook) happens afterwards and never blocks or fails the
//! operation that caused it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::sync::mpsc;

use super::backend::Tx;
use super::{Store, StoreError};

/// The hand-off from "stored" to "delivered": a bounded queue to the delivery task. A
/// notification that does not fit is counted as dropped; it stays in the log.
#[derive(Debug, Clone)]
pub(crate) struct NoticeQueue {
    tx: mpsc::Sender<Notice>,
    dropped: Arc<AtomicU64>,
}

impl NoticeQueue {
    /// A queue of `capacity` and its receiving end.
    pub(crate) fn new(capacity: usize) -> (NoticeQueue, mpsc::Receiver<Notice>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            NoticeQueue {
                tx,
                dropped: Arc::default(),
            },
            rx,
        )
    }

    /// Hands a stored notification to delivery, or counts it as dropped.
    pub(crate) fn deliver(&self, n: Notice) {
        if self.tx.try_send(n).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("notification delivery queue full; the notification is in the log only");
        }
    }

    /// Notifications stored but not delivered because the queue was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// One stored notification.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Notice {
    /// Id.
    pub id: String,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// Event kind: key-renewed, key-cannot-renew, key-expiring-soon, key-expired, usage-90,
    /// usage-100, usage-110, renewal-refused, seats-reclaimed, …
    pub kind: String,
    /// Key concerned.
    pub key_id: Option<String>,
    /// Sentence for humans.
    pub message: String,
    /// Details, JSON text.
    pub details: String,
}

impl Notice {
    /// The JSON given to hooks.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "at_ms": self.at_ms,
            "kind": self.kind,
            "key_id": self.key_id,
            "message": self.message,
            "details": serde_json::from_str::<serde_json::Value>(&self.details).unwrap_or_default(),
        })
    }
}

/// Stores a notification inside a transaction.
pub(crate) async fn insert(
    tx: &mut Tx<'_>,
    kind: &str,
    key_id: Option<&str>,
    message: &str,
    details: serde_json::Value,
    now_ms: i64,
) -> Result<Notice, StoreError> {
    let n = Notice {
        id: format!("n-{now_ms:013}-{:08x}", rand::random::<u32>()),
        at_ms: now_ms,
        kind: kind.to_owned(),
        key_id: key_id.map(str::to_owned),
        message: message.to_owned(),
        details: details.to_string(),
    };
    sqlx::query("INSERT INTO notifications (id, at_ms, kind, key_id, message, details) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(&n.id)
        .bind(n.at_ms)
        .bind(&n.kind)
        .bind(&n.key_id)
        .bind(&n.message)
        .bind(&n.details)
        .execute(&mut **tx)
        .await?;
    Ok(n)
}

impl Store {
    /// Stores a notification and hands it to the delivery channel.
    pub async fn notify(
        &self,
        kind: &str,
        key_id: Option<&str>,
        message: &str,
        details: serde_json::Value,
    ) -> Result<Notice, StoreError> {
        let mut tx = self.write.begin().await?;
        let n = insert(
            &mut tx,
            kind,
            key_id,
            message,
            details,
            outpost_net::unix_now_ms(),
        )
        .await?;
        tx.commit().await?;
        self.deliver(n.clone());
        Ok(n)
    }

    /// Hands a stored notification to the delivery channel (dropped, counted, if the channel
    /// is full: it stays in the log).
    pub(crate) fn deliver(&self, n: Notice) {
        self.notices.deliver(n);
    }

    /// Notifications stored but not handed to delivery because its queue was full.
    pub fn notices_dropped(&self) -> u64 {
        self.notices.dropped()
    }

    /// The receiving end of the delivery channel; the first caller gets it.
    pub fn take_notice_receiver(&self) -> Option<tokio::sync::mpsc::Receiver<Notice>> {
        self.notices_rx.lock().expect("notices lock").take()
    }

    /// The newest notifications first, at most `limit`, optionally of one kind.
    pub async fn notices(&self, kind: Option<&str>, limit: i64) -> Result<Vec<Notice>, StoreError> {
        Ok(sqlx::query_as::<_, Notice>(
            "SELECT id, at_ms, kind, key_id, message, details FROM notifications
             WHERE ($1 = '' OR kind = $1) ORDER BY at_ms DESC, id DESC LIMIT $2",
        )
        .bind(kind.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.read)
        .await?)
    }

    /// Marks a once-only key notification (expiring-soon, expired); returns true the first
    /// time. A key entering either state can change licences (reserves, L5), so the first
    /// time also moves the licence epoch.
    pub async fn mark_key_notified(&self, key_id: &str, what: &str) -> Result<bool, StoreError> {
        let column_update = match what {
            "expiring" => {
                "UPDATE key_state SET expiring_notified = 1 WHERE key_id = $1 AND expiring_notified = 0"
            }
            _ => {
                "UPDATE key_state SET expired_notified = 1 WHERE key_id = $1 AND expired_notified = 0"
            }
        };
        let mut tx = self.write.begin().await?;
        sqlx::query("INSERT INTO key_state (key_id) VALUES ($1) ON CONFLICT (key_id) DO NOTHING")
            .bind(key_id)
            .execute(&mut *tx)
            .await?;
        let r = sqlx::query(sqlx::AssertSqlSafe(column_update))
            .bind(key_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let first = r.rows_affected() == 1;
        if first {
            self.licence_changed();
        }
        Ok(first)
    }
}
