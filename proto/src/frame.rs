//! Framing: a 1-byte frame type, a 4-byte big-endian payload length, the payload.
//!
//! The length is checked against the codec's maximum before any buffer is reserved for the
//! payload, so a peer cannot make us allocate more than the maximum (T9). Frame type
//! [`FRAME_ENVELOPE`] carries one protobuf `Envelope`; other types are skipped so later
//! protocol versions can add frame kinds without breaking this one. An `Envelope` whose
//! variant this build does not know is skipped too.
//!
//! Decoding distinguishes "need more bytes" (`Ok(None)`), "invalid" (`Err`, close that peer)
//! and a clean end of stream (`Ok(None)` from `decode_eof` with an empty buffer).

use bytes::{Buf, BufMut, BytesMut};
use prost::Message;
use tokio_util::codec::{Decoder, Encoder};

use crate::pb::v1::{Envelope, envelope::Msg};

/// Frame type of an `Envelope`.
pub const FRAME_ENVELOPE: u8 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 5;
/// Default largest payload accepted: 1 MiB.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;
/// Most buffer a decoder reserves ahead of the bytes that arrived. A peer announcing a large
/// frame gets memory as it sends it, not when it announces it (T9): a header alone pins at
/// most this much (and within the codec's initial 8 KiB buffer, nothing more).
pub const RESERVE_STEP: usize = 4 << 10;

/// A decoded frame (only envelopes are surfaced; unknown frame types are skipped).
pub type Frame = Msg;

/// Why a byte stream could not be decoded into frames.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The peer announced a frame larger than allowed; nothing was allocated for it.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Announced payload length.
        len: usize,
        /// Maximum allowed.
        max: usize,
    },
    /// The payload is not a valid protobuf `Envelope`.
    #[error("malformed message: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({have} of {need} bytes)")]
    Truncated {
        /// Bytes received.
        have: usize,
        /// Bytes the frame needed.
        need: usize,
    },
    /// We were asked to send a frame above the maximum (a local bug or an oversized request).
    #[error("refusing to send a frame of {len} bytes (maximum {max})")]
    OutgoingTooLarge {
        /// Encoded length.
        len: usize,
        /// Maximum allowed.
        max: usize,
    },
    /// A frame of another type where only an envelope may stand (the single frame before a
    /// relayed stream's opaque bytes).
    #[error("expected an envelope frame, got frame type {0}")]
    UnexpectedType(u8),
    /// An envelope without a message this build knows, where one is required.
    #[error("empty envelope (a message this build does not know)")]
    Empty,
    /// The underlying stream failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// Who is at fault, for logs and refusal codes.
    pub fn fault(&self) -> crate::error::Fault {
        use crate::error::Fault;
        match self {
            FrameError::TooLarge { .. }
            | FrameError::Malformed(_)
            | FrameError::Truncated { .. }
            | FrameError::UnexpectedType(_)
            | FrameError::Empty => Fault::PeerMisbehaved,
            FrameError::OutgoingTooLarge { .. } => Fault::LocalMisuse,
            FrameError::Io(_) => Fault::Io,
        }
    }

    /// The refusal to send the peer for this error: `None` when the stream itself failed
    /// (there is nobody to tell) or the fault is ours.
    pub fn to_refusal(&self) -> Option<crate::error::Refused> {
        use crate::error::{Fault, RefusalCode, Refused};
        let code = match self {
            FrameError::TooLarge { .. } => RefusalCode::FrameTooLarge,
            _ if self.fault() == Fault::PeerMisbehaved => RefusalCode::Malformed,
            _ => return None,
        };
        Some(Refused::new(code, self.to_string()))
    }
}

/// tokio-util codec for Outpost frames.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_frame: usize,
    skipped: u64,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME)
    }
}

impl FrameCodec {
    /// A codec accepting payloads up to `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        FrameCodec {
            max_frame,
            skipped: 0,
        }
    }

    /// Frames skipped because their type or envelope variant is unknown.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

