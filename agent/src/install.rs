//! From a held manifest to a handled revision (D1, D2): when a newer revision is held (a sync
//! brought it, or an `update-available` push asked to look), the agent fetches the files of its
//! components (`updates.components`; all when empty) from the path its session uses — its
//! gateway, else the server — and hands the revision to `updates.handler` (JSON on standard
//! input: revision, device id, and each file's name, component, size, SHA-256 and local
//! path). Progress, the revision fetched and the one handled are in `status` and
//! `updates/state.json`. A download that cannot go on now (link lost, gateway without uplink)
//! is retried with backoff and resumes; a handler that fails is not run again for that revision
//! until the agent restarts (its output is in the status).

use std::sync::Arc;
use std::time::Duration;

use outpost_proto::backoff::{Backoff, BackoffConfig};
use outpost_proto::pb::v1::UpdateManifest;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::connect::Via;
use crate::fetch::{self, FetchError, Source};
use crate::node::{AgentEvent, Shared};

/// `updates/state.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct InstallState {
    /// Newest revision whose files are all here.
    pub fetched: u64,
    /// Newest revision the handler took (exit 0).
    pub handled: u64,
}

const STATE: &str = "updates/state.json";

/// What the handler gets.
#[derive(Serialize)]
struct HandlerInput<'a> {
    revision: u64,
    device_id: &'a str,
    files: Vec<HandlerFile>,
}

#[derive(Serialize)]
struct HandlerFile {
    name: String,
    component: String,
    size: u64,
    sha256: String,
    path: String,
}

/// Where the session is now, as a download source.
fn source(shared: &Shared) -> Option<Source> {
    let (via, addr) = (*shared.path_now.lock().expect("path lock"))?;
    let ep = match &shared.endpoint {
        Some(e) => e.clone(),
        None => outpost_net::endpoint::client_endpoint(addr).ok()?,
    };
    Some(Source::new(
        ep,
        addr,
        via,
        shared.tls().files_client.clone(),
    ))
}

