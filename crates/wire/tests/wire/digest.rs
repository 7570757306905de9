use mllm_wire::{PageRangeDigest, RamDigest, PAGE_SIZE};

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
