//! Recording a trace of a VM outside any migration (`mllm trace record`).

use std::path::Path;
use std::time::{Duration, Instant};

use mllm_control::TraceSummary;
use mllm_core::memory::pages_in;
use mllm_qemu::QemuProcess;

use super::{ScanSchedule, TraceFile};
use crate::error::{Context, MigrationError};
use crate::tracking::start_tracking;

/// Records which pages the running VM `vm` (guest RAM in the shared file
/// `ram_file`) writes, one interval every `interval` for `length`, into the
/// binary memory trace `path`.
///
/// Arms the hook inside QEMU, so nothing else may track this VM meanwhile
/// (the daemon, `mllm-daemon`, sees to that); a later migration re-arms it.
pub fn record_memory_trace(
    vm: &QemuProcess,
    ram_file: &Path,
    path: &Path,
    interval: Duration,
    length: Duration,
) -> Result<TraceSummary, MigrationError> {
    if interval.is_zero() {
        return Err(MigrationError::Invalid(
            "the trace interval must be positive".into(),
        ));
    }
    let pages = pages_in(vm.config.memory_mib << 20).ok_or_else(|| {
        MigrationError::Invalid(format!("VM {} has no usable RAM size", vm.config.name))
    })?;
    let mut trace = TraceFile::create(path, pages)?;
    let mut tracker = start_tracking(vm, ram_file)?;
    let started = Instant::now();
    let mut schedule = ScanSchedule::new(started, interval);
    let mut last_scan = started;
    let mut written = Vec::new();
    while last_scan.duration_since(started) < length {
        std::thread::sleep(schedule.until_due(Instant::now()));
        tracker
            .scan(&mut written)
            .during("scanning for pages the guest wrote")?;
        let now = Instant::now();
        trace.push(now.duration_since(last_scan), &written)?;
        schedule.scanned(now);
        last_scan = now;
    }
    trace.finish()
}
