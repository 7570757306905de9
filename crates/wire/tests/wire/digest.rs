use std::sync::atomic::AtomicBool;

use mllm_wire::{DigestCache, PageBytes, PageRangeDigest, RamDigest, PAGE_SIZE};

fn ram(pages: usize) -> Vec<u8> {
    (0..pages * PAGE_SIZE)
        .map(|i| u8::try_from(i / 3 % 256).unwrap())
        .collect()
}

#[test]
fn equal_ram_has_no_mismatch() {
    let source = RamDigest::compute(&ram(10), 4);
    assert_eq!(source.ranges.len(), 3);
    assert_eq!(source.ranges[2].page_count, 2);
    assert!(source
        .mismatches(&RamDigest::compute(&ram(10), 4))
        .is_empty());
}

#[test]
fn one_changed_byte_locates_its_range() {
    let mut destination = ram(10);
    destination[5 * PAGE_SIZE + 17] ^= 1;
    let mismatches =
        RamDigest::compute(&ram(10), 4).mismatches(&RamDigest::compute(&destination, 4));
    assert_eq!(mismatches.len(), 1);
    assert_eq!((mismatches[0].first_page, mismatches[0].page_count), (4, 4));
}

#[test]
fn a_different_ram_size_mismatches() {
    let mismatches = RamDigest::compute(&ram(8), 4).mismatches(&RamDigest::compute(&ram(12), 4));
    assert_eq!(mismatches.len(), 1);
    assert_eq!(mismatches[0].first_page, 8);
}

#[test]
fn skipped_pages_do_not_count_and_the_others_still_do() {
    let source = ram(10);
    let mut destination = ram(10);
    // A post-copy destination's pending page holds anything (a hole).
    destination[5 * PAGE_SIZE..6 * PAGE_SIZE].fill(0);
    let pending = |page| page == 5;
    let theirs = RamDigest::compute_without(&source, 4, pending);
    assert!(theirs
        .mismatches(&RamDigest::compute_without(&destination, 4, pending))
        .is_empty());
    destination[6 * PAGE_SIZE] ^= 1;
    let mismatches = theirs.mismatches(&RamDigest::compute_without(&destination, 4, pending));
    assert_eq!(mismatches.len(), 1);
    assert_eq!(mismatches[0].first_page, 4);
}

#[test]
fn a_large_ram_hashed_on_several_threads_digests_each_range_in_order() {
    // 100 000 pages: past the size worth threads, with a short last range.
    let ram = ram(100_000);
    let digest = RamDigest::compute(&ram, 512);
    assert_eq!(digest.ranges.len(), 196);
    for (index, range) in digest.ranges.iter().enumerate() {
        let first = index * 512;
        let end = (first + 512).min(100_000);
        assert_eq!(range.first_page as usize, first);
        assert_eq!(range.page_count as usize, end - first);
        assert_eq!(
            range.digest,
            xxhash_rust::xxh3::xxh3_128(&ram[first * PAGE_SIZE..end * PAGE_SIZE]),
            "range {index}"
        );
    }
}

#[test]
fn a_range_from_the_peer_displays_even_past_the_last_page_index() {
    let range = PageRangeDigest {
        first_page: u32::MAX,
        page_count: 2,
        digest: 0,
    };
    assert_eq!(range.to_string(), "pages 4294967295..4294967297");
}

fn pages_of<'r>(ram: &'r [u8]) -> impl Fn(u32) -> PageBytes<'r> + Sync + 'r {
    |page| {
        let start = page as usize * PAGE_SIZE;
        PageBytes::Data(&ram[start..start + PAGE_SIZE])
    }
}

/// Two passes: the first sees every range's generation, the second hashes
/// the ranges nothing wrote in between.
fn settle(cache: &DigestCache, ram: &[u8]) -> usize {
    let mut quiet = Vec::new();
    let never = AtomicBool::new(false);
    cache.hash_quiet(&mut quiet, pages_of(ram), &never);
    cache.hash_quiet(&mut quiet, pages_of(ram), &never)
}

#[test]
fn kept_digests_are_used_until_a_write_marks_their_range() {
    let before = ram(10);
    let mut ram = before.clone();
    let cache = DigestCache::new(10, 4);
    assert_eq!(settle(&cache, &ram), 3);
    // Changed behind the cache's back: the kept digest is what comes out,
    // which shows it was not hashed again (and why every writer must mark).
    ram[5 * PAGE_SIZE] ^= 1;
    let stale = RamDigest::compute_cached(&cache, pages_of(&ram));
    assert_eq!(stale, RamDigest::compute(&before, 4));
    cache.written(5..6);
    assert_eq!(
        RamDigest::compute_cached(&cache, pages_of(&ram)),
        RamDigest::compute(&ram, 4)
    );
}

#[test]
fn a_range_written_between_two_passes_waits_for_the_next_quiet_one() {
    let ram = ram(12);
    let cache = DigestCache::new(12, 4);
    let mut quiet = Vec::new();
    let never = AtomicBool::new(false);
    assert_eq!(cache.hash_quiet(&mut quiet, pages_of(&ram), &never), 0);
    cache.written(9..10);
    assert_eq!(cache.hash_quiet(&mut quiet, pages_of(&ram), &never), 2);
    assert_eq!(cache.hash_quiet(&mut quiet, pages_of(&ram), &never), 1);
    assert_eq!(cache.hash_quiet(&mut quiet, pages_of(&ram), &never), 0);
    // A write past the end marks nothing and breaks nothing.
    cache.written(12..40);
    assert_eq!(cache.hash_quiet(&mut quiet, pages_of(&ram), &never), 0);
}

#[test]
fn a_stop_ends_a_pass_before_it_hashes() {
    let ram = ram(12);
    let cache = DigestCache::new(12, 4);
    let mut quiet = Vec::new();
    let stop = AtomicBool::new(true);
    cache.hash_quiet(&mut quiet, pages_of(&ram), &stop);
    assert_eq!(cache.hash_quiet(&mut quiet, pages_of(&ram), &stop), 0);
}

#[test]
fn a_range_with_pages_left_out_is_hashed_afresh_and_not_kept() {
    let ram = ram(12);
    let cache = DigestCache::new(12, 4);
    settle(&cache, &ram);
    let pending = |page: u32| page == 6;
    let without = |page| {
        if pending(page) {
            PageBytes::Left
        } else {
            pages_of(&ram)(page)
        }
    };
    let expected = RamDigest::compute_without(&ram, 4, pending);
    assert_eq!(RamDigest::compute_cached(&cache, without), expected);
    // The kept digest of the whole range was not replaced by the partial one.
    assert_eq!(
        RamDigest::compute_cached(&cache, pages_of(&ram)),
        RamDigest::compute(&ram, 4)
    );
}

#[test]
fn cached_digests_of_a_large_ram_equal_the_direct_ones() {
    // Past the size worth threads: the cached path hashes on every core too.
    let ram = ram(100_000);
    let cache = DigestCache::new(100_000, 512);
    let direct = RamDigest::compute(&ram, 512);
    assert_eq!(RamDigest::compute_cached(&cache, pages_of(&ram)), direct);
    assert_eq!(RamDigest::compute_cached(&cache, pages_of(&ram)), direct);
}
