//! Guest-memory write tracking from outside QEMU.
//!
//! Every backend answers one question, [`WriteTracker::scan`]: which guest-RAM
//! pages were written since the previous scan? Reporting a page and
//! re-arming its tracking are one atomic step, so no write between two scans
//! is lost: a page written after the scan passed it shows up in the next one.
//!
//! - [`PagemapScanTracker`] (Linux 6.7+): the `mllm-hook` library preloaded
//!   into QEMU write-protects guest RAM with an asynchronous userfaultfd
//!   ([`arm_hook`]); the `PAGEMAP_SCAN` ioctl on QEMU's pagemap returns the
//!   written ranges and write-protects them again in one call.
//! - [`SoftDirtyTracker`]: the soft-dirty bits CRIU uses, for kernels built
//!   with `CONFIG_MEM_SOFT_DIRTY`.
//!
//! [`detect`] picks the first that works on this kernel and this process.
//!
//! Every failure is a [`TrackerError`], whose message is meant for an
//! operator.

mod detect;
mod error;
mod hook_client;
mod maps;
mod pagemap_scan;
mod procfs;
mod soft_dirty;
mod uapi;

use std::fmt;
use std::time::Duration;

pub use detect::detect;
pub use error::{MethodFailure, MisMapping, ProcAccess, TrackerError, WalkError};
pub use hook_client::{arm_hook, request_userfaultfd, ArmedHook};
pub use maps::{find_ram_mapping, RamMapping};
pub use mllm_core::memory::{PageIndex, PageRange, PAGE_SIZE};
pub use mllm_hook_protocol::UffdFeatures;
pub use pagemap_scan::PagemapScanTracker;
pub use soft_dirty::SoftDirtyTracker;

/// Reports the guest-RAM pages a process writes.
pub trait WriteTracker: Send {
    fn method(&self) -> TrackingMethod;

    /// Replaces the content of `written` with the pages written since the
    /// previous scan (sorted, disjoint, adjacent ranges merged) and restarts
    /// tracking from now. The first scan reports writes since the tracker
    /// was created. After an error, some pages may have been reset without
    /// being reported: treat all of guest RAM as written.
    fn scan(&mut self, written: &mut Vec<PageRange>) -> Result<ScanStats, TrackerError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackingMethod {
    /// `PAGEMAP_SCAN` over a userfaultfd armed in asynchronous write-protect mode.
    PagemapScan,
    /// Soft-dirty bits: `/proc/PID/clear_refs` and `pagemap` bit 55.
    SoftDirty,
}

impl fmt::Display for TrackingMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrackingMethod::PagemapScan => "PAGEMAP_SCAN with userfaultfd async write-protect",
            TrackingMethod::SoftDirty => "soft-dirty bits (clear_refs + pagemap)",
        })
    }
}

/// What one scan found and cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub pages_written: u64,
    pub ranges: usize,
    /// Kernel calls (ioctls or reads) the scan needed.
    pub kernel_calls: u32,
    pub duration: Duration,
}
