//! A fixed-universe bitset of page (or block) numbers.
//!
//! Every per-item state of the estimators, planner and simulator is a set over
//! `0..universe`; a bitset keeps a 1 GiB guest (262 144 pages) at 32 KiB per set
//! and makes union, difference and counting word-at-a-time.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageSet {
    universe: u32,
    words: Vec<u64>,
}

impl PageSet {
    /// The empty set over `0..universe`.
    pub fn new(universe: u32) -> Self {
        PageSet {
            universe,
            words: vec![0; universe.div_ceil(64) as usize],
        }
    }

    /// The set holding every item of `0..universe`.
    pub fn full(universe: u32) -> Self {
        let mut set = PageSet {
            universe,
            words: vec![u64::MAX; universe.div_ceil(64) as usize],
        };
        set.clear_tail();
        set
    }

    /// The set of the given items; panics if one is outside the universe.
    pub fn from_items(universe: u32, items: &[u32]) -> Self {
        let mut set = PageSet::new(universe);
        set.insert_all(items);
        set
    }

    pub fn universe(&self) -> u32 {
        self.universe
    }

    pub fn insert(&mut self, item: u32) {
        assert!(
            item < self.universe,
            "item {item} outside universe {}",
            self.universe
        );
        self.words[(item / 64) as usize] |= 1 << (item % 64);
    }

    /// Inserts `item`; false if it was already there.
    pub fn insert_new(&mut self, item: u32) -> bool {
        assert!(
            item < self.universe,
            "item {item} outside universe {}",
            self.universe
        );
        let word = &mut self.words[(item / 64) as usize];
        let bit = 1 << (item % 64);
        let new = *word & bit == 0;
        *word |= bit;
        new
    }

    pub fn insert_all(&mut self, items: &[u32]) {
        for &item in items {
            self.insert(item);
        }
    }

    pub fn remove(&mut self, item: u32) {
        self.words[(item / 64) as usize] &= !(1 << (item % 64));
    }

    pub fn remove_all(&mut self, items: &[u32]) {
        for &item in items {
            self.remove(item);
        }
    }

    pub fn contains(&self, item: u32) -> bool {
        item < self.universe && self.words[(item / 64) as usize] & (1 << (item % 64)) != 0
    }

    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// The members as sorted, merged ranges.
    pub fn ranges(&self) -> Vec<crate::memory::PageRange> {
        let mut ranges = Vec::new();
        for item in self.iter() {
            crate::memory::push_merged(&mut ranges, crate::memory::PageRange::new(item, item + 1));
        }
        ranges
    }

    /// Items in increasing order.
    pub fn iter(&self) -> Items<'_> {
        self.iter_from(0)
    }

    /// Items `>= start` in increasing order.
    pub fn iter_from(&self, start: u32) -> Items<'_> {
        let index = (start / 64) as usize;
        let bits = self
            .words
            .get(index)
            .map_or(0, |&word| word & (u64::MAX << (start % 64)));
        Items {
            words: &self.words,
            index,
            bits,
        }
    }

    /// Sets `self = self ∪ other`.
    pub fn union_with(&mut self, other: &PageSet) {
        self.check_same_universe(other);
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }

    /// Sets `self = self ∖ other`.
    pub fn subtract(&mut self, other: &PageSet) {
        self.check_same_universe(other);
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= !b;
        }
    }

    /// Sets `self = self ∩ other`.
    pub fn intersect_with(&mut self, other: &PageSet) {
        self.check_same_universe(other);
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= b;
        }
    }

    /// `|self ∩ other|` without building the intersection.
    pub fn intersection_count(&self, other: &PageSet) -> u64 {
        self.check_same_universe(other);
        self.words
            .iter()
            .zip(&other.words)
            .map(|(a, b)| u64::from((a & b).count_ones()))
            .sum()
    }

    /// The complement within the universe.
    pub fn complement(&self) -> PageSet {
        let mut set = PageSet {
            universe: self.universe,
            words: self.words.iter().map(|w| !w).collect(),
        };
        set.clear_tail();
        set
    }

    /// `count` of the items, evenly spaced in increasing order (all of them
    /// when there are fewer).
    pub fn evenly_spaced(&self, count: u64) -> PageSet {
        let total = self.count();
        let count = count.min(total);
        let mut chosen = PageSet::new(self.universe);
        for (index, item) in (0u64..).zip(self.iter()) {
            // The item whose position crosses the next multiple of
            // total / count is taken: exactly `count` of them.
            if (index + 1) * count / total > index * count / total {
                chosen.insert(item);
            }
        }
        chosen
    }

    fn clear_tail(&mut self) {
        let used_bits = self.universe % 64;
        if used_bits != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << used_bits) - 1;
            }
        }
    }

    fn check_same_universe(&self, other: &PageSet) {
        assert_eq!(
            self.universe, other.universe,
            "sets over different universes"
        );
    }
}

