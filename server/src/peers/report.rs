//! Licence-usage reports (H9): what this server sends up to its main server — its own usage
//! with the newest reports of the servers below it nested — and how `admin report` lays the
//! tree out.

use outpost_proto::pb::admin::{NamedReport, ServerUsage, UsageReport};

use crate::node::Node;
use crate::store::StoreError;

/// The active-device period reports use here: the one the main server set, else this
/// server's own setting.
pub async fn active_secs(node: &Node) -> i64 {
    if let Ok(relations) = node.store().servers().await
        && let Some(primary) = relations.iter().find(|r| r.kind == "primary")
        && let Ok((report, active)) = node.store().report_terms(&primary.name).await
        && report > 0
    {
        return active;
    }
    node.config().hierarchy.active_period.as_secs() as i64
}

/// This server's report now, with the servers below it.
pub async fn make(node: &Node) -> Result<UsageReport, StoreError> {
    let now = outpost_net::unix_now();
    let mut own = node.store().own_usage(now, active_secs(node).await).await?;
    own.below = node
        .store()
        .reports_below()
        .await?
        .into_iter()
        .map(|(server, _, report)| NamedReport {
            server,
            report: Some(report),
        })
        .collect();
    Ok(own)
}

/// The tree as a list, this server first, each server below named by its path; only the
/// subtree of `only` when given.
pub async fn tree(node: &Node, only: &str) -> Result<Vec<ServerUsage>, StoreError> {
    let mut own = make(node).await?;
    let received: Vec<(String, i64)> = node
        .store()
        .reports_below()
        .await?
        .into_iter()
        .map(|(s, at, _)| (s, at))
        .collect();
    let below = std::mem::take(&mut own.below);
    let mut out = vec![ServerUsage {
        path: "(this server)".into(),
        report: Some(own),
        received_at: 0,
    }];
    for b in below {
        let at = received
            .iter()
            .find(|(s, _)| *s == b.server)
            .map(|(_, at)| *at)
            .unwrap_or(0);
        flatten(&b.server, b.report.unwrap_or_default(), at, &mut out);
    }
    if !only.is_empty() {
        out.retain(|u| u.path.split('/').any(|p| p == only));
    }
    Ok(out)
}

fn flatten(path: &str, mut r: UsageReport, received_at: i64, out: &mut Vec<ServerUsage>) {
    let below = std::mem::take(&mut r.below);
    out.push(ServerUsage {
        path: path.to_owned(),
        report: Some(r),
        received_at,
    });
    for b in below {
        flatten(
            &format!("{path}/{}", b.server),
            b.report.unwrap_or_default(),
            received_at,
            out,
        );
    }
}
