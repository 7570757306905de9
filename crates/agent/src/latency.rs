//! Latency percentiles for the post-copy reports.

use std::time::Duration;

/// Nearest rank: the smallest of the sorted `latencies` at or above `share`,
/// in milliseconds; `None` without latencies.
pub(crate) fn percentile_ms(latencies: &[Duration], share: f64) -> Option<f64> {
    let rank = (share * latencies.len() as f64).ceil();
    let index = mllm_core::convert::saturating_usize(rank).saturating_sub(1);
    latencies.get(index).map(|d| d.as_secs_f64() * 1000.0)
}
