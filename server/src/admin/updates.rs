//! `admin update import/list/show/remove` (D1).

use outpost_proto::pb::admin::{
    AdminResponse, UpdateFileInfo, UpdateImport, UpdateListResult, UpdateRef, UpdateRevisionInfo,
    admin_response::Result as R,
};
use outpost_proto::pb::v1::UpdateManifest;
use outpost_proto::update;

use super::ok;
use crate::node::Node;
use crate::store::StoreError;
use crate::store::updates::{RevisionRow, hex};

type Answer = Result<AdminResponse, StoreError>;

fn info(r: RevisionRow) -> UpdateRevisionInfo {
    UpdateRevisionInfo {
        revision: r.revision.max(0) as u64,
        created_at: r.created_at,
        expires_at: r.expires_at,
        source: r.source,
        files: r.files.max(0) as u64,
        bytes: r.bytes.max(0) as u64,
        file_list: vec![],
    }
}

fn with_files(mut i: UpdateRevisionInfo, m: &UpdateManifest) -> UpdateRevisionInfo {
    i.file_list = m
        .files
        .iter()
        .map(|f| UpdateFileInfo {
            name: f.name.clone(),
            component: f.component.clone(),
            size: f.size,
            sha256: hex(&f.sha256),
            blocks: f.block_sha256.len() as u32,
        })
        .collect();
    i
}

async fn row(node: &Node, revision: u64) -> Result<UpdateRevisionInfo, StoreError> {
    node.store()
        .update_revision(revision)
        .await?
        .map(info)
        .ok_or_else(|| {
            StoreError::NotFound(format!(
                "no update revision {revision} (admin update list shows them)"
            ))
        })
}

pub(super) async fn import(node: &Node, u: UpdateImport) -> Answer {
    let m = crate::updates::import_dir(node, std::path::Path::new(&u.dir)).await?;
    let i = with_files(row(node, m.revision).await?, &m);
    Ok(ok(R::Updates(UpdateListResult {
        message: format!(
            "revision {} imported from {}: {} file(s), {} bytes; connected devices are told now",
            m.revision, u.dir, i.files, i.bytes
        ),
        revisions: vec![i],
    })))
}

pub(super) async fn list(node: &Node) -> Answer {
    let revisions = node
        .store()
        .update_revisions()
        .await?
        .into_iter()
        .map(info)
        .collect();
    Ok(ok(R::Updates(UpdateListResult {
        revisions,
        message: String::new(),
    })))
}

pub(super) async fn show(node: &Node, u: UpdateRef) -> Answer {
    let revision = if u.revision == 0 {
        node.store().newest_update_revision().await?
    } else {
        u.revision
    };
    if revision == 0 {
        return Err(StoreError::NotFound(
            "the update repository is empty (admin update import DIR)".into(),
        ));
    }
    let signed = node
        .store()
        .update_manifest(Some(revision))
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no update revision {revision}")))?;
    let m = update::verify(&signed, &node.updates().public_key()).map_err(|e| {
        StoreError::Invalid(format!("stored revision {revision} does not verify: {e}"))
    })?;
    Ok(ok(R::Updates(UpdateListResult {
        revisions: vec![with_files(row(node, revision).await?, &m)],
        message: String::new(),
    })))
}

pub(super) async fn remove(node: &Node, u: UpdateRef) -> Answer {
    let i = row(node, u.revision).await?;
    node.store().remove_update_revision(u.revision).await?;
    let blocks = node.store().collect_update_blocks().await?;
    node.peers().hand_down_changed();
    Ok(ok(R::Updates(UpdateListResult {
        message: format!(
            "revision {} removed ({blocks} block(s) no other revision uses deleted); devices \
             holding it keep it and refuse an older one — to go back, import the older \
             content again as a new revision",
            u.revision
        ),
        revisions: vec![i],
    })))
}

/// `hosts list [--unmanaged | --stale [--older D]]` (D3).
pub(super) async fn hosts(node: &Node, q: outpost_proto::pb::admin::HostsList) -> Answer {
    let older = if q.older_secs > 0 {
        q.older_secs as i64
    } else {
        86_400
    };
    let cutoff = outpost_net::unix_now() - older;
    let hosts = node
        .store()
        .discovered_hosts()
        .await?
        .into_iter()
        .filter(|h| !q.unmanaged || h.device_id.is_empty())
        .filter(|h| !q.stale || h.last_seen < cutoff)
        .collect();
    Ok(ok(R::Hosts(outpost_proto::pb::admin::HostsResult {
        hosts,
    })))
}
