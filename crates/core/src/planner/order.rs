//! Ordering items by score in linear time: a counting sort over score buckets,
//! address order inside a bucket. Plans order up to millions of pages, and a
//! bucket of 1/4096 is finer than any estimator's accuracy. Without scores,
//! a spread order instead.

use crate::convert::saturating_usize;
use crate::pageset::PageSet;

const BUCKETS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Coldest,
    Hottest,
}

/// `items` (with their scores in `[0, 1]`) sorted by bucketed score, starting
/// from the coldest or the hottest; stable, so items of one bucket keep their
/// order.
pub fn by_score(items: &[(u32, f64)], first: Direction) -> Vec<u32> {
    let bucket = |score: f64| {
        let b = saturating_usize(score.clamp(0.0, 1.0) * BUCKETS as f64).min(BUCKETS - 1);
        match first {
            Direction::Coldest => b,
            Direction::Hottest => BUCKETS - 1 - b,
        }
    };
    let mut starts = vec![0usize; BUCKETS + 1];
    for &(_, score) in items {
        starts[bucket(score) + 1] += 1;
    }
    for b in 0..BUCKETS {
        starts[b + 1] += starts[b];
    }
    let mut ordered = vec![0u32; items.len()];
    for &(item, score) in items {
        let slot = &mut starts[bucket(score)];
        ordered[*slot] = item;
        *slot += 1;
    }
    ordered
}

/// `items` region by region, the regions of `region_items` in bit-reversed
/// order (0, half, a quarter, three quarters, ...), address order inside
/// one: whatever part of the order has gone is an even sample of the whole
/// address space. A pass sent before anything is known about the guest's
/// writes then spends on a hot region only its share of the time the
/// strategy needs to learn it, wherever the region lies.
pub fn spread(items: &PageSet, region_items: u32) -> Vec<u32> {
    let region_items = region_items.max(1);
    let regions = items.universe().div_ceil(region_items);
    let bits = regions.next_power_of_two().trailing_zeros();
    let mut ordered = Vec::with_capacity(saturating_usize(items.count() as f64));
    for index in 0..regions.next_power_of_two() {
        let region = match bits {
            0 => 0,
            _ => index.reverse_bits() >> (u32::BITS - bits),
        };
        if region >= regions {
            continue;
        }
        let start = region * region_items;
        let end = start.saturating_add(region_items).min(items.universe());
        ordered.extend((start..end).filter(|&item| items.contains(item)));
    }
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_visits_every_item_once_with_the_regions_interleaved() {
        let mut items = PageSet::full(10);
        items.remove(7);
        // Regions of 2: [0,1] [2,3] [4,5] [6,7] [8,9], five of them.
        assert_eq!(spread(&items, 2), vec![0, 1, 8, 9, 4, 5, 2, 3, 6]);
        assert_eq!(spread(&items, 100), items.iter().collect::<Vec<_>>());
        let order = spread(&PageSet::full(131_072), 512);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..131_072).collect::<Vec<_>>());
        // The first eighth of the order touches every eighth of the space.
        let eighths: std::collections::BTreeSet<u32> =
            order[..16_384].iter().map(|page| page / 16_384).collect();
        assert_eq!(eighths.len(), 8);
    }

    #[test]
    fn sorts_both_ways_keeping_the_order_of_ties() {
        let items = [(1, 0.9), (2, 0.1), (3, 0.5), (5, 0.5)];
        assert_eq!(by_score(&items, Direction::Coldest), vec![2, 3, 5, 1]);
        assert_eq!(by_score(&items, Direction::Hottest), vec![1, 3, 5, 2]);
    }
}
