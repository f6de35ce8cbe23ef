//! Console pages for the fleet as a whole: groups (create, push to a group: D4) and update
//! revisions with each gateway's cache (D1, D2). Read through `admin::handle` like the CLI.

use std::fmt::Write;
use std::sync::Arc;

use axum::response::{Html, IntoResponse, Response};
use outpost_proto::pb::admin::{Empty, admin_request::Op, admin_response::Result as R};

use super::manage::run;
use super::pages::{enc, esc, failed, outcome_box, page, refused, time};
use crate::node::Node;
use crate::store::console::ConsoleSession;

/// Mebibytes, one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

/// Groups with their device counts, the create form and a push to a group.
pub async fn groups(node: &Arc<Node>, s: &ConsoleSession, outcome: Option<&str>) -> Response {
    let groups = match run(node, s, Op::GroupList(Empty {})).await {
        Ok(R::Groups(g)) => g.groups,
        Ok(_) => vec![],
        Err(e) => return refused(s, "Groups", &e),
    };
    let csrf = esc(&s.csrf);
    let mut b = outcome_box(outcome);
    b.push_str(
        "<table id=\"groups\"><tr><th>group</th><th>devices (this group only)</th><th></th></tr>",
    );
    for g in &groups {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td><a href=\"/devices?q={}\">devices</a></td></tr>",
            esc(&g.path),
            g.devices,
            enc(&g.path)
        );
    }
    let _ = write!(
        b,
        "</table><h2>New group</h2><form method=\"post\" action=\"/groups\" id=\"create-group\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input name=\"path\" placeholder=\"everyone/berlin/floor2\" size=\"40\"> <button>Create group</button></form>\
         <p>The parent group must exist. Move a device into a group from its page.</p>\
         <h2>Push to a group</h2><form method=\"post\" action=\"/groups/push\" id=\"push-group\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><select name=\"group\">"
    );
    for g in &groups {
        let _ = write!(b, "<option>{}</option>", esc(&g.path));
    }
    b.push_str(
        "</select> <select name=\"kind\"><option>sync-now</option><option>message</option>\
         <option>update-available</option><option>licence-changed</option></select> \
         <input name=\"message\" placeholder=\"message (for kind message)\"> <button>Push</button></form>\
         <p>The agents of the group and of the groups below it; sent once to each gateway, which \
         fans it out. Agents offline get it when they next connect.</p>",
    );
    Html(page(Some(s), "Groups", &b)).into_response()
}

/// Update revisions, what this server served, and each gateway's uplink and cache.
pub async fn updates(node: &Arc<Node>, s: &ConsoleSession) -> Response {
    let revisions = match run(node, s, Op::UpdateList(Empty {})).await {
        Ok(R::Updates(u)) => u.revisions,
        Ok(_) => vec![],
        Err(e) => return refused(s, "Updates and gateways", &e),
    };
    let status = match run(node, s, Op::ServerStatus(Empty {})).await {
        Ok(R::ServerStatus(st)) => st,
        Ok(_) => Default::default(),
        Err(e) => return refused(s, "Updates and gateways", &e),
    };
    let enrolled = match node.store().devices(Some("gateway")).await {
        Ok(d) => d,
        Err(e) => return failed(&e),
    };
    let newest = revisions.iter().map(|r| r.revision).max().unwrap_or(0);
    let mut b = String::from(
        "<h2>Revisions</h2><table id=\"revisions\"><tr><th>revision</th><th>made</th><th>expires</th>\
         <th>source</th><th>files</th><th>size</th></tr>",
    );
    for r in &revisions {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.revision,
            time(r.created_at),
            time(r.expires_at),
            esc(&r.source),
            r.files,
            mib(r.bytes)
        );
    }
    if revisions.is_empty() {
        b.push_str("<tr><td colspan=\"6\">none imported (`admin update import DIR`)</td></tr>");
    }
    let files = status.files.unwrap_or_default();
    let _ = write!(
        b,
        "</table><p id=\"served\">This server served {} block(s), {} in {} request(s).</p>\
         <h2>Gateways</h2><table id=\"gateways\"><tr><th>gateway</th><th>uplink</th><th>round trip</th>\
         <th>agents</th><th>cache revision</th><th>cached</th><th>hits</th><th>misses</th>\
         <th>fetched upstream</th><th>refused blocks</th></tr>",
        files.blocks,
        mib(files.bytes),
        files.requests
    );
    for g in enrolled.iter().filter(|g| g.revoked_at.is_none()) {
        let link = format!(
            "<a href=\"/devices/{}\">{}</a> {}",
            enc(&g.id),
            esc(&g.id),
            esc(&g.hostname)
        );
        let Some(u) = status.gateways.iter().find(|u| u.device_id == g.id) else {
            let _ = write!(
                b,
                "<tr><td>{link}</td><td class=\"unlicensed\">not on this instance (last seen {})</td>\
                 <td colspan=\"8\"></td></tr>",
                time(g.last_seen)
            );
            continue;
        };
        let behind = if u.cache_revision < newest {
            " class=\"unlicensed\""
        } else {
            ""
        };
        let _ = write!(
            b,
            "<tr><td>{link}</td><td class=\"licensed\">{} from {} since {}</td><td>{} ms</td><td>{}</td>\
             <td{behind}>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&u.direction),
            esc(&u.remote),
            time(u.connected_since),
            u.rtt_ms,
            u.agents_connected,
            u.cache_revision,
            mib(u.cache_bytes),
            u.cache_hits,
            u.cache_misses,
            mib(u.cache_upstream_bytes),
            u.cache_refused_blocks
        );
    }
    b.push_str(
        "</table><p>A cache revision behind the newest one is shown in red; a gateway fetches the \
         newest revision when its uplink comes up and whenever one is imported.</p>",
    );
    Html(page(Some(s), "Updates and gateways", &b)).into_response()
}
