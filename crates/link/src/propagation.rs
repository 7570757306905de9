//! The far side of the bottleneck: when a chunk that finished serializing
//! reaches the other end of one connection.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng;

use crate::config::SEGMENT_BYTES;
use crate::LinkConfig;

pub(crate) struct Propagation {
    one_way: Duration,
    jitter_nanos: i64,
    segment_loss: f64,
    stall_time: Duration,
    rng: StdRng,
    /// TCP hands bytes over in order, so nothing arrives before what was
    /// sent ahead of it on the same connection.
    last_arrival: Option<Instant>,
}

impl Propagation {
    pub(crate) fn new(config: &LinkConfig, rng: StdRng) -> Propagation {
        Propagation {
            one_way: config.one_way_delay(),
            jitter_nanos: i64::try_from(config.jitter.as_nanos()).unwrap_or(i64::MAX),
            segment_loss: config.stall_probability,
            stall_time: config.stall_time,
            rng,
            last_arrival: None,
        }
    }

    /// Arrival time of a chunk of `bytes` whose last byte left the
    /// bottleneck at `serialized_at`.
    pub(crate) fn arrival(&mut self, serialized_at: Instant, bytes: usize) -> Instant {
        let mut arrival = serialized_at + self.one_way;
        if self.jitter_nanos > 0 {
            let offset = self.rng.gen_range(-self.jitter_nanos..=self.jitter_nanos);
            let magnitude = Duration::from_nanos(offset.unsigned_abs());
            arrival = if offset < 0 {
                arrival - magnitude
            } else {
                arrival + magnitude
            };
        }
        if self.segment_loss > 0.0 {
            let segments = bytes.div_ceil(SEGMENT_BYTES).max(1);
            // Past i32::MAX segments the chunk is lost for certain either way.
            let segments = i32::try_from(segments).unwrap_or(i32::MAX);
            let chunk_loss = 1.0 - (1.0 - self.segment_loss).powi(segments);
            if self.rng.gen_bool(chunk_loss.clamp(0.0, 1.0)) {
                arrival += self.stall_time;
            }
        }
        let arrival = self.last_arrival.map_or(arrival, |last| arrival.max(last));
        self.last_arrival = Some(arrival);
        arrival
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn propagation(config: LinkConfig) -> Propagation {
        Propagation::new(&config, StdRng::seed_from_u64(7))
    }

    #[test]
    fn plain_link_adds_half_the_rtt() {
        let mut path = propagation(LinkConfig::default());
        let sent = Instant::now();
        assert_eq!(path.arrival(sent, 1_000), sent + Duration::from_millis(25));
    }

    #[test]
    fn jitter_stays_within_bounds_and_keeps_order() {
        let jitter = Duration::from_millis(5);
        let mut path = propagation(LinkConfig {
            jitter,
            ..LinkConfig::default()
        });
        let start = Instant::now();
        let one_way = Duration::from_millis(25);
        let mut previous = start;
        let mut delays = Vec::new();
        for i in 0..1_000 {
            let sent = start + Duration::from_millis(i);
            let arrival = path.arrival(sent, 100);
            assert!(arrival >= previous, "in order");
            assert!(arrival >= sent + one_way - jitter && arrival <= sent + one_way + jitter);
            delays.push(arrival - sent);
            previous = arrival;
        }
        let spread = delays
            .iter()
            .max()
            .unwrap()
            .saturating_sub(*delays.iter().min().unwrap());
        assert!(spread > Duration::from_millis(5), "delays vary: {spread:?}");
    }

    #[test]
    fn loss_stalls_the_chunk_and_what_follows() {
        let stall_time = Duration::from_millis(200);
        let always = LinkConfig {
            stall_probability: 1.0,
            stall_time,
            ..LinkConfig::default()
        };
        let mut path = propagation(always);
        let sent = Instant::now();
        assert_eq!(path.arrival(sent, 10), sent + Duration::from_millis(225));

        let rare = LinkConfig {
            stall_probability: 0.01,
            stall_time,
            ..LinkConfig::default()
        };
        let mut path = propagation(rare);
        let stalled = (0..10_000)
            .filter(|i| {
                let sent = sent + Duration::from_secs(*i);
                path.arrival(sent, SEGMENT_BYTES) > sent + Duration::from_millis(25)
            })
            .count();
        assert!(
            (50..=150).contains(&stalled),
            "about 1% of segments: {stalled}"
        );
        // A 10-segment chunk is stalled with probability 1 - 0.99^10 ≈ 9.6%.
        let stalled = (0..10_000)
            .filter(|i| {
                let sent = sent + Duration::from_secs(20_000 + *i);
                path.arrival(sent, 10 * SEGMENT_BYTES) > sent + Duration::from_millis(25)
            })
            .count();
        assert!(
            (800..=1_100).contains(&stalled),
            "about 9.6% of chunks: {stalled}"
        );
    }
}
