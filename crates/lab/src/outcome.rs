//! What a migration engine reports back to the lab, whichever engine ran.

use mllm_agent::DedupReport;

use crate::qemu_settings::QemuSettings;

/// Instants are host wall-clock µs since the epoch, comparable across both
/// VMs' QMP events and the serial lines.
#[derive(Debug, Default, Clone)]
pub struct MigrationOutcome {
    pub error: Option<String>,
    pub started_us: u64,
    /// The source released the VM.
    pub completed_us: Option<u64>,
    pub stopped_us: Option<u64>,
    pub resumed_us: Option<u64>,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub rounds: u64,
    /// mllm's test mode: the paused VM's wait for digests, both agents.
    pub verify_ms: Option<f64>,
    /// Downtime as the engine itself reports it (QEMU's `downtime`).
    pub reported_downtime_ms: Option<u64>,
    /// Pages sent more than once, where the engine counts them.
    pub retransmitted_pages: Option<u64>,
    /// Disk blocks sent more than once, where the engine counts them.
    pub retransmitted_blocks: Option<u64>,
    /// Pages sent with their content, re-sends included (QEMU's count).
    pub pages_sent: Option<u64>,
    /// How written pages were found, where the engine tracks them itself.
    pub tracking_method: Option<String>,
    /// Post-copy by mllm's agents: what moved after the switch and how
    /// long the destination's faults waited.
    pub postcopy: Option<PostcopyResult>,
    /// mllm's hot-data cache, when it was on.
    pub dedup: Option<DedupReport>,
    /// mllm's methods: the codecs the source's page batches went with.
    pub compression: Option<CompressionResult>,
    /// mllm's methods: whether the agents' link ran over TLS.
    pub agents_tls: Option<bool>,
    /// QEMU's methods: the migration settings as QEMU reported them back.
    pub qemu_settings: Option<QemuSettings>,
}

/// The codecs an mllm source compressed with: the adaptive choice can settle
/// differently in two runs of the same scenario, and the bytes follow it.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CompressionResult {
    /// The codec of the last batches (`none`, `lz4`, `zstd:LEVEL`).
    pub last: String,
    /// Batches compressed with each codec over the whole migration.
    pub batches: std::collections::BTreeMap<String, u64>,
}

/// What moved after the switch, in the lab's result.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PostcopyResult {
    /// Pages moved after the destination ran, pushed or asked for.
    pub pages: u64,
    /// Pages the destination touched before they arrived.
    pub faults: u64,
    pub fault_p50_ms: Option<f64>,
    pub fault_p99_ms: Option<f64>,
    pub fault_max_ms: Option<f64>,
    /// Disk blocks moved after the destination ran (none without a disk).
    #[serde(default)]
    pub blocks: u64,
    /// Guest disk requests that waited for a block from the source.
    #[serde(default)]
    pub block_fetches: u64,
    #[serde(default)]
    pub block_fetch_p99_ms: Option<f64>,
}
