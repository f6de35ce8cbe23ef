//! Protocol version negotiation (S2). Each side announces the inclusive range of protocol
//! major versions it speaks; the highest common one wins. No common version is a clear
//! refusal naming both ranges.

use std::ops::RangeInclusive;

/// Newest protocol major version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Oldest protocol major version this build speaks.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// The range this build speaks.
pub fn supported() -> RangeInclusive<u32> {
    MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION
}

/// No version in common.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unsupported protocol version: peer speaks {peer_min}..={peer_max}, this side speaks \
     {ours_min}..={ours_max}; upgrade the older side"
)]
pub struct VersionMismatch {
    /// Peer's oldest version.
    pub peer_min: u32,
    /// Peer's newest version.
    pub peer_max: u32,
    /// Our oldest version.
    pub ours_min: u32,
    /// Our newest version.
    pub ours_max: u32,
}

/// The highest version both ranges contain.
pub fn negotiate(
    ours: RangeInclusive<u32>,
    peer_min: u32,
    peer_max: u32,
) -> Result<u32, VersionMismatch> {
    let hi = (*ours.end()).min(peer_max);
    let lo = (*ours.start()).max(peer_min);
    if peer_min <= peer_max && lo <= hi {
        Ok(hi)
    } else {
        Err(VersionMismatch {
            peer_min,
            peer_max,
            ours_min: *ours.start(),
            ours_max: *ours.end(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s2_highest_common_version_wins() {
        assert_eq!(negotiate(1..=3, 2, 5), Ok(3));
        assert_eq!(negotiate(1..=1, 1, 1), Ok(1));
    }

    #[test]
    fn s2_no_common_version_names_both_ranges() {
        let err = negotiate(1..=1, 2, 4).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("peer speaks 2..=4"), "{text}");
        assert!(text.contains("this side speaks 1..=1"), "{text}");
        assert!(negotiate(1..=2, 3, 1).is_err(), "inverted range is refused");
    }
}
