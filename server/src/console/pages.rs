//! The console's pages: plain HTML written here (every value escaped), one stylesheet served
//! from the binary, no script.

use std::collections::HashMap;
use std::fmt::Write;

use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use crate::node::Node;
use crate::store::console::{ConsoleSession, DeviceFilter};
use crate::store::{DeviceRow, StoreError};

/// Devices per page.
const PAGE: i64 = 50;

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2430;background:#f5f6f8}
header{background:#1d2430;color:#fff;padding:8px 16px;display:flex;gap:16px;align-items:center}
header a{color:#cfe0ff;text-decoration:none}header form{margin-left:auto}
main{padding:16px;max-width:1200px}h1{font-size:20px;margin:8px 0 16px}
table{border-collapse:collapse;width:100%;background:#fff}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e3e6eb}
th{background:#eef1f5}.tiles{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:16px}
.tile{background:#fff;padding:12px 16px;border:1px solid #e3e6eb;min-width:140px}.tile b{font-size:22px;display:block}
.licensed{color:#16794c}.unlicensed,.revoked{color:#b42318}.note{background:#fff7e0;padding:8px;border:1px solid #f0d48a;margin:8px 0}
meter{width:160px}main form{margin:6px 0}form.inline{display:inline}button{cursor:pointer}.pages{margin:8px 0}";

/// The stylesheet.
pub async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

/// HTML-escapes `s`.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Percent-encodes a query value.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A unix time for people (`-` for none).
pub fn time(t: i64) -> String {
    if t > 0 {
        outpost_proto::licence::key::format_time(t)
    } else {
        "-".into()
    }
}

/// A whole page around `body`.
pub fn page(s: Option<&ConsoleSession>, title: &str, body: &str) -> String {
    let nav = match s {
        Some(s) => format!(
            "<a href=\"/\">Overview</a><a href=\"/devices\">Devices</a><a href=\"/keys\">Keys</a><a href=\"/groups\">Groups</a><a href=\"/tokens\">Tokens</a><a href=\"/servers\">Servers</a><a href=\"/updates\">Updates</a><a href=\"/hosts\">Hosts</a><a href=\"/notifications\">Notifications</a><a href=\"/audit\">Audit log</a>\
             <form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <span>{}</span> <button>Sign out</button></form>",
            esc(&s.csrf),
            esc(&s.admin)
        ),
        None => String::new(),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · Outpost</title>\
         <link rel=\"stylesheet\" href=\"/console.css\"></head><body><header><strong>Outpost</strong>{nav}</header>\
         <main><h1>{}</h1>{body}</main></body></html>",
        esc(title),
        esc(title)
    )
}

/// A page that could not be shown: the refusal's sentence in it.
pub fn refused(s: &ConsoleSession, title: &str, e: &str) -> Response {
    Html(page(
        Some(s),
        title,
        &format!("<p class=\"note\">{}</p>", esc(e)),
    ))
    .into_response()
}

/// The outcome of an action just taken, if any.
pub fn outcome_box(outcome: Option<&str>) -> String {
    outcome
        .map(|o| format!("<p class=\"note\" id=\"outcome\">{}</p>", esc(o)))
        .unwrap_or_default()
}

/// A page for someone not signed in.
pub fn signed_out(status: StatusCode, why: &str) -> Response {
    (
        status,
        Html(page(
            None,
            "Sign in",
            &format!("<p class=\"note\">{}</p>", esc(why)),
        )),
    )
        .into_response()
}

/// The sign-in form (name and password), with why the last try was refused.
pub fn sign_in_form(status: StatusCode, refused: Option<&str>) -> Response {
    let mut b = refused
        .map(|r| format!("<p class=\"note\" id=\"refused\">{}</p>", esc(r)))
        .unwrap_or_default();
    b.push_str(
        "<form method=\"post\" action=\"/login\" id=\"sign-in\">\
         <p><label>Account <input name=\"name\" autocomplete=\"username\" required></label></p>\
         <p><label>Password <input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label></p>\
         <p><button>Sign in</button></p></form>\
         <p>No account? An administrator makes one with <code>outpost-server admin console-account set NAME</code>, \
         or prints a one-time sign-in link with <code>outpost-server admin console-login</code>.</p>",
    );
    (status, Html(page(None, "Sign in", &b))).into_response()
}

/// A POST refused: not signed in, or without the session's CSRF token.
pub fn csrf_refused() -> Response {
    signed_out(
        StatusCode::FORBIDDEN,
        "Refused: this action did not come from a page of your console session (missing or \
         wrong CSRF token, or the session ended). Reload the page and try again.",
    )
}

/// Not found.
pub fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Html(page(None, "Not found", "<p>No such page.</p>")),
    )
        .into_response()
}

/// A store failure: the sentence for the admin's mistakes, an incident id for ours.
pub fn failed(e: &StoreError) -> Response {
    let r = e.to_refusal("console page failed in the store");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Html(page(
            None,
            "Error",
            &format!("<p class=\"note\">{}</p>", esc(&r.0.message)),
        )),
    )
        .into_response()
}

/// Overview: sessions, uplinks, seats per key, recent notifications.
pub async fn overview(node: &Node, s: &ConsoleSession) -> Response {
    let store = node.store();
    let keys = match store.keys().await {
        Ok(k) => k,
        Err(e) => return failed(&e),
    };
    let notes = store.notices(None, 10).await.unwrap_or_default();
    let (counts, _) = (store.device_counts().await.unwrap_or_default(), ());
    let agents: i64 = counts
        .iter()
        .filter(|(r, st, _)| r == "agent" && st == "active")
        .map(|(_, _, n)| n)
        .sum();
    let mut b = String::new();
    let _ = write!(
        b,
        "<div class=\"tiles\"><div class=\"tile\"><b id=\"sessions\">{}</b>agent sessions</div>\
         <div class=\"tile\"><b id=\"uplinks\">{}</b>gateway uplinks</div>\
         <div class=\"tile\"><b id=\"agents\">{agents}</b>agents enrolled</div></div>",
        node.sessions().registry().online_count(),
        node.gateways().count(),
    );
    b.push_str("<h2>Keys and seats</h2><table><tr><th>key</th><th>licensee</th><th>usage</th><th>used</th><th>free</th><th>leased out</th><th>expires</th></tr>");
    for k in &keys {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td><meter min=\"0\" max=\"{}\" value=\"{}\"></meter></td>\
             <td>{} / {}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&k.id),
            esc(&k.licensee),
            k.seats.max(1),
            k.seats_used,
            k.seats_used,
            k.seats,
            k.free(),
            k.seats_leased_out,
            time(k.expires_at)
        );
    }
    b.push_str("</table><h2>Recent notifications</h2><table><tr><th>when</th><th>kind</th><th>message</th></tr>");
    for n in &notes {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            time(n.at_ms / 1000),
            esc(&n.kind),
            esc(&n.message)
        );
    }
    b.push_str("</table>");
    Html(page(Some(s), "Overview", &b)).into_response()
}

fn filter_of(q: &HashMap<String, String>) -> (DeviceFilter, &'static str) {
    match q.get("filter").map(String::as_str) {
        Some("unlicensed") => (DeviceFilter::Unlicensed, "unlicensed"),
        Some("offline") => (
            DeviceFilter::OfflineSince(outpost_net::unix_now() - 86_400),
            "offline",
        ),
        Some("revoked") => (DeviceFilter::Revoked, "revoked"),
        _ => (DeviceFilter::All, ""),
    }
}

fn state_of(d: &DeviceRow) -> (&'static str, String) {
    if d.revoked_at.is_some() {
        ("revoked", "revoked".into())
    } else if d.role != "agent" {
        ("", d.role.clone())
    } else if d.licence_state == "licensed" {
        ("licensed", "licensed".into())
    } else {
        ("unlicensed", format!("unlicensed: {}", d.licence_reason))
    }
}

/// Devices: search, filters, server-side pages.
pub async fn devices(
    node: &Node,
    s: &ConsoleSession,
    q: &HashMap<String, String>,
    outcome: Option<&str>,
) -> Response {
    let search = q.get("q").map(String::as_str).unwrap_or_default().trim();
    let (filter, fname) = filter_of(q);
    let pageno: i64 = q
        .get("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .max(1);
    let (rows, total) = match node
        .store()
        .device_page(search, filter, (pageno - 1) * PAGE, PAGE)
        .await
    {
        Ok(r) => r,
        Err(e) => return failed(&e),
    };
    let mut b = outcome_box(outcome);
    let _ = write!(
        b,
        "<form method=\"get\" action=\"/devices\"><input name=\"q\" value=\"{}\" placeholder=\"id, host name or group\"> \
         <select name=\"filter\"><option value=\"\">all</option>",
        esc(search)
    );
    for f in ["unlicensed", "offline", "revoked"] {
        let sel = if f == fname { " selected" } else { "" };
        let _ = write!(b, "<option value=\"{f}\"{sel}>{f}</option>");
    }
    let _ = write!(
        b,
        "</select> <button>Search</button></form><p id=\"count\">{total} device(s)</p>\
         <table id=\"devices\"><tr><th>device</th><th>host</th><th>group</th><th>licence</th><th>key</th><th>path</th><th>last seen</th></tr>"
    );
    for d in &rows {
        let (class, state) = state_of(d);
        let _ = write!(
            b,
            "<tr><td><a href=\"/devices/{}\">{}</a></td><td>{}</td><td>{}</td><td class=\"{class}\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            enc(&d.id),
            esc(&d.id),
            esc(&d.hostname),
            esc(&d.group_path),
            esc(&state),
            esc(d.licence_key.as_deref().unwrap_or("")),
            esc(&d.path),
            time(d.last_seen)
        );
    }
    b.push_str("</table><p class=\"pages\">");
    let pages = (total + PAGE - 1) / PAGE;
    let link = |p: i64| format!("/devices?q={}&filter={fname}&page={p}", enc(search));
    if pageno > 1 {
        let _ = write!(b, "<a href=\"{}\">← previous</a> ", esc(&link(pageno - 1)));
    }
    let _ = write!(b, "page {pageno} of {}", pages.max(1));
    if pageno < pages {
        let _ = write!(
            b,
            " <a href=\"{}\" id=\"next\">next →</a>",
            esc(&link(pageno + 1))
        );
    }
    b.push_str("</p>");
    Html(page(Some(s), "Devices", &b)).into_response()
}

/// One device with its recent events and actions (push, move, revoke, remove); `outcome` is the result of an action just taken.
pub async fn device(node: &Node, s: &ConsoleSession, id: &str, outcome: Option<&str>) -> Response {
    let d = match node.store().device(id).await {
        Ok(Some(d)) => d,
        Ok(None) => return not_found(),
        Err(e) => return failed(&e),
    };
    let (class, state) = state_of(&d);
    let mut b = outcome_box(outcome);
    let _ = write!(
        b,
        "<table><tr><th>device</th><td>{}</td></tr><tr><th>role</th><td>{}</td></tr>\
         <tr><th>host</th><td>{}</td></tr><tr><th>group</th><td>{}</td></tr>\
         <tr><th>licence</th><td class=\"{class}\" id=\"licence\">{}</td></tr><tr><th>key</th><td>{}</td></tr>\
         <tr><th>path</th><td>{}</td></tr><tr><th>last seen</th><td>{}</td></tr>\
         <tr><th>last licence check</th><td>{}</td></tr><tr><th>enrolled</th><td>{}</td></tr></table>",
        esc(&d.id),
        esc(&d.role),
        esc(&d.hostname),
        esc(&d.group_path),
        esc(&state),
        esc(d.licence_key.as_deref().unwrap_or("")),
        esc(&d.path),
        time(d.last_seen),
        time(d.last_check_at),
        time(d.enrolled_at)
    );
    let csrf = esc(&s.csrf);
    let base = format!("/devices/{}", enc(&d.id));
    b.push_str("<h2>Actions</h2>");
    if d.revoked_at.is_none() {
        if d.role == "agent" {
            let _ = write!(
                b,
                "<form method=\"post\" action=\"{base}/push\" id=\"push\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <select name=\"kind\"><option>sync-now</option><option>message</option><option>update-available</option></select> \
                 <input name=\"message\" placeholder=\"message (for kind message)\"> <button>Push</button></form>"
            );
        }
        let groups = node.store().groups().await.unwrap_or_default();
        let _ = write!(
            b,
            "<form method=\"post\" action=\"{base}/move\" id=\"move\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <select name=\"group\">"
        );
        for (g, _) in &groups {
            let sel = if *g == d.group_path { " selected" } else { "" };
            let _ = write!(b, "<option{sel}>{}</option>", esc(g));
        }
        let _ = write!(
            b,
            "</select> <button>Move to group</button></form>\
             <form method=\"post\" action=\"{base}/revoke\" id=\"revoke-form\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <label><input type=\"checkbox\" name=\"free_seat_now\"> free its seat now</label> \
             <button id=\"revoke\">Revoke</button></form>"
        );
    }
    let _ = write!(
        b,
        "<form method=\"post\" action=\"{base}/remove\" id=\"remove\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <label><input type=\"checkbox\" name=\"free_seat_now\"> free its seat now</label> \
         <button>Remove from the deployment</button></form>"
    );
    let events = node
        .store()
        .recent_events(&d.id, 20)
        .await
        .unwrap_or_default();
    b.push_str("<h2>Recent events</h2><table id=\"events\"><tr><th>when</th><th>kind</th><th>detail</th></tr>");
    for e in &events {
        let text = String::from_utf8_lossy(&e.payload);
        let detail: String = text.chars().take(200).collect();
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            time(e.created_at_ms / 1000),
            esc(&e.kind),
            esc(&detail)
        );
    }
    b.push_str("</table>");
    Html(page(Some(s), &format!("Device {}", d.id), &b)).into_response()
}

/// The audit log, newest first.
pub async fn audit(node: &Node, s: &ConsoleSession) -> Response {
    let rows = match node.store().console_audit_log(200).await {
        Ok(r) => r,
        Err(e) => return failed(&e),
    };
    let mut b = String::from(
        "<table id=\"audit\"><tr><th>when</th><th>admin</th><th>from</th><th>action</th><th>on</th><th>outcome</th></tr>",
    );
    for r in &rows {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            time(r.at_ms / 1000),
            esc(&r.admin),
            esc(&r.address),
            esc(&r.action),
            esc(&r.target),
            esc(&r.outcome)
        );
    }
    b.push_str("</table>");
    Html(page(Some(s), "Audit log", &b)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn o8_values_are_escaped_and_query_values_encoded() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(enc("a b&c/é"), "a%20b%26c%2F%C3%A9");
    }
}
