//! Recency: the items accessed most recently, as many as the guest's recent
//! footprint suggests it will touch over the horizon.

use super::{Estimator, Goal};
use crate::convert::saturating_usize;
use crate::pageset::PageSet;

#[derive(Debug)]
pub struct Lru {
    /// Interval (counted from 1) of each item's last access; 0 = never.
    last_access: Vec<u32>,
    /// Items ever accessed, so prediction does not scan the whole guest.
    seen: Vec<u32>,
    now: u32,
    /// Smoothed number of items accessed per interval.
    footprint: f64,
}

/// Weight of the newest interval in the footprint average.
const FOOTPRINT_SMOOTHING: f64 = 0.2;

impl Lru {
    pub fn new(items: u32) -> Self {
        Lru {
            last_access: vec![0; items as usize],
            seen: Vec::new(),
            now: 0,
            footprint: 0.0,
        }
    }
}

impl Estimator for Lru {
    fn name(&self) -> &'static str {
        "lru"
    }

    fn items(&self) -> u32 {
        u32::try_from(self.last_access.len()).expect("one entry per item of a u32 count")
    }

    fn observe(&mut self, accessed: &[u32]) {
        self.now += 1;
        for &item in accessed {
            let last = &mut self.last_access[item as usize];
            if *last == 0 {
                self.seen.push(item);
            }
            *last = self.now;
        }
        let size = accessed.len() as f64;
        self.footprint = if self.now == 1 {
            size
        } else {
            (1.0 - FOOTPRINT_SMOOTHING) * self.footprint + FOOTPRINT_SMOOTHING * size
        };
    }

    fn score(&self, item: u32) -> f64 {
        match self.last_access[item as usize] {
            0 => 0.0,
            last => 1.0 / f64::from(self.now - last + 1),
        }
    }

    fn scored(&self) -> Vec<(u32, f64)> {
        self.seen
            .iter()
            .map(|&item| (item, self.score(item)))
            .collect()
    }

    /// The `footprint × horizon` most recently used items (whole intervals at
    /// the cut are kept, so ties do not depend on item order).
    fn predict(&self, goal: &Goal) -> PageSet {
        let capacity = saturating_usize((self.footprint * goal.horizon.max(1.0)).ceil());
        let mut per_age = vec![0usize; self.now as usize + 1];
        for &item in &self.seen {
            per_age[(self.now - self.last_access[item as usize]) as usize] += 1;
        }
        let mut oldest_kept = 0;
        let mut kept = 0;
        for (age, &count) in per_age.iter().enumerate() {
            oldest_kept = u32::try_from(age).expect("ages run up to now, a u32");
            kept += count;
            if kept >= capacity {
                break;
            }
        }
        let mut set = PageSet::new(self.items());
        for &item in &self.seen {
            if self.now - self.last_access[item as usize] <= oldest_kept {
                set.insert(item);
            }
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workingset::Objective;

    #[test]
    fn keeps_most_recent_up_to_footprint_times_horizon() {
        let mut lru = Lru::new(100);
        for interval in 0..10u32 {
            lru.observe(&[interval * 2, interval * 2 + 1]);
        }
        let goal = Goal {
            horizon: 3.0,
            objective: Objective::Accuracy,
        };
        // Two items per interval over three intervals: the last three intervals.
        assert_eq!(
            lru.predict(&goal).iter().collect::<Vec<_>>(),
            vec![14, 15, 16, 17, 18, 19]
        );
        assert!(lru.score(19) > lru.score(10));
        assert_eq!(lru.score(50), 0.0);
    }
}
