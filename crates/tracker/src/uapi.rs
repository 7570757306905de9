//! Kernel ABI for `PAGEMAP_SCAN` (Linux 6.7+), declared from the kernel's
//! `include/uapi/linux/fs.h`: the installed headers and the libc crate
//! predate it.

use std::mem::size_of;

/// `struct pm_scan_arg`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct PmScanArg {
    pub size: u64,
    pub flags: u64,
    pub start: u64,
    pub end: u64,
    /// Written by the kernel: where the walk stopped (`end` when complete).
    pub walk_end: u64,
    pub vec: u64,
    pub vec_len: u64,
    pub max_pages: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

/// `struct page_region`: addresses `start..end` sharing `categories`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// Write-protect the matched pages again (the reset half of a scan).
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// Fail with EPERM on a page not registered for async write-protect.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
/// The page was written since it was last write-protected.
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;

/// `_IOWR('f', 16, struct pm_scan_arg)` in the generic ioctl encoding used by
/// x86 and arm64.
pub const PAGEMAP_SCAN: libc::Ioctl =
    ((3 << 30) | ((size_of::<PmScanArg>() as u64) << 16) | ((b'f' as u64) << 8) | 16)
        as libc::Ioctl;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_kernel() {
        assert_eq!(size_of::<PmScanArg>(), 96);
        assert_eq!(size_of::<PageRegion>(), 24);
        assert_eq!(PAGEMAP_SCAN, 0xC060_6610);
    }
}
