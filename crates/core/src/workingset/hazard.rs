//! How likely an item accessed once is to be accessed again, by how long ago
//! that access was.
//!
//! An item seen once has no gap of its own to go by. Among all such items, the
//! share that gets its second access in an interval, measured separately for
//! each silence (1, 2, 3–4, 5–8, … intervals since the access), is that item's
//! best rate estimate: right after a hot set moves, the freshly seen items come
//! back at once, while one-off background writes from long ago do not.

/// Weight of the newest interval in each bucket's rate.
const SMOOTHING: f64 = 0.5;
const BUCKETS: usize = 33;

pub struct SecondAccessHazard {
    /// Items accessed exactly once, by the interval (from 1) of that access.
    seen_once_at: Vec<u32>,
    /// Smoothed share of the items seen once that come back in an interval,
    /// by silence bucket.
    rate: [f64; BUCKETS],
    /// First-access intervals of the items coming back in the interval being
    /// observed.
    returning: Vec<u32>,
    new_items: u32,
}

fn bucket(silence: u32) -> usize {
    (u32::BITS - silence.max(1).leading_zeros()) as usize - 1
}

impl SecondAccessHazard {
    pub fn new() -> Self {
        SecondAccessHazard {
            seen_once_at: vec![0],
            rate: [0.0; BUCKETS],
            returning: Vec::new(),
            new_items: 0,
        }
    }

    /// An item is accessed for the first time in the interval being observed.
    pub fn first_access(&mut self) {
        self.new_items += 1;
    }

    /// An item first accessed in interval `first` (counted from 1) comes back
    /// in interval `now`.
    pub fn second_access(&mut self, first: u32) {
        self.returning.push(first);
    }

    /// Closes interval `now`: updates each bucket's rate from the items that
    /// were seen once before it, then books its first and second accesses.
    pub fn end_interval(&mut self, now: u32) {
        let mut pool = [0u64; BUCKETS];
        for (first, &count) in self.seen_once_at.iter().enumerate().skip(1) {
            pool[bucket(now - first as u32)] += u64::from(count);
        }
        let mut came_back = [0u64; BUCKETS];
        for &first in &self.returning {
            came_back[bucket(now - first)] += 1;
            self.seen_once_at[first as usize] -= 1;
        }
        for b in 0..BUCKETS {
            if pool[b] > 0 {
                let share = came_back[b] as f64 / pool[b] as f64;
                self.rate[b] += SMOOTHING * (share - self.rate[b]);
            }
        }
        self.returning.clear();
        self.seen_once_at.push(std::mem::take(&mut self.new_items));
    }

    /// Probability that an item seen once comes back in the next interval,
    /// `silence` intervals after its access.
    pub fn rate(&self, silence: u32) -> f64 {
        self.rate[bucket(silence)]
    }

    /// Probability that an item seen once comes back within `horizon`
    /// intervals from a silence of `silence`: survival through each silence
    /// ahead at that silence's own rate. Items seen once are a mix (the rest
    /// of a new hot set, one-off writes) whose rate falls as silence grows, so
    /// a constant rate would overstate it.
    pub fn return_probability(&self, silence: u32, horizon: f64) -> f64 {
        let (start, end) = (f64::from(silence.max(1)), f64::from(silence.max(1)) + horizon);
        let mut log_survival = 0.0;
        for (b, &rate) in self.rate.iter().enumerate() {
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
        assert_eq!([bucket(1), bucket(2), bucket(3), bucket(4), bucket(8)], [0, 1, 1, 2, 3]);
    }

    #[test]
    fn fresh_items_that_come_back_raise_the_short_silence_rate_only() {
        let mut hazard = SecondAccessHazard::new();
        // Interval 1: ten items seen; interval 2: five of them come back.
        (0..10).for_each(|_| hazard.first_access());
        hazard.end_interval(1);
        (0..5).for_each(|_| hazard.second_access(1));
        hazard.end_interval(2);
        assert!((hazard.rate(1) - SMOOTHING * 0.5).abs() < 1e-12);
        assert_eq!(hazard.rate(8), 0.0);
        // Interval 3: none of the five left comes back after two intervals.
        hazard.end_interval(3);
        assert_eq!(hazard.rate(2), 0.0);
        assert!((hazard.rate(1) - 0.25).abs() < 1e-12, "no item was one interval old");
        // From silence 1, two intervals: 1 at rate 0.25, then 1 at rate 0.
        assert!((hazard.return_probability(1, 2.0) - 0.25).abs() < 1e-12);
        assert!((hazard.return_probability(1, 0.5) - (1.0 - 0.75f64.sqrt())).abs() < 1e-12);
    }
}
