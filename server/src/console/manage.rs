//! Console pages that manage licence keys (assign and unassign, L4) and enrollment tokens
//! (create, shown once; S7). Both read and act through `admin::handle`: what they show is
//! what `admin key list` / `admin token list` show, and what they refuse the CLI refuses.

use std::collections::HashMap;
use std::fmt::Write;

use axum::response::{Html, IntoResponse, Response};
use outpost_proto::pb::admin::{
    AdminRequest, Empty, KeyAssign, KeyUnassign, TokenCreate, admin_request::Op,
    admin_response::Result as R,
};

use super::pages::{enc, esc, outcome_box, page, refused, time};
use crate::node::Node;
use crate::store::console::ConsoleSession;

/// Runs an admin operation as the session's admin: the answer, or the refusal's sentence.
pub async fn run(node: &std::sync::Arc<Node>, s: &ConsoleSession, op: Op) -> Result<R, String> {
    let answer = crate::admin::handle(node, &s.admin, AdminRequest { op: Some(op) }).await;
    match answer.result {
        Some(R::Error(e)) => Err(e.message),
        Some(r) => Ok(r),
        None => Err("no answer".into()),
    }
}

/// Keys and seats, with assignment forms.
pub async fn keys(
    node: &std::sync::Arc<Node>,
    s: &ConsoleSession,
    outcome: Option<&str>,
) -> Response {
    let keys = match run(node, s, Op::KeyList(Empty {})).await {
        Ok(R::Keys(k)) => k.keys,
        Ok(_) => vec![],
        Err(e) => return refused(s, "Keys and seats", &e),
    };
    let mut b = outcome_box(outcome);
    b.push_str("<table id=\"keys\"><tr><th>key</th><th>licensee</th><th>components</th><th>usage</th><th>used / total</th><th>free</th><th>leased out</th><th>expires</th><th>assigned to</th><th>assign</th></tr>");
    for k in &keys {
        let mut objects = String::new();
        for o in &k.objects {
            let _ = write!(
                objects,
                "<form class=\"inline\" method=\"post\" action=\"/keys/{}/unassign\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"object\" value=\"{}\">\
                 {} <button title=\"unassign\">×</button></form><br>",
                enc(&k.key_id),
                esc(&s.csrf),
                esc(o),
                esc(o)
            );
        }
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><meter min=\"0\" max=\"{}\" value=\"{}\"></meter></td>\
             <td>{} / {}</td><td>{}</td><td>{}</td><td>{}</td><td>{objects}</td>\
             <td><form method=\"post\" action=\"/keys/{}/assign\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <input name=\"object\" placeholder=\"everyone, group:…, device:…, server:…\"> <button>Assign</button></form></td></tr>",
            esc(&k.key_id),
            esc(&k.licensee),
            esc(&k.components.join(", ")),
            k.seats_total.max(1),
            k.seats_used,
            k.seats_used,
            k.seats_total,
            k.seats_free,
            k.seats_leased_out,
            time(k.expires_at),
            enc(&k.key_id),
            esc(&s.csrf)
        );
    }
    b.push_str("</table><p>The nearest assignment wins: device, then its group, then the groups above it, then everyone.</p>");
    Html(page(Some(s), "Keys and seats", &b)).into_response()
}

/// The assign or unassign form's operation.
pub fn key_op(id: &str, assign: bool, f: &HashMap<String, String>) -> Op {
    let object = f
        .get("object")
        .map(|o| o.trim().to_owned())
        .unwrap_or_default();
    if assign {
        Op::KeyAssign(KeyAssign {
            key_id: id.to_owned(),
            object,
        })
    } else {
        Op::KeyUnassign(KeyUnassign {
            key_id: id.to_owned(),
            object,
        })
    }
}

