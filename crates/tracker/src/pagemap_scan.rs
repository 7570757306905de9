//! Tracking with `PAGEMAP_SCAN` over guest RAM that the hook registered for
//! asynchronous write-protection: a written page has lost its write-protect
//! bit; one ioctl reports such pages and sets the bit again, per page under
//! the page-table lock, so no write slips between report and reset.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use crate::error::{TrackerError, WalkError};
use crate::hook_client::ArmedHook;
use crate::maps::RamMapping;
use crate::procfs::open_pagemap;
use crate::uapi::{
    PageRegion, PmScanArg, PAGEMAP_SCAN, PAGE_IS_WRITTEN, PM_SCAN_CHECK_WPASYNC,
    PM_SCAN_WP_MATCHING,
};
use crate::{ScanStats, TrackingMethod, UffdFeatures, WriteTracker};
use mllm_core::memory::{push_merged, total_pages, PageRange};

/// Output regions per ioctl. A full buffer only costs another call, which
/// resumes where the kernel stopped; 4096 regions (96 KiB) cover the
/// scattered writes of a busy second in one or two calls.
const DEFAULT_OUTPUT_REGIONS: usize = 4096;

pub struct PagemapScanTracker {
    pagemap: File,
    ram: RamMapping,
    features: UffdFeatures,
    output: Vec<PageRegion>,
    /// Holding the userfaultfd keeps QEMU's guest RAM registered.
    _uffd: OwnedFd,
}

impl std::fmt::Debug for PagemapScanTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PagemapScanTracker")
            .field("ram", &self.ram)
            .field("features", &self.features)
            .field("output_regions", &self.output.len())
            .finish_non_exhaustive()
    }
}

impl PagemapScanTracker {
    /// Tracks `ram` of process `pid`, which `armed` (from
    /// [`arm_hook`](crate::arm_hook)) write-protected.
    pub fn new(
        pid: i32,
        ram: RamMapping,
        armed: ArmedHook,
    ) -> Result<PagemapScanTracker, TrackerError> {
        let pagemap = open_pagemap(pid)?;
        // A walk that only checks registration: nothing is reported or reset.
        probe(&pagemap, ram, PM_SCAN_CHECK_WPASYNC)
            .map_err(|source| TrackerError::NotWriteProtected { source })?;
        Ok(PagemapScanTracker {
            pagemap,
            ram,
            features: armed.features,
            output: vec![PageRegion::default(); DEFAULT_OUTPUT_REGIONS],
            _uffd: armed.uffd,
        })
    }

    /// Checks that the kernel has `PAGEMAP_SCAN` (Linux 6.7+), before
    /// anything is armed.
    pub fn check_kernel_support(pid: i32, ram: RamMapping) -> Result<(), TrackerError> {
        probe(&open_pagemap(pid)?, ram, 0)
            .map_err(|source| TrackerError::PagemapScanUnsupported { source })
    }

    /// Changes how many regions one ioctl may return; smaller means more calls.
    pub fn with_output_regions(mut self, regions: usize) -> PagemapScanTracker {
        self.output = vec![PageRegion::default(); regions.max(1)];
        self
    }

    /// The userfaultfd features the hook was granted.
    pub fn features(&self) -> UffdFeatures {
        self.features
    }
}

impl WriteTracker for PagemapScanTracker {
    fn method(&self) -> TrackingMethod {
        TrackingMethod::PagemapScan
    }

    fn scan(&mut self, written: &mut Vec<PageRange>) -> Result<ScanStats, TrackerError> {
        let started = Instant::now();
        written.clear();
        let kernel_calls = self
            .collect_written(written)
            .map_err(|source| TrackerError::PagemapScan { source })?;
        Ok(ScanStats {
            pages_written: total_pages(written),
            ranges: written.len(),
            kernel_calls,
            duration: started.elapsed(),
        })
    }
}

impl PagemapScanTracker {
    /// Appends the written pages to `written`, write-protecting them again;
    /// returns the number of ioctls it took.
    fn collect_written(&mut self, written: &mut Vec<PageRange>) -> Result<u32, WalkError> {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
            start: self.ram.start,
            end: self.ram.end(),
            vec: self.output.as_mut_ptr() as u64,
            vec_len: self.output.len() as u64,
            category_mask: PAGE_IS_WRITTEN,
            return_mask: PAGE_IS_WRITTEN,
            ..PmScanArg::default()
        };
        let mut kernel_calls = 0;
        loop {
            let filled = pagemap_scan(&self.pagemap, &mut arg)?;
            kernel_calls += 1;
            for region in &self.output[..filled] {
                let first = self.ram.page_at(region.start);
                let end = self.ram.page_at(region.end);
                push_merged(written, PageRange::new(first, end));
            }
            if arg.walk_end >= arg.end {
                return Ok(kernel_calls);
            }
            // The output buffer filled up: resume where the walk stopped.
            if arg.walk_end <= arg.start {
                return Err(WalkError::NoProgress { at: arg.start });
            }
            arg.start = arg.walk_end;
        }
    }
}

/// Walks `ram` with `flags` and no output buffer.
fn probe(pagemap: &File, ram: RamMapping, flags: u64) -> Result<(), WalkError> {
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        flags,
        start: ram.start,
        end: ram.end(),
        ..PmScanArg::default()
    };
    pagemap_scan(pagemap, &mut arg)?;
    if arg.walk_end < arg.end {
        return Err(WalkError::Stopped { at: arg.walk_end });
    }
    Ok(())
}

/// One PAGEMAP_SCAN call; returns how many output regions it filled.
fn pagemap_scan(pagemap: &File, arg: &mut PmScanArg) -> io::Result<usize> {
    // SAFETY: `arg` is a pm_scan_arg of the size it declares; `vec` is null
    // with `vec_len` 0, or points to `vec_len` PageRegions owned by the caller
    // and unused elsewhere during the call.
    let filled = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, arg as *mut PmScanArg) };
    usize::try_from(filled).map_err(|_| io::Error::last_os_error())
}
