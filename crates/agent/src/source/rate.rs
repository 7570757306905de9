//! The link rate, measured from the destination's acknowledgements.
//!
//! What the socket accepts says nothing about the link: the kernel's buffers
//! and the link's deep queue swallow megabytes at once. What the destination
//! acknowledges arrives at the pace the bottleneck delivers. The rate is the
//! acknowledged bytes over the last `WINDOW`, counted only while the link
//! stayed busy (something unacknowledged all along), so the idle time between
//! two small rounds does not read as a slow link.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(1);
/// Fewer acknowledgements than this in a busy period measure the spacing of
/// a handful of batches, not the link: keep the previous estimate instead.
const MIN_ACKS: usize = 4;

#[derive(Debug, Clone, Copy)]
struct Ack {
    at: Instant,
    /// Acknowledged bytes since the migration began, this one included.
    acked_total: u64,
}

#[derive(Debug, Default)]
pub(crate) struct DeliveryRate {
    /// Acknowledgements of the current busy period within the window.
    recent: VecDeque<Ack>,
    estimate: Option<f64>,
    first: Option<Ack>,
    last: Option<Ack>,
}

impl DeliveryRate {
    /// Records an acknowledgement; `still_busy` says whether anything else
    /// was still unacknowledged after it.
    pub(crate) fn on_ack(&mut self, at: Instant, acked_total: u64, still_busy: bool) {
        let ack = Ack { at, acked_total };
        self.first.get_or_insert(ack);
        self.last = Some(ack);
        self.recent.push_back(ack);
        // Keep one sample older than the window as the reference point.
        while self.recent.len() > 2 && at.duration_since(self.recent[1].at) >= WINDOW {
            self.recent.pop_front();
        }
        if self.recent.len() >= MIN_ACKS {
            let oldest = self.recent[0];
            let span = at.duration_since(oldest.at).as_secs_f64();
            if span > 0.0 {
                self.estimate = Some((acked_total - oldest.acked_total) as f64 / span);
            }
        }
        if !still_busy {
            // The link may idle now; the next busy period starts afresh.
            self.recent.clear();
        }
    }

    /// Bytes per second: the recent busy-period rate, else the average since
    /// the first acknowledgement, else unknown.
    pub(crate) fn bytes_per_second(&self) -> Option<f64> {
        self.estimate.or_else(|| {
            let (first, last) = (self.first?, self.last?);
            let span = last.at.duration_since(first.at).as_secs_f64();
            (span > 0.0).then(|| (last.acked_total - first.acked_total) as f64 / span)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Acknowledges `count` batches of `bytes`, one every `every`.
    fn acks(
        rate: &mut DeliveryRate,
        start: Instant,
        from_total: u64,
        count: u32,
        bytes: u64,
        every: Duration,
        busy: bool,
    ) -> (Instant, u64) {
        let mut total = from_total;
        let mut at = start;
        for i in 0..count {
            at = start + every * i;
            total += bytes;
            rate.on_ack(at, total, busy || i + 1 < count);
        }
        (at, total)
    }

    #[test]
    fn steady_acknowledgements_give_the_link_rate() {
        let mut rate = DeliveryRate::default();
        // 1 MB every 10 ms: 100 MB/s.
        acks(
            &mut rate,
            Instant::now(),
            0,
            200,
            1_000_000,
            Duration::from_millis(10),
            true,
        );
        let measured = rate.bytes_per_second().unwrap();
        assert!((measured - 100e6).abs() < 1e3, "{measured}");
    }

    #[test]
    fn idle_time_between_busy_periods_is_not_counted() {
        let mut rate = DeliveryRate::default();
        let start = Instant::now();
        let (end, total) = acks(
            &mut rate,
            start,
            0,
            50,
            1_000_000,
            Duration::from_millis(10),
            false,
        );
        // Five idle seconds, then a short burst at the same rate.
        acks(
            &mut rate,
            end + Duration::from_secs(5),
            total,
            10,
            1_000_000,
            Duration::from_millis(10),
            false,
        );
        let measured = rate.bytes_per_second().unwrap();
        assert!((measured - 100e6).abs() < 1e3, "{measured}");
    }

    #[test]
    fn a_rate_change_shows_within_the_window() {
        let mut rate = DeliveryRate::default();
        let start = Instant::now();
        let (end, total) = acks(
            &mut rate,
            start,
            0,
            300,
            1_000_000,
            Duration::from_millis(10),
            true,
        );
        // The link drops to 10 MB/s for two seconds.
        acks(
            &mut rate,
            end + Duration::from_millis(100),
            total,
            20,
            1_000_000,
            Duration::from_millis(100),
            true,
        );
        let measured = rate.bytes_per_second().unwrap();
        assert!((measured - 10e6).abs() < 1e3, "{measured}");
    }

    #[test]
    fn too_few_acknowledgements_fall_back_to_the_average() {
        let mut rate = DeliveryRate::default();
        assert_eq!(rate.bytes_per_second(), None);
        acks(
            &mut rate,
            Instant::now(),
            0,
            3,
            1_000_000,
            Duration::from_millis(100),
            true,
        );
        let measured = rate.bytes_per_second().unwrap();
        // Two batches after the first, in 200 ms.
        assert!((measured - 10e6).abs() < 1e3, "{measured}");
    }
}
