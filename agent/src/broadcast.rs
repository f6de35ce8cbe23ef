//! Broadcasts fanned out by the gateway (D4): on the agent's connection to its gateway, every
//! bidi stream the gateway opens carries one signed broadcast. The agent acts on it only when
//! the server's signature verifies (with the grant key it holds, L7), it has not expired, and it
//! is for this device's group; then it answers `PushAck`, else a `Refusal` saying why. A push
//! that also arrives in the session (the server's fallback) is acted on once.

use std::sync::Arc;
use std::time::Duration;

use outpost_net::stream;
use outpost_proto::broadcast::{self, BroadcastError};
use outpost_proto::error::{RefusalCode, Refused};
use outpost_proto::pb::v1::{PushAck, PushKind, envelope::Msg};
use tracing::{debug, warn};

use crate::node::Shared;

/// Largest broadcast frame accepted.
const MAX_FRAME: usize = 64 * 1024;

/// How long the gateway gets to send the broadcast once it opened a stream.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves broadcasts on a gateway connection until it closes.
pub(crate) async fn serve(shared: Arc<Shared>, conn: quinn::Connection) {
    loop {
        let Ok((send, recv)) = conn.accept_bi().await else {
            return;
        };
        // The gateway opens one stream per broadcast; QUIC's stream limit bounds them.
        tokio::spawn(one(shared.clone(), send, recv));
    }
}

async fn one(shared: Arc<Shared>, send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let msg =
        tokio::time::timeout(READ_TIMEOUT, stream::read_one_frame(&mut recv, MAX_FRAME)).await;
    let mut send = send;
    let Ok(Ok(Msg::SignedBroadcast(b))) = msg else {
        debug!("a stream from the gateway without a broadcast; ignored");
        let _ = send.reset(0u32.into());
        return;
    };
    let group = shared.group.lock().expect("group lock").clone();
    let key = shared.tls().identity.grant_public_key.clone();
    let now_ms = outpost_net::unix_now_ms();
    let answer = match broadcast::verify(&b, &key, &group, now_ms) {
        Ok(body) => {
            let push = body.push.expect("verified: has a push");
            let id = push.id.clone();
            let sync = push.kind == PushKind::SyncNow as i32;
            if crate::session::on_push(&shared, push, now_ms / 1000) && sync {
                shared.nudge.notify_one();
            }
            Msg::PushAck(PushAck { id })
        }
        Err(e) => {
            let code = match e {
                BroadcastError::NotForThisDevice(_) => {
                    debug!(error = %e, "broadcast not for this device");
                    RefusalCode::NotFound
                }
                BroadcastError::Expired => RefusalCode::InvalidArgument,
                _ => {
                    warn!(error = %e, "broadcast from the gateway refused");
                    RefusalCode::Forbidden
                }
            };
            Msg::Refusal(Refused::new(code, e.to_string()).0)
        }
    };
    let _ = stream::write_one_frame(&mut send, answer).await;
    let _ = send.finish();
}
