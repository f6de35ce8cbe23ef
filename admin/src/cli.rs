//! The `admin` command line (O3): one subcommand per admin action, human output or `--json`.
//! `outpost-server admin` is this; other tools can embed it the same way.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use outpost_proto::pb::admin::{
    DeviceList, DeviceMove, DeviceRef, Empty, GroupCreate, KeyAssign, KeyImport, KeyRef,
    KeyUnassign, PolicySet, PolicyShow, PushRequest, TokenCreate, admin_request::Op,
    admin_response::Result as R,
};

use crate::client::{AdminClient, AdminError};
use crate::render;

/// `admin [--data-dir D | --bundle DIR] [--server host:port] [--json] <command>`.
#[derive(Args)]
pub struct AdminArgs {
    /// Server data directory (its admin/ bundle is used).
    #[arg(
        long,
        env = "OUTPOST_SERVER_DATA",
        default_value = "/var/lib/outpost-server"
    )]
    data_dir: PathBuf,
    /// Admin bundle directory (overrides <data-dir>/admin).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Server address (overrides the bundle's).
    #[arg(long)]
    server: Option<String>,
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: AdminCmd,
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Enrollment tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Licence keys.
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
    /// Devices (agents, gateways, admins).
    Device {
        #[command(subcommand)]
        cmd: DeviceCmd,
    },
    /// Administration groups.
    Group {
        #[command(subcommand)]
        cmd: GroupCmd,
    },
    /// Policy documents per group (D5).
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// The update repository (D1).
    Update {
        #[command(subcommand)]
        cmd: crate::updates::UpdateCmd,
    },
    /// Hosts found by the gateways' network scans (D3).
    Hosts {
        #[command(subcommand)]
        cmd: crate::updates::HostsCmd,
    },
    /// Tasks for agents' local handlers (D5).
    Task {
        #[command(subcommand)]
        cmd: crate::tasks::TaskCmd,
    },
    /// Push a message to one agent or all.
    Push(PushArgs),
    /// The notification log (newest first).
    Notifications {
        /// Only this kind (e.g. key-renewed, usage-100).
        #[arg(long)]
        kind: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Seats.
    Seats {
        #[command(subcommand)]
        cmd: SeatsCmd,
    },
    /// Server status.
    Status,
    /// Print a one-time sign-in link for the web console (O8): valid for `console.login_ttl`
    /// (10 minutes), once; the session it opens belongs to this admin certificate.
    ConsoleLogin,
    /// Named accounts for the web console (O8): sign in with a name and password.
    ConsoleAccount {
        #[command(subcommand)]
        cmd: crate::console::AccountCmd,
    },
    /// Gateways: the ones in a DMZ the server dials (T4).
    Gateway {
        #[command(subcommand)]
        cmd: GatewayCmd,
    },
    /// The server's own certificate (S9).
    Cert {
        #[command(subcommand)]
        cmd: CertCmd,
    },
    /// The deployment CA: roll it over to a new one without re-enrolling anything (S9).
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
    /// Neighbour servers: primary, secondaries, peers (H1–H3).
    Server {
        #[command(subcommand)]
        cmd: crate::hierarchy::ServerCmd,
    },
    /// Seats given to neighbour servers and received from them (H5–H8).
    Lease {
        #[command(subcommand)]
        cmd: crate::hierarchy::LeaseCmd,
    },
    /// Licence usage of this server and of every server below it (H9).
    Report {
        /// Only this server's part of the tree.
        #[arg(long)]
        server: Option<String>,
    },
}

#[derive(Subcommand)]
enum CertCmd {
    /// New key and certificate for the server, same names; new connections get it at once.
    RotateServer,
}

