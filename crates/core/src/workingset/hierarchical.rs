//! Two-level prediction: a coarse model learns which 2 MiB regions (512 items)
//! will be busy within its horizon; the fine level, the [`Improved`]
//! estimator, ranks only the items seen inside the regions predicted busy, so
//! a prediction costs in proportion to those, not to every item ever seen.
//!
//! A region is busy when at least 1/32 of its size in accesses lands in it
//! over the horizon: scattered one-off writes do not make a region busy, a
//! heap region in use does. The coarse model is a logistic regression over
//! four features per region: a bias; the accesses per interval, smoothed fast
//! and slowly (log-scaled); and `1 / silence`. It starts from weights that put
//! the decision near the busy threshold and is trained online: each interval,
//! the features recorded `horizon` intervals earlier are labelled with whether
//! the region turned out busy, and one gradient step is taken.

use std::collections::VecDeque;

use super::{Estimator, Goal, Improved};
use crate::pageset::PageSet;
use crate::synth::REGION_ITEMS;

const FEATURES: usize = 4;
const INITIAL_WEIGHTS: [f64; FEATURES] = [-3.0, 10.0, 10.0, 1.0];
const LEARNING_RATE: f64 = 1.0;
/// Accesses over the horizon that make a region busy.
const BUSY_ACCESSES: u32 = REGION_ITEMS / 32;
/// Regions at or above this probability are searched by the fine level; low,
/// because a missed region loses all its items.
const BUSY_PROBABILITY: f64 = 0.25;
const FAST_SMOOTHING: f32 = 0.5;
const SLOW_SMOOTHING: f32 = 0.1;

#[derive(Debug)]
pub struct Hierarchical {
    fine: Improved,
    coarse: RegionModel,
    /// Items seen so far, per region.
    seen_in_region: Vec<Vec<u32>>,
}

impl Hierarchical {
    pub fn new(items: u32, horizon: u32) -> Self {
        let coarse = RegionModel::new(items, horizon.max(1));
        Hierarchical {
            fine: Improved::new(items, horizon),
            seen_in_region: vec![Vec::new(); coarse.regions() as usize],
            coarse,
        }
    }

    /// Regions predicted busy.
    pub fn busy_regions(&self) -> Vec<u32> {
        (0..self.coarse.regions())
            .filter(|&region| self.coarse.probability(region) >= BUSY_PROBABILITY)
            .collect()
    }
}

impl Estimator for Hierarchical {
    fn name(&self) -> &'static str {
        "hierarchical"
    }

    fn items(&self) -> u32 {
        self.fine.items()
    }

    fn observe(&mut self, accessed: &[u32]) {
        for &item in accessed {
            if !self.fine.is_seen(item) {
                self.seen_in_region[(item / REGION_ITEMS) as usize].push(item);
            }
        }
        self.fine.observe(accessed);
        self.coarse.observe(accessed);
    }

    fn score(&self, item: u32) -> f64 {
        self.fine.score(item)
    }

    fn scored(&self) -> Vec<(u32, f64)> {
        self.fine.scored()
    }

    fn predict(&self, goal: &Goal) -> PageSet {
        let busy = self.busy_regions();
        let candidates = busy
            .iter()
            .flat_map(|&region| self.seen_in_region[region as usize].iter().copied());
        self.fine.predict_among(goal, candidates)
    }
}

#[derive(Debug)]
struct RegionModel {
    items: u32,
    horizon: usize,
    now: u32,
    /// Accesses per interval, smoothed fast.
    fast: Vec<f32>,
    /// Accesses per interval, smoothed slowly.
    slow: Vec<f32>,
    /// Interval (from 1) of the last access; 0 = never.
    last_access: Vec<u32>,
    /// Accesses per region over the last `horizon` intervals: the labels.
    recent_accesses: Vec<u32>,
    history: VecDeque<Vec<(u32, u32)>>,
    /// Feature snapshots waiting `horizon` intervals for their labels.
    pending: VecDeque<Vec<[f32; FEATURES]>>,
    weights: [f64; FEATURES],
}

impl RegionModel {
    fn new(items: u32, horizon: u32) -> Self {
        let regions = items.div_ceil(REGION_ITEMS) as usize;
        RegionModel {
            items,
            horizon: horizon as usize,
            now: 0,
            fast: vec![0.0; regions],
            slow: vec![0.0; regions],
            last_access: vec![0; regions],
            recent_accesses: vec![0; regions],
            history: VecDeque::new(),
            pending: VecDeque::new(),
            weights: INITIAL_WEIGHTS,
        }
    }

