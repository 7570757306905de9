//! Why faults cannot be armed, waited for or served.

use std::io;

use mllm_core::memory::{PageIndex, PageRange};
use mllm_tracker::{RamMapping, TrackerError};

/// Everything that can go wrong in this crate. Each message says what was
/// being done; the source, when there is one, says why the system refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FaultError {
    /// The hook could not be reached, refused, or answered wrongly.
    #[error("asking the hook for missing-page faults")]
    Arm(#[source] TrackerError),
    #[error("waiting for missing-page faults on the userfaultfd")]
    Wait(#[source] io::Error),
    #[error(
        "the userfaultfd reported event 0x{event:x}, not a page fault (the hook enables no \
         other event)"
    )]
    UnexpectedEvent { event: u8 },
    #[error(
        "a fault at 0x{address:x}, outside guest RAM (0x{:x}+{})",
        ram.start,
        ram.len
    )]
    FaultOutsideRam { address: u64, ram: RamMapping },
    #[error("page {page} is beyond guest RAM ({pages} pages)")]
    PageOutOfRange { page: PageIndex, pages: PageIndex },
    /// `UFFDIO_COPY` failed: `ESRCH` when QEMU has exited, `ENOENT` when it
    /// changed its mappings meanwhile.
    #[error("installing page {page} (UFFDIO_COPY)")]
    Install {
        page: PageIndex,
        #[source]
        source: io::Error,
    },
    #[error("waking the threads waiting on page {page} (UFFDIO_WAKE)")]
    Wake {
        page: PageIndex,
        #[source]
        source: io::Error,
    },
    #[error("punching pages {}..{} out of the guest RAM file", pages.start, pages.end)]
    PunchHole {
        pages: PageRange,
        #[source]
        source: io::Error,
    },
}
