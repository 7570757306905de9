//! Ordering items by score in linear time: a counting sort over score buckets,
//! address order inside a bucket. Plans order up to millions of pages, and a
//! bucket of 1/4096 is finer than any estimator's accuracy.

use crate::convert::saturating_usize;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_both_ways_keeping_the_order_of_ties() {
        let items = [(1, 0.9), (2, 0.1), (3, 0.5), (5, 0.5)];
        assert_eq!(by_score(&items, Direction::Coldest), vec![2, 3, 5, 1]);
        assert_eq!(by_score(&items, Direction::Hottest), vec![1, 3, 5, 2]);
    }
}
