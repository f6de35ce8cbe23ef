//! `outpost-agent`: the endpoint agent. It enrolls with a token (S6), connects through the
//! first gateway that answers or directly to the server (T8), gets its licence checked on
//! every connect (S3) and keeps the signed grant to stay licensed offline (L7), syncs its
//! inventory and its durable event queue (S4, S5), and receives pushes (T7).
#![forbid(unsafe_code)]

mod broadcast;
mod certs;
pub mod config;
mod connect;
mod fetch;
pub mod grants;
mod handler;
mod install;
mod kept;
pub mod node;
mod paths;
pub mod queue;
mod session;
pub mod status;
mod tasks;
mod updates;

pub use config::AgentConfig;
pub use install::{Fetched, fetch_now};
pub use node::{AgentEvent, AgentHandle, StartOptions, start};

use std::path::Path;

use outpost_net::identity::{self, DeviceIdentity, EnrollError, EnrollVia};
use outpost_proto::pb::v1::Role;
use outpost_proto::token::Token;

/// Enrolls through the first gateway that answers, else directly with the server (S6, T8). A
/// final refusal ends the attempt at once; when every path failed in a way worth retrying, the
/// error is [`EnrollError::Unreachable`] naming each.
pub async fn enroll(
    data: &Path,
    config: &AgentConfig,
    token: &Token,
) -> Result<DeviceIdentity, EnrollError> {
    let inv = identity::inventory(
        (!config.hostname.is_empty()).then_some(config.hostname.as_str()),
        (!config.machine_id.is_empty()).then_some(config.machine_id.as_str()),
        data,
        &format!("outpost-agent {}", outpost_proto::SOFTWARE_VERSION),
    );
    let mut errors = vec![];
    let mut targets: Vec<(bool, &String)> = config.gateways.iter().map(|g| (true, g)).collect();
    targets.extend(config.server.iter().map(|s| (false, s)));
    for (is_gw, target) in targets {
        let addr = match outpost_net::endpoint::resolve(target).await {
            Ok(a) => a,
            Err(e) => {
                errors.push(format!("{target}: {e}"));
                continue;
            }
        };
        let via = if is_gw {
            EnrollVia::Gateway(addr)
        } else {
            EnrollVia::Server(addr)
        };
        match identity::enroll(data, via, token, Role::Agent, inv.clone()).await {
            Ok(id) => {
                // Allocate the state files now, so connects never create files.
                let local = |e: std::io::Error| EnrollError::Local(e.to_string());
                queue::Queue::open(data, 1).map_err(local)?;
                outpost_net::fsutil::SlotFile::new(&data.join("licence"))
                    .create_slots()
                    .map_err(local)?;
                return Ok(id);
            }
            Err(e) if !e.is_retryable() => return Err(e),
            Err(e) => errors.push(format!("{target}: {e}")),
        }
    }
    Err(EnrollError::Unreachable {
        addr: "every path".into(),
        why: if errors.is_empty() {
            "no gateway or server configured".into()
        } else {
            errors.join("; ")
        },
    })
}
