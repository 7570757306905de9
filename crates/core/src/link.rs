//! The inter-datacenter link as the planner and the simulator model it.
//!
//! Data flows from source to destination as one stream at `bandwidth` bytes per
//! second; a byte arrives `rtt / 2` after it is sent. An on-demand fetch (a
//! post-copy fault) costs the faulting guest a round trip, the transfer of the
//! item, and the source's service time.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub bandwidth_bytes_per_s: f64,
    pub rtt_s: f64,
    /// Time the source takes to look up and read a requested item.
    pub fetch_service_s: f64,
}

impl Link {
    /// A link of `mbit` megabits per second (10^6 bits) and `rtt_ms` round trip,
    /// with 100 µs of service per on-demand fetch.
    pub fn from_mbit(mbit: f64, rtt_ms: f64) -> Link {
        Link {
            bandwidth_bytes_per_s: mbit * 1e6 / 8.0,
            rtt_s: rtt_ms / 1e3,
            fetch_service_s: 1e-4,
        }
    }

    pub fn transfer_s(&self, bytes: u64) -> f64 {
        bytes as f64 / self.bandwidth_bytes_per_s
    }

    /// Bytes the link carries in `seconds`.
    pub fn bytes_in(&self, seconds: f64) -> u64 {
        crate::convert::saturating_u64(seconds.max(0.0) * self.bandwidth_bytes_per_s)
    }

    /// How long a guest waits for an item it faulted on.
    pub fn fetch_s(&self, item_bytes: u64) -> f64 {
        self.rtt_s + self.transfer_s(item_bytes) + self.fetch_service_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hundred_megabit_moves_twelve_and_a_half_megabytes_per_second() {
        let link = Link::from_mbit(100.0, 50.0);
        assert_eq!(link.bytes_in(1.0), 12_500_000);
        assert!((link.transfer_s(12_500_000) - 1.0).abs() < 1e-12);
        assert!((link.fetch_s(4096) - (0.05 + 4096.0 / 12.5e6 + 1e-4)).abs() < 1e-12);
    }
}
