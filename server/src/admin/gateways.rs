//! Admin actions on gateways in a DMZ (T4): the server starts or stops dialling them at once,
//! no restart; added ones are kept in the store.

use outpost_proto::error::RefusalCode;
use outpost_proto::pb::admin::{
    AdminResponse, DmzGateway, DmzGatewayInfo, DmzGatewayListResult, admin_response::Result as R,
};
use tracing::info;

use super::{done, error, ok};
use crate::dmz::Source;
use crate::node::Node;
use crate::store::StoreError;

type Answer = Result<AdminResponse, StoreError>;

/// Why an address is not one to dial, if it is not.
fn invalid(address: &str) -> Option<AdminResponse> {
    let e = outpost_net::config::check_addresses("address", std::iter::once(&address.to_owned()))
        .err()?;
    Some(error(
        RefusalCode::InvalidArgument,
        format!("{e}: give the gateway's uplink.listen address, e.g. dmz-gw.example.com:4702"),
    ))
}

pub(super) async fn add(node: &std::sync::Arc<Node>, g: DmzGateway) -> Answer {
    if let Some(r) = invalid(&g.address) {
        return Ok(r);
    }
    let added = node
        .store()
        .add_dmz_target(&g.address, outpost_net::unix_now())
        .await?;
    let started = node.dmz().add(node, &g.address, Source::Admin);
    info!(address = %g.address, "DMZ gateway added");
    Ok(done(if added || started {
        format!(
            "dialling DMZ gateway {} (see `admin gateway dmz list`)",
            g.address
        )
    } else {
        format!("DMZ gateway {} was already dialled", g.address)
    }))
}

pub(super) async fn remove(node: &Node, g: DmzGateway) -> Answer {
    let configured = node.config().dmz_gateways.contains(&g.address);
    if configured {
        return Ok(error(
            RefusalCode::Conflict,
            format!(
                "DMZ gateway {} is listed in server.toml (dmz_gateways): remove it there and restart",
                g.address
            ),
        ));
    }
    let removed = node.store().remove_dmz_target(&g.address).await?;
    let stopped = node.dmz().remove(&g.address);
    if !removed && !stopped {
        return Ok(error(
            RefusalCode::NotFound,
            format!(
                "no DMZ gateway {} (see `admin gateway dmz list`)",
                g.address
            ),
        ));
    }
    info!(address = %g.address, "DMZ gateway removed");
    Ok(done(format!(
        "no longer dialling DMZ gateway {}",
        g.address
    )))
}

pub(super) async fn list(node: &Node) -> Answer {
    let gateways = node
        .dmz()
        .list()
        .into_iter()
        .map(|(address, source, state)| DmzGatewayInfo {
            address,
            source: match source {
                Source::Config => "config",
                Source::Admin => "admin",
            }
            .into(),
            state,
        })
        .collect();
    Ok(ok(R::DmzGateways(DmzGatewayListResult { gateways })))
}
