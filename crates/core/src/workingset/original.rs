//! Window-frequency estimators: Denning's working set and the original MLLM
//! rule. Both ignore the goal: their window and threshold are fixed.

use super::window::WindowCounts;
use super::{Estimator, Goal};
use crate::pageset::PageSet;

/// A window-frequency estimator: an item is in the workingset when it was
/// accessed in at least θ of the last τ intervals. Denning's working set is
/// θ = 1; the original MLLM rule uses a larger θ.
#[derive(Debug)]
pub struct WindowFrequency {
    name: &'static str,
    counts: WindowCounts,
    threshold: u8,
}

impl WindowFrequency {
    /// Denning's working set W(t, τ): every item accessed in the last τ intervals.
    pub fn denning(items: u32, window: u8) -> Self {
        WindowFrequency::new("denning", items, window, 1)
    }

    /// The original MLLM estimator: accessed in at least θ of the last τ intervals.
    pub fn original(items: u32, window: u8, threshold: u8) -> Self {
        WindowFrequency::new("original", items, window, threshold)
    }

    fn new(name: &'static str, items: u32, window: u8, threshold: u8) -> Self {
        assert!(
            threshold >= 1 && threshold <= window,
            "threshold must be within the window"
        );
        WindowFrequency {
            name,
            counts: WindowCounts::new(items, window),
            threshold,
        }
    }
}

impl Estimator for WindowFrequency {
    fn name(&self) -> &'static str {
        self.name
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
        let mut original = WindowFrequency::original(10, 4, 2);
        let mut denning = WindowFrequency::denning(10, 4);
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
        let mut denning = WindowFrequency::denning(10, 2);
        denning.observe(&[1]);
        denning.observe(&[]);
        denning.observe(&[]);
        assert!(denning.predict(&GOAL).is_empty());
    }
}
