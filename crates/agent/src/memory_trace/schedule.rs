//! When a recorder scans: on a fixed grid of intervals from the start, so a
//! late scan makes the next interval shorter instead of delaying all later
//! ones, and the intervals average the one asked for.

use std::time::{Duration, Instant};

pub(crate) struct ScanSchedule {
    interval: Duration,
    next: Instant,
}

impl ScanSchedule {
    /// Scans every `interval` from `start`; a zero interval means always due.
    pub fn new(start: Instant, interval: Duration) -> ScanSchedule {
        ScanSchedule {
            interval,
            next: start + interval,
        }
    }

    /// Time left until the next scan is due (zero when it is).
    pub fn until_due(&self, now: Instant) -> Duration {
        self.next.saturating_duration_since(now)
    }

    /// A scan happened at `now`: the next one is due at the first grid
    /// point after it.
    pub fn scanned(&mut self, now: Instant) {
        if self.interval.is_zero() {
            return;
        }
        while self.next <= now {
            self.next += self.interval;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_scans_keep_the_grid() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let mut schedule = ScanSchedule::new(start, ms(100));
        assert_eq!(schedule.until_due(start + ms(30)), ms(70));
        // 30 ms late: the next scan is due 70 ms later, not 100.
        schedule.scanned(start + ms(130));
        assert_eq!(schedule.until_due(start + ms(130)), ms(70));
        // Three grid points missed: the next is the first one ahead.
        schedule.scanned(start + ms(450));
        assert_eq!(schedule.until_due(start + ms(450)), ms(50));
        assert_eq!(schedule.until_due(start + ms(600)), Duration::ZERO);
    }

    #[test]
    fn a_zero_interval_is_always_due() {
        let start = Instant::now();
        let mut schedule = ScanSchedule::new(start, Duration::ZERO);
        schedule.scanned(start + Duration::from_millis(5));
        assert_eq!(schedule.until_due(start), Duration::ZERO);
    }
}
