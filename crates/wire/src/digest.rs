//! Test-mode RAM digests: each side hashes its guest RAM in fixed page ranges; the
//! ranges whose digests differ locate a lost or corrupted page.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

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
        let hasher = RangeHasher::new(page_count, pages_per_range, &content);
        RamDigest {
            ranges: on_every_core(&starts, page_count, |&first_page| {
                hasher.digest(first_page).range
            }),
        }
    }

    /// Like [`RamDigest::compute_pages`] over the pages `cache` covers, a
    /// range's digest taken from `cache` if nothing wrote the range since it
    /// was hashed and none of its pages is left out; the ranges hashed here
    /// are kept in `cache` for the next time.
    pub fn compute_cached<'a>(
        cache: &DigestCache,
        content: impl Fn(PageIndex) -> PageBytes<'a> + Sync,
    ) -> Self {
        let hasher = RangeHasher::new(cache.page_count, cache.pages_per_range, &content);
        let starts: Vec<PageIndex> = (0..cache.page_count)
            .step_by(cache.pages_per_range as usize)
            .collect();
        RamDigest {
            ranges: on_every_core(&starts, cache.page_count, |&first_page| {
                let index = cache.range_of(first_page);
                // Read before the content: a write that lands meanwhile
                // bumps it past what is stored with the digest.
                let generation = cache.generation(index);
                if let Some(digest) = cache.fresh(index, generation) {
                    if !hasher.leaves_out_any(first_page) {
                        return hasher.range(first_page, digest);
                    }
                }
                let hashed = hasher.digest(first_page);
                if !hashed.left_out_any {
                    cache.store(index, generation, hashed.range.digest);
                }
                hashed.range
            }),
        }
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

/// Hashes ranges of pages given page by page.
struct RangeHasher<'c, F> {
    page_count: PageIndex,
    pages_per_range: PageIndex,
    content: &'c F,
    /// The digest of a whole range of zeros, computed once if needed.
    zero_range: std::sync::OnceLock<u128>,
}

struct Hashed {
    range: PageRangeDigest,
    /// A page was [`PageBytes::Left`] out: the digest holds only for this
    /// choice of pages.
    left_out_any: bool,
}

impl<'a, 'c, F: Fn(PageIndex) -> PageBytes<'a>> RangeHasher<'c, F> {
    fn new(page_count: PageIndex, pages_per_range: PageIndex, content: &'c F) -> Self {
        RangeHasher {
            page_count,
            pages_per_range,
            content,
            zero_range: std::sync::OnceLock::new(),
        }
    }

    fn end(&self, first_page: PageIndex) -> PageIndex {
        first_page
            .saturating_add(self.pages_per_range)
            .min(self.page_count)
    }

    fn range(&self, first_page: PageIndex, digest: u128) -> PageRangeDigest {
        PageRangeDigest {
            first_page,
            page_count: self.end(first_page) - first_page,
            digest,
        }
    }

    fn leaves_out_any(&self, first_page: PageIndex) -> bool {
        (first_page..self.end(first_page))
            .any(|page| matches!((self.content)(page), PageBytes::Left))
    }

    fn digest(&self, first_page: PageIndex) -> Hashed {
        // Streaming xxh3 over a range's pages equals xxh3 of the range.
        let mut hasher = Xxh3::new();
        // Zero pages seen but not hashed yet: while the range has shown
        // nothing else, it may turn out to be all zeros.
        let mut zeros_pending: PageIndex = 0;
        let mut only_zeros = true;
        let mut left_out_any = false;
        for page in first_page..self.end(first_page) {
            match (self.content)(page) {
                PageBytes::Left => left_out_any = true,
                PageBytes::Zero if only_zeros => zeros_pending += 1,
                PageBytes::Zero => hasher.update(&ZERO_PAGE),
                PageBytes::Data(bytes) => {
                    only_zeros = false;
                    hash_zeros(&mut hasher, std::mem::take(&mut zeros_pending));
                    hasher.update(bytes);
                }
            }
        }
        let digest = if only_zeros && zeros_pending == self.pages_per_range {
            *self.zero_range.get_or_init(|| {
                let mut zeros = Xxh3::new();
                hash_zeros(&mut zeros, self.pages_per_range);
                zeros.digest128()
            })
        } else {
            hash_zeros(&mut hasher, zeros_pending);
            hasher.digest128()
        };
        Hashed {
            range: self.range(first_page, digest),
            left_out_any,
        }
    }
}

