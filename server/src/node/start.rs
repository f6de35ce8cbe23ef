//! Building a running server from an initialised data directory.

use std::sync::Arc;

use outpost_net::endpoint;
use outpost_proto::licence::GrantSigner;
use tracing::info;

use super::{Node, ServerHandle};
use crate::certs::Certs;
use crate::config::ServerConfig;
use crate::datadir::{DataDir, DataDirError};
use crate::enroll::Enrollment;
use crate::licence::Licensing;
use crate::sessions::Sessions;
use crate::store::{Store, StoreError};
use outpost_net::runtime::Runtime;

/// Why the server could not start. Each names the file, address or setting at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The data directory was never initialised.
    #[error(
        "{0} is not initialised (run `outpost-server run --data-dir {0} --authority-key <file>` once)"
    )]
    NotInitialised(String),
    /// `server.toml` is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] outpost_net::config::ConfigError),
    /// A file of the data directory (CA, server certificate, grant key) is unreadable.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    /// The UDP port could not be bound.
    #[error(transparent)]
    Listen(#[from] endpoint::ListenError),
    /// The certificates of the data directory (CAs, `pki.toml`, server certificate) are
    /// unusable.
    #[error(transparent)]
    Certs(#[from] crate::certs::CertError),
    /// The metrics address could not be bound (the message names `metrics.listen`).
    #[error("{0}")]
    Metrics(#[from] std::io::Error),
}

/// Starts a server on an initialised data directory.
pub async fn start(data: DataDir) -> Result<ServerHandle, StartError> {
    if !data.is_initialized() {
        return Err(StartError::NotInitialised(
            data.root().display().to_string(),
        ));
    }
    let config = Arc::new(ServerConfig::load(&data.config())?);
    let certs = Certs::load(data.clone(), &config)?;
    let grants = GrantSigner::from_pkcs8(&data.read(&data.grant_key())?).map_err(|e| {
        DataDirError::Damaged {
            path: data.grant_key(),
            what: e.to_string(),
        }
    })?;
    // D1: a data directory from before update manifests gets its key now.
    if !data.update_key().exists() {
        let (_, pk8) = GrantSigner::generate();
        outpost_net::fsutil::write_atomic(&data.update_key(), &pk8, true).map_err(|e| {
            DataDirError::Damaged {
                path: data.update_key(),
                what: e.to_string(),
            }
        })?;
        tracing::info!("update-manifest signing key created (update.key)");
    }
    let update_key = GrantSigner::from_pkcs8(&data.read(&data.update_key())?).map_err(|e| {
        DataDirError::Damaged {
            path: data.update_key(),
            what: e.to_string(),
        }
    })?;
    let authority_public = outpost_proto::licence::key::decode_public_key(
        &config.authority_public_key,
    )
    .map_err(|e| outpost_net::config::ConfigError::invalid(format!("authority_public_key: {e}")))?;
    let store =
        Store::open_configured(&data.db(), &config.store.url, config.store.durability).await?;

    let (ep, local_addr) = endpoint::listen(
        config.listen,
        &config.socket,
        certs.current().listener.clone(),
        data.root(),
    )?;
    certs.attach(ep.clone());

    if local_addr.port() != config.listen.port() || data.admin().join("admin.toml").exists() {
        let mut c = (*config).clone();
        c.listen = local_addr;
        data.set_admin_server(&c.client_address())?;
    }

    let dmz_added = store.dmz_targets().await?;
    let metrics = Arc::new(outpost_net::metrics::Metrics::default());
    let instruments = crate::metrics::Instruments::register(&metrics, store.commit_seconds());
    let node = Arc::new(Node {
        metrics,
        instruments,
        metrics_addr: Default::default(),
        console_addr: Default::default(),
        dmz: crate::dmz::Dmz::new(ep.clone()),
        peers: crate::peers::Peers::new(ep.clone()),
        licensing: Licensing::new(store, grants, authority_public, &config, data.keys()),
        sessions: Sessions::new(config.limits.max_sessions),
        gateways: Default::default(),
        broadcasts: Default::default(),
        files: Default::default(),
        updates: crate::updates::Updates::new(update_key),
        enrollment: Enrollment::new(certs),
        runtime: Runtime::default(),
        config,
        data,
        local_addr,
        instances: Default::default(),
    });
    info!(addr = %local_addr, "outpost-server listening");
    for target in &node.config.dmz_gateways {
        node.dmz.add(&node, target, crate::dmz::Source::Config);
    }
    for target in &dmz_added {
        node.dmz.add(&node, target, crate::dmz::Source::Admin);
    }
    if let Some(rx) = node.store().take_notice_receiver() {
        node.runtime.spawn(crate::notify::run(node.clone(), rx));
    }
    node.runtime.spawn(crate::licence::clock::run(node.clone()));
    node.runtime.spawn(super::instance::run(node.clone()));
    if let Some(rx) = node.store().remote_events() {
        node.runtime.spawn(remote_events(node.clone(), rx));
    }
    node.runtime.spawn(crate::certs::renew_own(node.clone()));
    node.runtime.spawn(crate::updates::refresher(node.clone()));
    if let Some(addr) = node.config.metrics.listen {
        let bound = outpost_net::metrics::serve(
            addr,
            node.metrics.clone(),
            crate::metrics::gather(node.clone()),
            node.runtime.child_token(),
        )
        .await?;
        let _ = node.metrics_addr.set(bound);
    }
    if let Some(bound) = crate::console::serve(node.clone()).await? {
        let _ = node.console_addr.set(bound);
    }
    // Pins first: a neighbour dialling in right away must find its certificate accepted.
    node.peers.reload(&node).await?;
    node.runtime.spawn(crate::peers::refresh_loop(node.clone()));
    let accept = tokio::spawn(super::accept::accept_loop(node.clone(), ep.clone()));
    Ok(ServerHandle {
        node,
        endpoint: ep,
        accept,
    })
}

/// Acts on what other instances on the shared database announce (P2): a device revoked or
/// removed there loses its session here; a push queued there for a device connected here is
/// delivered from its mailbox; after a gap in the announcements, every session held here is
/// checked against the devices table and handed the pushes waiting in its mailbox.
async fn remote_events(
    node: Arc<Node>,
    mut rx: tokio::sync::broadcast::Receiver<crate::store::wake::Remote>,
) {
    use crate::store::wake::Remote;
    use tokio::sync::broadcast::error::RecvError;
    let end = |device: &str, removed: bool| {
        let why = if removed {
            super::accept::removed()
        } else {
            super::accept::revoked(device)
        };
        let online = node.sessions().registry().kick(device, why.clone())
            | node.gateways().disconnect(device, &why);
        if online {
            info!(%device, removed, "session ended: the device was revoked or removed through another instance");
        }
    };
    loop {
        let event = tokio::select! {
            e = rx.recv() => e,
            _ = node.runtime().cancelled() => return,
        };
        match event {
            Ok(Remote::Gone { device, removed }) => end(&device, removed),
            Ok(Remote::Sync { group }) => match node.store().devices_under(&group).await {
                Ok(devices) => {
                    node.sessions().registry().nudge(&devices);
                }
                Err(e) => {
                    tracing::warn!(error = %e, %group, "policy change from another instance not passed on; devices get it at their next sync")
                }
            },
            Ok(Remote::Push { device, push_id }) => {
                if !node.sessions().registry().is_online(&device) {
                    continue;
                }
                let now = outpost_net::unix_now();
                match node.store().pending_pushes(&device, now).await {
                    Ok(pushes) => {
                        for p in pushes.into_iter().filter(|p| p.id == push_id) {
                            node.sessions().registry().send(&device, p);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, %device, "push from another instance not read; delivered at the next connect")
                    }
                }
            }
            Ok(Remote::CatchUp) | Err(RecvError::Lagged(_)) => {
                let now = outpost_net::unix_now();
                for device in node.sessions().registry().online() {
                    match node.store().device(&device).await {
                        Ok(None) => end(&device, true),
                        Ok(Some(d)) if d.revoked_at.is_some() => end(&device, false),
                        // Pushes whose wake-up may have been missed (the agent recognises one
                        // it already had).
                        Ok(Some(_)) => match node.store().pending_pushes(&device, now).await {
                            Ok(pushes) => {
                                for p in pushes {
                                    node.sessions().registry().send(&device, p);
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "catching up with the other instances failed");
                                break;
                            }
                        },
                        Err(e) => {
                            tracing::warn!(error = %e, "catching up with the other instances failed");
                            break;
                        }
                    }
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}
