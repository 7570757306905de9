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
    /// Disk blocks sent, zero-block markers included.
    #[serde(default)]
    pub blocks: u64,
    /// Frame bytes of the round's block batches.
    #[serde(default)]
    pub disk_bytes: u64,
    pub duration_ms: f64,
    /// The final round, sent with the VM stopped.
    pub stopped: bool,
}

/// What the post-copy of a disk did at the destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskPostcopyReport {
    /// Pending blocks installed from the source (pushed or fetched).
    pub blocks_installed: u64,
    /// Pending blocks the guest overwrote whole before they came: never fetched.
    pub blocks_overwritten: u64,
    /// Guest requests that waited for a block from the source.
    pub fetches: u64,
    pub fetch_p50_ms: Option<f64>,
    pub fetch_p99_ms: Option<f64>,
}

/// What a post-copy phase moved, from the source's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostcopyReport {
    /// Pages sent in the strategy's order.
    pub pages_pushed: u64,
    /// Pages sent because the destination asked (its guest touched them first).
    pub pages_on_demand: u64,
    /// Requests the destination sent (one may name several pages).
    pub requests: u64,
    /// Disk blocks sent in the strategy's order.
    #[serde(default)]
    pub blocks_pushed: u64,
    /// Disk blocks sent because the destination's guest needed them first.
    #[serde(default)]
    pub blocks_on_demand: u64,
    /// Times the link failed and a new connection resumed the post-copy.
    #[serde(default)]
    pub resumes: u32,
    /// The longest of those recoveries: from the source seeing the link
    /// fail to the destination's answer on a new connection.
    #[serde(default)]
    pub longest_recovery_ms: u64,
    /// What the destination still lacked at the last resume: only these
    /// were sent after it.
    #[serde(default)]
    pub pages_missing_at_resume: u64,
    #[serde(default)]
    pub blocks_missing_at_resume: u64,
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
    /// The source let the VM go: at `destination_running_us` in pre-copy,
    /// once the destination held every page in post-copy.
    #[serde(default)]
    pub released_us: u64,
}

/// What de-duplication did at the source (`mllm_core::dedup`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DedupReport {
    /// The index's size in entries.
    pub entries: u64,
    /// Pages and blocks hashed and looked up.
    pub hashed: u64,
    /// Pages and blocks sent as references (hits).
    pub references: u64,
    /// Of the hits, how many named a page of RAM; the rest named disk blocks.
    pub references_to_memory: u64,
    /// Hits whose content sits in the other space: a page sent as a disk
    /// block's content, or a block as a page's.
    pub cross_space: u64,
    /// Content bytes the references left off the link, before compression,
    /// less the references' own bytes.
    pub bytes_saved: u64,
    /// References the destination refused (its content at the named
    /// location differed) and whose content was sent instead.
    pub fallbacks: u64,
    /// Time spent hashing and looking up, per GiB hashed.
    pub cpu_seconds_per_gib: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceReport {
    pub vm_name: String,
    pub ram_bytes: u64,
    /// Which dirty-page tracker ran (`PAGEMAP_SCAN` or soft-dirty).
    pub tracking_method: String,
    /// Compression of the last page batches (`none`, `lz4`, `zstd:LEVEL`).
    pub compression: String,
    /// Batches compressed with each codec: the adaptive choice over time.
    #[serde(default)]
    pub compression_batches: std::collections::BTreeMap<String, u64>,
    pub switch_reason: SwitchReason,
    /// Every round, the final stopped one last.
    pub rounds: Vec<RoundReport>,
    pub pages_sent: u64,
    /// Pages sent more than once (every page is sent once by round 1).
    pub retransmitted_pages: u64,
    /// Disk blocks sent, in every round.
    #[serde(default)]
    pub blocks_sent: u64,
    /// Blocks sent beyond the used blocks at the start: blocks the guest
    /// wrote during the migration, sent again or for the first time.
    #[serde(default)]
    pub retransmitted_blocks: u64,
    /// Frame bytes of block batches.
    #[serde(default)]
    pub disk_bytes: u64,
    /// Link bytes of page batches and round ends.
    pub memory_bytes: u64,
    /// Bytes of QEMU's device-state stream (payload, without framing).
    pub device_state_bytes: u64,
    /// Every byte this agent sent to, and received from, the destination.
    pub link_bytes_sent: u64,
    pub link_bytes_received: u64,
    /// Link rate measured from acknowledgements when the switch was decided.
    pub rate_bytes_per_s: Option<f64>,
    /// Post-copy: what moved after the destination started running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postcopy: Option<PostcopyReport>,
    /// Whether the destination compared RAM digests (test mode) and found them equal.
    pub verified: bool,
    /// Test mode: how long the paused VM waited for this side's digests.
    /// Part of the downtime; a migration without `--verify` never spends it.
    #[serde(default)]
    pub verify_ms: f64,
    /// The memory write trace recorded during pre-copy, when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_trace: Option<TraceSummary>,
    /// De-duplication, when its index was on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<DedupReport>,
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
            .released_us
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
    /// Disk blocks written into the VM's disk, zero blocks included.
    #[serde(default)]
    pub blocks_received: u64,
    #[serde(default)]
    pub disk_bytes: u64,
    pub device_state_bytes: u64,
    pub link_bytes_received: u64,
    pub link_bytes_sent: u64,
    /// Whether the source sent a RAM digest (test mode) and it matched.
    pub verified: bool,
    /// Test mode: how long the VM, paused until it started here, waited for
    /// this side's digests.
    #[serde(default)]
    pub verify_ms: f64,
    /// References resolved by copying content held here.
    #[serde(default)]
    pub references_copied: u64,
    /// References refused (what was held at the named location did not
    /// hash to the source's hash) and asked for again.
    #[serde(default)]
    pub references_refused: u64,
    pub started_us: u64,
    /// QEMU finished loading the device state.
    pub device_state_loaded_us: u64,
    /// The destination VM's `RESUME` event.
    pub running_us: u64,
    /// Post-copy: what arrived after the switch, and how long faults waited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postcopy: Option<DestinationPostcopyReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_postcopy: Option<DiskPostcopyReport>,
}

/// What a post-copy phase did at the destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestinationPostcopyReport {
    /// Pending pages installed (each once).
    pub pages_installed: u64,
    /// Pages someone in the destination QEMU touched before they arrived,
    /// each asked for once.
    pub faults: u64,
    /// Time from a fault to its page's installation.
    pub fault_p50_ms: Option<f64>,
    pub fault_p99_ms: Option<f64>,
    pub fault_max_ms: Option<f64>,
    /// Pages the kernel already held when installed (should stay 0: nobody
    /// but the agent may fill a pending page).
    pub already_present: u64,
    /// Test mode: every pending page was checked against the source's
    /// digest as it was installed, every other one at the switch.
    pub verified: bool,
}
