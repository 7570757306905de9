//! How likely an item accessed once is to be accessed again, by how long ago
//! that access was.
//!
//! An item seen once has no gap of its own to go by. Among all such items, the
//! share that gets its second access in an interval, measured separately for
//! each silence (1, 2, 3–4, 5–8, … intervals since the access), is that item's
//! best rate estimate: right after a hot set moves, the freshly seen items come
//! back at once, while one-off background writes from long ago do not.
//!
//! Items first accessed in a busy 2 MiB region (the front of a new hot set)
//! and in a quiet one (a stray write) are counted apart: right after a hot set
//! moves, both are fresh, but only the first kind comes back.

/// Weight of the newest interval in each bucket's rate.
const SMOOTHING: f64 = 0.5;
const BUCKETS: usize = 33;

/// Where an item was first accessed: `Quiet` or `Busy` region.
pub type Origin = usize;
pub const QUIET: Origin = 0;
pub const BUSY: Origin = 1;

#[derive(Debug)]
pub struct SecondAccessHazard {
    /// Items accessed exactly once, by the interval (from 1) of that access
    /// and by origin.
    seen_once_at: Vec<[u32; 2]>,
    /// Smoothed share of the items seen once that come back in an interval,
    /// by origin and silence bucket.
    rate: [[f64; BUCKETS]; 2],
    /// First-access intervals and origins of the items coming back in the
    /// interval being observed.
    returning: Vec<(u32, Origin)>,
    new_items: [u32; 2],
}

fn bucket(silence: u32) -> usize {
    (u32::BITS - silence.max(1).leading_zeros()) as usize - 1
}

impl SecondAccessHazard {
    pub fn new() -> Self {
        SecondAccessHazard {
            seen_once_at: vec![[0; 2]],
            rate: [[0.0; BUCKETS]; 2],
            returning: Vec::new(),
            new_items: [0; 2],
        }
    }

    /// An item is accessed for the first time in the interval being observed.
    pub fn first_access(&mut self, origin: Origin) {
        self.new_items[origin] += 1;
    }

    /// An item first accessed in interval `first` (counted from 1) comes back.
    pub fn second_access(&mut self, first: u32, origin: Origin) {
        self.returning.push((first, origin));
    }

    /// Closes interval `now`: updates each bucket's rate from the items that
    /// were seen once before it, then books its first and second accesses.
    pub fn end_interval(&mut self, now: u32) {
        let mut pool = [[0u64; BUCKETS]; 2];
        for (first, counts) in self.seen_once_at.iter().enumerate().skip(1) {
            let first = u32::try_from(first).expect("one entry per interval, counted in u32");
            for origin in [QUIET, BUSY] {
                pool[origin][bucket(now - first)] += u64::from(counts[origin]);
            }
        }
        let mut came_back = [[0u64; BUCKETS]; 2];
        for &(first, origin) in &self.returning {
            came_back[origin][bucket(now - first)] += 1;
            self.seen_once_at[first as usize][origin] -= 1;
        }
        for origin in [QUIET, BUSY] {
            for b in 0..BUCKETS {
                if pool[origin][b] > 0 {
                    let share = came_back[origin][b] as f64 / pool[origin][b] as f64;
                    let rate = &mut self.rate[origin][b];
                    *rate += SMOOTHING * (share - *rate);
                }
            }
        }
        self.returning.clear();
        self.seen_once_at.push(std::mem::take(&mut self.new_items));
    }

    /// Probability that an item seen once comes back within `horizon`
    /// intervals from a silence of `silence`: survival through each silence
    /// ahead at that silence's own rate. Items seen once are a mix (the rest
    /// of a new hot set, one-off writes) whose rate falls as silence grows, so
    /// a constant rate would overstate it.
    pub fn return_probability(&self, origin: Origin, silence: u32, horizon: f64) -> f64 {
        let (start, end) = (
            f64::from(silence.max(1)),
            f64::from(silence.max(1)) + horizon,
        );
        let mut log_survival = 0.0;
        for (b, &rate) in self.rate[origin].iter().enumerate() {
            let (low, high) = ((1u64 << b) as f64, (1u64 << (b + 1)) as f64);
            let overlap = end.min(high) - start.max(low);
            if overlap > 0.0 {
                log_survival += overlap * (1.0 - rate.min(1.0 - 1e-12)).ln();
            }
        }
        1.0 - log_survival.exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!(
            [bucket(1), bucket(2), bucket(3), bucket(4), bucket(8)],
            [0, 1, 1, 2, 3]
        );
    }

    #[test]
    fn fresh_items_that_come_back_raise_the_short_silence_rate_only() {
        let mut hazard = SecondAccessHazard::new();
        // Interval 1: ten items seen in a busy region, ten in a quiet one;
        // interval 2: five of the busy ones come back.
        (0..10).for_each(|_| hazard.first_access(BUSY));
        (0..10).for_each(|_| hazard.first_access(QUIET));
        hazard.end_interval(1);
        (0..5).for_each(|_| hazard.second_access(1, BUSY));
        hazard.end_interval(2);
        assert!((hazard.return_probability(BUSY, 1, 1.0) - SMOOTHING * 0.5).abs() < 1e-12);
        assert_eq!(hazard.return_probability(QUIET, 1, 1.0), 0.0);
        assert_eq!(hazard.return_probability(BUSY, 8, 1.0), 0.0);
        // Interval 3: none of the five left comes back after two intervals.
        hazard.end_interval(3);
        assert_eq!(hazard.return_probability(BUSY, 2, 1.0), 0.0);
        assert!(
            (hazard.return_probability(BUSY, 1, 1.0) - 0.25).abs() < 1e-12,
            "no item was one interval old"
        );
        // From silence 1, two intervals: 1 at rate 0.25, then 1 at rate 0.
        assert!((hazard.return_probability(BUSY, 1, 2.0) - 0.25).abs() < 1e-12);
        let half = hazard.return_probability(BUSY, 1, 0.5);
        assert!((half - (1.0 - 0.75f64.sqrt())).abs() < 1e-12);
    }
}
