//! Admin actions (O3), served on `outpost-admin/1` connections from holders of an admin
//! certificate: one request per stream, opened with the control-stream machine
//! (`outpost_proto::control`, channel `Admin`). Every action answers with data
//! (`AdminResponse`); the admin tool (`outpost-admin`) prints it for humans or as JSON.
//!
//! One module per concept: [`keys`] (keys, seats, renewal, notifications), [`devices`]
//! (devices, groups, tokens), [`push`], [`status`]. Writes that can alter licences move the
//! licence epoch inside the store; nothing here has to remember to.

mod certs;
mod console;
mod devices;
mod gateways;
mod hierarchy;
mod keys;
mod policies;
mod push;
mod status;
mod tasks;
mod updates;

use std::sync::Arc;

use futures_util::StreamExt;
use outpost_net::stream;
use outpost_proto::control::{Acceptor, AcceptorEvent, Channel};
use outpost_proto::error::RefusalCode;
use outpost_proto::pb::admin::{
    AdminError, AdminRequest, AdminResponse, Done, admin_request::Op, admin_response::Result as R,
};
use outpost_proto::pb::v1::envelope::Msg;
use tokio::time::Instant;
use tracing::{Instrument, debug};

pub use push::push_kind;

use crate::node::Node;
use crate::store::{DeviceRow, StoreError};

/// Serves an admin connection: each bidi stream carries one request.
pub async fn serve(node: Arc<Node>, conn: quinn::Connection, admin: DeviceRow) {
    loop {
        let (send, recv) = tokio::select! {
            s = conn.accept_bi() => match s { Ok(s) => s, Err(_) => return },
            _ = node.runtime().cancelled() => return,
        };
        let n = node.clone();
        let admin = admin.id.clone();
        node.runtime().spawn(
            async move {
                let mut f = stream::framed(stream::bi(send, recv), n.config().limits.max_frame);
                let mut sm = Acceptor::new(
                    Channel::Admin,
                    admin.clone(),
                    format!("outpost-server {}", outpost_proto::SOFTWARE_VERSION),
                    Instant::now().into_std(),
                    n.config().timing.session_setup_timeout,
                );
                let deadline = Instant::from_std(sm.poll_timeout().expect("waiting for hello"));
                let request = loop {
                    let msg = tokio::select! {
                        m = f.next() => m,
                        _ = tokio::time::sleep_until(deadline), if !sm.is_open() => {
                            let _ = sm.handle_timeout(Instant::now().into_std());
                            break None;
                        }
                    };
                    let r = match msg {
                        Some(Ok(m)) => sm.handle_message(m, outpost_net::unix_now_ms()),
                        Some(Err(e)) => Err(sm.handle_broken(Some(e.to_string()))),
                        None => break None,
                    };
                    if let Err(e) = r {
                        debug!(error = %e, "admin stream refused");
                        break None;
                    }
                    let req = std::iter::from_fn(|| sm.poll_event()).find_map(|ev| match ev {
                        AcceptorEvent::Message(m) => match *m {
                            Msg::AdminRequest(req) => Some(req),
                            _ => None,
                        },
                        AcceptorEvent::Established { .. } => None,
                    });
                    if req.is_some() {
                        break req;
                    }
                    if stream::send_queued(&mut f, &mut sm).await.is_err() {
                        break None;
                    }
                };
                if let Some(req) = request {
                    let resp = handle(&n, &admin, req).await;
                    let _ = sm.send(Msg::AdminResponse(resp));
                }
                let _ = stream::send_queued(&mut f, &mut sm).await;
                let _ = futures_util::SinkExt::close(&mut f).await;
            }
            .in_current_span(),
        );
    }
}

fn error(code: RefusalCode, message: impl Into<String>) -> AdminResponse {
    AdminResponse {
        result: Some(R::Error(AdminError {
            code: code as i32,
            message: message.into(),
        })),
    }
}

fn ok(r: R) -> AdminResponse {
    AdminResponse { result: Some(r) }
}

fn done(message: impl Into<String>) -> AdminResponse {
    ok(R::Done(Done {
        message: message.into(),
    }))
}

