//! `admin console-account set|remove|list` (O8): named accounts for the web console.

use outpost_proto::error::RefusalCode;
use outpost_proto::pb::admin::{
    ConsoleAccountInfo, ConsoleAccountListResult, ConsoleAccountRef, ConsoleAccountSet,
    admin_response::Result as R,
};
use tracing::{info, warn};

use super::{done, error, ok};
use crate::console::accounts;
use crate::node::Node;
use crate::store::StoreError;

type Answer = Result<outpost_proto::pb::admin::AdminResponse, StoreError>;

pub(super) async fn set(node: &Node, a: ConsoleAccountSet) -> Answer {
    if let Err(e) = accounts::check_new(&a.name, &a.password) {
        return Ok(error(RefusalCode::InvalidArgument, e));
    }
    let password = a.password;
    let hashed = match tokio::task::spawn_blocking(move || accounts::hash(&password)).await {
        Ok(Ok(h)) => h,
        failed => {
            warn!(account = %a.name, ?failed, "console account password not hashed");
            return Ok(error(
                RefusalCode::Internal,
                "the password could not be hashed (the server's log says why); nothing changed",
            ));
        }
    };
    let new = node
        .store()
        .set_console_account(&a.name, &hashed, outpost_net::unix_now())
        .await?;
    info!(account = %a.name, new, "console account set");
    Ok(done(if new {
        format!(
            "console account {} created: sign in at the console with it",
            a.name
        )
    } else {
        format!(
            "console account {}: password changed, unlocked; its open sessions ended",
            a.name
        )
    }))
}

pub(super) async fn remove(node: &Node, a: ConsoleAccountRef) -> Answer {
    if node.store().remove_console_account(&a.name).await? {
        info!(account = %a.name, "console account removed");
        Ok(done(format!(
            "console account {} removed; its open sessions ended",
            a.name
        )))
    } else {
        Ok(error(
            RefusalCode::NotFound,
            format!(
                "no console account {} (see `admin console-account list`)",
                a.name
            ),
        ))
    }
}

pub(super) async fn list(node: &Node) -> Answer {
    let now = outpost_net::unix_now();
    let accounts = node
        .store()
        .console_accounts()
        .await?
        .into_iter()
        .map(|a| ConsoleAccountInfo {
            name: a.name,
            created_at: a.created_at,
            changed_at: a.changed_at,
            last_sign_in: a.last_sign_in,
            failures: a.failures.clamp(0, u32::MAX as i64) as u32,
            locked_until: if a.locked_until > now {
                a.locked_until
            } else {
                0
            },
        })
        .collect();
    Ok(ok(R::ConsoleAccounts(ConsoleAccountListResult {
        accounts,
    })))
}
