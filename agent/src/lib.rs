//! `outpost-agent`: the endpoint agent. It enrolls with a token (S6), connects through the
//! first gateway that answers or directly to the server (T8), gets its licence checked on
//! every connect (S3) and keeps the signed grant to stay licensed offline (L7), syncs its
//! inventory and its durable event queue (S4, S5), and receives pushes (T7).
#![forbid(unsafe_code)]

pub mod config;
pub mod grants;
pub mod node;
pub mod queue;
pub mod status;

pub use config::AgentConfig;
pub use node::{AgentEvent, AgentHandle, StartOptions, start};

use std::path::Path;

use outpost_net::identity::{self, DeviceIdentity, EnrollVia};
use outpost_proto::pb::v1::Role;
use outpost_proto::token::Token;

/// Enrolls through the first gateway that answers, else directly with the server (S6, T8).
pub async fn enroll(
    data: &Path,
    config: &AgentConfig,
    token: &Token,
) -> anyhow::Result<DeviceIdentity> {
    let inv = identity::inventory(
        (!config.hostname.is_empty()).then_some(config.hostname.as_str()),
        (!config.machine_id.is_empty()).then_some(config.machine_id.as_str()),
        data,
        &format!("outpost-agent {}", outpost_proto::SOFTWARE_VERSION),
    );
    let mut errors = vec![];
    let mut targets: Vec<(bool, &String)> = config.gateways.iter().map(|g| (true, g)).collect();
    if !config.server.is_empty() {
        targets.push((false, &config.server));
    }
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
                queue::Queue::open(data, 1)?;
                outpost_net::fsutil::SlotFile::new(&data.join("licence")).create_slots()?;
                return Ok(id);
            }
            Err(e) => {
                // A refusal from the server is final; an unreachable path is not.
                if e.chain()
                    .any(|c| c.downcast_ref::<outpost_proto::error::Refused>().is_some())
                {
                    return Err(e);
                }
                errors.push(format!("{target}: {e:#}"));
            }
        }
    }
    anyhow::bail!("could not enroll: {}", errors.join("; "))
}
