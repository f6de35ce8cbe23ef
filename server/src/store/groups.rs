//! Administration groups (L4): a tree under "everyone"; a device belongs to one group.

use super::{Store, StoreError};

impl Store {
    /// Creates a group under an existing parent.
    pub async fn create_group(&self, path: &str, now: i64) -> Result<String, StoreError> {
        let path = normalize_group(path)?;
        let Some(idx) = path.rfind('/') else {
            return Err(StoreError::Conflict(
                "group \"everyone\" always exists".into(),
            ));
        };
        let parent = &path[..idx];
        let exists: Option<(String,)> = sqlx::query_as("SELECT path FROM groups WHERE path = $1")
            .bind(parent)
            .fetch_optional(&self.read)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound(format!(
                "parent group {parent:?} does not exist; create it first"
            )));
        }
        let r = sqlx::query(
            "INSERT INTO groups (path, parent, created_at) VALUES ($1, $2, $3) ON CONFLICT (path) DO NOTHING",
        )
        .bind(&path)
        .bind(parent)
        .bind(now)
        .execute(&self.write)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "group {path:?} already exists"
            )));
        }
        Ok(path)
    }

    /// Groups with their device counts.
    pub async fn groups(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT g.path, (SELECT COUNT(*) FROM devices d WHERE d.group_path = g.path)
             FROM groups g ORDER BY g.path",
        )
        .fetch_all(&self.read)
        .await?)
    }

    /// Resolves a group given as a path or as its last component; errors name the choices.
    pub async fn resolve_group(&self, name: &str) -> Result<String, StoreError> {
        if name.is_empty() || name == "everyone" {
            return Ok("everyone".into());
        }
        let path = normalize_group(name)?;
        let all: Vec<(String,)> = sqlx::query_as("SELECT path FROM groups")
            .fetch_all(&self.read)
            .await?;
        if all.iter().any(|(p,)| *p == path) {
            return Ok(path);
        }
        let matches: Vec<&String> = all
            .iter()
            .map(|(p,)| p)
            .filter(|p| p.rsplit('/').next() == Some(name))
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(StoreError::NotFound(format!(
                "no group {name:?}; create it with `admin group create everyone/{name}`"
            ))),
            many => Err(StoreError::Invalid(format!(
                "group name {name:?} is ambiguous: {}",
                many.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

/// A group as given (`berlin`, `everyone/berlin/`) as stored (`everyone/berlin`), or why it
/// is not a group path.
pub fn normalize_group(path: &str) -> Result<String, StoreError> {
    let p = path.trim().trim_matches('/');
    let p = if p == "everyone" || p.starts_with("everyone/") {
        p.to_owned()
    } else {
        format!("everyone/{p}")
    };
    let ok = p.split('/').all(|part| {
        !part.is_empty()
            && part.len() <= 64
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    });
    if !ok {
        return Err(StoreError::Invalid(format!(
            "group path {path:?}: use names of letters, digits, '-', '_' or '.', separated by '/'"
        )));
    }
    Ok(p)
}
