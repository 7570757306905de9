//! The data the mllm agent reports about its work: a running migration's
//! [`Progress`], a finished one's [`SourceReport`] and [`DestinationReport`],
//! a recorded trace's [`TraceSummary`]. Plain types, serialized as JSON,
//! shared by the migration engine (`mllm-agent`) and whoever reads what it
//! reports, without linking the engine.

mod memory_trace;
mod progress;
mod report;

pub use memory_trace::TraceSummary;
pub use progress::{Phase, Progress};
pub use report::{DestinationReport, RoundReport, SourceReport, SourceTimings, SwitchReason};
