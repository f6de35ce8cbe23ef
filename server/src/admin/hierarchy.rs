//! Admin actions on the hierarchy (H1–H8, O3): relations with neighbour servers and the
//! leases given to them. A change reaches a live link at once; a neighbour that is not
//! connected gets it in the sync of its next connection.

use std::sync::Arc;

use outpost_proto::error::RefusalCode;
use outpost_proto::lease::{LeaseGrant, Terms};
use outpost_proto::licence::key::format_time;
use outpost_proto::pb::admin::{
    AdminResponse, LeaseChange, LeaseGive, LeaseInfo, LeaseListResult, LeaseRef, ReportRequest,
    ReportResult, ServerAdd, ServerCert, ServerInfo, ServerListResult, ServerRef,
    admin_response::Result as R,
};
use outpost_proto::pki;
use tracing::info;

use super::{done, error, ok};
use crate::node::Node;
use crate::store::{ServerRow, StoreError, fp_hex};

type Answer = Result<AdminResponse, StoreError>;

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub(super) async fn add(node: &Arc<Node>, a: ServerAdd) -> Answer {
    let bad = |m: String| Ok(error(RefusalCode::InvalidArgument, m));
    if !valid_name(&a.name) {
        return bad(format!(
            "server name {:?}: use 1-64 letters, digits, '.', '_' or '-'",
            a.name
        ));
    }
    if !matches!(a.kind.as_str(), "primary" | "secondary" | "peer") {
        return bad(format!(
            "relation kind {:?}: primary, secondary or peer",
            a.kind
        ));
    }
    let certs = match pki::certs_from_pem(&a.cert_pem, "link certificate") {
        Ok(c) if !c.is_empty() => c,
        Ok(_) => return bad("the certificate file holds no certificate: give the file written by `server export-cert` on the other server".into()),
        Err(e) => return bad(format!("{e}: give the file written by `server export-cert` on the other server")),
    };
    let fp = pki::fingerprint(&certs[0]);
    if fp == node.enrollment().certs().link().sha256 {
        return bad(
            "that is this server's own link certificate: give the other server's file".into(),
        );
    }
    if !a.address.is_empty()
        && let Err(e) = outpost_net::config::check_addresses("address", std::iter::once(&a.address))
    {
        return bad(format!(
            "{e}: give the server's listen address, e.g. hq.example.com:4700"
        ));
    }
    let row = ServerRow {
        name: a.name.clone(),
        kind: a.kind.clone(),
        cert_sha256: fp_hex(&fp),
        address: a.address.clone(),
        dials: i64::from(a.dial),
        connection: if a.periodic_secs > 0 {
            "periodic"
        } else {
            "permanent"
        }
        .into(),
        interval_secs: a.periodic_secs.min(i64::MAX as u64) as i64,
        sends: i64::from(a.kind == "secondary" || (a.kind == "peer" && a.send)),
        receives: i64::from(a.kind == "primary" || (a.kind == "peer" && a.receive)),
        added_at: outpost_net::unix_now(),
        last_contact: 0,
    };
    node.store().add_server(&row).await?;
    node.peers().reload(node).await?;
    info!(server = %row.name, kind = %row.kind, pinned = %row.cert_sha256, "server relation added");
    let every = if a.periodic_secs > 0 {
        format!(" every {}s (periodic)", a.periodic_secs)
    } else {
        String::new()
    };
    let how = if a.dial {
        format!("this server dials it at {}{every}", a.address)
    } else {
        format!("it dials this server{every}")
    };
    Ok(done(format!(
        "{} {} added, pinned to link certificate sha256 {}; {how}",
        a.kind, a.name, row.cert_sha256
    )))
}

pub(super) async fn remove(node: &Arc<Node>, r: ServerRef) -> Answer {
    node.store()
        .remove_server(&r.name, outpost_net::unix_now())
        .await?;
    node.peers().reload(node).await?;
    // A primary's policy layer and tasks went with it: devices sync now (H4).
    node.sessions().registry().nudge_all();
    node.store()
        .announce_sync(crate::store::inherit::ROOT)
        .await;
    node.peers().hand_down_changed();
    info!(server = %r.name, "server relation removed");
    Ok(done(format!("server relation {} removed", r.name)))
}

