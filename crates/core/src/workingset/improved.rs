//! The project's estimator: per-item access rates from inter-access gaps, aged
//! by recency, and a cut chosen by what the prediction is for.
//!
//! Rate. Each item keeps the interval of its last access and a smoothed gap
//! between its accesses. An item accessed only once has no gap yet: it gets
//! the rate at which such items come back after the same silence, measured
//! over all of them ([`SecondAccessHazard`], in the spirit of Good–Turing). Its rate is `1 / max(typical gap, current silence)`: an item is
//! as hot as its usual rhythm, unless it has already been quiet for longer,
//! which caps the rate (the idea behind LIRS's inter-reference recency). Once
//! the silence passes `STALE_AFTER` typical gaps, the item is taken to have
//! left the workingset and its rate falls off exponentially: a hot set that
//! moved is dropped after a few of its own gaps, not after a fixed window.
//!
//! Cut. The probability of an access within the horizon is
//! `q = 1 - exp(-rate × horizon)`. For [`Objective::Migration`] an item is in
//! the workingset when `q` exceeds the deferral cost: pre-copying it costs
//! `1 + q` expected transfers, deferring it `1 + deferral_cost`. The horizon
//! there is the expected rest of the pre-copy, so a slower link (longer
//! pre-copy) puts more warm items in the workingset. For
//! [`Objective::Accuracy`] the cut maximises the expected F1 computed from the
//! `q` values themselves, so it adapts to how concentrated the accesses are.

use super::hazard::SecondAccessHazard;
use super::{Estimator, Goal, Objective};
use crate::pageset::PageSet;

/// Weight of the newest gap in an item's smoothed gap.
const GAP_SMOOTHING: f32 = 0.3;
/// Prior probability that an item accessed before is still in use.
const ACTIVE_PRIOR: f64 = 0.95;
/// Weight of the newest interval in the rate of first accesses.
const NEW_ITEM_SMOOTHING: f64 = 0.2;
/// Resolution of the expected-F1 search.
const CUT_BINS: usize = 1000;

pub struct Improved {
    /// Interval (counted from 1) of each item's last access; 0 = never.
    last: Vec<u32>,
    /// Smoothed gap between accesses, in intervals; 0 until the second access.
    gap: Vec<f32>,
    /// Items ever accessed, so prediction does not scan the whole guest.
    seen: Vec<u32>,
    now: u32,
    /// Smoothed count of items accessed for the first time per interval: the
    /// accesses no workingset can predict.
    new_per_interval: f64,
    seen_once: SecondAccessHazard,
}

impl Improved {
    pub fn new(items: u32) -> Self {
        Improved {
            last: vec![0; items as usize],
            gap: vec![0.0; items as usize],
            seen: Vec::new(),
            now: 0,
            new_per_interval: 0.0,
            seen_once: SecondAccessHazard::new(),
        }
    }

    /// Probability that `item` is accessed within `horizon` intervals.
    ///
    /// An item with a rhythm is either still in use, and then accessed with
    /// probability `1 - exp(-horizon / gap)`, or gone; the chance it is still
    /// in use falls with its silence, by how unlikely that silence is under
    /// geometric gaps of its mean (against a prior that items stay in use).
    fn access_probability(&self, item: u32, horizon: f64) -> f64 {
        let last = self.last[item as usize];
        if last == 0 {
            return 0.0;
        }
        let silence = self.now - last + 1;
        let gap = self.gap[item as usize];
        if gap == 0.0 {
            return self.seen_once.return_probability(silence, horizon);
        }
        let gap = f64::from(gap);
        let silent_while_active = (-(f64::from(silence) - 1.0) / gap).exp();
        let weight = ACTIVE_PRIOR * silent_while_active;
        let active = weight / (weight + 1.0 - ACTIVE_PRIOR);
        active * (1.0 - (-horizon / gap).exp())
    }

    pub(super) fn is_seen(&self, item: u32) -> bool {
        self.last[item as usize] != 0
    }

    /// The workingset restricted to the items `candidates` yields (every seen
    /// item, or those of some regions).
    pub(super) fn predict_among(
        &self,
        goal: &Goal,
        candidates: impl Iterator<Item = u32> + Clone,
    ) -> PageSet {
        let mut set = PageSet::new(self.items());
        let horizon = goal.horizon.max(f64::MIN_POSITIVE);
        let threshold = match goal.objective {
            Objective::Migration { deferral_cost } => deferral_cost,
            Objective::Accuracy => self.best_f1_threshold(candidates.clone(), horizon),
        };
        for item in candidates {
            let q = self.access_probability(item, horizon);
            if q > 0.0 && q >= threshold {
                set.insert(item);
            }
        }
        set
    }

