//! Policy documents per group (D5); merging is `outpost_proto::policy`'s.

use outpost_proto::policy;
use serde_json::Value;

use super::groups::normalize_group;
use super::{Store, StoreError};

/// One group's document.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupPolicy {
    /// The group.
    pub group: String,
    /// Its settings.
    pub document: Value,
    /// Changes of this group's document so far.
    pub revision: i64,
    /// Unix seconds of the last change.
    pub updated_at: i64,
}

/// A device's effective policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    /// The merged document.
    pub document: Value,
    /// Its revision (a hash; the same document has the same revision).
    pub revision: u64,
    /// The groups whose documents went into it, root first.
    pub from: Vec<String>,
}

impl Store {
    /// Sets a group's document (replacing the previous one). Returns the group's path and
    /// revision.
    pub async fn set_policy(
        &self,
        group: &str,
        text: &str,
        now: i64,
    ) -> Result<(String, i64), StoreError> {
        let group = normalize_group(group)?;
        let doc = policy::parse(text).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut tx = self.write.begin().await?;
        let exists: Option<(String,)> = sqlx::query_as("SELECT path FROM groups WHERE path = $1")
            .bind(&group)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound(format!(
                "group {group:?} does not exist (admin group create {group})"
            )));
        }
        let (revision,): (i64,) = sqlx::query_as(
            "INSERT INTO policies (group_path, document, revision, updated_at)
             VALUES ($1, $2, 1, $3)
             ON CONFLICT (group_path) DO UPDATE
             SET document = excluded.document, revision = policies.revision + 1,
                 updated_at = excluded.updated_at
             RETURNING revision",
        )
        .bind(&group)
        .bind(doc.to_string())
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((group, revision))
    }

    /// Every group's document, by group.
    pub async fn policies(&self) -> Result<Vec<GroupPolicy>, StoreError> {
        let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT group_path, document, revision, updated_at FROM policies ORDER BY group_path",
        )
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|(group, doc, revision, updated_at)| {
                Ok(GroupPolicy {
                    document: stored(&group, &doc)?,
                    group,
                    revision,
                    updated_at,
                })
            })
            .collect()
    }

    /// The effective policy of a device (its group's document merged with those above it, and
    /// with the layer inherited from a primary under them all).
    pub async fn effective_policy(&self, device_id: &str) -> Result<Effective, StoreError> {
        // The group's own document and its ancestors', root first (a path is longer than its
        // parent's). SUBSTR rather than LIKE: a group name may hold `_` or `%`.
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT p.group_path, p.document FROM devices d JOIN policies p
               ON p.group_path = d.group_path
               OR SUBSTR(d.group_path, 1, LENGTH(p.group_path) + 1) = p.group_path || '/'
             WHERE d.id = $1
             ORDER BY LENGTH(p.group_path)",
        )
        .bind(device_id)
        .fetch_all(&self.read)
        .await?;
        let mut docs = vec![];
        let mut from = vec![];
        // The layer inherited from a primary lies under everything (H4).
        if let Some((source, doc)) = self.inherited_policy().await? {
            docs.push(doc);
            from.push(format!("server {source}"));
        }
        for (g, doc) in rows {
            docs.push(stored(&g, &doc)?);
            from.push(g);
        }
        let document = policy::merge(&docs);
        Ok(Effective {
            revision: policy::revision(&document),
            document,
            from,
        })
    }

    /// Devices in `group` or below it (whose effective policy a change of its document moves).
    pub async fn devices_under(&self, group: &str) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM devices WHERE group_path = $1
               OR SUBSTR(group_path, 1, LENGTH($1) + 1) = $1 || '/'",
        )
        .bind(group)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(|(d,)| d).collect())
    }
}

fn stored(group: &str, doc: &str) -> Result<Value, StoreError> {
    serde_json::from_str(doc).map_err(|e| {
        StoreError::Invalid(format!(
            "the stored policy of group {group} is damaged ({e}); set it again"
        ))
    })
}
