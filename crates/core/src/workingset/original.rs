//! Window-frequency estimators: Denning's working set and the original MLLM
//! rule. Both ignore the goal: their window and threshold are fixed.

use super::window::WindowCounts;
use super::{Estimator, Goal};
use crate::pageset::PageSet;

/// Denning's working set W(t, τ): every item accessed in the last τ intervals.
pub struct Denning {
    counts: WindowCounts,
}

impl Denning {
    pub fn new(items: u32, window: u8) -> Self {
        Denning {
            counts: WindowCounts::new(items, window),
        }
    }
}

impl Estimator for Denning {
    fn name(&self) -> &'static str {
        "denning"
    }

    fn items(&self) -> u32 {
        self.counts.items()
    }

    fn observe(&mut self, accessed: &[u32]) {
        self.counts.push(accessed);
    }

    fn score(&self, item: u32) -> f64 {
        f64::from(self.counts.count(item)) / self.counts.window() as f64
    }

    fn scored(&self) -> Vec<(u32, f64)> {
        scored(&self.counts)
    }

    fn predict(&self, _goal: &Goal) -> PageSet {
        at_least(&self.counts, 1)
    }
}

/// The original MLLM estimator: an item is in the workingset when it was
/// accessed in at least θ of the last τ intervals.
pub struct Original {
    counts: WindowCounts,
    threshold: u8,
}

impl Original {
    pub fn new(items: u32, window: u8, threshold: u8) -> Self {
        assert!(
            threshold >= 1 && threshold <= window,
            "threshold must be within the window"
        );
        Original {
            counts: WindowCounts::new(items, window),
            threshold,
        }
    }
}

impl Estimator for Original {
    fn name(&self) -> &'static str {
        "original"
    }

    fn items(&self) -> u32 {
        self.counts.items()
    }

    fn observe(&mut self, accessed: &[u32]) {
        self.counts.push(accessed);
    }

    fn score(&self, item: u32) -> f64 {
        f64::from(self.counts.count(item)) / self.counts.window() as f64
    }

    fn scored(&self) -> Vec<(u32, f64)> {
        scored(&self.counts)
    }

    fn predict(&self, _goal: &Goal) -> PageSet {
        at_least(&self.counts, self.threshold)
    }
}

fn scored(counts: &WindowCounts) -> Vec<(u32, f64)> {
    at_least(counts, 1)
        .iter()
        .map(|item| (item, f64::from(counts.count(item)) / counts.window() as f64))
        .collect()
}

fn at_least(counts: &WindowCounts, threshold: u8) -> PageSet {
    let mut set = PageSet::new(counts.items());
    for item in counts.accessed() {
        if counts.count(item) >= threshold {
            set.insert(item);
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workingset::Objective;

    const GOAL: Goal = Goal {
        horizon: 5.0,
        objective: Objective::Accuracy,
    };

    #[test]
    fn original_needs_threshold_hits_denning_one() {
        let mut original = Original::new(10, 4, 2);
        let mut denning = Denning::new(10, 4);
        for accessed in [&[1, 2][..], &[2], &[3]] {
            original.observe(accessed);
            denning.observe(accessed);
        }
        assert_eq!(original.predict(&GOAL).iter().collect::<Vec<_>>(), vec![2]);
        assert_eq!(
            denning.predict(&GOAL).iter().collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(original.score(2), 0.5);
    }

    #[test]
    fn items_age_out_of_the_window() {
        let mut denning = Denning::new(10, 2);
        denning.observe(&[1]);
        denning.observe(&[]);
        denning.observe(&[]);
        assert!(denning.predict(&GOAL).is_empty());
    }
}
