//! What a link is: its settings, their limits, and the quantities derived
//! from them that the relay works with.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::human::HumanLinkConfig;
use crate::units::{format_duration, format_rate, format_size};
use crate::LinkError;

/// Payload of a full-size TCP segment on a 1500-byte MTU path (IP and TCP
/// headers with timestamps take 52 bytes). Loss is drawn per segment.
pub(crate) const SEGMENT_BYTES: usize = 1448;
/// The smallest queue that still holds one packet.
const MIN_QUEUE_BYTES: usize = 1500;
const MAX_QUEUE_BYTES: usize = 1 << 30;
const MIN_BANDWIDTH: u64 = 8_000;
/// Far above what a user-space relay on one machine can carry.
const MAX_BANDWIDTH: u64 = 100_000_000_000;
const MAX_RTT: Duration = Duration::from_secs(10);
const MAX_STALL_TIME: Duration = Duration::from_secs(60);
/// Queues are sized in whole steps of this.
const QUEUE_STEP: usize = 64 << 10;
/// Bytes are moved in chunks of about this much serialization time: small
/// enough that delivery is smooth, large enough to keep the relay cheap.
const CHUNK_TIME: Duration = Duration::from_millis(1);
const MAX_CHUNK_BYTES: usize = 64 << 10;

/// One inter-datacenter link, the same in both directions.
///
/// Deserializes from (and serializes to) the human-friendly form described in
/// the crate docs, e.g. `bandwidth = "100Mbit"`, `rtt = "50ms"`, and validates
/// while doing so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "HumanLinkConfig", into = "HumanLinkConfig")]
pub struct LinkConfig {
    /// Bottleneck rate of each direction.
    pub bandwidth_bits_per_s: u64,
    /// Round-trip propagation delay; each direction adds half of it.
    pub rtt: Duration,
    /// Bottleneck buffer of each direction, shared by all its connections.
    /// When full the relay stops reading from senders (backpressure), it
    /// never drops.
    pub queue_bytes: usize,
    /// Each chunk's one-way delay varies uniformly within ±jitter; bytes of
    /// one connection still arrive in order, as TCP would deliver them.
    pub jitter: Duration,
    /// Probability that a 1448-byte segment is lost. A chunk holding a lost
    /// segment arrives `stall_time` late, and so does everything behind it
    /// on that connection (TCP's head-of-line blocking during retransmission).
    pub stall_probability: f64,
    /// How long a lost segment holds its connection up (a retransmission
    /// timeout: Linux waits at least 200 ms).
    pub stall_time: Duration,
}

impl Default for LinkConfig {
    /// 100 Mbit/s, 50 ms RTT, a queue of one bandwidth-delay product, no
    /// jitter, no loss.
    fn default() -> Self {
        let bandwidth_bits_per_s = 100_000_000;
        let rtt = Duration::from_millis(50);
        LinkConfig {
            bandwidth_bits_per_s,
            rtt,
            queue_bytes: LinkConfig::default_queue_bytes(bandwidth_bits_per_s, rtt),
            jitter: Duration::ZERO,
            stall_probability: 0.0,
            stall_time: Duration::from_millis(200),
        }
    }
}

impl LinkConfig {
    /// One bandwidth-delay product rounded up to a multiple of 64 KiB (at
    /// least 64 KiB): the classic router buffer, which lets a bulk transfer
    /// add up to one RTT of queueing delay to everything sharing the link.
    pub fn default_queue_bytes(bandwidth_bits_per_s: u64, rtt: Duration) -> usize {
        let bdp = bytes_in(bandwidth_bits_per_s, rtt).max(1);
        bdp.div_ceil(QUEUE_STEP) * QUEUE_STEP
    }

    /// Checks every setting against what the emulator can honour; the error
    /// names the offending field.
    pub fn validate(&self) -> Result<(), LinkError> {
        let invalid = |field, problem: String| Err(LinkError::InvalidConfig { field, problem });
        let bandwidth = self.bandwidth_bits_per_s;
        if !(MIN_BANDWIDTH..=MAX_BANDWIDTH).contains(&bandwidth) {
            return invalid(
                "bandwidth",
                format!(
                    "must be between {}/s and {}/s, got {}/s",
                    format_rate(MIN_BANDWIDTH),
                    format_rate(MAX_BANDWIDTH),
                    format_rate(bandwidth)
                ),
            );
        }
        if self.rtt > MAX_RTT {
            return invalid(
                "rtt",
                format!(
                    "must be at most {}, got {}",
                    format_duration(MAX_RTT),
                    format_duration(self.rtt)
                ),
            );
        }
        if !(MIN_QUEUE_BYTES..=MAX_QUEUE_BYTES).contains(&self.queue_bytes) {
            return invalid(
                "queue",
                format!(
                    "must be between {} (one packet) and {}, got {}",
                    format_size(MIN_QUEUE_BYTES),
                    format_size(MAX_QUEUE_BYTES),
                    format_size(self.queue_bytes)
                ),
            );
        }
        if self.jitter > self.one_way_delay() {
            return invalid(
                "jitter",
                format!(
                    "must not exceed the one-way delay (rtt/2 = {}), got {}",
                    format_duration(self.one_way_delay()),
                    format_duration(self.jitter)
                ),
            );
        }
        if !(0.0..=1.0).contains(&self.stall_probability) {
            return invalid(
                "stall_probability",
                format!("must be between 0 and 1, got {}", self.stall_probability),
            );
        }
        if self.stall_time > MAX_STALL_TIME {
            return invalid(
                "stall_time",
                format!(
                    "must be at most {}, got {}",
                    format_duration(MAX_STALL_TIME),
                    format_duration(self.stall_time)
                ),
            );
        }
        Ok(())
    }