#[derive(Subcommand)]
enum CaCmd {
    /// Create a new CA, trusted beside the old one; devices move to it as they sync.
    RollOver,
    /// Stop trusting the old CA once no active device holds a certificate from it.
    FinishRollOver {
        /// Finish even though some devices are still on the old CA (they will need new tokens).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create an enrollment token (printed once).
    Create {
        /// agent or gateway.
        #[arg(long, default_value = "agent")]
        role: String,
        /// Target group.
        #[arg(long, default_value = "everyone")]
        group: String,
        /// Lifetime.
        #[arg(long, default_value = "1d")]
        ttl: humantime::Duration,
        /// How many devices may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Free text.
        #[arg(long, default_value = "")]
        comment: String,
        /// A machine already enrolled may not take over its record with this token (S7):
        /// re-enrolling it needs `device remove` first.
        #[arg(long)]
        no_takeover: bool,
    },
    /// List tokens.
    List,
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Import a key file or a .zip of key files (all or nothing).
    Import {
        /// File to import.
        file: PathBuf,
        /// Distribute automatically (L8).
        #[arg(long)]
        auto_distribute: bool,
        /// Assign to "everyone" right away.
        #[arg(long)]
        assign_everyone: bool,
        /// The key was obtained as a reserve key through an activation code: it is never
        /// distributed automatically (L8).
        #[arg(long, conflicts_with = "auto_distribute")]
        activation_reserve: bool,
    },
    /// List keys with seats total/used/leased/free, validity, components, objects.
    List,
    /// Assign a key to everyone, group:<path>, device:<id>, or server:<name> (a neighbour: a
    /// lease that follows what its devices need).
    Assign {
        /// Key id.
        key: String,
        /// Object.
        object: String,
    },
    /// Remove an assignment.
    Unassign {
        /// Key id.
        key: String,
        /// Object.
        object: String,
    },
    /// Remove a key from the repository (its file stays in the data directory).
    Remove {
        /// Key id.
        key: String,
    },
    /// Check the licence authority for renewals of the keys this server owns, now (L11).
    Renew,
    /// Mark a key for automatic distribution (L8), or unmark it.
    AutoDistribute {
        /// Key id.
        key: String,
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Write the signed key file, byte-identical.
    Export {
        /// Key id.
        key: String,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum GatewayCmd {
    /// Gateways in a DMZ that the server dials (added or removed without a restart).
    Dmz {
        #[command(subcommand)]
        cmd: DmzCmd,
    },
}

#[derive(Subcommand)]
enum DmzCmd {
    /// Start dialling a DMZ gateway at its uplink.listen address (host:port).
    Add {
        /// Address.
        address: String,
    },
    /// Stop dialling a DMZ gateway added with `add`.
    Remove {
        /// Address.
        address: String,
    },
    /// DMZ gateways with their state.
    List,
}

#[derive(Subcommand)]
enum SeatsCmd {
    /// Free the seats of agents inactive longer than licensing.reclaim_after now (L9).
    Reclaim,
}

#[derive(Subcommand)]
enum DeviceCmd {
    /// List devices with licence state.
    List {
        /// Only this role: agent, gateway, admin.
        #[arg(long)]
        role: Option<String>,
    },
    /// Revoke a device: its session ends and its next connect is refused; its seats are held
    /// until its offline grants expire or it confirms it dropped them.
    Revoke {
        /// Device id.
        id: String,
        /// Free its seats at once instead of holding them until its offline grants expire
        /// (recorded in the notification log).
        #[arg(long)]
        free_seat_now: bool,
    },
    /// Remove a device record: its session ends, its seats are held until its offline grants
    /// expire or it confirms it dropped them.
    Remove {
        /// Device id.
        id: String,
        /// Free its seats at once instead of holding them until its offline grants expire
        /// (recorded in the notification log).
        #[arg(long)]
        free_seat_now: bool,
    },
    /// Move a device to a group.
    Move {
        /// Device id.
        id: String,
        /// Group path or name.
        group: String,
    },
}

#[derive(Subcommand)]
enum GroupCmd {
    /// Create a group under an existing parent (e.g. everyone/berlin).
    Create {
        /// Group path.
        path: String,
    },
    /// List groups.
    List,
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Set a group's policy: a JSON object of settings in FILE. Devices of the group and below
    /// get it merged with the documents above (the nearest group wins per setting; `null`
    /// removes an inherited one).
    Set {
        /// Group path or name.
        group: String,
        /// JSON file.
        file: PathBuf,
    },
    /// Every group's document, or one device's effective policy.
    Show {
        /// Show this device's effective policy and where it came from.
        #[arg(long)]
        effective: Option<String>,
    },
}

#[derive(Args)]
struct PushArgs {
    /// Target device id (the push travels in its session).
    #[arg(long, conflicts_with_all = ["all", "group"], required_unless_present_any = ["all", "group"])]
    device: Option<String>,
    /// Push to every agent (a broadcast: once per gateway, fanned out there, D4).
    #[arg(long, conflicts_with = "group")]
    all: bool,
    /// Push to the agents of a group and the groups below it (a broadcast).
    #[arg(long)]
    group: Option<String>,
    /// sync-now, licence-changed, run-task, update-available, message.
    #[arg(long, default_value = "sync-now")]
    kind: String,
    /// Text carried by the push.
    #[arg(long, default_value = "")]
    message: String,
    /// How long to wait for acknowledgements.
    #[arg(long, default_value = "5s")]
    wait: humantime::Duration,
}

/// Runs one admin command and prints its result.
pub async fn run(a: AdminArgs) -> Result<(), AdminError> {
    let bundle = a.bundle.clone().unwrap_or_else(|| a.data_dir.join("admin"));
    let mut export_to = None;
    let op = match a.cmd {
        AdminCmd::Token {
            cmd:
                TokenCmd::Create {
                    role,
                    group,
                    ttl,
                    uses,
                    comment,
                    no_takeover,
                },
        } => Op::TokenCreate(TokenCreate {
            role,
            group,
            ttl_secs: Duration::from(ttl).as_secs(),
            uses,
            comment,
            no_takeover,
        }),
        AdminCmd::Token {
            cmd: TokenCmd::List,
        } => Op::TokenList(Empty {}),
        AdminCmd::Key { cmd } => match cmd {
            KeyCmd::Import {
                file,
                auto_distribute,
                assign_everyone,
                activation_reserve,
            } => Op::KeyImport(KeyImport {
                file_name: file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                content: outpost_net::fsutil::read(&file)
                    .map_err(|e| AdminError::Local(e.to_string()))?,
                auto_distribute,
                assign_everyone,
                activation_reserve,
            }),
            KeyCmd::List => Op::KeyList(Empty {}),
            KeyCmd::Assign { key, object } => Op::KeyAssign(KeyAssign {
                key_id: key,
                object,
            }),
            KeyCmd::Unassign { key, object } => Op::KeyUnassign(KeyUnassign {
                key_id: key,
                object,
            }),
            KeyCmd::Remove { key } => Op::KeyRemove(KeyRef { key_id: key }),
            KeyCmd::Renew => Op::KeyRenew(Empty {}),
            KeyCmd::AutoDistribute { key, state } => {
                Op::KeyAutoDistribute(outpost_proto::pb::admin::KeyAutoDistribute {
                    key_id: key,
                    on: state == "on",
                })
            }
            KeyCmd::Export { key, out } => {
                export_to = Some(out);
                Op::KeyExport(KeyRef { key_id: key })
            }
        },
        AdminCmd::Device { cmd } => match cmd {
            DeviceCmd::List { role } => Op::DeviceList(DeviceList {
                role: role.unwrap_or_default(),
            }),
            DeviceCmd::Revoke { id, free_seat_now } => Op::DeviceRevoke(DeviceRef {
                device_id: id,
                free_seat_now,
            }),
            DeviceCmd::Remove { id, free_seat_now } => Op::DeviceRemove(DeviceRef {
                device_id: id,
                free_seat_now,
            }),
            DeviceCmd::Move { id, group } => Op::DeviceMove(DeviceMove {
                device_id: id,
                group,
            }),
        },
        AdminCmd::Group {
            cmd: GroupCmd::Create { path },
        } => Op::GroupCreate(GroupCreate { path }),
        AdminCmd::Group {
            cmd: GroupCmd::List,
        } => Op::GroupList(Empty {}),
        AdminCmd::Policy {
            cmd: PolicyCmd::Set { group, file },
        } => Op::PolicySet(PolicySet {
            group,
            document: String::from_utf8(
                outpost_net::fsutil::read(&file).map_err(|e| AdminError::Local(e.to_string()))?,
            )
            .map_err(|_| AdminError::Local(format!("{}: not UTF-8 text", file.display())))?,
        }),
        AdminCmd::Policy {
            cmd: PolicyCmd::Show { effective },
        } => Op::PolicyShow(PolicyShow {
            device_id: effective.unwrap_or_default(),
        }),
        AdminCmd::Push(p) => Op::Push(PushRequest {
            device_id: p.device.unwrap_or_default(),
            all: p.all,
            group: p.group.unwrap_or_default(),
            kind: p.kind,
            message: p.message,
            wait_ms: Duration::from(p.wait).as_millis().min(u32::MAX as u128) as u32,
        }),
        AdminCmd::Status => Op::ServerStatus(Empty {}),
        AdminCmd::ConsoleLogin => Op::ConsoleLogin(Empty {}),
        AdminCmd::ConsoleAccount { cmd } => crate::console::account_op(cmd)?,
        AdminCmd::Cert {
            cmd: CertCmd::RotateServer,
        } => Op::CertRotateServer(Empty {}),
        AdminCmd::Ca {
            cmd: CaCmd::RollOver,
        } => Op::CaRollOver(Empty {}),
        AdminCmd::Ca {
            cmd: CaCmd::FinishRollOver { force },
        } => Op::CaFinishRollOver(outpost_proto::pb::admin::CaFinish { force }),
        AdminCmd::Gateway {
            cmd: GatewayCmd::Dmz { cmd },
        } => match cmd {
            DmzCmd::Add { address } => {
                Op::DmzGatewayAdd(outpost_proto::pb::admin::DmzGateway { address })
            }
            DmzCmd::Remove { address } => {
                Op::DmzGatewayRemove(outpost_proto::pb::admin::DmzGateway { address })
            }
            DmzCmd::List => Op::DmzGatewayList(Empty {}),
        },
        AdminCmd::Notifications { kind, limit } => {
            Op::NotificationList(outpost_proto::pb::admin::NotificationList {
                kind: kind.unwrap_or_default(),
                limit,
            })
        }
        AdminCmd::Seats {
            cmd: SeatsCmd::Reclaim,
        } => Op::SeatsReclaim(Empty {}),
        AdminCmd::Server { cmd } => {
            let (op, out) = crate::hierarchy::server_op(cmd)?;
            export_to = out;
            op
        }
        AdminCmd::Lease { cmd } => crate::hierarchy::lease_op(cmd)?,
        AdminCmd::Task { cmd } => crate::tasks::task_op(cmd)?,
        AdminCmd::Update { cmd } => crate::updates::update_op(cmd),
        AdminCmd::Hosts { cmd } => crate::updates::hosts_op(cmd),
        AdminCmd::Report { server } => Op::Report(outpost_proto::pb::admin::ReportRequest {
            server: server.unwrap_or_default(),
        }),
    };
    let client = AdminClient::from_bundle(&bundle, a.server.as_deref()).await?;
    let result = client.request(op).await?;
    client.close();
    if let (Some(out), R::KeyFile(k)) = (&export_to, &result) {
        outpost_net::fsutil::write_atomic(out, &k.content, false)
            .map_err(|e| AdminError::Local(e.to_string()))?;
        if a.json {
            println!(
                "{}",
                serde_json::json!({"key_id": k.key_id, "written_to": out, "bytes": k.content.len()})
            );
        } else {
            println!(
                "key {} exported to {} ({} bytes, signed, byte-identical)",
                k.key_id,
                out.display(),
                k.content.len()
            );
        }
        return Ok(());
    }
    if let (Some(out), R::ServerCert(c)) = (&export_to, &result) {
        outpost_net::fsutil::write_atomic(out, c.pem.as_bytes(), false)
            .map_err(|e| AdminError::Local(e.to_string()))?;
        if a.json {
            println!(
                "{}",
                serde_json::json!({"sha256": c.sha256, "written_to": out})
            );
        } else {
            println!(
                "link certificate written to {} (sha256 {}); give it to the neighbour server's administrator",
                out.display(),
                c.sha256
            );
        }
        return Ok(());
    }
    if a.json {
        let text = serde_json::to_string_pretty(&render::json(&result))
            .map_err(|e| AdminError::Local(e.to_string()))?;
        println!("{text}");
    } else {
        print!("{}", render::human(&result));
    }
    Ok(())
}
