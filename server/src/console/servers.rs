//! The console's servers and leases page (H1–H3, L6–L9): the neighbour servers with their link
//! state, the leases given and received, and the forms to give, change and revoke a lease —
//! the `admin server list`, `lease list/give/change/revoke` commands, through the same code.

use std::fmt::Write;
use std::sync::Arc;

use axum::response::{Html, IntoResponse, Response};
use outpost_proto::pb::admin::{Empty, admin_request::Op, admin_response::Result as R};

use super::manage::run;
use super::pages::{enc, esc, outcome_box, time};
use crate::node::Node;
use crate::store::console::ConsoleSession;

/// A date for a date field (`YYYY-MM-DD`), empty for none.
fn day(t: i64) -> String {
    if t <= 0 {
        return String::new();
    }
    let full = outpost_proto::licence::key::format_time(t);
    full.get(..10).unwrap_or_default().to_owned()
}

/// Servers and leases.
pub async fn page_of(node: &Arc<Node>, s: &ConsoleSession) -> Result<String, String> {
    let servers = match run(node, s, Op::ServerList(Empty {})).await? {
        R::Servers(l) => l.servers,
        _ => vec![],
    };
    let leases = match run(node, s, Op::LeaseList(Empty {})).await? {
        R::Leases(l) => l.leases,
        _ => vec![],
    };
    let keys = match run(node, s, Op::KeyList(Empty {})).await? {
        R::Keys(k) => k.keys,
        _ => vec![],
    };
    let csrf = esc(&s.csrf);
    let mut b = String::from(
        "<h2>Neighbour servers</h2><table id=\"servers\"><tr><th>server</th><th>relation</th><th>link</th>\
         <th>state</th><th>last contact</th><th>certificate</th></tr>",
    );
    for n in &servers {
        let link = if n.dials {
            format!("dials {}", n.address)
        } else {
            "dials in".to_owned()
        };
        let link = if n.interval_secs > 0 {
            format!(
                "{link}, every {}",
                humantime::format_duration(std::time::Duration::from_secs(n.interval_secs))
            )
        } else {
            link
        };
        let class = if n.state == "connected" {
            "licensed"
        } else {
            "unlicensed"
        };
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{}</td><td>{}</td><td><code>{}…</code></td></tr>",
            esc(&n.name),
            esc(&n.kind),
            esc(&link),
            esc(&n.state),
            time(n.last_contact),
            esc(n.cert_sha256.get(..16).unwrap_or(&n.cert_sha256))
        );
    }
    if servers.is_empty() {
        b.push_str("<tr><td colspan=\"6\">none (`admin server add-secondary`, `set-primary`, `add-peer`)</td></tr>");
    }
    b.push_str(
        "</table><h2>Leases</h2><table id=\"leases\"><tr><th>lease</th><th>direction</th><th>server</th>\
         <th>key</th><th>seats</th><th>held now</th><th>until</th><th>period ends</th><th>change</th></tr>",
    );
    for l in &leases {
        let state = if l.revoked { " (revoked)" } else { "" };
        let follows = if l.follows.is_empty() {
            String::new()
        } else {
            format!(" (follows: {})", esc(&l.follows))
        };
        let change = if l.direction == "given" && !l.revoked {
            format!(
                "<form class=\"inline\" method=\"post\" action=\"/leases/{id}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <input name=\"seats\" size=\"4\" placeholder=\"{}\" aria-label=\"new seats\"> \
                 <input type=\"date\" name=\"until\" value=\"{}\" aria-label=\"new end date\"> <button>Change</button></form> \
                 <form class=\"inline\" method=\"post\" action=\"/leases/{id}/revoke\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <button>Revoke</button></form>",
                l.seats,
                day(l.end_at),
                id = enc(&l.lease_id),
            )
        } else {
            String::new()
        };
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}{state}</td><td>{}</td><td>{}</td><td>{}{follows}</td><td>{}</td><td>{}</td><td>{}</td><td>{change}</td></tr>",
            esc(&l.lease_id),
            esc(&l.direction),
            esc(&l.server),
            esc(&l.key_id),
            l.seats,
            l.held,
            time(l.end_at),
            time(l.period_end)
        );
    }
    let _ = write!(
        b,
        "</table><h2>Give a lease</h2><form method=\"post\" action=\"/leases\" id=\"give-lease\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">to <select name=\"server\">"
    );
    for n in servers.iter().filter(|n| n.kind != "primary") {
        let _ = write!(b, "<option>{}</option>", esc(&n.name));
    }
    b.push_str("</select> from key <select name=\"key\">");
    for k in &keys {
        let _ = write!(
            b,
            "<option value=\"{}\">{} ({} free)</option>",
            esc(&k.key_id),
            esc(&k.key_id),
            k.seats_free
        );
    }
    b.push_str(
        "</select> seats <input name=\"seats\" size=\"4\"> until <input type=\"date\" name=\"until\"> \
         <button>Give</button></form><p>Seats given leave this server's free seats at once. More \
         seats in a change must be free now; fewer, or a revoke, come back when the period already \
         granted ends. A date means the end of that day, UTC. A lease that follows the \
         neighbour's needs (its key assigned to the server, or automatic distribution) is sized \
         for you.</p>",
    );
    Ok(b)
}

/// The page, or the refusal.
pub async fn page(node: &Arc<Node>, s: &ConsoleSession, outcome: Option<&str>) -> Response {
    let body = match page_of(node, s).await {
        Ok(b) => format!("{}{b}", outcome_box(outcome)),
        Err(e) => format!("<p class=\"note\">{}</p>", esc(&e)),
    };
    Html(super::pages::page(Some(s), "Servers and leases", &body)).into_response()
}
