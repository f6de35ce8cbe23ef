//! Splicing one QUIC stream onto another, as opaque bytes, both directions (S1).
//!
//! The gateway uses this to carry an agent's inner TLS session onto a stream of its uplink.
//! Chunks move without copying (`read_chunk` → `write_chunk`). A finish on one side becomes a
//! finish on the other; a reset becomes a reset with the same code.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use quinn::{RecvStream, SendStream, VarInt};

/// Direction of relayed bytes, for taps and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Agent towards server.
    Up,
    /// Server towards agent.
    Down,
}

/// Observes every relayed chunk. Used by tests to prove the gateway only sees ciphertext.
pub type Tap = Arc<dyn Fn(Direction, &Bytes) + Send + Sync>;

/// Byte counters shared by every splice of one gateway.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes agent → server.
    pub up: AtomicU64,
    /// Bytes server → agent.
    pub down: AtomicU64,
}

/// Error code used when one side of a splice vanished without a reset code.
pub const SPLICE_ABORTED: u32 = 0x5e;

async fn pump(
    mut from: RecvStream,
    mut to: SendStream,
    dir: Direction,
    counters: Arc<Counters>,
    tap: Option<Tap>,
) {
    loop {
        match from.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => {
                if let Some(t) = &tap {
                    t(dir, &chunk.bytes);
                }
                let n = chunk.bytes.len() as u64;
                if to.write_chunk(chunk.bytes).await.is_err() {
                    let _ = from.stop(VarInt::from_u32(SPLICE_ABORTED));
                    return;
                }
                match dir {
                    Direction::Up => counters.up.fetch_add(n, Ordering::Relaxed),
                    Direction::Down => counters.down.fetch_add(n, Ordering::Relaxed),
                };
            }
            Ok(None) => {
                let _ = to.finish();
                return;
            }
            Err(quinn::ReadError::Reset(code)) => {
                let _ = to.reset(code);
                return;
            }
            Err(_) => {
                let _ = to.reset(VarInt::from_u32(SPLICE_ABORTED));
                return;
            }
        }
    }
}

/// Relays `a` ⇄ `b` until both directions end. `a` is the agent side.
pub async fn splice(
    a: (SendStream, RecvStream),
    b: (SendStream, RecvStream),
    counters: Arc<Counters>,
    tap: Option<Tap>,
) {
    let (a_send, a_recv) = a;
    let (b_send, b_recv) = b;
    tokio::join!(
        pump(a_recv, b_send, Direction::Up, counters.clone(), tap.clone()),
        pump(b_recv, a_send, Direction::Down, counters, tap),
    );
}
