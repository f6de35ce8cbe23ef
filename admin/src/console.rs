//! `admin console-account` (O8): named accounts for the web console. The password comes from
//! standard input — typed at a prompt that does not echo on a terminal (asked twice), or the
//! first line of what is piped in — never from the command line, where `ps` and shell history
//! would keep it.

use std::io::{BufRead, IsTerminal};

use clap::Subcommand;
use outpost_proto::licence::key::format_time;
use outpost_proto::pb::admin::{
    ConsoleAccountListResult, ConsoleAccountRef, ConsoleAccountSet, Empty, admin_request::Op,
};

use crate::client::AdminError;

/// `console-account` subcommands.
#[derive(Debug, Subcommand)]
pub enum AccountCmd {
    /// Create an account or set a new password (which unlocks it and ends its sessions). The
    /// password is read from standard input: a prompt on a terminal, else the first line.
    Set {
        /// Account name (letters, digits, '.', '_', '-', '@').
        name: String,
    },
    /// Remove an account; its open sessions end.
    Remove {
        /// Account name.
        name: String,
    },
    /// The accounts, their last sign-in and lock.
    List,
}

fn read_password(name: &str) -> Result<String, AdminError> {
    let local = |e: std::io::Error| AdminError::Local(format!("reading the password: {e}"));
    if std::io::stdin().is_terminal() {
        let first =
            rpassword::prompt_password(format!("new password for {name}: ")).map_err(local)?;
        let again = rpassword::prompt_password("the same again: ").map_err(local)?;
        if first != again {
            return Err(AdminError::Local(
                "the two passwords differ; nothing changed".into(),
            ));
        }
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(local)?;
    let line = line.strip_suffix('\n').unwrap_or(&line);
    Ok(line.strip_suffix('\r').unwrap_or(line).to_owned())
}

/// The request for a `console-account` command.
pub fn account_op(cmd: AccountCmd) -> Result<Op, AdminError> {
    Ok(match cmd {
        AccountCmd::Set { name } => Op::ConsoleAccountSet(ConsoleAccountSet {
            password: read_password(&name)?,
            name,
        }),
        AccountCmd::Remove { name } => Op::ConsoleAccountRemove(ConsoleAccountRef { name }),
        AccountCmd::List => Op::ConsoleAccountList(Empty {}),
    })
}

/// `console-account list` for a terminal.
pub fn render(
    r: &ConsoleAccountListResult,
    table: impl Fn(&[&str], Vec<Vec<String>>) -> String,
) -> String {
    if r.accounts.is_empty() {
        return "no console accounts (`admin console-account set NAME` makes one)\n".into();
    }
    let when = |t: i64| {
        if t > 0 {
            format_time(t)
        } else {
            "never".into()
        }
    };
    table(
        &[
            "ACCOUNT",
            "CREATED",
            "PASSWORD SET",
            "LAST SIGN-IN",
            "FAILURES",
            "LOCKED UNTIL",
        ],
        r.accounts
            .iter()
            .map(|a| {
                vec![
                    a.name.clone(),
                    when(a.created_at),
                    when(a.changed_at),
                    when(a.last_sign_in),
                    a.failures.to_string(),
                    if a.locked_until > 0 {
                        format_time(a.locked_until)
                    } else {
                        "-".into()
                    },
                ]
            })
            .collect(),
    )
}
