//! The update repository (D1): signed manifests by revision, file content as blocks addressed
//! by SHA-256. Blocks go in first (in small transactions; a block is the same whoever stores
//! it), the manifest last: a revision exists only once all its bytes do. Blocks no revision
//! refers to (a removed revision's, or those of an import that died part-way) are deleted by
//! [`Store::collect_update_blocks`].

use std::collections::HashSet;

use outpost_proto::pb::v1::{SignedManifest, UpdateManifest};
use prost::Message;

use super::{Store, StoreError};

/// A revision taken from the primary (H4): recorded with the local revision, in its
/// transaction, so a revision is taken once and an older one never.
#[derive(Debug, Clone, Copy)]
pub struct Upstream<'a> {
    /// The primary's name.
    pub source: &'a str,
    /// Its update key (pinned at the first revision taken).
    pub key: &'a [u8],
    /// Its revision number.
    pub revision: u64,
    /// Unix seconds.
    pub now: i64,
}

/// One revision as listed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RevisionRow {
    /// Revision.
    pub revision: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// Where it came from (a directory, or "refresh of N").
    pub source: String,
    /// Files in it.
    pub files: i64,
    /// Their total size.
    pub bytes: i64,
}

impl Store {
    /// Stores blocks (hex SHA-256, bytes) not stored yet.
    pub async fn put_update_blocks(&self, blocks: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        for (hash, data) in blocks {
            sqlx::query(
                "INSERT INTO update_blocks (sha256, data) VALUES ($1, $2)
                 ON CONFLICT (sha256) DO NOTHING",
            )
            .bind(hash)
            .bind(data)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Whether a block is stored.
    pub async fn has_update_block(&self, sha256_hex: &str) -> Result<bool, StoreError> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM update_blocks WHERE sha256 = $1")
            .bind(sha256_hex)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.is_some())
    }

    /// One block's bytes.
    pub async fn update_block(&self, sha256_hex: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT data FROM update_blocks WHERE sha256 = $1")
                .bind(sha256_hex)
                .fetch_optional(&self.read)
                .await?;
        Ok(row.map(|(d,)| d))
    }

    /// The newest revision (0: none).
    pub async fn newest_update_revision(&self) -> Result<u64, StoreError> {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COALESCE(MAX(revision), 0) FROM update_revisions")
                .fetch_one(&self.read)
                .await?;
        Ok(n as u64)
    }

    /// Records a new revision whose blocks are all stored: takes the next revision number,
    /// has `build` make and sign the manifest with it, stores it — one transaction.
    pub async fn add_update_revision(
        &self,
        build: impl FnOnce(u64) -> (UpdateManifest, SignedManifest),
        source: &str,
        block_hashes: &[Vec<u8>],
        upstream: Option<Upstream<'_>>,
    ) -> Result<UpdateManifest, StoreError> {
        let mut tx = self.write.begin().await?;
        if let Some(up) = upstream {
            let held: Option<(Vec<u8>, i64)> = sqlx::query_as(
                "SELECT update_key, revision FROM upstream_updates WHERE source = $1",
            )
            .bind(up.source)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((key, revision)) = held {
                if key != up.key {
                    return Err(StoreError::Conflict(format!(
                        "{}'s update key is not the one pinned here",
                        up.source
                    )));
                }
                if revision as u64 >= up.revision {
                    return Err(StoreError::Conflict(format!(
                        "revision {} of {} is not newer than revision {revision} taken already",
                        up.revision, up.source
                    )));
                }
            }
            sqlx::query(
                "INSERT INTO upstream_updates (source, update_key, revision, taken_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (source) DO UPDATE SET update_key = excluded.update_key,
                   revision = excluded.revision, taken_at = excluded.taken_at",
            )
            .bind(up.source)
            .bind(up.key)
            .bind(up.revision as i64)
            .bind(up.now)
            .execute(&mut *tx)
            .await?;
        }
        // Every block must be there (a removal's collection may have run meanwhile).
        for b in block_hashes {
            let found: Option<(i64,)> =
                sqlx::query_as("SELECT 1 FROM update_blocks WHERE sha256 = $1")
                    .bind(hex(b))
                    .fetch_optional(&mut *tx)
                    .await?;
            if found.is_none() {
                return Err(StoreError::Conflict(
                    "a block vanished during the import (a removal ran at the same time); \
                     import again"
                        .into(),
                ));
            }
        }
        let (revision,): (i64,) = sqlx::query_as(
            "INSERT INTO update_counter (id, last) VALUES (1, 1)
             ON CONFLICT (id) DO UPDATE SET last = update_counter.last + 1
             RETURNING last",
        )
        .fetch_one(&mut *tx)
        .await?;
        let (m, signed) = build(revision as u64);
        sqlx::query(
            "INSERT INTO update_revisions (revision, body, signature, created_at, expires_at,
                                           source, files, bytes)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(revision)
        .bind(&signed.body)
        .bind(&signed.signature)
        .bind(m.created_at)
        .bind(m.expires_at)
        .bind(source)
        .bind(m.files.len() as i64)
        .bind(m.files.iter().map(|f| f.size as i64).sum::<i64>())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(m)
    }

