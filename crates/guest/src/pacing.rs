//! Timing: fixed-rate event schedules and the pace of verification sweeps.
//!
//! Time is always passed in, so the arithmetic is tested without sleeping.

use std::time::{Duration, Instant};

use crate::convert::{saturating_u64, saturating_usize};

/// A fixed-rate schedule that stays exact on average although sleeps overshoot.
///
/// Events are due at start, start + interval, start + 2·interval, …; after an
/// oversleep the events that fell due meanwhile are granted at once, up to
/// `max_burst`. A longer lag (the VM was paused, or the work cannot keep up)
/// is forgiven rather than replayed, and the schedule restarts from now.
#[derive(Debug, Clone)]
pub struct Pacer {
    interval: Duration,
    next_due: Instant,
    max_burst: u64,
}

impl Pacer {
    /// `interval` must be non-zero; the first event is due at `start`.
    pub fn new(interval: Duration, start: Instant, max_burst: u64) -> Self {
        assert!(!interval.is_zero(), "a pacer needs a non-zero interval");
        Pacer {
            interval,
            next_due: start,
            max_burst: max_burst.max(1),
        }
    }

    /// A pacer for `per_second` events a second that may catch up on at most
    /// `catch_up` of lag (but always at least one event).
    pub fn per_second(per_second: f64, start: Instant, catch_up: Duration) -> Self {
        let interval = Duration::from_secs_f64(1.0 / per_second).max(Duration::from_nanos(1));
        let max_burst = saturating_u64(catch_up.as_secs_f64() * per_second);
        Pacer::new(interval, start, max_burst)
    }

    /// How many events are due at `now`; they count as done once returned.
    pub fn take_due(&mut self, now: Instant) -> u64 {
        if now < self.next_due {
            return 0;
        }
        let interval_ns = self.interval.as_nanos();
        let due = (now - self.next_due).as_nanos() / interval_ns + 1;
        let Some(due) = u64::try_from(due).ok().filter(|&due| due <= self.max_burst) else {
            self.next_due = now + self.interval;
            return self.max_burst;
        };
        let advance = u64::try_from(u128::from(due) * interval_ns)
            .expect("due · interval ≤ lag + interval, far below u64 nanoseconds");
        self.next_due += Duration::from_nanos(advance);
        due
    }

    pub fn next_due(&self) -> Instant {
        self.next_due
    }
}

/// Sleeps until `deadline`; returns at once if it has passed.
pub fn sleep_until(deadline: Instant) {
    if let Some(left) = deadline.checked_duration_since(Instant::now()) {
        std::thread::sleep(left);
    }
}

/// How many of `total` items a verification sweep should have checked after
/// `elapsed` of its `period`: the sweep is spread evenly over the period, so
/// verification costs a steady share of the CPU or disk instead of a periodic stall.
pub fn sweep_target(elapsed: Duration, period: Duration, total: usize) -> usize {
    if elapsed >= period {
        return total;
    }
    let fraction = elapsed.as_secs_f64() / period.as_secs_f64();
    saturating_usize((total as f64 * fraction).ceil()).min(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn nothing_is_due_before_the_schedule() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(MS, t0 + MS, 10);
        assert_eq!(pacer.take_due(t0), 0);
        assert_eq!(pacer.take_due(t0 + MS), 1);
        assert_eq!(pacer.take_due(t0 + MS), 0);
        assert_eq!(pacer.next_due(), t0 + 2 * MS);
    }

    #[test]
    fn oversleeping_is_made_up_so_the_average_rate_is_exact() {
        // 50 000 events/s, woken with a jittery 70–130 µs oversleep like nanosleep's slack.
        let t0 = Instant::now();
        let mut pacer = Pacer::per_second(50_000.0, t0, Duration::from_millis(50));
        let mut now = t0;
        let mut granted = 0;
        let mut jitter = 0u64;
        while now < t0 + Duration::from_secs(1) {
            granted += pacer.take_due(now);
            jitter = (jitter * 7 + 13) % 61;
            now = pacer.next_due() + Duration::from_micros(70 + jitter);
        }
        assert!((49_990..=50_010).contains(&granted), "{granted}");
    }

    #[test]
    fn low_rates_are_exact_too() {
        let t0 = Instant::now();
        let mut pacer = Pacer::per_second(1000.0, t0, Duration::from_millis(50));
        let granted: u64 = (0..=1_000_000u64)
            .step_by(37)
            .map(|us| pacer.take_due(t0 + Duration::from_micros(us)))
            .sum();
        assert_eq!(granted, 1000, "events at 0, 1, …, 999 ms");
    }

    #[test]
    fn a_long_pause_is_forgiven_not_replayed() {
        let t0 = Instant::now();
        let mut pacer = Pacer::per_second(1000.0, t0, Duration::from_millis(10));
        assert_eq!(pacer.take_due(t0), 1);
        let after_pause = t0 + Duration::from_secs(2);
        assert_eq!(pacer.take_due(after_pause), 10);
        assert_eq!(pacer.next_due(), after_pause + MS);
    }

    #[test]
    fn a_burst_of_one_never_emits_twice_in_a_row() {
        // The heartbeat's policy: after oversleeping, one line now, the next an interval later.
        let t0 = Instant::now();
        let mut pacer = Pacer::new(10 * MS, t0, 1);
        assert_eq!(pacer.take_due(t0 + 35 * MS), 1);
        assert_eq!(pacer.take_due(t0 + 36 * MS), 0);
        assert_eq!(pacer.next_due(), t0 + 45 * MS);
    }

    #[test]
    fn sweep_is_spread_evenly_over_its_period() {
        let period = Duration::from_secs(2);
        assert_eq!(sweep_target(Duration::ZERO, period, 1000), 0);
        assert_eq!(sweep_target(Duration::from_millis(500), period, 1000), 250);
        assert_eq!(sweep_target(Duration::from_millis(1), period, 1000), 1);
        assert_eq!(sweep_target(period, period, 1000), 1000);
        assert_eq!(sweep_target(3 * period, period, 1000), 1000);
    }
}