/// Enrollment tokens, with the create form; `created`: a token just made, shown this once.
pub async fn tokens(
    node: &std::sync::Arc<Node>,
    s: &ConsoleSession,
    outcome: Option<&str>,
    created: Option<&str>,
) -> Response {
    let tokens = match run(node, s, Op::TokenList(Empty {})).await {
        Ok(R::Tokens(t)) => t.tokens,
        Ok(_) => vec![],
        Err(e) => return refused(s, "Enrollment tokens", &e),
    };
    let mut b = outcome_box(outcome);
    if let Some(t) = created {
        let _ = write!(
            b,
            "<p class=\"note\">The token, shown this once — copy it now:<br><code id=\"new-token\">{}</code></p>",
            esc(t)
        );
    }
    let _ = write!(
        b,
        "<form method=\"post\" action=\"/tokens\" id=\"create-token\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <select name=\"role\"><option>agent</option><option>gateway</option></select> \
         group <input name=\"group\" value=\"everyone\"> uses <input name=\"uses\" value=\"1\" size=\"5\"> \
         valid for <input name=\"ttl\" value=\"7d\" size=\"5\"> comment <input name=\"comment\"> \
         <button>Create token</button></form>",
        esc(&s.csrf)
    );
    b.push_str("<table id=\"tokens\"><tr><th>token id</th><th>role</th><th>group</th><th>uses left</th><th>expires</th><th>comment</th></tr>");
    for t in &tokens {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} of {}</td><td>{}</td><td>{}</td></tr>",
            esc(&t.token_id),
            esc(&t.role),
            esc(&t.group),
            t.uses_left,
            t.uses_total,
            time(t.expires_at),
            esc(&t.comment)
        );
    }
    b.push_str("</table>");
    Html(page(Some(s), "Enrollment tokens", &b)).into_response()
}

/// The create form's operation, or why the form is wrong.
pub fn token_op(f: &HashMap<String, String>) -> Result<Op, String> {
    let get = |k: &str| f.get(k).map(|v| v.trim()).unwrap_or_default();
    let uses = get("uses")
        .parse::<u32>()
        .map_err(|_| format!("uses {:?}: a whole number of enrollments", get("uses")))?;
    let ttl = humantime::parse_duration(get("ttl"))
        .map_err(|e| format!("valid for {:?}: {e} (e.g. 7d, 12h)", get("ttl")))?;
    Ok(Op::TokenCreate(TokenCreate {
        role: get("role").to_owned(),
        group: get("group").to_owned(),
        ttl_secs: ttl.as_secs(),
        uses,
        comment: get("comment").to_owned(),
        no_takeover: false,
    }))
}

/// Notifications, newest first (the `notifications` admin command's list), by kind if asked.
pub async fn notifications(
    node: &std::sync::Arc<Node>,
    s: &ConsoleSession,
    kind: &str,
) -> Response {
    let op = Op::NotificationList(outpost_proto::pb::admin::NotificationList {
        kind: kind.to_owned(),
        limit: 200,
    });
    let list = match run(node, s, op).await {
        Ok(R::Notifications(n)) => n.notifications,
        Ok(_) => vec![],
        Err(e) => return refused(s, "Notifications", &e),
    };
    let mut b = format!(
        "<form method=\"get\" action=\"/notifications\">kind <input name=\"kind\" value=\"{}\"> <button>Show</button></form>\
         <table id=\"notifications\"><tr><th>when</th><th>kind</th><th>key</th><th>message</th></tr>",
        esc(kind)
    );
    for n in &list {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            time(n.at_ms / 1000),
            esc(&n.kind),
            esc(&n.key_id),
            esc(&n.message)
        );
    }
    b.push_str("</table>");
    Html(page(Some(s), "Notifications", &b)).into_response()
}

/// Hosts found by the gateways' network discovery (D3); `unmanaged`: only those without an agent.
pub async fn hosts(node: &std::sync::Arc<Node>, s: &ConsoleSession, unmanaged: bool) -> Response {
    let op = Op::HostsList(outpost_proto::pb::admin::HostsList {
        unmanaged,
        ..Default::default()
    });
    let hosts = match run(node, s, op).await {
        Ok(R::Hosts(h)) => h.hosts,
        Ok(_) => vec![],
        Err(e) => return refused(s, "Discovered hosts", &e),
    };
    let mut b = format!(
        "<p><a href=\"/hosts\">all</a> · <a href=\"/hosts?unmanaged=1\">without an agent</a></p>\
         <p id=\"count\">{} host(s)</p><table id=\"hosts\"><tr><th>IP</th><th>MAC</th><th>found by</th><th>answered</th><th>first seen</th><th>last seen</th><th>device</th></tr>",
        hosts.len()
    );
    for h in &hosts {
        let device = if h.device_id.is_empty() {
            "<span class=\"unlicensed\">no agent</span>".to_owned()
        } else {
            format!(
                "<a href=\"/devices/{}\">{}</a>",
                enc(&h.device_id),
                esc(&h.device_id)
            )
        };
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{device}</td></tr>",
            esc(&h.ip),
            esc(&h.mac),
            esc(&h.gateway),
            esc(&h.methods.join(", ")),
            time(h.first_seen),
            time(h.last_seen)
        );
    }
    b.push_str("</table>");
    Html(page(Some(s), "Discovered hosts", &b)).into_response()
}