    /// Propagation delay of each direction.
    pub fn one_way_delay(&self) -> Duration {
        self.rtt / 2
    }

    /// Time to push `bytes` through the bottleneck.
    pub(crate) fn serialization_time(&self, bytes: usize) -> Duration {
        let nanos = bytes as u128 * 8 * 1_000_000_000 / u128::from(self.bandwidth_bits_per_s);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Largest read the relay takes from a sender at once: about 1 ms at the
    /// line rate (so delivery stays smooth, like packets rather than bursts),
    /// never more than the queue can hold.
    pub(crate) fn chunk_bytes(&self) -> usize {
        bytes_in(self.bandwidth_bits_per_s, CHUNK_TIME)
            .clamp(SEGMENT_BYTES, MAX_CHUNK_BYTES)
            .min(self.queue_bytes)
    }

    /// Most bytes one connection may have inside the link in one direction
    /// (queued, propagating or waiting for a slow receiver), like a TCP
    /// window. Sized to never limit a receiver that keeps up: a full queue
    /// plus everything propagating, including jitter and a stall.
    pub(crate) fn window_bytes(&self) -> usize {
        let longest_flight = self.one_way_delay() + self.jitter + self.stall_time;
        self.queue_bytes + bytes_in(self.bandwidth_bits_per_s, longest_flight) + self.chunk_bytes()
    }
}

impl fmt::Display for LinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/s, rtt {}, queue {}",
            format_rate(self.bandwidth_bits_per_s),
            format_duration(self.rtt),
            format_size(self.queue_bytes)
        )?;
        if !self.jitter.is_zero() {
            write!(f, ", jitter ±{}", format_duration(self.jitter))?;
        }
        if self.stall_probability > 0.0 {
            write!(
                f,
                ", segment loss {} stalling {}",
                self.stall_probability,
                format_duration(self.stall_time)
            )?;
        }
        Ok(())
    }
}

/// Bytes carried at `bits_per_s` during `duration`.
fn bytes_in(bits_per_s: u64, duration: Duration) -> usize {
    let bytes = u128::from(bits_per_s) * duration.as_nanos() / 8_000_000_000;
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_a_100_mbit_50_ms_link_with_one_bdp_of_queue() {
        let config = LinkConfig::default();
        assert_eq!(config.bandwidth_bits_per_s, 100_000_000);
        assert_eq!(config.rtt, Duration::from_millis(50));
        // BDP = 12.5 MB/s × 50 ms = 625 000 bytes.
        assert_eq!(config.queue_bytes, 640 << 10);
        assert_eq!(config.jitter, Duration::ZERO);
        assert_eq!(config.stall_probability, 0.0);
        config.validate().unwrap();
    }

    #[test]
    fn validation_names_the_field() {
        let cases: [(&str, LinkConfig); 7] = [
            (
                "bandwidth",
                LinkConfig {
                    bandwidth_bits_per_s: 0,
                    ..LinkConfig::default()
                },
            ),
            (
                "bandwidth",
                LinkConfig {
                    bandwidth_bits_per_s: u64::MAX,
                    ..LinkConfig::default()
                },
            ),
            (
                "rtt",
                LinkConfig {
                    rtt: Duration::from_secs(3600),
                    ..LinkConfig::default()
                },
            ),
            (
                "queue",
                LinkConfig {
                    queue_bytes: 10,
                    ..LinkConfig::default()
                },
            ),
            (
                "jitter",
                LinkConfig {
                    jitter: Duration::from_millis(30),
                    ..LinkConfig::default()
                },
            ),
            (
                "stall_probability",
                LinkConfig {
                    stall_probability: f64::NAN,
                    ..LinkConfig::default()
                },
            ),
            (
                "stall_time",
                LinkConfig {
                    stall_time: Duration::from_secs(600),
                    ..LinkConfig::default()
                },
            ),
        ];
        for (field, config) in cases {
            let message = config.validate().unwrap_err().to_string();
            assert!(
                message.starts_with(&format!("invalid link config: {field}: ")),
                "{message}"
            );
        }
        let zero = LinkConfig {
            bandwidth_bits_per_s: 0,
            ..LinkConfig::default()
        };
        assert_eq!(
            zero.validate().unwrap_err().to_string(),
            "invalid link config: bandwidth: must be between 8kbit/s and 100Gbit/s, got 0bit/s"
        );
    }

    #[test]
    fn chunks_are_about_a_millisecond_and_fit_the_queue() {
        let at = |bits, queue_bytes| {
            LinkConfig {
                bandwidth_bits_per_s: bits,
                queue_bytes,
                ..LinkConfig::default()
            }
            .chunk_bytes()
        };
        assert_eq!(at(100_000_000, 1 << 20), 12_500);
        assert_eq!(at(1_000_000, 1 << 20), SEGMENT_BYTES);
        assert_eq!(at(10_000_000_000, 1 << 20), MAX_CHUNK_BYTES);
        assert_eq!(at(100_000_000, 4_000), 4_000);
    }

    #[test]
    fn window_covers_queue_and_flight() {
        let config = LinkConfig::default();
        // 640 KiB queue + 25 ms + 200 ms of stall at 12.5 MB/s + one chunk.
        assert_eq!(config.window_bytes(), 655_360 + 2_812_500 + 12_500);
    }
}