/// Runs until shutdown.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut state: InstallState = crate::kept::load(&shared.data, STATE);
    shared.status.send_modify(|s| {
        s.update_fetched = state.fetched;
        s.update_handled = state.handled;
    });
    let mut backoff = Backoff::new(BackoffConfig {
        initial: Duration::from_secs(2),
        max: Duration::from_secs(300),
        healthy_after: Duration::from_secs(60),
    });
    // The revision whose handler failed (not run again until a restart).
    let mut failed = 0;
    loop {
        let manifest = shared.update.lock().expect("update lock").manifest();
        let mut wait = Duration::from_secs(600);
        if let Some(m) = manifest.filter(|m| m.revision > state.handled && m.revision != failed) {
            match step(&shared, &m, &mut state).await {
                Ok(true) => backoff.on_connected(tokio::time::Instant::now().into_std()),
                Ok(false) => failed = m.revision,
                Err(FetchError::Retry(e)) => {
                    backoff.on_disconnected(tokio::time::Instant::now().into_std());
                    wait = backoff.next_delay(outpost_net::jitter_unit());
                    info!(error = %e, retry_in = ?wait, "update download paused");
                    shared.status.send_modify(|s| s.update_fetch_error = e);
                }
                Err(FetchError::Failed(e)) => {
                    warn!(error = %e, "update download failed");
                    shared.status.send_modify(|s| s.update_fetch_error = e);
                }
            }
        }
        tokio::select! {
            _ = shared.update_wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

/// Fetches and hands over one revision. `Ok(true)`: handled (or nothing to hand over to);
/// `Ok(false)`: the handler failed.
async fn step(
    shared: &Arc<Shared>,
    m: &UpdateManifest,
    state: &mut InstallState,
) -> Result<bool, FetchError> {
    let wanted = outpost_proto::files::wanted(m, &shared.config.updates.components);
    if state.fetched < m.revision {
        let Some(src) = source(shared) else {
            return Err(FetchError::Retry("not connected".into()));
        };
        let Some(_lock) = crate::fetch::lock(&shared.data) else {
            return Err(FetchError::Retry(
                "another download (outpost-agent update fetch) is running".into(),
            ));
        };
        shared
            .status
            .send_modify(|s| s.update_source = src.label.clone());
        let progress = |done: u64, total: u64| {
            shared.status.send_if_modified(|s| {
                let changed = s.update_progress != done || s.update_total != total;
                s.update_progress = done;
                s.update_total = total;
                changed
            });
        };
        let bytes = fetch::fetch(&shared.data, m, &wanted, &src, &progress).await?;
        state.fetched = m.revision;
        save(shared, state);
        info!(revision = m.revision, bytes, source = %src.label, "update files fetched");
        shared.status.send_modify(|s| {
            s.update_fetched = m.revision;
            s.update_fetch_error.clear();
        });
    }
    let cfg = &shared.config.updates;
    let ok = if cfg.handler.is_empty() {
        true
    } else {
        let input = HandlerInput {
            revision: m.revision,
            device_id: &shared.device_id,
            files: wanted
                .iter()
                .map(|f| HandlerFile {
                    name: f.name.clone(),
                    component: f.component.clone(),
                    size: f.size,
                    sha256: hex::encode(&f.sha256),
                    path: fetch::kept_path(&shared.data, f).display().to_string(),
                })
                .collect(),
        };
        let body = serde_json::to_vec(&input).unwrap_or_default();
        let (outcome, code, output) = crate::handler::run(
            &cfg.handler,
            cfg.timeout,
            "updates.timeout",
            &shared.data,
            body,
        )
        .await;
        let ok = outcome == outpost_proto::task::Outcome::Ok;
        let result = format!(
            "revision {}: {}{}",
            m.revision,
            outcome.as_str(),
            code.map(|c| format!(" (exit {c})")).unwrap_or_default()
        );
        if ok {
            info!(revision = m.revision, "update handed to the handler");
        } else {
            warn!(revision = m.revision, %result, %output, "update handler failed; not run again for this revision until the agent restarts");
        }
        shared.status.send_modify(|s| {
            s.update_handler_result = if ok {
                result
            } else {
                format!("{result}: {}", output.trim())
            }
        });
        ok
    };
    if ok {
        state.handled = m.revision;
        save(shared, state);
        fetch::keep_only(&shared.data, &wanted);
        shared.status.send_modify(|s| s.update_handled = m.revision);
        let _ = shared.events.send(AgentEvent::UpdateHandled {
            revision: m.revision,
        });
    }
    Ok(ok)
}

fn save(shared: &Shared, state: &InstallState) {
    if let Err(e) = crate::kept::save(&shared.data, STATE, state) {
        warn!(error = %e, "updates/state.json not saved");
    }
}

/// What `outpost-agent update fetch` did.
#[derive(Debug)]
pub struct Fetched {
    /// The revision whose files are now here.
    pub revision: u64,
    /// Bytes downloaded (0: everything was here).
    pub bytes: u64,
    /// Where from.
    pub source: String,
}

/// `outpost-agent update fetch`: downloads the held revision's files now, from the path the
/// running agent uses (its status says), else the configured gateways in order, else the
/// server. The running agent hands the revision to its handler when it next looks (at once
/// after its next connect or push, else within ten minutes).
pub async fn fetch_now(
    data: &std::path::Path,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Fetched, String> {
    let identity = outpost_net::identity::DeviceIdentity::load(data)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} holds no agent identity: enroll first", data.display()))?;
    let config =
        crate::AgentConfig::load(&crate::node::config_path(data)).map_err(|e| e.to_string())?;
    let tls = crate::certs::build(identity, &config)?;
    let held = crate::updates::HeldUpdate::load(data);
    let m = held.manifest().ok_or(
        "no update manifest held yet: the agent receives one at its next sync once the \
         server has a revision (outpost-server admin update import DIR)",
    )?;
    let wanted = outpost_proto::files::wanted(&m, &config.updates.components);
    let mut paths: Vec<(Via, String)> = Vec::new();
    if let Ok((s, true)) = crate::status::read(data) {
        if let Some(a) = s.path.strip_prefix("gateway ") {
            paths.push((Via::Gateway, a.to_owned()));
        } else if let Some(a) = s.path.strip_prefix("server ") {
            paths.push((Via::Server, a.trim_end_matches(" (direct)").to_owned()));
        }
    }
    paths.extend(config.gateways.iter().map(|g| (Via::Gateway, g.clone())));
    paths.extend(config.server.iter().map(|s| (Via::Server, s.clone())));
    let _lock = crate::fetch::lock(data).ok_or(
        "a download is running already (the running agent's); watch `outpost-agent update status`",
    )?;
    let mut last = String::from("no gateway or server configured");
    for (via, target) in paths {
        let addr = match outpost_net::endpoint::resolve(&target).await {
            Ok(a) => a,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let ep = outpost_net::endpoint::client_endpoint(addr).map_err(|e| e.to_string())?;
        let src = Source::new(ep, addr, via, tls.files_client.clone());
        let label = src.label.clone();
        match fetch::fetch(data, &m, &wanted, &src, progress).await {
            Ok(bytes) => {
                let mut state: InstallState = crate::kept::load(data, STATE);
                state.fetched = state.fetched.max(m.revision);
                crate::kept::save(data, STATE, &state).map_err(|e| e.to_string())?;
                return Ok(Fetched {
                    revision: m.revision,
                    bytes,
                    source: label,
                });
            }
            Err(FetchError::Retry(e)) => last = e,
            Err(FetchError::Failed(e)) => return Err(e),
        }
    }
    Err(last)
}
