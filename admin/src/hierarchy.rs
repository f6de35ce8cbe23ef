//! The hierarchy's admin commands (H1–H8, O3): `server …` (relations with neighbour servers)
//! and `lease …` (seats given to them), and how their results print.

use std::path::PathBuf;

use clap::Subcommand;
use outpost_proto::licence::key::{format_time, parse_time};
use outpost_proto::pb::admin::{
    Empty, LeaseChange, LeaseGive, LeaseListResult, LeaseRef, ServerAdd, ServerListResult,
    ServerRef, admin_request::Op,
};

use crate::client::AdminError;

/// `server …`.
#[derive(Subcommand)]
pub enum ServerCmd {
    /// Write this server's link certificate to a file, for neighbours to pin (H1).
    ExportCert {
        /// File to write (PEM).
        #[arg(long)]
        out: PathBuf,
    },
    /// Add a secondary server. It dials this one; for a secondary in a DMZ give its
    /// --address and --dial, and this server dials it.
    AddSecondary {
        /// The neighbour.
        #[command(flatten)]
        n: Neighbour,
        /// This server dials it (a secondary in a DMZ).
        #[arg(long)]
        dial: bool,
    },
    /// Make a server this one's primary. This server dials it at --address; without
    /// --address the primary dials this server (this server is in a DMZ).
    SetPrimary {
        /// The neighbour.
        #[command(flatten)]
        n: Neighbour,
    },
    /// Add a peer (H2). Licences go from a side that sends to a side that receives; give
    /// --address on one side only (that side dials).
    AddPeer {
        /// The neighbour.
        #[command(flatten)]
        n: Neighbour,
        /// This server sends licences to it.
        #[arg(long)]
        send: bool,
        /// This server takes licences from it.
        #[arg(long)]
        receive: bool,
    },
    /// Relations, their direction, state and pinned fingerprint.
    List,
    /// Remove a relation (refused while it holds seats this server gave).
    Remove {
        /// Its name.
        name: String,
    },
}

/// What every `server add-*` command takes.
#[derive(clap::Args)]
pub struct Neighbour {
    /// A name for it.
    name: String,
    /// Its link certificate (from its `server export-cert`).
    #[arg(long)]
    cert: PathBuf,
    /// Where it listens (host:port); empty on the side that is dialled.
    #[arg(long, default_value = "")]
    address: String,
    /// Periodic relation: the dialling side connects every D (e.g. 6h), exchanges, leaves.
    #[arg(long)]
    periodic: Option<humantime::Duration>,
}

/// `lease …`.
#[derive(Subcommand)]
pub enum LeaseCmd {
    /// Give seats of a key to a neighbour server (H5).
    Give {
        /// Key id.
        key: String,
        /// The neighbour's name (`server list`).
        server: String,
        /// Seats for it and everything below it.
        #[arg(long)]
        seats: u32,
        /// Distribution end date (RFC 3339, e.g. 2027-06-30T00:00:00Z), no later than the key's expiry.
        #[arg(long)]
        until: String,
        /// Auto-renewal period (e.g. 1h); default: the server's hierarchy.lease_period.
        #[arg(long)]
        period: Option<humantime::Duration>,
    },
    /// Change the seats or end date of a lease given.
    Change {
        /// Lease id (`lease list`).
        id: String,
        /// New seat count.
        #[arg(long)]
        seats: Option<u32>,
        /// New end date (RFC 3339).
        #[arg(long)]
        until: Option<String>,
    },
    /// Revoke a lease given; the seats come back when the current period ends.
    Revoke {
        /// Lease id.
        id: String,
    },
    /// Leases given and received.
    List,
}

fn date(s: &str) -> Result<i64, AdminError> {
    parse_time(s).ok_or_else(|| {
        AdminError::Local(format!(
            "--until {s:?} is not an RFC 3339 date (e.g. 2027-06-30T00:00:00Z)"
        ))
    })
}