impl Decoder for FrameCodec {
    type Item = Msg;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Msg>, FrameError> {
        loop {
            if src.len() < HEADER_LEN {
                return Ok(None);
            }
            let kind = src[0];
            let len = u32::from_be_bytes([src[1], src[2], src[3], src[4]]) as usize;
            if len > self.max_frame {
                return Err(FrameError::TooLarge {
                    len,
                    max: self.max_frame,
                });
            }
            if src.len() < HEADER_LEN + len {
                // Room for what is still missing, a step at a time: the buffer grows as the
                // bytes arrive, never on the strength of a header alone.
                src.reserve((HEADER_LEN + len - src.len()).min(RESERVE_STEP));
                return Ok(None);
            }
            src.advance(HEADER_LEN);
            let payload = src.split_to(len);
            if kind != FRAME_ENVELOPE {
                self.skipped += 1;
                continue;
            }
            match Envelope::decode(payload)?.msg {
                Some(msg) => return Ok(Some(msg)),
                None => self.skipped += 1,
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Msg>, FrameError> {
        match self.decode(src)? {
            Some(msg) => Ok(Some(msg)),
            None if src.is_empty() => Ok(None),
            None => {
                let need = if src.len() >= HEADER_LEN {
                    HEADER_LEN + u32::from_be_bytes([src[1], src[2], src[3], src[4]]) as usize
                } else {
                    HEADER_LEN
                };
                Err(FrameError::Truncated {
                    have: src.len(),
                    need,
                })
            }
        }
    }
}

impl Encoder<Msg> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, msg: Msg, dst: &mut BytesMut) -> Result<(), FrameError> {
        let env = Envelope { msg: Some(msg) };
        let len = env.encoded_len();
        if len > self.max_frame {
            return Err(FrameError::OutgoingTooLarge {
                len,
                max: self.max_frame,
            });
        }
        dst.reserve(HEADER_LEN + len);
        dst.put_u8(FRAME_ENVELOPE);
        dst.put_u32(len as u32);
        env.encode(dst).expect("reserved enough");
        Ok(())
    }
}

/// Encodes one message as a complete frame (for tests and raw writers).
pub fn encode_frame(msg: Msg) -> Vec<u8> {
    let mut buf = BytesMut::new();
    FrameCodec::new(usize::MAX)
        .encode(msg, &mut buf)
        .expect("unbounded codec");
    buf.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t9_a_header_alone_reserves_at_most_one_step() {
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
        let mut buf = BytesMut::new();
        buf.put_u8(FRAME_ENVELOPE);
        buf.put_u32(DEFAULT_MAX_FRAME as u32);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(
            buf.capacity() <= 2 * (HEADER_LEN + RESERVE_STEP),
            "reserved {} bytes for a header",
            buf.capacity()
        );
        // The frame still decodes once it all arrived, in pieces.
        let env = Envelope {
            msg: Some(Msg::PushAck(crate::pb::v1::PushAck {
                id: "x".repeat(100_000),
            })),
        };
        let body = env.encode_to_vec();
        let mut buf = BytesMut::new();
        buf.put_u8(FRAME_ENVELOPE);
        buf.put_u32(body.len() as u32);
        let mut got = None;
        for chunk in body.chunks(7_000) {
            assert!(got.is_none());
            buf.extend_from_slice(chunk);
            got = codec.decode(&mut buf).unwrap();
        }
        assert!(matches!(got, Some(Msg::PushAck(a)) if a.id.len() == 100_000));
    }
    use crate::pb::v1::{Hello, PushAck};

    fn hello() -> Msg {
        Msg::Hello(Hello {
            min_version: 1,
            max_version: 1,
            ..Default::default()
        })
    }

    #[test]
    fn round_trip_byte_by_byte() {
        let bytes = [
            encode_frame(hello()),
            encode_frame(Msg::PushAck(PushAck { id: "x".into() })),
        ]
        .concat();
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        let mut out = vec![];
        for b in bytes {
            buf.put_u8(b);
            while let Some(m) = codec.decode(&mut buf).unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out, vec![hello(), Msg::PushAck(PushAck { id: "x".into() })]);
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
    }

    #[test]
    fn t9_oversized_frame_rejected_before_allocation() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&[FRAME_ENVELOPE, 0xff, 0xff, 0xff, 0xff][..]);
        let cap_before = buf.capacity();
        match codec.decode(&mut buf) {
            Err(FrameError::TooLarge { len, max }) => {
                assert_eq!(len, u32::MAX as usize);
                assert_eq!(max, 1024);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(
            buf.capacity(),
            cap_before,
            "nothing reserved for the payload"
        );
    }

    #[test]
    fn unknown_frame_types_and_variants_are_skipped() {
        let mut bytes = vec![9u8, 0, 0, 0, 3, 1, 2, 3];
        // An envelope carrying only an unknown field number (1000, varint 7).
        let unknown = {
            let mut v = vec![];
            prost::encoding::encode_key(1000, prost::encoding::WireType::Varint, &mut v);
            prost::encoding::encode_varint(7, &mut v);
            v
        };
        bytes.push(FRAME_ENVELOPE);
        bytes.extend((unknown.len() as u32).to_be_bytes());
        bytes.extend(&unknown);
        bytes.extend(encode_frame(hello()));
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(hello()));
        assert_eq!(codec.skipped(), 2);
    }

    #[test]
    fn garbage_is_malformed_and_truncation_is_reported() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(&[FRAME_ENVELOPE, 0, 0, 0, 2, 0xff, 0xff][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::Malformed(_))
        ));
        let mut buf = BytesMut::from(&[FRAME_ENVELOPE, 0, 0, 0, 9, 1][..]);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(FrameError::Truncated { have: 6, need: 14 })
        ));
    }
}
