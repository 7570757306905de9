//! The bottleneck of one direction: a FIFO queue drained at the line rate,
//! shared by every connection through the link.
//!
//! It is a token bucket without burst allowance, kept as a virtual clock: the
//! time at which the line finishes sending everything admitted so far. A
//! chunk finishes serializing after everything ahead of it plus its own
//! transmission time. It enters the queue once the queue has room for it;
//! until then it waits its turn in the order chunks were read, and its
//! reader reads nothing more (backpressure), so each connection keeps at
//! most one chunk waiting outside the queue. Waiting in read order is what
//! shares the line fairly between busy connections. No bytes are stored
//! here: chunks wait in their connection's pipe.

use std::time::Instant;

use crate::LinkConfig;

pub(crate) struct Bottleneck {
    config: LinkConfig,
    /// When the line has sent everything admitted so far.
    busy_until: Instant,
}

#[derive(Debug, PartialEq)]
pub(crate) struct Admission {
    /// When the chunk fits the queue; its reader may read again after this.
    pub(crate) enters_at: Instant,
    /// When its last byte leaves the line.
    pub(crate) serialized_at: Instant,
}

impl Bottleneck {
    pub(crate) fn new(config: &LinkConfig, now: Instant) -> Bottleneck {
        Bottleneck {
            config: config.clone(),
            busy_until: now,
        }
    }

    /// Queues a chunk of `bytes` (at most the queue size) read at `now`.
    pub(crate) fn admit(&mut self, bytes: usize, now: Instant) -> Admission {
        debug_assert!(
            bytes <= self.config.queue_bytes,
            "chunks never exceed the queue"
        );
        // The chunk fits once the backlog ahead of it is down to the room
        // the queue has besides it.
        let room_besides = self
            .config
            .serialization_time(self.config.queue_bytes - bytes);
        let fits_at = self.busy_until.checked_sub(room_besides).unwrap_or(now);
        self.busy_until = self.busy_until.max(now) + self.config.serialization_time(bytes);
        Admission {
            enters_at: fits_at.max(now),
            serialized_at: self.busy_until,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn link_8_mbit(queue_bytes: usize) -> LinkConfig {
        // 1 byte per microsecond makes the arithmetic readable.
        LinkConfig {
            bandwidth_bits_per_s: 8_000_000,
            queue_bytes,
            ..LinkConfig::default()
        }
    }

    fn us(micros: u64) -> Duration {
        Duration::from_micros(micros)
    }

    #[test]
    fn idle_line_serializes_at_once_and_back_to_back_chunks_queue() {
        let start = Instant::now();
        let mut line = Bottleneck::new(&link_8_mbit(10_000), start);
        let at_once = |done| Admission {
            enters_at: start,
            serialized_at: start + us(done),
        };
        assert_eq!(line.admit(1_000, start), at_once(1_000));
        assert_eq!(line.admit(500, start), at_once(1_500));
        // After the line went idle, a chunk starts when it arrives.
        let later = start + us(5_000);
        assert_eq!(
            line.admit(100, later),
            Admission {
                enters_at: later,
                serialized_at: later + us(100)
            }
        );
    }

    #[test]
    fn a_chunk_enters_a_full_queue_when_there_is_room() {
        let start = Instant::now();
        let mut line = Bottleneck::new(&link_8_mbit(3_000), start);
        for _ in 0..3 {
            assert_eq!(line.admit(1_000, start).enters_at, start);
        }
        // Room for a fourth once the first has left the line.
        assert_eq!(
            line.admit(1_000, start),
            Admission {
                enters_at: start + us(1_000),
                serialized_at: start + us(4_000)
            }
        );
        // A fifth, read at the same time, waits behind the fourth.
        assert_eq!(line.admit(1_000, start).enters_at, start + us(2_000));
    }

    #[test]
    fn occupancy_never_exceeds_the_queue() {
        let queue_bytes = 5_000;
        let start = Instant::now();
        let mut line = Bottleneck::new(&link_8_mbit(queue_bytes), start);
        let mut now = start;
        for step in 0..1_000usize {
            let admission = line.admit(step * 37 % 1_500, now);
            assert!(admission.enters_at >= now);
            // In the queue: everything ahead of the chunk, and the chunk.
            let occupancy_us = (admission.serialized_at - admission.enters_at).as_micros();
            assert!(
                occupancy_us <= queue_bytes as u128,
                "{occupancy_us} bytes queued"
            );
            // A reader reads again after its chunk entered, sometimes later.
            now = admission.enters_at + us(step as u64 % 7 * 100);
        }
    }
}
