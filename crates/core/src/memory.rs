//! Guest memory in pages: the one page size and page numbering every crate
//! uses (tracker, wire, agent, simulator), and sorted runs of pages.
//!
//! A page index is a `u32`: 2^32 pages of 4 KiB bound a guest at 16 TiB of
//! RAM, far beyond what crosses a data-center link in one migration, and it
//! halves every per-page table next to `u64`. Code that turns a byte length
//! into pages checks that bound ([`pages_in`]).

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// Tracking and transfer granularity: the x86-64 and default arm64 base page.
pub const PAGE_SIZE: usize = PAGE_SIZE_U32 as usize;

/// [`PAGE_SIZE`] as the `u32` that trace headers and handshakes carry.
pub const PAGE_SIZE_U32: u32 = 4096;

/// A page number, counted from the start of guest RAM.
pub type PageIndex = u32;

/// The number of whole pages in `bytes`, if it is a positive multiple of
/// [`PAGE_SIZE`] that [`PageIndex`] can number.
pub fn pages_in(bytes: u64) -> Option<PageIndex> {
    let page = PAGE_SIZE as u64;
    if bytes == 0 || !bytes.is_multiple_of(page) {
        return None;
    }
    PageIndex::try_from(bytes / page).ok()
}

/// Pages `start..end` of guest RAM (`end` exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PageRange {
    pub start: PageIndex,
    pub end: PageIndex,
}

impl PageRange {
    pub fn new(start: PageIndex, end: PageIndex) -> PageRange {
        debug_assert!(start <= end, "page range {start}..{end} is reversed");
        PageRange { start, end }
    }

    /// Pages in the range; a `u64` so sums over many ranges cannot overflow.
    pub fn len(&self) -> u64 {
        u64::from(self.end - self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn pages(&self) -> Range<PageIndex> {
        self.start..self.end
    }
}

/// Pages in all of `ranges`.
pub fn total_pages(ranges: &[PageRange]) -> u64 {
    ranges.iter().map(PageRange::len).sum()
}

/// Appends `next`, which must not start before the last range ends,
/// extending the last range instead when they touch: a run of pages reported
/// in two pieces stays one range.
pub fn push_merged(ranges: &mut Vec<PageRange>, next: PageRange) {
    debug_assert!(
        ranges.last().is_none_or(|last| last.end <= next.start),
        "ranges pushed out of order"
    );
    match ranges.last_mut() {
        Some(last) if last.end == next.start => last.end = next.end,
        _ => ranges.push(next),
    }
}

/// Union of two sorted lists of disjoint ranges: sorted, disjoint, and
/// touching or overlapping ranges merged.
pub fn union(a: &[PageRange], b: &[PageRange]) -> Vec<PageRange> {
    let mut all: Vec<PageRange> = a.iter().chain(b).copied().collect();
    all.sort_by_key(|range| range.start);
    let mut merged: Vec<PageRange> = Vec::with_capacity(all.len());
    for range in all {
        match merged.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(pairs: &[(u32, u32)]) -> Vec<PageRange> {
        pairs.iter().map(|&(s, e)| PageRange::new(s, e)).collect()
    }

    #[test]
    fn touching_ranges_merge_and_gaps_stay() {
        let mut merged = Vec::new();
        for range in ranges(&[(0, 2), (2, 3), (5, 6), (6, 9), (10, 11)]) {
            push_merged(&mut merged, range);
        }
        assert_eq!(merged, ranges(&[(0, 3), (5, 9), (10, 11)]));
        assert_eq!(total_pages(&merged), 8);
    }

    #[test]
    fn union_covers_each_page_once() {
        let a = ranges(&[(0, 4), (10, 12)]);
        let b = ranges(&[(2, 6), (12, 13), (20, 21)]);
        assert_eq!(union(&a, &b), ranges(&[(0, 6), (10, 13), (20, 21)]));
        assert!(union(&[], &[]).is_empty());
    }

    #[test]
    fn page_counts_are_checked() {
        assert_eq!(pages_in(8192), Some(2));
        assert_eq!(pages_in(0), None);
        assert_eq!(pages_in(4097), None);
        assert_eq!(pages_in((u64::from(u32::MAX) + 1) * 4096), None);
    }
}
