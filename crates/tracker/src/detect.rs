//! Picks the first tracking method that works for a given QEMU process.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::hook_client::arm_hook;
use crate::maps::RamMapping;
use crate::pagemap_scan::PagemapScanTracker;
use crate::soft_dirty::SoftDirtyTracker;
use crate::WriteTracker;

/// Starts tracking writes to `ram` in process `pid` with the best method
/// available: `PAGEMAP_SCAN` through the hook listening on `hook_socket`,
/// else soft-dirty bits. Logs the method chosen and why others failed;
/// fails, naming every method's reason, when none works.
pub fn detect(
    pid: i32,
    ram: RamMapping,
    hook_socket: Option<&Path>,
) -> Result<Box<dyn WriteTracker>> {
    let pagemap_scan_error = match start_pagemap_scan(pid, ram, hook_socket) {
        Ok(tracker) => {
            tracing::info!(
                pid,
                method = %crate::TrackingMethod::PagemapScan,
                uffd_features = %tracker.features(),
                "tracking guest memory writes"
            );
            return Ok(Box::new(tracker));
        }
        Err(error) => error,
    };
    let soft_dirty_error = match SoftDirtyTracker::new(pid, ram) {
        Ok(tracker) => {
            tracing::warn!(
                pid,
                method = %crate::TrackingMethod::SoftDirty,
                unavailable = %format!("{pagemap_scan_error:#}"),
                "tracking guest memory writes with the fallback, which stops QEMU during scans"
            );
            return Ok(Box::new(tracker));
        }
        Err(error) => error,
    };
    bail!(
        "no method can track guest memory writes of process {pid}: \
         PAGEMAP_SCAN: {pagemap_scan_error:#}; soft-dirty: {soft_dirty_error:#}"
    )
}

fn start_pagemap_scan(
    pid: i32,
    ram: RamMapping,
    hook_socket: Option<&Path>,
) -> Result<PagemapScanTracker> {
    let hook_socket = hook_socket.context(
        "no hook socket (QEMU must run with LD_PRELOAD=libmllm_hook.so and MLLM_HOOK_SOCKET)",
    )?;
    // Checked first so that nothing is armed in QEMU for a method that
    // cannot be used.
    PagemapScanTracker::check_kernel_support(pid, ram)?;
    let armed = arm_hook(hook_socket, ram)?;
    PagemapScanTracker::new(pid, ram, armed)
}
