//! The console's actions: every POST form but sign-in/out and token creation comes here. The
//! route names the action, the form carries its arguments and the session's CSRF token; the
//! action runs as an admin request through `admin::handle` (the CLI's code), is written to the
//! audit log done or refused, and the page it came from is shown again with the outcome.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Form, MatchedPath, RawPathParams, State};
use axum::http::HeaderMap;
use axum::response::Response;
use outpost_proto::pb::admin::{
    DeviceMove, DeviceRef, GroupCreate, LeaseChange, LeaseGive, LeaseRef, PushRequest,
    admin_request::Op, admin_response::Result as R,
};

use super::{Peer, checked, manage, pages, record, servers};
use crate::node::Node;
use crate::store::console::ConsoleSession;

/// The action routes (all POST), each handled by [`act`].
pub const ROUTES: &[&str] = &[
    "/devices/{id}/revoke",
    "/devices/{id}/remove",
    "/devices/{id}/move",
    "/devices/{id}/push",
    "/keys/{id}/assign",
    "/keys/{id}/unassign",
    "/groups",
    "/groups/push",
    "/leases",
    "/leases/{id}",
    "/leases/{id}/revoke",
];

/// Where the admin is taken back to, with the outcome.
enum Back {
    Device(String),
    Devices,
    Keys,
    Groups,
    Servers,
}

type Fields = HashMap<String, String>;

fn field<'a>(f: &'a Fields, k: &str) -> &'a str {
    f.get(k).map(|v| v.trim()).unwrap_or_default()
}

/// A form date: `YYYY-MM-DD` (a browser's date field; the end of that day, UTC) or RFC 3339.
pub fn end_date(s: &str) -> Result<i64, String> {
    let rfc = if s.len() == 10 {
        format!("{s}T23:59:59Z")
    } else {
        s.to_owned()
    };
    outpost_proto::licence::key::parse_time(&rfc)
        .ok_or_else(|| format!("until {s:?}: a date like 2027-06-30 (the end of that day, UTC)"))
}

fn seats(s: &str, blank_ok: bool) -> Result<u32, String> {
    if s.is_empty() && blank_ok {
        return Ok(0);
    }
    s.parse::<u32>()
        .ok()
        .filter(|n| *n > 0 || blank_ok)
        .ok_or_else(|| format!("seats {s:?}: a whole number of seats, at least 1"))
}

/// One action: its audit name and target, the page to go back to, and the admin operation
/// (or why the form is wrong).
struct Plan {
    name: &'static str,
    target: String,
    back: Back,
    op: Result<Op, String>,
}

/// The plan of the action at `route` on `id` with form `f`.
fn plan(route: &str, id: &str, f: &Fields) -> Plan {
    let device = || DeviceRef {
        device_id: id.to_owned(),
        free_seat_now: field(f, "free_seat_now") == "on",
    };
    let push = |device_id: &str, group: &str| PushRequest {
        device_id: device_id.to_owned(),
        group: group.to_owned(),
        kind: field(f, "kind").to_owned(),
        message: field(f, "message").to_owned(),
        // Answer the page within seconds; the push stays queued for whoever has not acked.
        wait_ms: 3_000,
        all: false,
    };
    let on = |what: &str| format!("{id} {}", field(f, what));
    let dev = || Back::Device(id.to_owned());
    let (name, target, back, op) = match route {
        "/devices/{id}/revoke" => (
            "revoke",
            id.to_owned(),
            dev(),
            Ok(Op::DeviceRevoke(device())),
        ),
        "/devices/{id}/remove" => (
            "remove",
            id.to_owned(),
            Back::Devices,
            Ok(Op::DeviceRemove(device())),
        ),
        "/devices/{id}/move" => (
            "move",
            on("group"),
            dev(),
            Ok(Op::DeviceMove(DeviceMove {
                device_id: id.to_owned(),
                group: field(f, "group").to_owned(),
            })),
        ),
        "/devices/{id}/push" => ("push", on("kind"), dev(), Ok(Op::Push(push(id, "")))),
        "/keys/{id}/assign" => (
            "key-assign",
            on("object"),
            Back::Keys,
            Ok(manage::key_op(id, true, f)),
        ),
        "/keys/{id}/unassign" => (
            "key-unassign",
            on("object"),
            Back::Keys,
            Ok(manage::key_op(id, false, f)),
        ),
        "/groups" => (
            "group-create",
            field(f, "path").to_owned(),
            Back::Groups,
            Ok(Op::GroupCreate(GroupCreate {
                path: field(f, "path").to_owned(),
            })),
        ),
        "/groups/push" => {
            let group = field(f, "group");
            (
                "push",
                format!("group:{group} {}", field(f, "kind")),
                Back::Groups,
                if group.is_empty() {
                    Err("pick a group to push to".into())
                } else {
                    Ok(Op::Push(push("", group)))
                },
            )
        }
        "/leases" => (
            "lease-give",
            format!(
                "{} {} seat(s) to {}",
                field(f, "key"),
                field(f, "seats"),
                field(f, "server")
            ),
            Back::Servers,
            lease_give(f),
        ),
        "/leases/{id}" => (
            "lease-change",
            id.to_owned(),
            Back::Servers,
            lease_change(id, f),
        ),
        _ => (
            "lease-revoke",
            id.to_owned(),
            Back::Servers,
            Ok(Op::LeaseRevoke(LeaseRef {
                lease_id: id.to_owned(),
            })),
        ),
    };
    Plan {
        name,
        target,
        back,
        op,
    }
}

