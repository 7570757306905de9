//! The summary of a recorded memory write trace, as the `record-trace`
//! reply and a migration's report carry it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What a recorded trace holds and where it is. The intervals stay in the
/// file: this is small enough for a JSON report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceSummary {
    pub path: PathBuf,
    pub intervals: u64,
    /// The intervals' lengths summed: from when tracking started to the last scan.
    pub duration_ms: f64,
    /// Pages written, summed over intervals (a page written in two
    /// intervals counts twice).
    pub page_writes: u64,
    /// Why recording stopped early, if it did (a migration goes on without
    /// its trace); the file holds the intervals recorded before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
