//! `update …` (D1): the update repository, and how its results print.

use clap::Subcommand;
use outpost_proto::licence::key::format_time;
use outpost_proto::pb::admin::{
    Empty, UpdateImport, UpdateListResult, UpdateRef, admin_request::Op,
};

/// `update …`.
#[derive(Subcommand)]
pub enum UpdateCmd {
    /// Import the files under DIR (a path on the server's host) as a new revision. Files in a
    /// sub-directory belong to the component named after it (av/bases.bin: component av).
    Import {
        /// Directory on the server's host.
        dir: String,
    },
    /// Revisions, newest first.
    List,
    /// A revision's files (default the newest).
    Show {
        /// Revision.
        revision: Option<u64>,
    },
    /// Remove a revision; blocks no other revision uses are deleted.
    Remove {
        /// Revision.
        revision: u64,
    },
}

/// `hosts …` (D3).
#[derive(Subcommand)]
pub enum HostsCmd {
    /// Hosts the gateways' network scans found, with the device on each (if any).
    List {
        /// Only hosts without an agent or gateway.
        #[arg(long, conflicts_with = "stale")]
        unmanaged: bool,
        /// Only hosts not seen by a scan for `--older` (default 1d).
        #[arg(long)]
        stale: bool,
        /// With --stale: how long unseen (e.g. 12h, 7d).
        #[arg(long, requires = "stale", value_parser = humantime::parse_duration)]
        older: Option<std::time::Duration>,
    },
}

/// The request for a `hosts` command.
pub fn hosts_op(cmd: HostsCmd) -> Op {
    match cmd {
        HostsCmd::List {
            unmanaged,
            stale,
            older,
        } => Op::HostsList(outpost_proto::pb::admin::HostsList {
            unmanaged,
            stale,
            older_secs: older.map_or(0, |d| d.as_secs()),
        }),
    }
}

/// Human output of `hosts list`.
pub fn render_hosts(
    h: &outpost_proto::pb::admin::HostsResult,
    table: impl Fn(&[&str], Vec<Vec<String>>) -> String,
) -> String {
    if h.hosts.is_empty() {
        return "no discovered hosts (set discovery.ranges in a gateway's gateway.toml)\n".into();
    }
    table(
        &[
            "GATEWAY",
            "IP",
            "MAC",
            "METHODS",
            "FIRST SEEN",
            "LAST SEEN",
            "DEVICE",
        ],
        h.hosts
            .iter()
            .map(|x| {
                vec![
                    x.gateway.clone(),
                    x.ip.clone(),
                    if x.mac.is_empty() {
                        "-".into()
                    } else {
                        x.mac.clone()
                    },
                    x.methods.join(","),
                    format_time(x.first_seen),
                    format_time(x.last_seen),
                    if x.device_id.is_empty() {
                        "(unmanaged)".into()
                    } else {
                        x.device_id.clone()
                    },
                ]
            })
            .collect(),
    )
}

/// The request for an `update` command.
pub fn update_op(cmd: UpdateCmd) -> Op {
    match cmd {
        UpdateCmd::Import { dir } => Op::UpdateImport(UpdateImport { dir }),
        UpdateCmd::List => Op::UpdateList(Empty {}),
        UpdateCmd::Show { revision } => Op::UpdateShow(UpdateRef {
            revision: revision.unwrap_or(0),
        }),
        UpdateCmd::Remove { revision } => Op::UpdateRemove(UpdateRef { revision }),
    }
}

/// Human output of an update result.
pub fn render(u: &UpdateListResult, table: impl Fn(&[&str], Vec<Vec<String>>) -> String) -> String {
    let mut out = String::new();
    if !u.message.is_empty() {
        out.push_str(&u.message);
        out.push('\n');
    }
    if u.revisions.is_empty() {
        if u.message.is_empty() {
            out.push_str("the update repository is empty (admin update import DIR)\n");
        }
        return out;
    }
    out.push_str(&table(
        &["REVISION", "CREATED", "EXPIRES", "FILES", "BYTES", "SOURCE"],
        u.revisions
            .iter()
            .map(|r| {
                vec![
                    r.revision.to_string(),
                    format_time(r.created_at),
                    format_time(r.expires_at),
                    r.files.to_string(),
                    r.bytes.to_string(),
                    r.source.clone(),
                ]
            })
            .collect(),
    ));
    for r in u.revisions.iter().filter(|r| !r.file_list.is_empty()) {
        out.push('\n');
        out.push_str(&table(
            &["FILE", "COMPONENT", "SIZE", "BLOCKS", "SHA-256"],
            r.file_list
                .iter()
                .map(|f| {
                    vec![
                        f.name.clone(),
                        if f.component.is_empty() {
                            "-".into()
                        } else {
                            f.component.clone()
                        },
                        f.size.to_string(),
                        f.blocks.to_string(),
                        f.sha256.clone(),
                    ]
                })
                .collect(),
        ));
    }
    out
}