/// `digest` of every one of `starts`, in order, on every core when there
/// are enough of the `page_count` pages to be worth threads: the paused VM
/// waits for this.
fn on_every_core(
    starts: &[PageIndex],
    page_count: PageIndex,
    digest: impl Fn(&PageIndex) -> PageRangeDigest + Sync,
) -> Vec<PageRangeDigest> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_DIGEST_THREADS);
    if threads == 1 || page_count < PAGES_WORTH_A_THREAD {
        return starts.iter().map(digest).collect();
    }
    let per_thread = starts.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = starts
            .chunks(per_thread)
            .map(|part| scope.spawn(|| part.iter().map(&digest).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|part| part.join().expect("a digest thread panicked"))
            .collect()
    })
}

/// Test mode: range digests kept from one hashing to the next, so that the
/// digest the paused VM waits for at the switch rehashes only the ranges
/// written since they were last hashed (see [`DigestCache::hash_quiet`]).
///
/// Every writer of the pages calls [`DigestCache::written`] *after* each
/// write, and a hasher reads a range's generation *before* reading its
/// content: a write that races the hashing then leaves the stored digest
/// behind the range's generation, and it is not used. A write that bypasses
/// `written` would go unseen, which is why the owners of the pages (guest
/// RAM at a destination, a disk image) call it on every write path.
#[derive(Debug)]
pub struct DigestCache {
    page_count: PageIndex,
    pages_per_range: PageIndex,
    /// Per range, bumped by every write into it.
    generations: Box<[AtomicU64]>,
    digests: Mutex<Vec<Option<CachedRange>>>,
}

#[derive(Debug, Clone, Copy)]
struct CachedRange {
    /// The range's generation read before its content was.
    generation: u64,
    digest: u128,
}

impl DigestCache {
    /// # Panics
    /// If `pages_per_range` is zero.
    pub fn new(page_count: PageIndex, pages_per_range: PageIndex) -> Self {
        assert!(
            pages_per_range > 0,
            "a digest range holds at least one page"
        );
        let ranges = page_count.div_ceil(pages_per_range) as usize;
        DigestCache {
            page_count,
            pages_per_range,
            generations: (0..ranges).map(|_| AtomicU64::new(0)).collect(),
            digests: Mutex::new(vec![None; ranges]),
        }
    }

    /// Pages `pages` were written (or zeroed, or trimmed): the digests of
    /// their ranges are stale. Pages past the end are ignored.
    pub fn written(&self, pages: Range<PageIndex>) {
        let end = pages.end.min(self.page_count);
        if pages.start >= end {
            return;
        }
        for index in self.range_of(pages.start)..=self.range_of(end - 1) {
            self.generations[index].fetch_add(1, Ordering::Release);
        }
    }

    /// Hashes the ranges whose digests are stale but that nothing wrote
    /// since the previous call, which `quiet` remembers the generations of:
    /// a range still being filled or rewritten is left until it settles,
    /// so each is hashed about once. Returns the ranges hashed; stops early
    /// once `stop` is set.
    pub fn hash_quiet<'a>(
        &self,
        quiet: &mut Vec<u64>,
        content: impl Fn(PageIndex) -> PageBytes<'a>,
        stop: &AtomicBool,
    ) -> usize {
        quiet.resize(self.generations.len(), u64::MAX);
        let hasher = RangeHasher::new(self.page_count, self.pages_per_range, &content);
        let mut hashed = 0;
        let starts = (0..self.page_count).step_by(self.pages_per_range as usize);
        for (index, (first_page, seen)) in starts.zip(quiet.iter_mut()).enumerate() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let generation = self.generation(index);
            let settled = std::mem::replace(seen, generation) == generation;
            if !settled || self.fresh(index, generation).is_some() {
                continue;
            }
            let range = hasher.digest(first_page);
            if !range.left_out_any {
                self.store(index, generation, range.range.digest);
                hashed += 1;
            }
        }
        hashed
    }

    fn range_of(&self, page: PageIndex) -> usize {
        (page / self.pages_per_range) as usize
    }

    fn generation(&self, index: usize) -> u64 {
        self.generations[index].load(Ordering::Acquire)
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, Vec<Option<CachedRange>>> {
        // Plain values, whole after any panic.
        self.digests.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fresh(&self, index: usize, generation: u64) -> Option<u128> {
        self.cached()[index]
            .filter(|cached| cached.generation == generation)
            .map(|cached| cached.digest)
    }

    fn store(&self, index: usize, generation: u64, digest: u128) {
        self.cached()[index] = Some(CachedRange { generation, digest });
    }
}
