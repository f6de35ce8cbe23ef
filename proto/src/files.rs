//! Update file transfer (D2) on `outpost-files/1` and on a gateway's relayed `FILES` streams:
//! blocks are asked for by SHA-256 (`BlockRequest`, at most [`MAX_BLOCKS`] per stream) and come
//! back in order, each behind a 5-byte header. Content addressing makes every hop check what
//! it received against the hash it asked for, so nobody between the server's store and the
//! agent (a gateway, its disk, a network folder) can hand out bytes the manifest does not name.

use ring::digest;

use crate::pb::v1::{BlockRequest, UpdateFile, UpdateManifest};

/// Blocks one request may name (a 1 GiB file at 1 MiB blocks).
pub const MAX_BLOCKS: usize = 1024;

/// Length of a block header.
pub const HEADER_LEN: usize = 5;

/// Largest block accepted (the manifest's block size is at most this).
pub const MAX_BLOCK_LEN: u32 = 16 << 20;

/// What a block header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockStatus {
    /// The block follows.
    Ok = 0,
    /// No such block here or upstream (not in any revision).
    Unknown = 1,
    /// Not reachable now (the gateway's uplink is down); ask again later.
    Unavailable = 2,
    /// Upstream sent bytes that do not match the hash, again on a second try.
    Corrupt = 3,
}

/// A header or request that breaks the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilesError {
    /// Unknown status byte.
    #[error("block header with unknown status {0}")]
    BadStatus(u8),
    /// Length out of range.
    #[error("block of {0} bytes is larger than the largest block ({MAX_BLOCK_LEN} bytes)")]
    TooLong(u32),
    /// A non-ok header carried bytes.
    #[error("a block header without data says {0} bytes follow")]
    LengthWithoutData(u32),
    /// Empty or too many blocks asked for.
    #[error("a block request must name 1 to {MAX_BLOCKS} blocks, not {0}")]
    BadCount(usize),
    /// A hash is not 32 bytes.
    #[error("block {0} of the request is not a SHA-256 hash (32 bytes)")]
    BadHash(usize),
}

/// Encodes a block header.
pub fn header(status: BlockStatus, len: u32) -> [u8; HEADER_LEN] {
    let l = len.to_be_bytes();
    [status as u8, l[0], l[1], l[2], l[3]]
}

/// Decodes a block header.
pub fn parse_header(h: &[u8; HEADER_LEN]) -> Result<(BlockStatus, u32), FilesError> {
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    let status = match h[0] {
        0 => BlockStatus::Ok,
        1 => BlockStatus::Unknown,
        2 => BlockStatus::Unavailable,
        3 => BlockStatus::Corrupt,
        s => return Err(FilesError::BadStatus(s)),
    };
    if status == BlockStatus::Ok && len > MAX_BLOCK_LEN {
        return Err(FilesError::TooLong(len));
    }
    if status != BlockStatus::Ok && len != 0 {
        return Err(FilesError::LengthWithoutData(len));
    }
    Ok((status, len))
}

/// Checks a request and returns its hashes.
pub fn check_request(r: &BlockRequest) -> Result<Vec<[u8; 32]>, FilesError> {
    if r.blocks.is_empty() || r.blocks.len() > MAX_BLOCKS {
        return Err(FilesError::BadCount(r.blocks.len()));
    }
    r.blocks
        .iter()
        .enumerate()
        .map(|(i, b)| <[u8; 32]>::try_from(b.as_slice()).map_err(|_| FilesError::BadHash(i)))
        .collect()
}

/// SHA-256 of some bytes.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Whether a block's bytes are the ones its hash names.
pub fn block_matches(expected: &[u8], data: &[u8]) -> bool {
    expected.len() == 32 && sha256(data) == expected
}

/// The files of a manifest a device with these components needs: files at the top (shared by
/// every component) and those of the listed components; every file when none is listed.
pub fn wanted<'m>(m: &'m UpdateManifest, components: &[String]) -> Vec<&'m UpdateFile> {
    m.files
        .iter()
        .filter(|f| {
            components.is_empty() || f.component.is_empty() || components.contains(&f.component)
        })
        .collect()
}

/// Expected length of block `index` of a file.
pub fn block_len(size: u64, block_size: u32, index: u64) -> u64 {
    let start = index * u64::from(block_size);
    size.saturating_sub(start).min(u64::from(block_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn d2_headers_round_trip_and_malformed_ones_are_named() {
        for (s, l) in [(BlockStatus::Ok, 1 << 20), (BlockStatus::Unknown, 0)] {
            assert_eq!(parse_header(&header(s, l)).unwrap(), (s, l));
        }
        assert_eq!(
            parse_header(&[9, 0, 0, 0, 0]).unwrap_err(),
            FilesError::BadStatus(9)
        );
        assert!(matches!(
            parse_header(&header(BlockStatus::Ok, MAX_BLOCK_LEN + 1)),
            Err(FilesError::TooLong(_))
        ));
        assert!(matches!(
            parse_header(&header(BlockStatus::Corrupt, 7)),
            Err(FilesError::LengthWithoutData(7))
        ));
    }

    #[test]
    fn d2_requests_are_bounded_and_hold_hashes() {
        let ok = BlockRequest {
            blocks: vec![vec![1; 32], vec![2; 32]],
        };
        assert_eq!(check_request(&ok).unwrap().len(), 2);
        let empty = BlockRequest { blocks: vec![] };
        assert_eq!(check_request(&empty).unwrap_err(), FilesError::BadCount(0));
        let many = BlockRequest {
            blocks: vec![vec![0; 32]; MAX_BLOCKS + 1],
        };
        assert!(check_request(&many).is_err());
        let short = BlockRequest {
            blocks: vec![vec![0; 32], vec![0; 31]],
        };
        assert_eq!(check_request(&short).unwrap_err(), FilesError::BadHash(1));
    }

    #[test]
    fn d2_a_block_matches_only_its_own_hash() {
        let b = vec![7u8; 1000];
        let h = sha256(&b);
        assert!(block_matches(&h, &b));
        let mut c = b.clone();
        c[999] ^= 1;
        assert!(!block_matches(&h, &c));
        assert!(!block_matches(&h[..31], &b));
    }

    #[test]
    fn d2_components_pick_files_and_block_lengths_cover_the_size() {
        let f = |name: &str, component: &str| UpdateFile {
            name: name.into(),
            component: component.into(),
            ..Default::default()
        };
        let m = UpdateManifest {
            files: vec![f("readme", ""), f("av/x", "av"), f("fw/y", "fw")],
            ..Default::default()
        };
        let names = |c: &[String]| -> Vec<String> {
            wanted(&m, c).iter().map(|f| f.name.clone()).collect()
        };
        assert_eq!(names(&[]), ["readme", "av/x", "fw/y"]);
        assert_eq!(names(&["av".into()]), ["readme", "av/x"]);
        assert_eq!(block_len(2_500_000, 1 << 20, 0), 1 << 20);
        assert_eq!(block_len(2_500_000, 1 << 20, 2), 2_500_000 - 2 * (1 << 20));
        assert_eq!(block_len(2_500_000, 1 << 20, 3), 0);
    }
}
