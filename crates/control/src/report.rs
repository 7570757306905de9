//! What a finished migration reports on each side. Timestamps are host wall
//! clock microseconds since the epoch, comparable with QMP event timestamps
//! (`mllm_qemu::qmp::wall_clock_us`).

use serde::{Deserialize, Serialize};

pub use mllm_core::strategy::SwitchReason;

use crate::memory_trace::TraceSummary;

/// One round of page transfer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundReport {
    pub round: u32,
    /// Pages sent, zero-page markers included.
    pub pages: u64,
    pub zero_pages: u64,
    /// Frame bytes of the round's page batches.
    pub bytes: u64,
    pub duration_ms: f64,
    /// The final round, sent with the VM stopped.
    pub stopped: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceTimings {
    pub started_us: u64,
    /// QMP `stop` returned: the VM is paused from here.
    pub stopped_us: u64,
    /// The last device-state byte was handed to the link.
    pub device_state_sent_us: u64,
    /// The destination's `DestinationRunning` arrived (one link delay after
    /// the destination resumed).
    pub destination_running_us: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceReport {
    pub vm_name: String,
    pub ram_bytes: u64,
    /// Which dirty-page tracker ran (`PAGEMAP_SCAN` or soft-dirty).
    pub tracking_method: String,
    /// Compression actually used for page batches.
    pub compression: String,
    pub switch_reason: SwitchReason,
    /// Every round, the final stopped one last.
    pub rounds: Vec<RoundReport>,
    pub pages_sent: u64,
    /// Pages sent more than once (every page is sent once by round 1).
    pub retransmitted_pages: u64,
    /// Link bytes of page batches and round ends.
    pub memory_bytes: u64,
    /// Bytes of QEMU's device-state stream (payload, without framing).
    pub device_state_bytes: u64,
    /// Every byte this agent sent to, and received from, the destination.
    pub link_bytes_sent: u64,
    pub link_bytes_received: u64,
    /// Link rate measured from acknowledgements when the switch was decided.
    pub rate_bytes_per_s: Option<f64>,
    /// Whether the destination compared RAM digests (test mode) and found them equal.
    pub verified: bool,
    /// The memory write trace recorded during pre-copy, when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_trace: Option<TraceSummary>,
    pub timings: SourceTimings,
}

impl SourceReport {
    /// Source stopped until the destination's confirmation arrived: an upper
    /// bound on the downtime (the destination resumed up to one link delay earlier).
    pub fn downtime_upper_bound_ms(&self) -> f64 {
        self.timings
            .destination_running_us
            .saturating_sub(self.timings.stopped_us) as f64
            / 1000.0
    }

    pub fn total_time_ms(&self) -> f64 {
        self.timings
            .destination_running_us
            .saturating_sub(self.timings.started_us) as f64
            / 1000.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestinationReport {
    pub vm_name: String,
    pub rounds: u32,
    pub pages_received: u64,
    pub zero_pages: u64,
    pub memory_bytes: u64,
    pub device_state_bytes: u64,
    pub link_bytes_received: u64,
    pub link_bytes_sent: u64,
    /// Whether the source sent a RAM digest (test mode) and it matched.
    pub verified: bool,
    pub started_us: u64,
    /// QEMU finished loading the device state.
    pub device_state_loaded_us: u64,
    /// The destination VM's `RESUME` event.
    pub running_us: u64,
}
