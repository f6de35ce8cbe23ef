//! Framed message streams over QUIC bidi streams and over inner TLS.

use futures_util::{SinkExt, StreamExt};
use outpost_proto::frame::{FRAME_ENVELOPE, FrameCodec, FrameError, HEADER_LEN, RESERVE_STEP};
use outpost_proto::pb::v1::{Envelope, envelope::Msg};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite};

/// A QUIC bidi stream as one `AsyncRead + AsyncWrite`.
pub type BiStream = tokio::io::Join<quinn::RecvStream, quinn::SendStream>;

/// Frames over any byte stream.
pub type Framed<S> = tokio_util::codec::Framed<S, FrameCodec>;

/// Joins the halves of a QUIC bidi stream.
pub fn bi(send: quinn::SendStream, recv: quinn::RecvStream) -> BiStream {
    tokio::io::join(recv, send)
}

/// Wraps a byte stream in the Outpost frame codec.
pub fn framed<S: AsyncRead + AsyncWrite>(s: S, max_frame: usize) -> Framed<S> {
    tokio_util::codec::Framed::new(s, FrameCodec::new(max_frame))
}

/// Sends one message.
pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    f: &mut Framed<S>,
    msg: Msg,
) -> Result<(), FrameError> {
    f.send(msg).await
}

/// Receives one message; `Ok(None)` at a clean end of stream.
pub async fn recv<S: AsyncRead + AsyncWrite + Unpin>(
    f: &mut Framed<S>,
) -> Result<Option<Msg>, FrameError> {
    f.next().await.transpose()
}

/// Writes every message a state machine has queued, then flushes once.
pub async fn send_queued<S, M>(f: &mut Framed<S>, sm: &mut M) -> Result<(), FrameError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    M: outpost_proto::control::Outgoing,
{
    let mut wrote = false;
    while let Some(m) = sm.poll_transmit() {
        f.feed(m).await?;
        wrote = true;
    }
    if wrote {
        f.flush().await?;
    }
    Ok(())
}

/// Reads exactly one frame from a raw QUIC stream without reading past it (the bytes after a
/// `RelayOpen` belong to the inner TLS session).
pub async fn read_one_frame(recv: &mut quinn::RecvStream, max: usize) -> Result<Msg, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    read_exact(recv, &mut header).await?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    // Grown as the bytes arrive (T9): a header alone pins nothing.
    let mut payload = Vec::with_capacity(len.min(RESERVE_STEP));
    let mut chunk = [0u8; 4096];
    while payload.len() < len {
        let want = (len - payload.len()).min(chunk.len());
        match recv.read(&mut chunk[..want]).await {
            Ok(Some(n)) => payload.extend_from_slice(&chunk[..n]),
            Ok(None) => {
                return Err(FrameError::Truncated {
                    have: HEADER_LEN + payload.len(),
                    need: HEADER_LEN + len,
                });
            }
            Err(e) => return Err(FrameError::Io(e.into())),
        }
    }
    if header[0] != FRAME_ENVELOPE {
        return Err(FrameError::UnexpectedType(header[0]));
    }
    Envelope::decode(payload.as_slice())?
        .msg
        .ok_or(FrameError::Empty)
}

async fn read_exact(recv: &mut quinn::RecvStream, buf: &mut [u8]) -> Result<(), FrameError> {
    recv.read_exact(buf).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(n) => FrameError::Truncated {
            have: n,
            need: buf.len(),
        },
        quinn::ReadExactError::ReadError(e) => FrameError::Io(e.into()),
    })
}

/// Writes one frame to a raw QUIC stream.
pub async fn write_one_frame(send: &mut quinn::SendStream, msg: Msg) -> Result<(), FrameError> {
    let bytes = outpost_proto::frame::encode_frame(msg);
    send.write_all(&bytes)
        .await
        .map_err(|e| FrameError::Io(e.into()))
}
