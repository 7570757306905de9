//! Workingset estimators: from the items (pages or blocks) accessed interval by
//! interval, a score per item and a predicted workingset.
//!
//! * [`Lru`]: recency; the most recently accessed items, as many as the recent
//!   footprint predicts for the horizon.
//! * `denning` ([`WindowFrequency::denning`]): Denning's working set; items accessed in the last τ intervals.
//! * `original` ([`WindowFrequency::original`]): the original MLLM rule; items accessed in at least θ of the
//!   last τ intervals.
//! * [`Improved`]: this project's estimator; each item's rhythm (its mean gap
//!   between accesses), calibrated by a staleness curve learned from the
//!   guest, turned into a probability of access within the horizon, with the
//!   cut chosen by the objective (see its docs).
//! * [`Hierarchical`]: a learned region-level model picks busy 2 MiB regions;
//!   the improved estimator ranks items inside them only.

mod hazard;
mod hierarchical;
mod improved;
mod lru;
mod original;
mod staleness;
mod window;

pub use hierarchical::Hierarchical;
pub use improved::Improved;
pub use lru::Lru;
pub use original::WindowFrequency;

use serde::{Deserialize, Serialize};

use crate::pageset::PageSet;

pub trait Estimator: Send {
    fn name(&self) -> &'static str;

    /// Number of items tracked: valid items are `0..items()`.
    fn items(&self) -> u32;

    /// Records the items accessed in the interval that just ended (increasing,
    /// without duplicates).
    fn observe(&mut self, accessed: &[u32]);

    /// Estimated probability that `item` is accessed in the next interval;
    /// higher means hotter. Orders transfers and weighs faults.
    fn score(&self, item: u32) -> f64;

    /// Every item with a nonzero score, once each, in no particular order:
    /// lets a planner skip the (usually many) items never accessed.
    fn scored(&self) -> Vec<(u32, f64)>;

    /// The items predicted to be accessed within `goal.horizon` intervals.
    fn predict(&self, goal: &Goal) -> PageSet;
}

/// What a prediction is for.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Goal {
    /// How many intervals ahead the prediction must hold.
    pub horizon: f64,
    pub objective: Objective,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Objective {
    /// Best expected F1 against the items accessed within the horizon.
    Accuracy,
    /// Migration cost: an item in the workingset is deferred, which costs
    /// `deferral_cost` page transfers; an item left out is pre-copied and costs
    /// one more transfer if it is written again within the horizon.
    Migration { deferral_cost: f64 },
}

/// The estimators, by name, with their reference parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EstimatorKind {
    Lru,
    Denning,
    Original,
    Improved,
    Hierarchical,
}

impl EstimatorKind {
    pub const ALL: [EstimatorKind; 5] = [
        EstimatorKind::Lru,
        EstimatorKind::Denning,
        EstimatorKind::Original,
        EstimatorKind::Improved,
        EstimatorKind::Hierarchical,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EstimatorKind::Lru => "lru",
            EstimatorKind::Denning => "denning",
            EstimatorKind::Original => "original",
            EstimatorKind::Improved => "improved",
            EstimatorKind::Hierarchical => "hierarchical",
        }
    }

    pub fn from_name(name: &str) -> Option<EstimatorKind> {
        EstimatorKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
    }

    /// An estimator over `items` items. The windows are 8 intervals; the
    /// improved and hierarchical estimators calibrate themselves for
    /// predictions `horizon` intervals ahead.
    pub fn build(self, items: u32, horizon: u32) -> Box<dyn Estimator> {
        match self {
            EstimatorKind::Lru => Box::new(Lru::new(items)),
            EstimatorKind::Denning => Box::new(WindowFrequency::denning(items, 8)),
            EstimatorKind::Original => Box::new(WindowFrequency::original(items, 8, 2)),
            EstimatorKind::Improved => Box::new(Improved::new(items, horizon)),
            EstimatorKind::Hierarchical => Box::new(Hierarchical::new(items, horizon)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{Workload, WorkloadClass};
    use proptest::prelude::*;

    const GOALS: [Goal; 3] = [
        Goal {
            horizon: 10.0,
            objective: Objective::Accuracy,
        },
        Goal {
            horizon: 1.0,
            objective: Objective::Accuracy,
        },
        Goal {
            horizon: 80.0,
            objective: Objective::Migration { deferral_cost: 0.5 },
        },
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// A page never written is never in the write workingset, whatever the
        /// estimator, workload and goal.
        #[test]
        fn never_accessed_items_are_never_predicted(
            class_index in 0usize..5, seed in any::<u64>(), intervals in 1u64..30,
        ) {
            let items = 4096;
            let class = WorkloadClass::ALL[class_index];
            let workload = Workload::new(class.default_spec(), items, seed);
            // Only the first half of the items may ever be written.
            let history: Vec<Vec<u32>> = (0..intervals)
                .map(|i| workload.accesses(i).into_iter().filter(|&p| p < items / 2).collect())
                .collect();
            let mut touched = PageSet::new(items);
            history.iter().for_each(|h| touched.insert_all(h));
            for kind in EstimatorKind::ALL {
                let mut estimator = kind.build(items, 10);
                history.iter().for_each(|h| estimator.observe(h));
                for goal in GOALS {
                    let predicted = estimator.predict(&goal);
                    prop_assert_eq!(predicted.intersection_count(&touched), predicted.count(),
                        "{} predicted an untouched page for {:?}", kind.name(), goal);
                }
                for page in (items / 2..items).step_by(97) {
                    prop_assert_eq!(estimator.score(page), 0.0, "{} scored untouched page", kind.name());
                }
                for (page, score) in estimator.scored() {
                    prop_assert!(touched.contains(page) && score > 0.0, "{} scored {}", kind.name(), page);
                }
            }
        }
    }

    #[test]
    fn every_estimator_finds_a_stable_hot_set() {
        let hot: Vec<u32> = (100..200).collect();
        for kind in EstimatorKind::ALL {
            let mut estimator = kind.build(4096, 4);
            for _ in 0..20 {
                estimator.observe(&hot);
            }
            let predicted = estimator.predict(&GOALS[0]);
            assert_eq!(predicted.iter().collect::<Vec<_>>(), hot, "{}", kind.name());
            assert!(
                estimator.score(150) > estimator.score(50),
                "{}",
                kind.name()
            );
        }
    }

    #[test]
    fn names_round_trip() {
        for kind in EstimatorKind::ALL {
            assert_eq!(EstimatorKind::from_name(kind.name()), Some(kind));
            assert_eq!(kind.build(64, 4).name(), kind.name());
        }
    }
}