pub(super) async fn list(node: &Node) -> Answer {
    let servers = node.store().servers().await?;
    Ok(ok(R::Servers(ServerListResult {
        servers: servers
            .iter()
            .map(|s| ServerInfo {
                name: s.name.clone(),
                kind: s.kind.clone(),
                address: s.address.clone(),
                dials: s.dials == 1,
                connection: s.connection.clone(),
                state: node.peers().state(s),
                last_contact: s.last_contact,
                cert_sha256: s.cert_sha256.clone(),
                sends: s.sends == 1,
                receives: s.receives == 1,
                interval_secs: s.interval_secs.max(0) as u64,
            })
            .collect(),
    })))
}

pub(super) async fn export_cert(node: &Node) -> Answer {
    let link = node.enrollment().certs().link();
    Ok(ok(R::ServerCert(ServerCert {
        pem: link.pem.clone(),
        sha256: fp_hex(&link.sha256),
    })))
}

/// Sends a grant on the live link to `server`; says what happened, for the admin.
async fn deliver(node: &Node, server: &str, g: &LeaseGrant) -> Result<&'static str, StoreError> {
    Ok(if node.peers().deliver(node, server, g).await? {
        "sent now"
    } else {
        "sent when it connects"
    })
}

pub(super) async fn give(node: &Node, l: LeaseGive) -> Answer {
    let period = if l.period_secs == 0 {
        node.config().hierarchy.lease_period.as_secs() as i64
    } else {
        l.period_secs as i64
    };
    let terms = Terms {
        seats: l.seats,
        end_at: l.end_at,
        period_secs: period,
    };
    let now = outpost_net::unix_now();
    let g = node
        .store()
        .give_lease(&l.server, &l.key_id, terms, now)
        .await?;
    let how = deliver(node, &l.server, &g).await?;
    info!(lease = %g.lease_id, server = %l.server, key = %l.key_id, seats = l.seats, "lease given");
    Ok(done(format!(
        "lease {}: {} seat(s) of {} given to {} until {}, renewed every {}s ({how})",
        g.lease_id,
        g.seats,
        g.key_id,
        l.server,
        format_time(g.end_at),
        period
    )))
}

pub(super) async fn change(node: &Node, c: LeaseChange) -> Answer {
    let now = outpost_net::unix_now();
    let (server, g) = node
        .store()
        .change_lease(
            &c.lease_id,
            (c.seats > 0).then_some(c.seats),
            (c.end_at > 0).then_some(c.end_at),
            now,
        )
        .await?;
    let how = deliver(node, &server, &g).await?;
    Ok(done(format!(
        "lease {}: now {} seat(s) until {} ({how}); seats given back return when the current period ends ({})",
        g.lease_id,
        g.seats,
        format_time(g.end_at),
        format_time(g.period_end)
    )))
}

pub(super) async fn revoke(node: &Node, r: LeaseRef) -> Answer {
    let now = outpost_net::unix_now();
    let (server, g) = node.store().revoke_lease(&r.lease_id, now).await?;
    let how = deliver(node, &server, &g).await?;
    Ok(done(format!(
        "lease {} revoked ({how}); its seats return at the end of the current period ({})",
        g.lease_id,
        format_time(g.period_end)
    )))
}

pub(super) async fn list_leases(node: &Node) -> Answer {
    let leases = node.store().leases(outpost_net::unix_now()).await?;
    Ok(ok(R::Leases(LeaseListResult {
        leases: leases
            .into_iter()
            .map(|l| LeaseInfo {
                lease_id: l.id,
                server: l.server,
                key_id: l.key_id,
                direction: l.direction.into(),
                seats: l.seats,
                held: l.held,
                end_at: l.end_at,
                period_end: l.period_end,
                seq: l.seq,
                revoked: l.revoked,
                follows: l.follows,
            })
            .collect(),
    })))
}

pub(super) async fn report(node: &Node, r: ReportRequest) -> Answer {
    let servers = crate::peers::report::tree(node, &r.server).await?;
    if servers.is_empty() {
        return Ok(error(
            RefusalCode::NotFound,
            format!(
                "no report from a server named {} (`server list`; reports arrive every hierarchy.report_period)",
                r.server
            ),
        ));
    }
    Ok(ok(R::Report(ReportResult { servers })))
}
