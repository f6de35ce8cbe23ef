//! Human output of admin results (the JSON output is the result itself, serialized).

use std::fmt::Write;

use outpost_proto::licence::key::format_time;
use outpost_proto::pb::admin::admin_response::Result as R;

fn when(unix: i64) -> String {
    if unix <= 0 {
        "never".into()
    } else {
        format_time(unix)
    }
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<String>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{:<w$}  ", c, w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut out, headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(&mut out, r);
    }
    out
}

/// Renders a result for a terminal.
pub fn human(r: &R) -> String {
    match r {
        R::Done(d) => format!("{}\n", d.message),
        R::Servers(s) if s.servers.is_empty() => {
            "no server relations (add one with `server add-secondary`, `set-primary` or `add-peer`)\n".into()
        }
        R::Servers(s) => table(
            &["NAME", "KIND", "DIRECTION", "TYPE", "STATE", "LAST CONTACT", "PINNED SHA-256"],
            crate::hierarchy::servers(s),
        ),
        R::ServerCert(c) => format!("{}link certificate sha256 {}\n", c.pem, c.sha256),
        R::Report(r) => table(
            &["SERVER", "KEY", "SEATS", "USED", "LEASED OUT", "ACTIVE LICENSED", "AGENTS", "REPORT MADE"],
            crate::hierarchy::report(r),
        ),
        R::Leases(l) if l.leases.is_empty() => "no leases\n".into(),
        R::Leases(l) => table(
            &["LEASE", "DIRECTION", "SERVER", "KEY", "SEATS", "AWAY/USABLE", "PERIOD END", "END"],
            crate::hierarchy::leases(l),
        ),
        R::Tasks(t) if t.tasks.is_empty() => {
            "no tasks (create one with `admin task create --kind K --group G`)\n".into()
        }
        R::Tasks(t) => {
            let (head, rows) = crate::tasks::tasks(t);
            head + &table(
                &["TASK", "KIND", "TARGET", "SCHEDULE", "RESULTS", "ARGUMENTS"],
                rows,
            )
        }
        R::TaskResults(r) if r.results.is_empty() => {
            format!("task {}: no results yet\n", r.task_id)
        }
        R::TaskResults(r) => table(
            &["DEVICE", "HOST", "RUN", "OUTCOME", "EXIT", "FINISHED", "OUTPUT"],
            crate::tasks::results(r),
        ),
        R::Updates(u) => crate::updates::render(u, table),
        R::Hosts(h) => crate::updates::render_hosts(h, table),
        R::ConsoleAccounts(a) => crate::console::render(a, table),
        R::Error(e) => format!("error: {}\n", e.message),
        R::TokenCreated(t) => format!(
            "{}\n\ntoken {} for {} devices in group {}, {} use(s), expires {}\n\
             Give the token above to the device (it is shown only once).\n",
            t.token,
            t.token_id,
            t.role,
            t.group,
            t.uses,
            when(t.expires_at)
        ),
        R::Tokens(l) => table(
            &["TOKEN", "ROLE", "GROUP", "USES LEFT", "EXPIRES", "COMMENT"],
            l.tokens
                .iter()
                .map(|t| {
                    vec![
                        t.token_id.clone(),
                        t.role.clone(),
                        t.group.clone(),
                        format!("{}/{}", t.uses_left, t.uses_total),
                        when(t.expires_at),
                        t.comment.clone(),
                    ]
                })
                .collect(),
        ),
        R::KeyImport(k) => {
            let mut s = format!("imported {} key(s):\n", k.keys.len());
            s.push_str(&keys_table(&k.keys));
            s
        }
        R::Keys(k) if k.keys.is_empty() => {
            "no licence keys (import one with `admin key import <file>`)\n".into()
        }
        R::Keys(k) => keys_table(&k.keys),
        R::Devices(d) if d.devices.is_empty() => "no devices\n".into(),
        R::Devices(d) => table(
            &[
                "DEVICE",
                "ROLE",
                "HOST",
                "GROUP",
                "ONLINE",
                "PATH",
                "LICENCE",
                "LAST SEEN",
            ],
            d.devices
                .iter()
                .map(|d| {
                    let lic = match d.licence_state.as_str() {
                        "licensed" => format!("licensed ({})", d.licence_key),
                        "unlicensed" => format!("unlicensed: {}", d.licence_reason),
                        _ if d.role != "agent" => "-".into(),
                        other => other.into(),
                    };
                    vec![
                        d.device_id.clone(),
                        if d.revoked {
                            format!("{} (revoked)", d.role)
                        } else {
                            d.role.clone()
                        },
                        d.hostname.clone(),
                        d.group.clone(),
                        match (d.online, d.instance.as_str()) {
                            (false, _) => "no".into(),
                            (true, "") => "yes".into(),
                            (true, at) => format!("yes, at {at}"),
                        },
                        d.path.clone(),
                        lic,
                        when(d.last_seen),
                    ]
                })
                .collect(),
        ),
        R::Push(p) => {
            let mut s = format!("push {}:\n", p.push_id);
            if p.fanned_out_via > 0 {
                let _ = writeln!(
                    s,
                    "signed broadcast sent once up each of {} gateway uplink(s), fanned out there",
                    p.fanned_out_via
                );
            }
            s.push_str(&table(
                &["DEVICE", "STATE", "LATENCY"],
                p.outcomes
                    .iter()
                    .map(|o| {
                        vec![
                            o.device_id.clone(),
                            o.state.clone(),
                            if o.state == "acked" {
                                format!("{} ms", o.latency_ms)
                            } else {
                                "-".into()
                            },
                        ]
                    })
                    .collect(),
            ));
            s
        }
        R::Policy(p) if !p.device_id.is_empty() => format!(
            "effective policy of {} (revision {:016x}; from {}):\n{}\n",
            p.device_id,
            p.effective_revision,
            if p.from_groups.is_empty() {
                "no group has a policy".to_owned()
            } else {
                p.from_groups.join(" → ")
            },
            p.effective
        ),
        R::Policy(p) if p.groups.is_empty() => {
            "no policies (set one with `admin policy set <group> <file.json>`)\n".into()
        }
        R::Policy(p) => table(
            &["GROUP", "REVISION", "UPDATED", "DOCUMENT"],
            p.groups
                .iter()
                .map(|g| {
                    vec![
                        g.group.clone(),
                        g.revision.to_string(),
                        when(g.updated_at),
                        g.document.clone(),
                    ]
                })
                .collect(),
        ),
        R::Groups(g) => table(
            &["GROUP", "DEVICES"],
            g.groups
                .iter()
                .map(|g| vec![g.path.clone(), g.devices.to_string()])
                .collect(),
        ),
        R::KeyFile(k) => format!("key {} ({} bytes)\n", k.key_id, k.content.len()),
        R::DmzGateways(g) if g.gateways.is_empty() => {
            "no DMZ gateways (add one with `admin gateway dmz add <host:port>`)\n".into()
        }
        R::DmzGateways(g) => table(
            &["ADDRESS", "FROM", "STATE"],
            g.gateways
                .iter()
                .map(|g| vec![g.address.clone(), g.source.clone(), g.state.clone()])
                .collect(),
        ),
        R::Renewals(r) if r.reports.is_empty() => "no keys owned by this server to renew\n".into(),
        R::Renewals(r) => table(
            &["KEY", "OUTCOME", "RENEWAL", "DETAIL"],
            r.reports
                .iter()
                .map(|r| {
                    vec![
                        r.key_id.clone(),
                        r.outcome.clone(),
                        r.renewal_key.clone(),
                        r.detail.clone(),
                    ]
                })
                .collect(),
        ),
        R::Notifications(n) if n.notifications.is_empty() => "no notifications\n".into(),
        R::Notifications(n) => table(
            &["WHEN", "KIND", "KEY", "MESSAGE"],
            n.notifications
                .iter()
                .map(|n| {
                    vec![
                        when(n.at_ms / 1000),
                        n.kind.clone(),
                        n.key_id.clone(),
                        n.message.clone(),
                    ]
                })
                .collect(),
        ),
        R::ServerStatus(s) if !s.gateways.is_empty() => {
            let mut out = human(&R::ServerStatus(
                outpost_proto::pb::admin::ServerStatusResult {
                    gateways: vec![],
                    ..s.clone()
                },
            ));
            out.push_str(&table(
                &[
                    "GATEWAY",
                    "REMOTE",
                    "DIRECTION",
                    "RTT",
                    "AGENTS",
                    "SESSIONS",
                    "UP SINCE",
                    "UPDATE CACHE",
                ],
                s.gateways
                    .iter()
                    .map(|g| {
                        vec![
                            g.device_id.clone(),
                            g.remote.clone(),
                            g.direction.clone(),
                            format!("{} ms", g.rtt_ms),
                            g.agents_connected.to_string(),
                            g.sessions_relayed.to_string(),
                            when(g.connected_since),
                            if g.cache_revision == 0 {
                                "-".to_owned()
                            } else {
                                format!(
                                    "rev {}, {} MiB, {} hits, {} misses, {} MiB from here{}",
                                    g.cache_revision,
                                    g.cache_bytes >> 20,
                                    g.cache_hits,
                                    g.cache_misses,
                                    g.cache_upstream_bytes >> 20,
                                    if g.cache_refused_blocks > 0 {
                                        format!(", {} bad blocks refused", g.cache_refused_blocks)
                                    } else {
                                        String::new()
                                    }
                                )
                            },
                        ]
                    })
                    .collect(),
            ));
            out
        }
        R::ServerStatus(s) => {
            let mut out = server_status(s);
            if let Some(c) = &s.certificates {
                out.push_str(&cert_status(c));
            }
            out
        }
    }
}

