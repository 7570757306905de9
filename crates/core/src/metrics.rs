//! Prediction quality: a predicted workingset against the items actually
//! accessed in the following intervals.

use serde::{Deserialize, Serialize};

use crate::pageset::PageSet;

/// Counts of a predicted set against an accessed set; add them up over many
/// prediction points for micro-averaged precision, recall and F1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    pub true_positives: u64,
    pub false_positives: u64,
    pub false_negatives: u64,
}

impl Confusion {
    pub fn of(predicted: &PageSet, accessed: &PageSet) -> Confusion {
        let true_positives = predicted.intersection_count(accessed);
        Confusion {
            true_positives,
            false_positives: predicted.count() - true_positives,
            false_negatives: accessed.count() - true_positives,
        }
    }

    pub fn add(&mut self, other: Confusion) {
        self.true_positives += other.true_positives;
        self.false_positives += other.false_positives;
        self.false_negatives += other.false_negatives;
    }

    /// Share of predicted items that were accessed; 1 when nothing was predicted.
    pub fn precision(&self) -> f64 {
        ratio(
            self.true_positives,
            self.true_positives + self.false_positives,
        )
    }

    /// Share of accessed items that were predicted; 1 when nothing was accessed.
    pub fn recall(&self) -> f64 {
        ratio(
            self.true_positives,
            self.true_positives + self.false_negatives,
        )
    }

    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        1.0
    } else {
        part as f64 / whole as f64
    }
}

/// The union of the given intervals' accesses: the target of a prediction made
/// just before them.
pub fn accessed_in(universe: u32, intervals: &[&[u32]]) -> PageSet {
    let mut set = PageSet::new(universe);
    for items in intervals {
        set.insert_all(items);
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_recall_f1() {
        let predicted = PageSet::from_items(10, &[1, 2, 3, 4]);
        let accessed = PageSet::from_items(10, &[3, 4, 5]);
        let c = Confusion::of(&predicted, &accessed);
        assert_eq!(
            (c.true_positives, c.false_positives, c.false_negatives),
            (2, 2, 1)
        );
        assert!((c.precision() - 0.5).abs() < 1e-12);
        assert!((c.recall() - 2.0 / 3.0).abs() < 1e-12);
        assert!((c.f1() - 4.0 / 7.0).abs() < 1e-12);
    }

    #[test]
    fn empty_prediction_of_accessed_items_scores_zero() {
        let c = Confusion::of(&PageSet::new(10), &PageSet::from_items(10, &[1]));
        assert_eq!(c.f1(), 0.0);
        assert_eq!(c.precision(), 1.0);
    }

    #[test]
    fn accessed_in_is_the_union() {
        let set = accessed_in(10, &[&[1, 2], &[2, 7]]);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![1, 2, 7]);
    }
}
