//! Two-level prediction: a coarse model learns which 2 MiB regions (512 items)
//! will be touched within its horizon; the fine level, the [`Improved`]
//! estimator, ranks items only inside the regions predicted hot, so a
//! prediction costs in proportion to the hot regions, not to the guest.
//!
//! The coarse model is a logistic regression over four features per region
//! (bias; the share of its items touched, smoothed fast; how often it was
//! touched at all, smoothed slowly; `1 / silence`). It starts from weights that
//! encode "recently and often touched is hot" and is trained online: each
//! interval, the features recorded `horizon` intervals earlier are labelled with
//! whether the region was touched since, and one gradient step is taken.

use std::collections::VecDeque;

use super::{Estimator, Goal, Improved};
use crate::pageset::PageSet;
use crate::synth::REGION_ITEMS;

const FEATURES: usize = 4;
const INITIAL_WEIGHTS: [f64; FEATURES] = [-3.0, 4.0, 2.0, 2.0];
const LEARNING_RATE: f64 = 1.0;
/// Regions at or above this probability are searched by the fine level; low,
/// because a missed region loses all its items.
const HOT_REGION_PROBABILITY: f64 = 0.25;
const FAST_SMOOTHING: f32 = 0.5;
const SLOW_SMOOTHING: f32 = 0.1;

pub struct Hierarchical {
    fine: Improved,
    coarse: RegionModel,
}

impl Hierarchical {
    pub fn new(items: u32, horizon: u32) -> Self {
        Hierarchical { fine: Improved::new(items), coarse: RegionModel::new(items, horizon.max(1)) }
    }

    /// Regions whose predicted probability of being touched reaches the cut.
    pub fn hot_regions(&self) -> Vec<u32> {
        (0..self.coarse.regions())
            .filter(|&region| self.coarse.probability(region) >= HOT_REGION_PROBABILITY)
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
        let items = self.items();
        let hot = self.hot_regions();
        let candidates = hot
            .iter()
            .flat_map(move |&region| region * REGION_ITEMS..((region + 1) * REGION_ITEMS).min(items))
            .filter(|&item| self.fine.rate(item) > 0.0);
        self.fine.predict_among(goal, candidates)
    }
}

struct RegionModel {
    items: u32,
    horizon: usize,
    now: u32,
    /// Share of the region's items touched, smoothed fast.
    share: Vec<f32>,
    /// Whether the region was touched at all, smoothed slowly.
    frequency: Vec<f32>,
    /// Interval (from 1) of the last touch; 0 = never.
    last_touch: Vec<u32>,
    /// Touches per region over the last `horizon` intervals: the labels.
    recent_touches: Vec<u16>,
    touch_history: VecDeque<Vec<u32>>,
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
            share: vec![0.0; regions],
            frequency: vec![0.0; regions],
            last_touch: vec![0; regions],
            recent_touches: vec![0; regions],
            touch_history: VecDeque::new(),
            pending: VecDeque::new(),
            weights: INITIAL_WEIGHTS,
        }
    }

    fn regions(&self) -> u32 {
        self.share.len() as u32
    }

    fn observe(&mut self, accessed: &[u32]) {
        self.now += 1;
        let mut touched: Vec<(u32, u32)> = Vec::new();
        for &item in accessed {
            let region = item / REGION_ITEMS;
            match touched.last_mut() {
                Some((r, count)) if *r == region => *count += 1,
                _ => touched.push((region, 1)),
            }
        }
        for share in &mut self.share {
            *share *= 1.0 - FAST_SMOOTHING;
        }
        for frequency in &mut self.frequency {
            *frequency *= 1.0 - SLOW_SMOOTHING;
        }
        for &(region, count) in &touched {
            let r = region as usize;
            let size = REGION_ITEMS.min(self.items - region * REGION_ITEMS);
            self.share[r] += FAST_SMOOTHING * count as f32 / size as f32;
            self.frequency[r] += SLOW_SMOOTHING;
            self.last_touch[r] = self.now;
            self.recent_touches[r] += 1;
        }
        self.touch_history.push_back(touched.iter().map(|&(region, _)| region).collect());
        if self.touch_history.len() > self.horizon {
            for region in self.touch_history.pop_front().unwrap_or_default() {
                self.recent_touches[region as usize] -= 1;
            }
        }
        if self.pending.len() == self.horizon {
            if let Some(features) = self.pending.pop_front() {
                self.train(&features);
            }
        }
        self.pending.push_back((0..self.regions()).map(|r| self.features(r)).collect());
    }

    /// One batch gradient step of the logistic loss: the snapshot taken
    /// `horizon` intervals ago against whether each region was touched since.
    fn train(&mut self, features: &[[f32; FEATURES]]) {
        let mut gradient = [0.0; FEATURES];
        for (region, x) in features.iter().enumerate() {
            let label = if self.recent_touches[region] > 0 { 1.0 } else { 0.0 };
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
        let recency = match self.last_touch[r] {
            0 => 0.0,
            last => 1.0 / (self.now - last + 1) as f32,
        };
        [1.0, self.share[r], self.frequency[r], recency]
    }

    fn probability(&self, region: u32) -> f64 {
        logistic(&self.weights, &self.features(region))
    }
}

fn logistic(weights: &[f64; FEATURES], x: &[f32; FEATURES]) -> f64 {
    let z: f64 = weights.iter().zip(x).map(|(w, &xi)| w * f64::from(xi)).sum();
    1.0 / (1.0 + (-z).exp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workingset::Objective;

    #[test]
    fn only_touched_regions_are_hot() {
        let mut estimator = Hierarchical::new(REGION_ITEMS * 8, 4);
        for _ in 0..30 {
            estimator.observe(&[5, 6, 3 * REGION_ITEMS + 1]);
        }
        assert_eq!(estimator.hot_regions(), vec![0, 3]);
    }

    #[test]
    fn learning_drops_regions_touched_once_long_ago() {
        let mut estimator = Hierarchical::new(REGION_ITEMS * 8, 2);
        estimator.observe(&[2 * REGION_ITEMS]);
        for _ in 0..200 {
            estimator.observe(&[7]);
        }
        assert!(estimator.coarse.probability(2) < 0.05, "{}", estimator.coarse.probability(2));
        let goal = Goal { horizon: 2.0, objective: Objective::Accuracy };
        assert_eq!(estimator.predict(&goal).iter().collect::<Vec<_>>(), vec![7]);
    }
}