/// The certificate part of `status` (S9).
fn cert_status(c: &outpost_proto::pb::admin::CertStatus) -> String {
    let mut out = format!(
        "server certificate expires: {}
",
        when(c.server_expires_at)
    );
    for ca in &c.cas {
        out.push_str(&format!(
            "CA {} ({}…) expires: {}{}
",
            ca.name,
            &ca.sha256[..ca.sha256.len().min(16)],
            when(ca.expires_at),
            if ca.issuing { ", issuing" } else { "" }
        ));
    }
    if c.rolling_over {
        out.push_str(&format!(
            "CA roll-over under way: {} active device(s) still on another CA (`ca finish-roll-over` once 0)
",
            c.devices_on_other_ca
        ));
    }
    if c.soonest_device_expiry > 0 {
        out.push_str(&format!(
            "soonest device certificate expiry: {} (devices renew by themselves while connected)
",
            when(c.soonest_device_expiry)
        ));
    }
    out
}

fn server_status(s: &outpost_proto::pb::admin::ServerStatusResult) -> String {
    {
        format!(
            "{}\nlistening on {}\nagent sessions online: {}\ngateways connected: {}\ndevices: {}\nuptime: {}\n\
             sessions refused (overload): {}\nconnections refused (authentication): {}\n\
             bad frames: {}\nnotifications not delivered (queue full; in the log): {}\n\
             relayed sessions: {} ({} resumed their inner TLS session)\n\
             update blocks served: {} ({} MiB in {} requests; {} asked for but not held)\n",
            s.software,
            s.listen,
            s.sessions,
            s.gateways_connected,
            s.devices,
            humantime::format_duration(std::time::Duration::from_secs(s.uptime_secs)),
            s.sessions_refused,
            s.connections_refused,
            s.bad_frames,
            s.notifications_dropped,
            s.relayed_sessions,
            s.relayed_sessions_resumed,
            s.files.as_ref().map_or(0, |f| f.blocks),
            s.files.as_ref().map_or(0, |f| f.bytes >> 20),
            s.files.as_ref().map_or(0, |f| f.requests),
            s.files.as_ref().map_or(0, |f| f.unknown),
        ) + &instances(s)
    }
}

