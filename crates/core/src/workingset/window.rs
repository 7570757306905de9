//! Per-item access counts over the last τ intervals, kept incrementally: each
//! interval adds its items and drops the oldest interval's.

use std::collections::VecDeque;

#[derive(Debug)]
pub struct WindowCounts {
    window: usize,
    counts: Vec<u8>,
    recent: VecDeque<Vec<u32>>,
}

impl WindowCounts {
    pub fn new(items: u32, window: u8) -> Self {
        assert!(window > 0, "a window holds at least one interval");
        WindowCounts {
            window: window.into(),
            counts: vec![0; items as usize],
            recent: VecDeque::with_capacity(window.into()),
        }
    }

    pub fn window(&self) -> usize {
        self.window
    }

    pub fn items(&self) -> u32 {
        u32::try_from(self.counts.len()).expect("one entry per item of a u32 count")
    }

    pub fn push(&mut self, accessed: &[u32]) {
        if self.recent.len() == self.window {
            if let Some(oldest) = self.recent.pop_front() {
                for item in oldest {
                    self.counts[item as usize] -= 1;
                }
            }
        }
        for &item in accessed {
            self.counts[item as usize] += 1;
        }
        self.recent.push_back(accessed.to_vec());
    }

    /// In how many of the last τ intervals `item` was accessed.
    pub fn count(&self, item: u32) -> u8 {
        self.counts.get(item as usize).copied().unwrap_or(0)
    }

    /// Every item accessed within the window (with repeats).
    pub fn accessed(&self) -> impl Iterator<Item = u32> + '_ {
        self.recent.iter().flatten().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_intervals_leave_the_window() {
        let mut counts = WindowCounts::new(10, 2);
        counts.push(&[1, 2]);
        counts.push(&[2]);
        assert_eq!((counts.count(1), counts.count(2)), (1, 2));
        counts.push(&[3]);
        assert_eq!(
            (counts.count(1), counts.count(2), counts.count(3)),
            (0, 1, 1)
        );
    }
}