fn lease_give(f: &Fields) -> Result<Op, String> {
    Ok(Op::LeaseGive(LeaseGive {
        server: field(f, "server").to_owned(),
        key_id: field(f, "key").to_owned(),
        seats: seats(field(f, "seats"), false)?,
        end_at: end_date(field(f, "until"))?,
        period_secs: 0,
    }))
}

fn lease_change(id: &str, f: &Fields) -> Result<Op, String> {
    let until = field(f, "until");
    let change = LeaseChange {
        lease_id: id.to_owned(),
        seats: seats(field(f, "seats"), true)?,
        end_at: if until.is_empty() {
            0
        } else {
            end_date(until)?
        },
    };
    if change.seats == 0 && change.end_at == 0 {
        return Err("give new seats, a new end date, or both".into());
    }
    Ok(Op::LeaseChange(change))
}

/// What the admin is told (and the audit log keeps) of an answer.
fn outcome(r: Result<R, String>) -> String {
    match r {
        Ok(R::Done(d)) => format!("done: {}", d.message),
        Ok(R::Push(p)) => {
            let n = |s: &str| p.outcomes.iter().filter(|o| o.state == s).count();
            let mut o = format!(
                "done: push {}: {} acknowledged, {} sent, {} queued",
                p.push_id,
                n("acked"),
                n("sent"),
                n("queued")
            );
            if p.fanned_out_via > 0 {
                o.push_str(&format!(" (via {} gateway(s))", p.fanned_out_via));
            }
            o
        }
        Ok(_) => "done".to_owned(),
        Err(e) => format!("refused: {e}"),
    }
}

async fn back_to(node: &Arc<Node>, s: &ConsoleSession, back: Back, outcome: &str) -> Response {
    let o = Some(outcome);
    match back {
        Back::Device(id) => pages::device(node, s, &id, o).await,
        Back::Devices => pages::devices(node, s, &HashMap::new(), o).await,
        Back::Keys => manage::keys(node, s, o).await,
        Back::Groups => super::fleet::groups(node, s, o).await,
        Back::Servers => servers::page(node, s, o).await,
    }
}

/// Every action route: CSRF checked, run as the session's admin, audited, page shown again.
pub async fn act(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    route: MatchedPath,
    params: RawPathParams,
    headers: HeaderMap,
    Form(f): Form<Fields>,
) -> Response {
    let id = params
        .iter()
        .find(|(k, _)| *k == "id")
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default();
    let route = route.as_str();
    let p = plan(route, &id, &f);
    let Some((_, s)) = checked(&node, &headers, &f, peer, p.name, &p.target).await else {
        return pages::csrf_refused();
    };
    let answer = match p.op {
        Ok(op) => manage::run(&node, &s, op).await,
        Err(e) => Err(e),
    };
    let outcome = outcome(answer);
    record(&node, &s.admin, peer, p.name, &p.target, &outcome).await;
    back_to(&node, &s, p.back, &outcome).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn o8_every_action_route_has_its_own_audit_name_and_bad_forms_are_named() {
        let f = Fields::new();
        let names: std::collections::HashSet<_> = ROUTES
            .iter()
            .map(|r| format!("{} {r}", plan(r, "x", &f).name))
            .collect();
        assert_eq!(names.len(), ROUTES.len());
        assert_eq!(plan("/leases/{id}/revoke", "l", &f).name, "lease-revoke");
        let form = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Fields>()
        };
        let give = |seats: &str, until: &str| {
            plan(
                "/leases",
                "",
                &form(&[
                    ("server", "office"),
                    ("key", "K"),
                    ("seats", seats),
                    ("until", until),
                ]),
            )
            .op
        };
        assert!(
            give("ten", "2027-06-30")
                .unwrap_err()
                .contains("seats \"ten\"")
        );
        assert!(give("0", "2027-06-30").unwrap_err().contains("at least 1"));
        assert!(give("5", "June").unwrap_err().contains("until \"June\""));
        let Ok(Op::LeaseGive(l)) = give("5", "2027-06-30") else {
            panic!("a good form makes a lease");
        };
        assert_eq!(l.end_at, end_date("2027-06-30T23:59:59Z").unwrap());
        assert!(
            plan("/leases/{id}", "l", &form(&[("seats", ""), ("until", "")]))
                .op
                .unwrap_err()
                .contains("new seats")
        );
        assert!(plan("/groups/push", "", &f).op.is_err());
    }
}