/// The instances sharing the store (P2), when there are several.
fn instances(s: &outpost_proto::pb::admin::ServerStatusResult) -> String {
    if s.instances.len() < 2 {
        return String::new();
    }
    let mut out = format!(
        "server instances on this store (this one: {}):\n",
        s.instance
    );
    out.push_str(&table(
        &["INSTANCE", "STARTED", "LAST HEARTBEAT", "CONNECTIONS HELD"],
        s.instances
            .iter()
            .map(|i| {
                vec![
                    i.name.clone(),
                    when(i.started_at),
                    when(i.seen_at),
                    i.held.to_string(),
                ]
            })
            .collect(),
    ));
    out
}

fn keys_table(keys: &[outpost_proto::pb::admin::KeyInfo]) -> String {
    table(
        &[
            "KEY",
            "LICENSEE",
            "KIND",
            "SEATS",
            "USED",
            "HELD OFFLINE",
            "LEASED",
            "FREE",
            "VALID FROM",
            "EXPIRES",
            "COMPONENTS",
            "OBJECTS",
        ],
        keys.iter()
            .map(|k| {
                vec![
                    k.key_id.clone(),
                    k.licensee.clone(),
                    format!(
                        "{}{}{}",
                        k.kind,
                        if k.auto_distribute { ", auto" } else { "" },
                        if k.expired { ", EXPIRED" } else { "" }
                    ),
                    k.seats_total.to_string(),
                    k.seats_used.to_string(),
                    if k.seats_held_offline == 0 {
                        "0".into()
                    } else {
                        format!(
                            "{} (first returns by {})",
                            k.seats_held_offline,
                            when(k.held_next_return)
                        )
                    },
                    k.seats_leased_out.to_string(),
                    k.seats_free.to_string(),
                    when(k.valid_from),
                    when(k.expires_at),
                    k.components.join(","),
                    if k.objects.is_empty() {
                        "(unassigned)".into()
                    } else {
                        k.objects.join(",")
                    },
                ]
            })
            .collect(),
    )
}

/// The JSON form of a result: the result message itself (without the variant wrapper).
pub fn json(r: &R) -> serde_json::Value {
    match serde_json::to_value(r) {
        Ok(serde_json::Value::Object(mut m)) if m.len() == 1 => {
            let k = m.keys().next().cloned().unwrap_or_default();
            m.remove(&k).unwrap_or_default()
        }
        Ok(v) => v,
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    }
}
