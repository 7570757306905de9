//! How likely an item that has been silent for a while is still in use,
//! learned from the guest itself.
//!
//! An item's rhythm (its mean gap `g`) predicts an access within `h` intervals
//! with probability `1 - exp(-h / g)` while the item is in use. Whether it still
//! is depends on how overdue it is: silence `s` against `g`. In a stationary
//! workload an overdue item is just late; when a hot set moves, overdue items
//! are gone. The curve is measured: every interval a sample of items is drawn
//! with their overdue ratio and rhythm prediction for the calibration horizon;
//! `horizon` intervals later, whether each was accessed is known. Per overdue
//! bucket, accesses seen over accesses predicted is the factor that turns the
//! rhythm prediction into a calibrated one.
//!
//! Buckets are split by whether the item's 2 MiB region is busy: when a hot
//! set moves, its items go silent together and their region with them, which
//! tells a hot set that left from items that are merely late.

use std::collections::VecDeque;

use crate::convert::saturating_usize;

/// Overdue buckets: ratio `< 1/4`, then doubling up to `>= 256`; for items in
/// quiet regions, then in busy ones.
const OVERDUE_BUCKETS: usize = 12;
const BUCKETS: usize = 2 * OVERDUE_BUCKETS;
const SAMPLE: usize = 256;
/// Pseudo-observations of the prior, which holds until evidence arrives.
const PSEUDO_COUNT: f64 = 4.0;
/// Prior probability that an item is still in use, before its silence is
/// taken into account.
const IN_USE_PRIOR: f64 = 0.9;
/// Per-interval decay of the evidence, so the curve follows the guest.
const DECAY: f64 = 0.97;

#[derive(Debug)]
pub struct StalenessCurve {
    horizon: u32,
    accessed: [f64; BUCKETS],
    predicted: [f64; BUCKETS],
    /// The factor per bucket, from the evidence so far.
    factors: [f64; BUCKETS],
    /// Samples waiting for their outcome, with the interval they were drawn at.
    pending: VecDeque<(u32, Vec<Sample>)>,
    rng: u64,
}

/// A sampled item: its bucket and its rhythm's prediction at the time.
#[derive(Debug)]
struct Sample {
    item: u32,
    bucket: usize,
    prediction: f64,
}

/// What the curve knows of an item.
#[derive(Clone, Copy, Debug)]
pub struct Overdue {
    pub silence: u32,
    pub gap: f64,
    /// Whether the item's region was busy in the last interval.
    pub busy_region: bool,
}

impl StalenessCurve {
    pub fn new(horizon: u32) -> Self {
        StalenessCurve {
            horizon: horizon.max(1),
            accessed: [0.0; BUCKETS],
            predicted: [0.0; BUCKETS],
            factors: std::array::from_fn(prior),
            pending: VecDeque::new(),
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// The calibration factor for an item.
    pub fn factor(&self, item: Overdue) -> f64 {
        self.factors[bucket(item)]
    }

    /// Closes interval `now`: settles the samples drawn `horizon` intervals
    /// ago (`last_access(item)` is the interval of its latest access), then
    /// draws new ones among `count` candidates given by `candidate(index)`
    /// (`None` for an item without a rhythm yet).
    pub fn end_interval(
        &mut self,
        now: u32,
        last_access: impl Fn(u32) -> u32,
        count: usize,
        candidate: impl Fn(usize) -> Option<(u32, Overdue)>,
    ) {
        if let Some((drawn_at, _)) = self.pending.front() {
            if now - drawn_at >= self.horizon {
                let (drawn_at, samples) = self.pending.pop_front().unwrap_or_default();
                self.accessed.iter_mut().for_each(|a| *a *= DECAY);
                self.predicted.iter_mut().for_each(|p| *p *= DECAY);
                for sample in samples {
                    self.predicted[sample.bucket] += sample.prediction;
                    if last_access(sample.item) > drawn_at {
                        self.accessed[sample.bucket] += 1.0;
                    }
                }
                for b in 0..BUCKETS {
                    self.factors[b] = (self.accessed[b] + PSEUDO_COUNT * prior(b))
                        / (self.predicted[b] + PSEUDO_COUNT);
                }
            }
        }
        if count == 0 {
            return;
        }
        let horizon = f64::from(self.horizon);
        let samples = (0..SAMPLE)
            .filter_map(|_| {
                candidate(
                    usize::try_from(self.next_random() % count as u64)
                        .expect("a remainder is below its usize divisor"),
                )
            })
            .map(|(item, overdue)| Sample {
                item,
                bucket: bucket(overdue),
                prediction: 1.0 - (-horizon / overdue.gap).exp(),
            })
            .collect();
        self.pending.push_back((now, samples));
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: cheap, deterministic, good enough to pick samples.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
}

/// Before evidence: the chance an item is still in use after a silence of
/// `ratio` mean gaps (at the bucket's low end), when a silence that long
/// happens to an item in use with probability `exp(1 - ratio)`.
fn prior(bucket: usize) -> f64 {
    let overdue = i32::try_from(bucket % OVERDUE_BUCKETS).expect("OVERDUE_BUCKETS is small");
    let ratio = 2f64.powi(overdue - 3);
    let likelihood = IN_USE_PRIOR * (1.0 - ratio).min(0.0).exp();
    likelihood / (likelihood + 1.0 - IN_USE_PRIOR)
}

fn bucket(item: Overdue) -> usize {
    let ratio = f64::from(item.silence) / item.gap;
    let overdue = saturating_usize(ratio.log2().floor() + 3.0).min(OVERDUE_BUCKETS - 1);
    if item.busy_region {
        OVERDUE_BUCKETS + overdue
    } else {
        overdue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet(silence: u32, gap: f64) -> Overdue {
        Overdue {
            silence,
            gap,
            busy_region: false,
        }
    }

    #[test]
    fn buckets_follow_the_overdue_ratio_and_the_region() {
        assert_eq!(bucket(quiet(1, 8.0)), 0);
        assert_eq!(bucket(quiet(2, 2.0)), 3);
        assert_eq!(bucket(quiet(9, 2.0)), 5);
        assert_eq!(bucket(quiet(100_000, 1.0)), OVERDUE_BUCKETS - 1);
        assert_eq!(
            bucket(Overdue {
                busy_region: true,
                ..quiet(9, 2.0)
            }),
            OVERDUE_BUCKETS + 5
        );
    }

    #[test]
    fn items_that_never_come_back_drive_the_factor_down() {
        let mut curve = StalenessCurve::new(2);
        // Every candidate is an item last seen at interval 1, gap 1, silent
        // since in a quiet region: overdue, and never accessed again.
        for now in 5..40 {
            curve.end_interval(
                now,
                |_| 1,
                10,
                |i| Some((u32::try_from(i).unwrap(), quiet(now, 1.0))),
            );
        }
        assert!(
            curve.factor(quiet(30, 1.0)) < 0.01,
            "{}",
            curve.factor(quiet(30, 1.0))
        );
        assert!(
            (curve.factor(quiet(1, 8.0)) - IN_USE_PRIOR).abs() < 1e-12,
            "no evidence for fresh items"
        );
        let busy = Overdue {
            busy_region: true,
            ..quiet(30, 1.0)
        };
        assert_eq!(
            curve.factor(busy),
            prior(bucket(busy)),
            "no evidence in busy regions"
        );
        assert!(
            prior(bucket(busy)) < 1e-3,
            "30 gaps of silence: surely gone"
        );
    }
}
