//! What one simulated migration did. Field names follow the lab's
//! `result.json` where they overlap.

use mllm_core::planner::Forecast;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimResult {
    pub method: String,
    /// False when the simulation hit its time cap first.
    pub completed: bool,
    /// Start of the migration to the source's release.
    pub total_time_ms: f64,
    /// Guest paused on the source to running on the destination.
    pub downtime_ms: f64,
    /// Start of the migration to the guest's pause: the pre-copy phase.
    pub precopy_ms: f64,
    /// Bytes the link carried to the destination: memory, disk, device state.
    pub link_bytes: u64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    /// Memory pre-copy passes.
    pub rounds: u64,
    /// Page transfers beyond each page's first.
    pub retransmitted_pages: u64,
    /// Block transfers beyond each block's first.
    pub retransmitted_blocks: u64,
    /// Pages and blocks the guest touched on the destination before they
    /// arrived.
    pub postcopy_faults: u64,
    /// Guest time spent waiting for those, summed over faults.
    pub fault_wait_ms: f64,
    /// The planner's prediction before the migration started (MLLM only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast: Option<Forecast>,
}

impl SimResult {
    pub fn new(method: String) -> Self {
        SimResult {
            method,
            completed: false,
            total_time_ms: 0.0,
            downtime_ms: 0.0,
            precopy_ms: 0.0,
            link_bytes: 0,
            memory_bytes: 0,
            disk_bytes: 0,
            rounds: 0,
            retransmitted_pages: 0,
            retransmitted_blocks: 0,
            postcopy_faults: 0,
            fault_wait_ms: 0.0,
            forecast: None,
        }
    }
}
