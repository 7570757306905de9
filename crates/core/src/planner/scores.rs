//! An estimator's scores, read once per planning step: every helper of a step
//! orders or weighs the same items, and an estimator's `scored` walks all the
//! items it has seen.

use super::order::{by_score, Direction};
use crate::pageset::PageSet;
use crate::workingset::Estimator;

pub struct Scores {
    /// Items with a nonzero score.
    listed: Vec<(u32, f64)>,
    /// Score by item, zero for the others.
    by_item: Vec<f32>,
}

impl Scores {
    pub fn of(estimator: &dyn Estimator) -> Scores {
        let listed = estimator.scored();
        let mut by_item = vec![0f32; estimator.items() as usize];
        for &(item, score) in &listed {
            // Scores are probabilities in [0, 1]: f32 keeps far more precision
            // than any estimator has, at half the memory per item.
            #[allow(clippy::cast_possible_truncation)]
            let score = score as f32;
            by_item[item as usize] = score;
        }
        Scores { listed, by_item }
    }

    /// No item has a score: the estimator has seen no access.
    pub fn is_empty(&self) -> bool {
        self.listed.is_empty()
    }

    pub fn get(&self, item: u32) -> f64 {
        f64::from(self.by_item[item as usize])
    }

    /// Scored items inside `items`.
    pub fn among<'a>(&'a self, items: &'a PageSet) -> impl Iterator<Item = (u32, f64)> + 'a {
        self.listed
            .iter()
            .copied()
            .filter(|&(item, _)| items.contains(item))
    }

    /// `items` hottest first, unscored ones last in address order.
    pub fn hottest_first(&self, items: &PageSet) -> Vec<u32> {
        self.ordered(items, Direction::Hottest)
    }

    /// `items` unscored first in address order, then from coldest to hottest.
    pub fn coldest_first(&self, items: &PageSet) -> Vec<u32> {
        self.ordered(items, Direction::Coldest)
    }

    /// Walks `items` in address order, so the (stable) ordering by score
    /// keeps address order among equal scores.
    fn ordered(&self, items: &PageSet, first: Direction) -> Vec<u32> {
        let mut scored = Vec::new();
        let mut unscored = Vec::new();
        for item in items.iter() {
            match self.get(item) {
                0.0 => unscored.push(item),
                score => scored.push((item, score)),
            }
        }
        let mut order = by_score(&scored, first);
        match first {
            Direction::Hottest => order.extend(unscored),
            Direction::Coldest => {
                unscored.extend(order);
                order = unscored;
            }
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workingset::WindowFrequency;

    #[test]
    fn orders_both_ways_with_unscored_items_at_the_cold_end() {
        let mut estimator = WindowFrequency::denning(10, 4);
        estimator.observe(&[1, 2]);
        estimator.observe(&[2]);
        let scores = Scores::of(&estimator);
        assert_eq!(scores.get(2), 0.5);
        let items = PageSet::from_items(10, &[0, 1, 2, 7]);
        assert_eq!(scores.hottest_first(&items), vec![2, 1, 0, 7]);
        assert_eq!(scores.coldest_first(&items), vec![0, 7, 1, 2]);
    }
}