/// A store error as the admin sees it: the sentence for their mistakes, an incident id for
/// ours (the details go to the server's log only).
fn from_store(e: StoreError) -> AdminResponse {
    let r = e.to_refusal("admin request failed in the store");
    error(r.code(), r.0.message)
}

/// Executes one admin request.
pub async fn handle(node: &Arc<Node>, admin: &str, req: AdminRequest) -> AdminResponse {
    let Some(op) = req.op else {
        return error(
            RefusalCode::InvalidArgument,
            "empty request (this server does not know the operation; upgrade it?)",
        );
    };
    let span = tracing::info_span!("admin", admin = %admin);
    let result = async {
        match op {
            Op::TokenCreate(t) => devices::token_create(node, t).await,
            Op::TokenList(_) => devices::token_list(node).await,
            Op::DeviceList(d) => devices::list(node, d).await,
            Op::DeviceRevoke(d) => devices::revoke(node, d).await,
            Op::DeviceRemove(d) => devices::remove(node, d).await,
            Op::DeviceMove(d) => devices::move_to(node, d).await,
            Op::GroupCreate(g) => devices::group_create(node, g).await,
            Op::GroupList(_) => devices::group_list(node).await,
            Op::KeyImport(k) => keys::import(node, k).await,
            Op::KeyList(_) => keys::list(node).await,
            Op::KeyAssign(a) => keys::assign(node, a).await,
            Op::KeyUnassign(a) => keys::unassign(node, a).await,
            Op::KeyRemove(k) => keys::remove(node, k).await,
            Op::KeyExport(k) => keys::export(node, k).await,
            Op::KeyAutoDistribute(k) => keys::auto_distribute(node, k).await,
            Op::KeyRenew(_) => keys::renew(node).await,
            Op::SeatsReclaim(_) => keys::reclaim(node).await,
            Op::NotificationList(n) => keys::notifications(node, n).await,
            Op::Push(p) => push::push(node, p).await,
            Op::ServerStatus(_) => status::status(node).await,
            Op::DmzGatewayAdd(g) => gateways::add(node, g).await,
            Op::DmzGatewayRemove(g) => gateways::remove(node, g).await,
            Op::DmzGatewayList(_) => gateways::list(node).await,
            Op::CertRotateServer(_) => certs::rotate_server(node).await,
            Op::CaRollOver(_) => certs::roll_over(node, admin).await,
            Op::CaFinishRollOver(f) => certs::finish(node, admin, f).await,
            Op::ServerAdd(a) => hierarchy::add(node, a).await,
            Op::ServerRemove(r) => hierarchy::remove(node, r).await,
            Op::ServerList(_) => hierarchy::list(node).await,
            Op::ServerExportCert(_) => hierarchy::export_cert(node).await,
            Op::LeaseGive(l) => hierarchy::give(node, l).await,
            Op::LeaseChange(c) => hierarchy::change(node, c).await,
            Op::LeaseRevoke(r) => hierarchy::revoke(node, r).await,
            Op::LeaseList(_) => hierarchy::list_leases(node).await,
            Op::Report(r) => hierarchy::report(node, r).await,
            Op::PolicySet(p) => policies::set(node, p).await,
            Op::PolicyShow(p) => policies::show(node, p).await,
            Op::TaskCreate(t) => tasks::create(node, t).await,
            Op::TaskList(_) => tasks::list(node).await,
            Op::TaskResults(t) => tasks::results(node, t).await,
            Op::TaskRemove(t) => tasks::remove(node, t).await,
            Op::UpdateImport(u) => updates::import(node, u).await,
            Op::UpdateList(_) => updates::list(node).await,
            Op::UpdateShow(u) => updates::show(node, u).await,
            Op::UpdateRemove(u) => updates::remove(node, u).await,
            Op::HostsList(q) => updates::hosts(node, q).await,
            Op::ConsoleAccountSet(a) => console::set(node, a).await,
            Op::ConsoleAccountRemove(a) => console::remove(node, a).await,
            Op::ConsoleAccountList(_) => console::list(node).await,
            Op::ConsoleLogin(_) => crate::console::login_link(node, admin).await.map(|url| {
                done(format!(
                    "open within {}, once: {url}",
                    humantime::format_duration(node.config().console.login_ttl)
                ))
            }),
        }
    }
    .instrument(span)
    .await;
    result.unwrap_or_else(from_store)
}
