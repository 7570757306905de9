//! `result.json`: what one method did to one scenario. Schema: docs/results.md.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use mllm_agent::DedupReport;

use crate::fsck::FsckResult;
use crate::outcome::{CompressionResult, PostcopyResult};
use crate::physical_limit::PhysicalLimit;
use crate::qemu_settings::QemuSettings;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunResult {
    pub method: String,
    pub scenario: String,
    pub success: bool,
    pub error: Option<String>,
    /// Start of the migration to the source's release.
    pub total_time_ms: Option<f64>,
    /// Source paused (QMP `STOP`) to destination running (QMP `RESUME`).
    pub downtime_ms: Option<f64>,
    /// mllm in test mode: of the downtime, how long the paused VM waited
    /// for the agents' digests of RAM and disk (both sides added up). QEMU's
    /// methods compare nothing at the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_ms: Option<f64>,
    /// Largest gap between consecutive heartbeats seen by the host.
    pub guest_gap_ms: Option<f64>,
    /// Bytes the link carried, both directions.
    pub link_bytes: u64,
    pub link_bytes_to_destination: u64,
    pub link_bytes_to_source: u64,
    /// Connections the link carried (QEMU opens one per multifd channel
    /// and one for post-copy preemption besides its main stream).
    #[serde(default)]
    pub link_connections: u64,
    /// Memory bytes the migration sent, by its own count.
    pub memory_bytes: u64,
    /// Disk bytes the migration sent, by its own count.
    pub disk_bytes: u64,
    /// Memory passes (QEMU's dirty-sync count).
    pub rounds: u64,
    /// Downtime as the engine itself reports it (QEMU's `downtime`; for
    /// mllm, source stopped until the destination's confirmation arrived).
    pub reported_downtime_ms: Option<u64>,
    /// Pages sent more than once (mllm's engine counts them).
    pub retransmitted_pages: Option<u64>,
    /// Disk blocks sent more than once (mllm's engine counts them).
    #[serde(default)]
    pub retransmitted_blocks: Option<u64>,
    /// Pages sent with their content (QEMU's `ram.normal`), re-sends included.
    #[serde(default)]
    pub pages_sent: Option<u64>,
    /// How written pages were found (mllm's engine).
    pub tracking_method: Option<String>,
    /// Pages moved after the switch and fault latency (mllm's post-copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postcopy: Option<PostcopyResult>,
    /// mllm's hot-data cache: references sent, bytes they saved, fallbacks
    /// and hashing cost; absent when it was off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<DedupReport>,
    /// mllm's methods: the codec of the last page batches and how many
    /// batches went with each codec; absent for QEMU's methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<CompressionResult>,
    /// mllm's methods: whether the agents' link ran over mutual TLS (as in
    /// production; `mllm-plaintext` is the one without). `None` for QEMU's
    /// methods and in results written before TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents_tls: Option<bool>,
    /// QEMU's methods: migration capabilities and parameters of both QEMUs,
    /// as QEMU reported them back, and the disk mirror's settings.
    #[serde(default)]
    pub qemu: Option<QemuSettings>,
    /// The least time any method could take on this run's content and
    /// link; `None` only in results written before it was measured.
    #[serde(default)]
    pub physical_limit: Option<PhysicalLimit>,
    pub workload: WorkloadResult,
    pub destination: DestinationCheck,
    /// A Debian root disk's file system on the destination, checked by
    /// `e2fsck` once its QEMU stopped; absent for other disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsck: Option<FsckResult>,
    /// For a failed migration: was the source VM still running afterwards?
    pub source_running_after: Option<bool>,
    pub environment: Environment,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkloadResult {
    pub baseline_ops_per_s: Option<f64>,
    pub during_ops_per_s: Option<f64>,
    pub after_ops_per_s: Option<f64>,
    /// How much lower throughput was during the migration than before, in percent.
    pub degradation_pct: Option<f64>,
}

/// Evidence that the guest survived the move.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DestinationCheck {
    pub healthy: bool,
    pub last_source_heartbeat: Option<u64>,
    pub first_destination_heartbeat: Option<u64>,
    pub destination_heartbeats: u64,
    pub verified_after_switch: bool,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Environment {
    pub guest_image: String,
    pub accelerator: String,
    pub link_bandwidth: String,
    pub link_rtt_ms: f64,
    pub memory_mib: u64,
    /// The guest's disk, if it has one.
    #[serde(default)]
    pub disk_mib: Option<u64>,
    /// The mllm commit that measured it (`-dirty`: with uncommitted changes).
    #[serde(default)]
    pub commit: Option<String>,
    /// Which cores the vCPUs and the rest ran on; `None`: unpinned.
    #[serde(default)]
    pub placement: Option<String>,
}

impl RunResult {
    /// Total time as a multiple of the physical limit.
    pub fn times_limit(&self) -> Option<f64> {
        let limit_ms = self.physical_limit.as_ref()?.seconds * 1000.0;
        (limit_ms > 0.0).then_some(self.total_time_ms? / limit_ms)
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }

    pub fn read(path: &Path) -> Result<RunResult> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a result.json", path.display()))
    }
}