    /// The probability cut that maximises `2·Σ_top q / (k_top + expected
    /// accesses)`: the expected F1 if the `q` are calibrated.
    fn best_f1_threshold(&self, candidates: impl Iterator<Item = u32>, horizon: f64) -> f64 {
        let mut count = vec![0u64; CUT_BINS + 1];
        let mut mass = vec![0f64; CUT_BINS + 1];
        for item in candidates {
            let q = self.access_probability(item, horizon);
            let bin = (q * CUT_BINS as f64) as usize;
            count[bin] += 1;
            mass[bin] += q;
        }
        let unseen = (self.items() as usize - self.seen.len()) as f64;
        let expected_accesses =
            mass.iter().sum::<f64>() + (self.new_per_interval * horizon).min(unseen);
        let (mut best_f1, mut best_bin) = (0.0, CUT_BINS + 1);
        let (mut predicted, mut hits) = (0u64, 0.0);
        for bin in (1..=CUT_BINS).rev() {
            predicted += count[bin];
            hits += mass[bin];
            if predicted > 0 {
                let f1 = 2.0 * hits / (predicted as f64 + expected_accesses);
                if f1 > best_f1 {
                    best_f1 = f1;
                    best_bin = bin;
                }
            }
        }
        best_bin as f64 / CUT_BINS as f64
    }
}

impl Estimator for Improved {
    fn name(&self) -> &'static str {
        "improved"
    }

    fn items(&self) -> u32 {
        self.last.len() as u32
    }

    fn observe(&mut self, accessed: &[u32]) {
        self.now += 1;
        let mut new_items = 0u32;
        for &item in accessed {
            let (last, gap) = (&mut self.last[item as usize], &mut self.gap[item as usize]);
            let observed = (self.now - *last) as f32;
            if *last == 0 {
                self.seen.push(item);
                self.seen_once.first_access();
                new_items += 1;
            } else if *gap == 0.0 {
                self.seen_once.second_access(*last);
                *gap = observed;
            } else {
                *gap += GAP_SMOOTHING * (observed - *gap);
            }
            *last = self.now;
        }
        self.seen_once.end_interval(self.now);
        self.new_per_interval += NEW_ITEM_SMOOTHING * (f64::from(new_items) - self.new_per_interval);
    }

    fn score(&self, item: u32) -> f64 {
        self.access_probability(item, 1.0)
    }

    fn scored(&self) -> Vec<(u32, f64)> {
        self.seen
            .iter()
            .map(|&item| (item, self.score(item)))
            .filter(|&(_, score)| score > 0.0)
            .collect()
    }

    fn predict(&self, goal: &Goal) -> PageSet {
        self.predict_among(goal, self.seen.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observe_pattern(estimator: &mut Improved, intervals: u32, pattern: impl Fn(u32) -> Vec<u32>) {
        for interval in 0..intervals {
            estimator.observe(&pattern(interval));
        }
    }

    #[test]
    fn rate_follows_the_rhythm() {
        let mut estimator = Improved::new(10);
        // Item 1 every interval, item 2 every fourth.
        observe_pattern(&mut estimator, 40, |i| if i % 4 == 0 { vec![1, 2] } else { vec![1] });
        assert!((estimator.rate(1) - 1.0).abs() < 0.01, "{}", estimator.rate(1));
        assert!((estimator.rate(2) - 0.25).abs() < 0.05, "{}", estimator.rate(2));
    }

    #[test]
    fn a_moved_hot_set_is_dropped_after_a_few_gaps() {
        let mut estimator = Improved::new(100);
        observe_pattern(&mut estimator, 30, |_| (0..10).collect());
        observe_pattern(&mut estimator, 5, |_| (50..60).collect());
        let goal = Goal { horizon: 5.0, objective: Objective::Accuracy };
        assert_eq!(estimator.predict(&goal).iter().collect::<Vec<_>>(), (50..60).collect::<Vec<_>>());
        assert!(estimator.rate(0) < 0.05 * estimator.rate(55));
    }

    #[test]
    fn longer_migration_horizon_defers_warmer_items() {
        let mut estimator = Improved::new(10);
        // Item 1 every 20 intervals: warm.
        observe_pattern(&mut estimator, 100, |i| if i % 20 == 0 { vec![1, 2] } else { vec![2] });
        let defer = |horizon| {
            let goal = Goal { horizon, objective: Objective::Migration { deferral_cost: 0.5 } };
            estimator.predict(&goal).contains(1)
        };
        assert!(!defer(5.0), "a short pre-copy should send a warm page");
        assert!(defer(60.0), "a long pre-copy should defer a warm page");
    }

    #[test]
    fn accuracy_cut_keeps_an_equally_likely_ring() {
        // A ring of 40 items scanned 10 per interval: each has a 1/4 chance per
        // interval; over 4 intervals the whole ring is rewritten.
        let mut estimator = Improved::new(100);
        observe_pattern(&mut estimator, 40, |i| ((i % 4) * 10..(i % 4) * 10 + 10).collect());
        let goal = Goal { horizon: 4.0, objective: Objective::Accuracy };
        assert_eq!(estimator.predict(&goal).count(), 40);
    }
}
