//! Memory write traces recorded from the tracker: each scan of the pages the
//! guest wrote becomes one interval of an mllm-core memory trace, appended
//! to a binary trace file as it comes, so a long recording never sits in
//! memory. Two recorders use it: the source during a migration
//! ([`crate::SourceSettings::trace_file`]) and [`record_memory_trace`] for
//! a VM that is not migrating (`mllm trace record`).

mod file;
mod schedule;
mod standalone;

pub(crate) use file::TraceFile;
pub(crate) use schedule::ScanSchedule;
pub use standalone::record_memory_trace;
