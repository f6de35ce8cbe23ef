//! What a primary hands down and a secondary inherits (H4, D5, D1).
//!
//! Decision: a secondary and all its devices sit, for policies and tasks, *under the primary's
//! root group*: the primary's effective root policy is the bottom layer of every effective
//! policy on the secondary (the secondary's own group documents override it, nearest wins), and
//! the tasks aimed at the primary's root group run on every agent of the secondary. In a chain
//! each server hands down its root's effective policy and root tasks, its own inherited layer
//! included, so the top's settings reach the bottom. Tasks aimed at a group below the root or
//! at one device stay on the server that has them.

use outpost_proto::pb::v1::Task;
use outpost_proto::{policy, task};
use serde_json::Value;

use super::{Store, StoreError};

/// The root group every device belongs to.
pub const ROOT: &str = "everyone";

/// Prefix of the ids of tasks passed down (`up.<id on the primary>`): they never collide with
/// this server's own ids (hexadecimal), and a chain shows how far a task has travelled.
pub const INHERITED_TASK: &str = "up.";

/// Longest task id taken from a primary (a chain adds 3 bytes per level).
const MAX_TASK_ID: usize = 128;

impl Store {
    /// The inherited policy layer: (primary, document), if this server has a primary that sent
    /// one.
    pub async fn inherited_policy(&self) -> Result<Option<(String, Value)>, StoreError> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT source, document FROM inherited_policy WHERE id = 1")
                .fetch_optional(&self.read)
                .await?;
        row.map(|(source, doc)| {
            let v = serde_json::from_str(&doc).map_err(|e| {
                StoreError::Invalid(format!(
                    "the policy inherited from {source} is damaged ({e}); it is replaced at the \
                     next link to {source}"
                ))
            })?;
            Ok((source, v))
        })
        .transpose()
    }

    /// The effective policy of the root group: what this server hands down to its secondaries.
    pub async fn root_policy(&self) -> Result<Value, StoreError> {
        let mut docs = vec![];
        if let Some((_, d)) = self.inherited_policy().await? {
            docs.push(d);
        }
        if let Some(own) = self.policies().await?.into_iter().find(|p| p.group == ROOT) {
            docs.push(own.document);
        }
        Ok(policy::merge(&docs))
    }

    /// The tasks aimed at the root group (own and inherited), by id.
    pub async fn root_tasks(&self) -> Result<Vec<Task>, StoreError> {
        let rows: Vec<(String, String, String, i64, i64)> = sqlx::query_as(
            "SELECT id, kind, arguments, not_before, every_secs FROM tasks
             WHERE target_group = $1 ORDER BY id",
        )
        .bind(ROOT)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(super::tasks::task_of).collect())
    }

    /// Stores what the primary `source` hands down: its root policy as the inherited layer,
    /// its root tasks as this server's root tasks of origin `source` (the set replaced). A task
    /// that does not validate is refused with the whole message: nothing changes. Returns
    /// whether anything changed (the devices' policies or task lists then move).
    pub async fn take_hand_down(
        &self,
        source: &str,
        document: &str,
        tasks: &[Task],
        now: i64,
    ) -> Result<bool, StoreError> {
        let doc = policy::parse(document)
            .map_err(|e| StoreError::Invalid(format!("the policy from {source}: {e}")))?;
        let mut wanted = Vec::with_capacity(tasks.len());
        for t in tasks {
            let id = format!("{INHERITED_TASK}{}", t.id);
            let plain = id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_'));
            if t.id.is_empty() || id.len() > MAX_TASK_ID || !plain {
                return Err(StoreError::Invalid(format!(
                    "task id {:?} from {source} is not a task id",
                    t.id
                )));
            }
            let args = std::str::from_utf8(&t.payload).map_err(|_| {
                StoreError::Invalid(format!(
                    "task {} from {source}: arguments are not UTF-8",
                    t.id
                ))
            })?;
            let args = task::validate(&t.kind, args, t.every_secs)
                .map_err(|e| StoreError::Invalid(format!("task {} from {source}: {e}", t.id)))?;
            wanted.push((id, t, args));
        }
        let mut tx = self.write.begin().await?;
        let mut changed = false;
        let old: Option<(String, String)> =
            sqlx::query_as("SELECT source, document FROM inherited_policy WHERE id = 1")
                .fetch_optional(&mut *tx)
                .await?;
        let text = doc.to_string();
        if old.as_ref() != Some(&(source.to_owned(), text.clone())) {
            changed = true;
            sqlx::query(
                "INSERT INTO inherited_policy (id, source, document, received_at)
                 VALUES (1, $1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET source = excluded.source,
                   document = excluded.document, received_at = excluded.received_at",
            )
            .bind(source)
            .bind(&text)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let held: Vec<(String, String, String, i64, i64)> = sqlx::query_as(
            "SELECT id, kind, arguments, not_before, every_secs FROM tasks WHERE origin = $1",
        )
        .bind(source)
        .fetch_all(&mut *tx)
        .await?;
        for (id, ..) in &held {
            if !wanted.iter().any(|(w, ..)| w == id) {
                changed = true;
                sqlx::query("DELETE FROM tasks WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        for (id, t, args) in &wanted {
            let same = held.iter().any(|(h, kind, a, nb, every)| {
                h == id
                    && kind == &t.kind
                    && a == args
                    && *nb == t.not_before
                    && *every == t.every_secs as i64
            });
            if same {
                continue;
            }
            changed = true;
            sqlx::query(
                "INSERT INTO tasks (id, kind, arguments, target_group, target_device, not_before,
                                    every_secs, created_at, origin)
                 VALUES ($1, $2, $3, $4, NULL, $5, $6, $7, $8)
                 ON CONFLICT (id) DO UPDATE SET kind = excluded.kind,
                   arguments = excluded.arguments, not_before = excluded.not_before,
                   every_secs = excluded.every_secs, origin = excluded.origin",
            )
            .bind(id)
            .bind(&t.kind)
            .bind(args)
            .bind(ROOT)
            .bind(t.not_before)
            .bind(t.every_secs as i64)
            .bind(now)
            .bind(source)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// The primary `source`'s update key pinned here and the newest of its revisions taken.
    pub async fn upstream_update(
        &self,
        source: &str,
    ) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        let row: Option<(Vec<u8>, i64)> =
            sqlx::query_as("SELECT update_key, revision FROM upstream_updates WHERE source = $1")
                .bind(source)
                .fetch_optional(&self.read)
                .await?;
        Ok(row.map(|(k, r)| (k, r.max(0) as u64)))
    }
}
