//! Test-mode RAM digests: each side hashes its guest RAM in fixed page ranges; the
//! ranges whose digests differ locate a lost or corrupted page.

use std::fmt;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use mllm_core::memory::{PageIndex, PAGE_SIZE};

/// Digest of one page, as [`crate::PageDigests`] carries it: xxh3-64, for
/// the same reason as the ranges' xxh3-128 (bugs, not adversaries).
pub fn page_digest(page: &[u8; PAGE_SIZE]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(page)
}

/// Digest of `page_count` pages starting at `first_page`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRangeDigest {
    pub first_page: PageIndex,
    pub page_count: PageIndex,
    /// xxh3-128: the check guards against bugs, not adversaries, and must hash gigabytes
    /// while the VM is paused, so speed beats cryptographic strength here.
    pub digest: u128,
}

/// The pages a range covers, as `pages FIRST..END`: counted in `u64`, as a
/// range from the peer may claim to end past the last [`PageIndex`].
impl fmt::Display for PageRangeDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = u64::from(self.first_page) + u64::from(self.page_count);
        write!(f, "pages {}..{end}", self.first_page)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RamDigest {
    pub ranges: Vec<PageRangeDigest>,
}

impl RamDigest {
    /// Digests `ram` in ranges of `pages_per_range` pages (the last range may be shorter).
    ///
    /// # Panics
    /// If `pages_per_range` is zero, or `ram` holds more pages than a
    /// [`PageIndex`] numbers.
    pub fn compute(ram: &[u8], pages_per_range: PageIndex) -> Self {
        // Streaming xxh3 over a range's pages equals xxh3 of the range.
        Self::compute_without(ram, pages_per_range, |_| false)
    }

    /// Like [`RamDigest::compute`], each range's digest covering only the
    /// pages `skip` leaves in: the pages a post-copy destination does not
    /// hold yet, which it must not read.
    pub fn compute_without(
        ram: &[u8],
        pages_per_range: PageIndex,
        skip: impl Fn(PageIndex) -> bool,
    ) -> Self {
        assert!(
            pages_per_range > 0,
            "a digest range holds at least one page"
        );
        let pages_of = |bytes: usize| {
            PageIndex::try_from(bytes.div_ceil(PAGE_SIZE)).expect("guest RAM fits PageIndex")
        };
        let range_bytes = pages_per_range as usize * PAGE_SIZE;
        let ranges = ram
            .chunks(range_bytes)
            .enumerate()
            .map(|(range, bytes)| {
                let first_page = pages_of(range * range_bytes);
                let mut hasher = Xxh3::new();
                for (page, content) in (first_page..).zip(bytes.chunks(PAGE_SIZE)) {
                    if !skip(page) {
                        hasher.update(content);
                    }
                }
                PageRangeDigest {
                    first_page,
                    page_count: pages_of(bytes.len()),
                    digest: hasher.digest128(),
                }
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