    fn regions(&self) -> u32 {
        u32::try_from(self.fast.len()).expect("regions of a u32 item count number fewer")
    }

    fn observe(&mut self, accessed: &[u32]) {
        self.now += 1;
        let mut per_region: Vec<(u32, u32)> = Vec::new();
        for &item in accessed {
            let region = item / REGION_ITEMS;
            match per_region.last_mut() {
                Some((r, count)) if *r == region => *count += 1,
                _ => per_region.push((region, 1)),
            }
        }
        self.fast
            .iter_mut()
            .for_each(|a| *a *= 1.0 - FAST_SMOOTHING);
        self.slow
            .iter_mut()
            .for_each(|a| *a *= 1.0 - SLOW_SMOOTHING);
        for &(region, count) in &per_region {
            let r = region as usize;
            self.fast[r] += FAST_SMOOTHING * count as f32;
            self.slow[r] += SLOW_SMOOTHING * count as f32;
            self.last_access[r] = self.now;
            self.recent_accesses[r] += count;
        }
        self.history.push_back(per_region);
        if self.history.len() > self.horizon {
            for (region, count) in self.history.pop_front().unwrap_or_default() {
                self.recent_accesses[region as usize] -= count;
            }
        }
        if self.pending.len() == self.horizon {
            if let Some(features) = self.pending.pop_front() {
                self.train(&features);
            }
        }
        self.pending
            .push_back((0..self.regions()).map(|r| self.features(r)).collect());
    }

    /// One batch gradient step of the logistic loss: the snapshot taken
    /// `horizon` intervals ago against whether each region was busy since.
    fn train(&mut self, features: &[[f32; FEATURES]]) {
        let mut gradient = [0.0; FEATURES];
        for (region, x) in features.iter().enumerate() {
            let label = if self.recent_accesses[region] >= BUSY_ACCESSES {
                1.0
            } else {
                0.0
            };
            let error = label - logistic(&self.weights, x);
            for (g, &xi) in gradient.iter_mut().zip(x) {
                *g += error * f64::from(xi);
            }
        }
        let scale = LEARNING_RATE / features.len() as f64;
        for (w, g) in self.weights.iter_mut().zip(gradient) {
            *w += scale * g;
        }
    }

    fn features(&self, region: u32) -> [f32; FEATURES] {
        let r = region as usize;
        let scale = ((REGION_ITEMS.min(self.items) + 1) as f32).ln();
        let recency = match self.last_access[r] {
            0 => 0.0,
            last => 1.0 / (self.now - last + 1) as f32,
        };
        [
            1.0,
            self.fast[r].ln_1p() / scale,
            self.slow[r].ln_1p() / scale,
            recency,
        ]
    }

    fn probability(&self, region: u32) -> f64 {
        logistic(&self.weights, &self.features(region))
    }
}

fn logistic(weights: &[f64; FEATURES], x: &[f32; FEATURES]) -> f64 {
    let z: f64 = weights
        .iter()
        .zip(x)
        .map(|(w, &xi)| w * f64::from(xi))
        .sum();
    1.0 / (1.0 + (-z).exp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workingset::Objective;

    #[test]
    fn only_regions_in_use_are_busy() {
        let mut estimator = Hierarchical::new(REGION_ITEMS * 8, 4);
        let busy: Vec<u32> = (0..40)
            .chain(3 * REGION_ITEMS..3 * REGION_ITEMS + 40)
            .collect();
        for interval in 0..30 {
            let mut accessed = busy.clone();
            // A stray write elsewhere now and then does not make a region busy.
            accessed.push(6 * REGION_ITEMS + interval % 7);
            accessed.sort_unstable();
            estimator.observe(&accessed);
        }
        assert_eq!(estimator.busy_regions(), vec![0, 3]);
        let goal = Goal {
            horizon: 4.0,
            objective: Objective::Accuracy,
        };
        assert_eq!(estimator.predict(&goal).iter().collect::<Vec<_>>(), busy);
    }

    #[test]
    fn learning_drops_regions_used_once_long_ago() {
        let mut estimator = Hierarchical::new(REGION_ITEMS * 8, 2);
        estimator.observe(&(2 * REGION_ITEMS..3 * REGION_ITEMS).collect::<Vec<_>>());
        for _ in 0..200 {
            estimator.observe(&(0..64).collect::<Vec<_>>());
        }
        assert!(
            estimator.coarse.probability(2) < 0.05,
            "{}",
            estimator.coarse.probability(2)
        );
        assert_eq!(estimator.busy_regions(), vec![0]);
    }
}
