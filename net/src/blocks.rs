//! Update blocks on a QUIC stream (D2, `outpost_proto::files`): the asking side writes one
//! `BlockRequest` and reads the blocks back in order; the serving side writes a header and the
//! bytes for each. Used by agents (from a gateway or the server), gateways (upstream over the
//! uplink, and to their agents) and the server.

use bytes::Bytes;
use outpost_proto::files::{self, BlockStatus, FilesError};
use outpost_proto::pb::v1::{BlockRequest, envelope::Msg};

/// Why reading a block failed.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The stream or connection failed.
    #[error("block stream failed: {0}")]
    Stream(String),
    /// The peer broke the block contract.
    #[error("{0}")]
    Contract(#[from] FilesError),
}

/// Writes a request for `hashes` on a fresh stream and finishes the sending side.
pub async fn request(send: &mut quinn::SendStream, hashes: &[[u8; 32]]) -> Result<(), BlockError> {
    let msg = Msg::BlockRequest(BlockRequest {
        blocks: hashes.iter().map(|h| h.to_vec()).collect(),
    });
    crate::stream::write_one_frame(send, msg)
        .await
        .map_err(|e| BlockError::Stream(e.to_string()))?;
    send.finish().map_err(|e| BlockError::Stream(e.to_string()))
}

/// Reads the next block: its status and, when ok, its bytes (not yet checked against a hash).
pub async fn read_block(recv: &mut quinn::RecvStream) -> Result<(BlockStatus, Bytes), BlockError> {
    let mut h = [0u8; files::HEADER_LEN];
    recv.read_exact(&mut h)
        .await
        .map_err(|e| BlockError::Stream(e.to_string()))?;
    let (status, len) = files::parse_header(&h)?;
    if status != BlockStatus::Ok {
        return Ok((status, Bytes::new()));
    }
    let mut data = vec![0u8; len as usize];
    recv.read_exact(&mut data)
        .await
        .map_err(|e| BlockError::Stream(e.to_string()))?;
    Ok((status, Bytes::from(data)))
}

/// Reads one `BlockRequest` from a served stream and checks it.
pub async fn read_request(
    recv: &mut quinn::RecvStream,
    max_frame: usize,
) -> Result<Vec<[u8; 32]>, String> {
    match crate::stream::read_one_frame(recv, max_frame).await {
        Ok(Msg::BlockRequest(r)) => files::check_request(&r).map_err(|e| e.to_string()),
        Ok(other) => Err(format!(
            "expected a block request, got {}",
            outpost_proto::session::msg_name(&other)
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Writes one block (or a status without bytes).
pub async fn write_block(
    send: &mut quinn::SendStream,
    status: BlockStatus,
    data: Bytes,
) -> Result<(), quinn::WriteError> {
    let len = if status == BlockStatus::Ok {
        data.len() as u32
    } else {
        0
    };
    send.write_all(&files::header(status, len)).await?;
    if status == BlockStatus::Ok {
        send.write_chunk(data).await?;
    }
    Ok(())
}
