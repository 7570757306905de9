//! Making pages of the guest RAM file missing again.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use mllm_core::memory::{PageRange, PAGE_SIZE_U32};

use crate::FaultError;

/// Drops `pages` from the guest RAM file `ram_file` (open for writing),
/// keeping its size: their memory is freed and every mapping of the file
/// loses them. Afterwards a thread under a missing-page userfaultfd faults on
/// them; any other reader sees zeros (and makes the page present again).
pub fn punch_holes(ram_file: &File, pages: &[PageRange]) -> Result<(), FaultError> {
    let page_size = i64::from(PAGE_SIZE_U32);
    for &range in pages.iter().filter(|range| !range.is_empty()) {
        let offset = i64::from(range.start) * page_size;
        let len = i64::from(range.end - range.start) * page_size;
        // SAFETY: fallocate takes plain integers and a descriptor that
        // `ram_file` keeps open for the call.
        let result = unsafe {
            libc::fallocate(
                ram_file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        if result < 0 {
            return Err(FaultError::PunchHole {
                pages: range,
                source: io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}