    /// One revision.
    pub async fn update_revision(&self, revision: u64) -> Result<Option<RevisionRow>, StoreError> {
        Ok(sqlx::query_as::<_, RevisionRow>(
            "SELECT revision, created_at, expires_at, source, files, bytes
             FROM update_revisions WHERE revision = $1",
        )
        .bind(revision as i64)
        .fetch_optional(&self.read)
        .await?)
    }

    /// Revisions, newest first.
    pub async fn update_revisions(&self) -> Result<Vec<RevisionRow>, StoreError> {
        Ok(sqlx::query_as::<_, RevisionRow>(
            "SELECT revision, created_at, expires_at, source, files, bytes
             FROM update_revisions ORDER BY revision DESC",
        )
        .fetch_all(&self.read)
        .await?)
    }

    /// A revision's signed manifest; the newest with `None`.
    pub async fn update_manifest(
        &self,
        revision: Option<u64>,
    ) -> Result<Option<SignedManifest>, StoreError> {
        let row: Option<(Vec<u8>, Vec<u8>)> = match revision {
            Some(r) => {
                sqlx::query_as("SELECT body, signature FROM update_revisions WHERE revision = $1")
                    .bind(r as i64)
                    .fetch_optional(&self.read)
                    .await?
            }
            None => {
                sqlx::query_as(
                    "SELECT body, signature FROM update_revisions
                     ORDER BY revision DESC LIMIT 1",
                )
                .fetch_optional(&self.read)
                .await?
            }
        };
        Ok(row.map(|(body, signature)| SignedManifest { body, signature }))
    }

    /// Removes a revision (its blocks go with the next collection).
    pub async fn remove_update_revision(&self, revision: u64) -> Result<(), StoreError> {
        let r = sqlx::query("DELETE FROM update_revisions WHERE revision = $1")
            .bind(revision as i64)
            .execute(&self.write)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "no update revision {revision} (admin update list shows them)"
            )));
        }
        Ok(())
    }

    /// Deletes blocks no revision refers to; returns how many.
    pub async fn collect_update_blocks(&self) -> Result<u64, StoreError> {
        let manifests: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT body FROM update_revisions")
            .fetch_all(&self.read)
            .await?;
        let mut keep = HashSet::new();
        for (body,) in manifests {
            let m = UpdateManifest::decode(body.as_slice()).map_err(|e| {
                StoreError::Invalid(format!("a stored update manifest is damaged: {e}"))
            })?;
            for f in m.files {
                keep.extend(f.block_sha256.iter().map(|b| hex(b)));
            }
        }
        let all: Vec<(String,)> = sqlx::query_as("SELECT sha256 FROM update_blocks")
            .fetch_all(&self.read)
            .await?;
        let mut n = 0;
        for (h,) in all.into_iter().filter(|(h,)| !keep.contains(h)) {
            n += sqlx::query("DELETE FROM update_blocks WHERE sha256 = $1")
                .bind(h)
                .execute(&self.write)
                .await?
                .rows_affected();
        }
        Ok(n)
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
