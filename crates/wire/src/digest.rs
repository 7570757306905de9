//! Test-mode RAM digests: each side hashes its guest RAM in fixed page ranges; the
//! ranges whose digests differ locate a lost or corrupted page.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

use crate::page_batch::PAGE_SIZE;

/// Digest of `page_count` pages starting at `first_page`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRangeDigest {
    pub first_page: u64,
    pub page_count: u64,
    /// xxh3-128: the check guards against bugs, not adversaries, and must hash gigabytes
    /// while the VM is paused, so speed beats cryptographic strength here.
    pub digest: u128,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RamDigest {
    pub ranges: Vec<PageRangeDigest>,
}

impl RamDigest {
    /// Digests `ram` in ranges of `pages_per_range` pages (the last range may be shorter).
    ///
    /// # Panics
    /// If `pages_per_range` is zero.
    pub fn compute(ram: &[u8], pages_per_range: usize) -> Self {
        assert!(
            pages_per_range > 0,
            "a digest range holds at least one page"
        );
        let ranges = ram
            .chunks(pages_per_range * PAGE_SIZE)
            .enumerate()
            .map(|(range, bytes)| PageRangeDigest {
                first_page: (range * pages_per_range) as u64,
                page_count: bytes.len().div_ceil(PAGE_SIZE) as u64,
                digest: xxh3_128(bytes),
            })
            .collect();
        RamDigest { ranges }
    }

    /// Ranges whose digests differ between `self` and `other`, compared position by
    /// position; a range present on one side only (different RAM size) differs too.
    /// Empty means the RAM images are equal.
    pub fn mismatches(&self, other: &RamDigest) -> Vec<PageRangeDigest> {
        let longest = self.ranges.len().max(other.ranges.len());
        (0..longest)
            .filter_map(|i| match (self.ranges.get(i), other.ranges.get(i)) {
                (ours, theirs) if ours == theirs => None,
                (Some(range), _) | (None, Some(range)) => Some(*range),
                (None, None) => None,
            })
            .collect()
    }
}
