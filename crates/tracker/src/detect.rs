//! Picks the first tracking method that works for a given QEMU process.

use std::path::Path;

use crate::error::{FailureList, MethodFailure, TrackerError};
use crate::hook_client::arm_hook;
use crate::maps::RamMapping;
use crate::pagemap_scan::PagemapScanTracker;
use crate::soft_dirty::SoftDirtyTracker;
use crate::{TrackingMethod, WriteTracker};

/// Starts tracking writes to `ram` in process `pid` with the best method
/// available: `PAGEMAP_SCAN` through the hook listening on `hook_socket`,
/// else soft-dirty bits. Logs the method chosen and why the ones before it
/// failed; when none works, the error lists every method tried and why it
/// failed ([`TrackerError::NoMethodWorks`]).
pub fn detect(
    pid: i32,
    ram: RamMapping,
    hook_socket: Option<&Path>,
) -> Result<Box<dyn WriteTracker>, TrackerError> {
    let mut failures = Vec::new();
    match start_pagemap_scan(pid, ram, hook_socket) {
        Ok(tracker) => {
            tracing::info!(
                pid,
                method = %TrackingMethod::PagemapScan,
                uffd_features = %tracker.features(),
                "tracking guest memory writes"
            );
            return Ok(Box::new(tracker));
        }
        Err(error) => failures.push(MethodFailure {
            method: TrackingMethod::PagemapScan,
            error,
        }),
    }
    match SoftDirtyTracker::new(pid, ram) {
        Ok(tracker) => {
            tracing::warn!(
                pid,
                method = %TrackingMethod::SoftDirty,
                unavailable = %FailureList(&failures),
                "tracking guest memory writes with the fallback, which stops QEMU during scans"
            );
            return Ok(Box::new(tracker));
        }
        Err(error) => failures.push(MethodFailure {
            method: TrackingMethod::SoftDirty,
            error,
        }),
    }
    Err(TrackerError::NoMethodWorks { pid, failures })
}

fn start_pagemap_scan(
    pid: i32,
    ram: RamMapping,
    hook_socket: Option<&Path>,
) -> Result<PagemapScanTracker, TrackerError> {
    let hook_socket = hook_socket.ok_or(TrackerError::NoHookSocket)?;
    // Checked first so that nothing is armed in QEMU for a method that
    // cannot be used.
    PagemapScanTracker::check_kernel_support(pid, ram)?;
    let armed = arm_hook(hook_socket, ram)?;
    PagemapScanTracker::new(pid, ram, armed)
}
