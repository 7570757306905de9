//! Guest pages, counted from the start of guest RAM.

use std::ops::Range;

/// Tracking granularity: the x86-64 and default arm64 base page.
pub const PAGE_SIZE: u64 = 4096;

/// Pages `start..end` of guest RAM (page indices relative to the start of
/// guest RAM, `end` exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageRange {
    pub start: u64,
    pub end: u64,
}

impl PageRange {
    pub fn new(start: u64, end: u64) -> PageRange {
        debug_assert!(start <= end, "page range {start}..{end} is reversed");
        PageRange { start, end }
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn pages(&self) -> Range<u64> {
        self.start..self.end
    }
}

/// Appends `next` (which must not start before the last range ends),
/// extending the last range instead when they touch: the kernel may cut one
/// run of written pages across two calls.
pub(crate) fn push_merged(ranges: &mut Vec<PageRange>, next: PageRange) {
    match ranges.last_mut() {
        Some(last) if last.end == next.start => last.end = next.end,
        _ => ranges.push(next),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touching_ranges_merge_and_gaps_stay() {
        let mut ranges = Vec::new();
        for (start, end) in [(0, 2), (2, 3), (5, 6), (6, 9), (10, 11)] {
            push_merged(&mut ranges, PageRange::new(start, end));
        }
        let expected = [
            PageRange::new(0, 3),
            PageRange::new(5, 9),
            PageRange::new(10, 11),
        ];
        assert_eq!(ranges, expected);
        assert_eq!(ranges.iter().map(PageRange::len).sum::<u64>(), 8);
    }
}
