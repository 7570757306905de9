//! Test-mode RAM digests: each side hashes its guest RAM in fixed page ranges; the
//! ranges whose digests differ locate a lost or corrupted page.

use std::fmt;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use mllm_core::memory::{PageIndex, PAGE_SIZE};

/// Threads that hash one digest at most.
const MAX_DIGEST_THREADS: usize = 8;
/// Below this many pages (64 MiB) a digest takes a few milliseconds: not
/// worth starting threads.
const PAGES_WORTH_A_THREAD: PageIndex = 16 * 1024;

static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// One page's part in a digest.
#[derive(Debug, Clone, Copy)]
pub enum PageBytes<'a> {
    /// Left out of its range's digest.
    Left,
    /// A whole page of zeros, known to be so without reading it.
    Zero,
    Data(&'a [u8]),
}

fn hash_zeros(hasher: &mut Xxh3, pages: PageIndex) {
    for _ in 0..pages {
        hasher.update(&ZERO_PAGE);
    }
}

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
        Self::compute_without(ram, pages_per_range, |_| false)
    }

    /// Like [`RamDigest::compute`], each range's digest covering only the
    /// pages `skip` leaves in: the pages a post-copy destination does not
    /// hold yet, which it must not read.
    pub fn compute_without(
        ram: &[u8],
        pages_per_range: PageIndex,
        skip: impl Fn(PageIndex) -> bool + Sync,
    ) -> Self {
        let page_count =
            PageIndex::try_from(ram.len().div_ceil(PAGE_SIZE)).expect("guest RAM fits PageIndex");
        Self::compute_pages(page_count, pages_per_range, |page| {
            if skip(page) {
                return PageBytes::Left;
            }
            let start = page as usize * PAGE_SIZE;
            PageBytes::Data(&ram[start..(start + PAGE_SIZE).min(ram.len())])
        })
    }

    /// The digest of `page_count` pages whose content `content` gives page
    /// by page (see [`PageBytes`]). Pages a caller knows to be zeros (a disk
    /// image's holes) are not read, and a range of nothing but such pages is
    /// not even hashed: its digest is that of a range of zeros, computed
    /// once. The ranges are hashed on every core: the paused VM waits for
    /// this.
    ///
    /// # Panics
    /// If `pages_per_range` is zero.
    pub fn compute_pages<'a>(
        page_count: PageIndex,
        pages_per_range: PageIndex,
        content: impl Fn(PageIndex) -> PageBytes<'a> + Sync,
    ) -> Self {
        assert!(
            pages_per_range > 0,
            "a digest range holds at least one page"
        );
        let starts: Vec<PageIndex> = (0..page_count).step_by(pages_per_range as usize).collect();
        let zero_range = std::sync::OnceLock::new();
        let digest_range = |&first_page: &PageIndex| {
            let end = first_page.saturating_add(pages_per_range).min(page_count);
            // Streaming xxh3 over a range's pages equals xxh3 of the range.
            let mut hasher = Xxh3::new();
            // Zero pages seen but not hashed yet: while the range has shown
            // nothing else, it may turn out to be all zeros.
            let mut zeros_pending: PageIndex = 0;
            let mut only_zeros = true;
            for page in first_page..end {
                match content(page) {
                    PageBytes::Left => {}
                    PageBytes::Zero if only_zeros => zeros_pending += 1,
                    PageBytes::Zero => hasher.update(&ZERO_PAGE),
                    PageBytes::Data(bytes) => {
                        only_zeros = false;
                        hash_zeros(&mut hasher, std::mem::take(&mut zeros_pending));
                        hasher.update(bytes);
                    }
                }
            }
            let digest = if only_zeros && zeros_pending == pages_per_range {
                *zero_range.get_or_init(|| {
                    let mut zeros = Xxh3::new();
                    hash_zeros(&mut zeros, pages_per_range);
                    zeros.digest128()
                })
            } else {
                hash_zeros(&mut hasher, zeros_pending);
                hasher.digest128()
            };
            PageRangeDigest {
                first_page,
                page_count: end - first_page,
                digest,
            }
        };
        let threads = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(MAX_DIGEST_THREADS);
        if threads == 1 || page_count < PAGES_WORTH_A_THREAD {
            return RamDigest {
                ranges: starts.iter().map(digest_range).collect(),
            };
        }
        let per_thread = starts.len().div_ceil(threads);
        let ranges = std::thread::scope(|scope| {
            let parts: Vec<_> = starts
                .chunks(per_thread)
                .map(|part| scope.spawn(|| part.iter().map(digest_range).collect::<Vec<_>>()))
                .collect();
            parts
                .into_iter()
                .flat_map(|part| part.join().expect("a digest thread panicked"))
                .collect()
        });
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