/// The items of a [`PageSet`], increasing.
#[derive(Debug)]
pub struct Items<'a> {
    words: &'a [u64],
    index: usize,
    /// Bits of `words[index]` not yet returned.
    bits: u64,
}

impl Iterator for Items<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        while self.bits == 0 {
            self.index += 1;
            self.bits = *self.words.get(self.index)?;
        }
        let bit = self.bits.trailing_zeros();
        self.bits &= self.bits - 1;
        let word_start = u32::try_from(self.index * 64)
            .expect("a PageSet numbers its items in u32, so its word offsets fit in u32");
        Some(word_start + bit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn full_set_has_exactly_the_universe() {
        let set = PageSet::full(130);
        assert_eq!(set.count(), 130);
        assert!(set.contains(129));
        assert!(!set.contains(130));
        assert_eq!(set.complement().count(), 0);
    }

    #[test]
    fn insert_new_tells_whether_the_item_was_there() {
        let mut set = PageSet::new(10);
        assert!(set.insert_new(3));
        assert!(!set.insert_new(3));
        assert_eq!(set.count(), 1);
    }

    #[test]
    fn evenly_spaced_takes_every_nth_item() {
        let odd = PageSet::from_items(20, &[1, 3, 5, 7, 9, 11, 13, 15]);
        let items = |set: PageSet| set.iter().collect::<Vec<_>>();
        assert_eq!(items(odd.evenly_spaced(4)), vec![3, 7, 11, 15]);
        assert_eq!(items(odd.evenly_spaced(3)).len(), 3);
        assert_eq!(odd.evenly_spaced(0).count(), 0);
        assert_eq!(odd.evenly_spaced(100), odd);
    }

    #[test]
    fn iter_from_starts_mid_word() {
        let set = PageSet::from_items(200, &[3, 64, 70, 199]);
        assert_eq!(set.iter_from(65).collect::<Vec<_>>(), vec![70, 199]);
        assert_eq!(set.iter_from(64).collect::<Vec<_>>(), vec![64, 70, 199]);
        assert_eq!(set.iter_from(200).count(), 0);
        assert_eq!(PageSet::new(0).iter().count(), 0);
    }

    proptest! {
        #[test]
        fn set_algebra_matches_btreeset(
            a in proptest::collection::btree_set(0u32..300, 0..100),
            b in proptest::collection::btree_set(0u32..300, 0..100),
        ) {
            let items = |s: &std::collections::BTreeSet<u32>| s.iter().copied().collect::<Vec<_>>();
            let sa = PageSet::from_items(300, &items(&a));
            let sb = PageSet::from_items(300, &items(&b));
            prop_assert_eq!(sa.iter().collect::<Vec<_>>(), items(&a));
            prop_assert_eq!(sa.intersection_count(&sb), a.intersection(&b).count() as u64);
            let mut union = sa.clone();
            union.union_with(&sb);
            prop_assert_eq!(union.iter().collect::<Vec<_>>(), a.union(&b).copied().collect::<Vec<_>>());
            let mut difference = sa.clone();
            difference.subtract(&sb);
            prop_assert_eq!(difference.iter().collect::<Vec<_>>(), a.difference(&b).copied().collect::<Vec<_>>());
            prop_assert_eq!(sa.complement().count(), 300 - a.len() as u64);
        }
    }
}