/// The request for a `server` command; `export-cert` also says where to write.
pub fn server_op(cmd: ServerCmd) -> Result<(Op, Option<PathBuf>), AdminError> {
    // (kind, this side dials, sends, receives)
    let add = |n: Neighbour, kind: &str, dial: bool, send: bool, receive: bool| {
        let cert_pem = outpost_net::fsutil::read_string(&n.cert)
            .map_err(|e| AdminError::Local(e.to_string()))?;
        Ok::<_, AdminError>((
            Op::ServerAdd(ServerAdd {
                name: n.name,
                kind: kind.into(),
                cert_pem,
                address: n.address,
                dial,
                send,
                receive,
                periodic_secs: n.periodic.map(|p| p.as_secs().max(1)).unwrap_or(0),
            }),
            None,
        ))
    };
    Ok(match cmd {
        ServerCmd::ExportCert { out } => (Op::ServerExportCert(Empty {}), Some(out)),
        ServerCmd::AddSecondary { n, dial } => {
            if dial && n.address.is_empty() {
                return Err(AdminError::Local(
                    "--dial needs --address (where the secondary listens)".into(),
                ));
            }
            add(n, "secondary", dial, true, false)?
        }
        ServerCmd::SetPrimary { n } => {
            let dial = !n.address.is_empty();
            add(n, "primary", dial, false, true)?
        }
        ServerCmd::AddPeer { n, send, receive } => {
            let dial = !n.address.is_empty();
            add(n, "peer", dial, send, receive)?
        }
        ServerCmd::List => (Op::ServerList(Empty {}), None),
        ServerCmd::Remove { name } => (Op::ServerRemove(ServerRef { name }), None),
    })
}

/// The request for a `lease` command.
pub fn lease_op(cmd: LeaseCmd) -> Result<Op, AdminError> {
    Ok(match cmd {
        LeaseCmd::Give {
            key,
            server,
            seats,
            until,
            period,
        } => Op::LeaseGive(LeaseGive {
            server,
            key_id: key,
            seats,
            end_at: date(&until)?,
            period_secs: period.map(|p| p.as_secs()).unwrap_or(0),
        }),
        LeaseCmd::Change { id, seats, until } => Op::LeaseChange(LeaseChange {
            lease_id: id,
            seats: seats.unwrap_or(0),
            end_at: until.as_deref().map(date).transpose()?.unwrap_or(0),
        }),
        LeaseCmd::Revoke { id } => Op::LeaseRevoke(LeaseRef { lease_id: id }),
        LeaseCmd::List => Op::LeaseList(Empty {}),
    })
}

fn when(t: i64) -> String {
    if t <= 0 {
        "never".into()
    } else {
        format_time(t)
    }
}

/// `server list` for a terminal.
pub fn servers(r: &ServerListResult) -> Vec<Vec<String>> {
    r.servers
        .iter()
        .map(|s| {
            let direction = match (s.dials, s.address.is_empty()) {
                (true, _) => format!("dials {}", s.address),
                (false, _) => "dials in".to_owned(),
            };
            let flags = if s.kind == "peer" {
                format!(
                    " ({}{})",
                    if s.sends { "sends" } else { "no send" },
                    if s.receives {
                        ", receives"
                    } else {
                        ", no receive"
                    }
                )
            } else {
                String::new()
            };
            vec![
                s.name.clone(),
                format!("{}{flags}", s.kind),
                direction,
                if s.connection == "periodic" {
                    format!("periodic, every {}s", s.interval_secs)
                } else {
                    s.connection.clone()
                },
                s.state.clone(),
                when(s.last_contact),
                s.cert_sha256.clone(),
            ]
        })
        .collect()
}

/// `lease list` for a terminal.
pub fn leases(r: &LeaseListResult) -> Vec<Vec<String>> {
    r.leases
        .iter()
        .map(|l| {
            vec![
                l.lease_id.clone(),
                l.direction.clone(),
                l.server.clone(),
                l.key_id.clone(),
                format!(
                    "{}{}",
                    l.seats,
                    match (l.revoked, l.follows.as_str()) {
                        (true, _) => " (revoked)".to_owned(),
                        (false, "") => String::new(),
                        (false, f) => format!(" (follows demand: {f})"),
                    }
                ),
                l.held.to_string(),
                when(l.period_end),
                when(l.end_at),
            ]
        })
        .collect()
}

/// `report` for a terminal: one line per server and key.
pub fn report(r: &outpost_proto::pb::admin::ReportResult) -> Vec<Vec<String>> {
    let mut rows = vec![];
    for s in &r.servers {
        let Some(u) = &s.report else { continue };
        let devices = format!(
            "{} ({} licensed, {} active)",
            u.devices, u.devices_licensed, u.devices_active
        );
        let made = when(u.made_at);
        if u.keys.is_empty() {
            rows.push(vec![
                s.path.clone(),
                "-".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                devices,
                made,
            ]);
            continue;
        }
        for (i, k) in u.keys.iter().enumerate() {
            rows.push(vec![
                if i == 0 {
                    s.path.clone()
                } else {
                    String::new()
                },
                k.key_id.clone(),
                k.seats.to_string(),
                k.seats_used.to_string(),
                k.seats_leased_out.to_string(),
                k.active_licensed.to_string(),
                if i == 0 {
                    devices.clone()
                } else {
                    String::new()
                },
                if i == 0 { made.clone() } else { String::new() },
            ]);
        }
    }
    rows
}
