//! Why tracking cannot start, or a scan failed.

use std::error::Error;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mllm_core::memory::{PageIndex, PAGE_SIZE};
use mllm_hook_protocol::{ParseError, SOCKET_ENV};

use crate::TrackingMethod;

/// Everything that can go wrong in this crate. Each message says what was
/// being done, for an operator; the source, when there is one, says why the
/// system refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrackerError {
    #[error("guest RAM file {}", path.display())]
    RamFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("guest RAM of process {pid} in /proc/{pid}/maps: {} is not mapped", file.display())]
    RamNotMapped { pid: i32, file: PathBuf },
    #[error("guest RAM of process {pid} in /proc/{pid}/maps: {} {problem}", file.display())]
    RamMisMapped {
        pid: i32,
        file: PathBuf,
        problem: MisMapping,
    },
    #[error("guest RAM of process {pid} in /proc/{pid}/maps: malformed maps line {line:?}")]
    MalformedMaps { pid: i32, line: String },

    #[error("{access} {}", path.display())]
    Proc {
        access: ProcAccess,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "no hook socket (QEMU must run with LD_PRELOAD=libmllm_hook.so and {})",
        SOCKET_ENV
    )]
    NoHookSocket,
    /// Connecting to the hook, sending it the request or reading its reply
    /// failed.
    #[error("arming the mllm hook at {}", socket.display())]
    HookUnreachable {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("arming the mllm hook at {}: the hook refused: {reason}", socket.display())]
    HookRefused { socket: PathBuf, reason: String },
    #[error("arming the mllm hook at {}: unexpected reply from the hook", socket.display())]
    HookReplyMalformed {
        socket: PathBuf,
        #[source]
        source: ParseError,
    },
    #[error(
        "arming the mllm hook at {}: the hook replied OK without the userfaultfd",
        socket.display()
    )]
    HookSentNoDescriptor { socket: PathBuf },

    #[error("PAGEMAP_SCAN ioctl (needs Linux 6.7+)")]
    PagemapScanUnsupported {
        #[source]
        source: WalkError,
    },
    #[error(
        "guest RAM is not registered for async write-protect (EPERM means the hook \
         armed another range)"
    )]
    NotWriteProtected {
        #[source]
        source: WalkError,
    },
    #[error("PAGEMAP_SCAN")]
    PagemapScan {
        #[source]
        source: WalkError,
    },

    #[error("clear_refs did not clear the soft-dirty bit")]
    SoftDirtyNotCleared,
    #[error("a written page has no soft-dirty bit: the kernel lacks CONFIG_MEM_SOFT_DIRTY")]
    SoftDirtyUnsupported,
    #[error("clearing soft-dirty bits through /proc/{pid}/clear_refs")]
    ClearSoftDirty {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("process {pid} did not stop within {timeout:?}")]
    ProcessNotStopped { pid: i32, timeout: Duration },
    #[error("sending signal {signal} to process {pid}")]
    Signal {
        pid: i32,
        signal: i32,
        #[source]
        source: io::Error,
    },

    /// Every method failed; each failure says why, so this error has no
    /// single source.
    #[error(
        "no method can track guest memory writes of process {pid}: {}",
        FailureList(failures)
    )]
    NoMethodWorks {
        pid: i32,
        failures: Vec<MethodFailure>,
    },
}

impl TrackerError {
    /// For `map_err` on an access to `path` under /proc; the path is copied
    /// only on error.
    pub(crate) fn proc(
        access: ProcAccess,
        path: &Path,
    ) -> impl FnOnce(io::Error) -> TrackerError + '_ {
        move |source| TrackerError::Proc {
            access,
            path: path.to_owned(),
            source,
        }
    }
}

/// How guest RAM is mapped so that it cannot be tracked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MisMapping {
    /// `share=off`: guest writes never reach the file.
    Private,
    /// Mapped again at `second`, apart from the mapping at `first`.
    MoreThanOnce { first: u64, second: u64 },
    /// Not a whole number of pages, or more than a [`PageIndex`] numbers.
    NotWholePages { len: u64 },
}

impl fmt::Display for MisMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MisMapping::Private => {
                f.write_str("is mapped private (share=off): guest writes never reach the file")
            }
            MisMapping::MoreThanOnce { first, second } => write!(
                f,
                "is mapped more than once (at 0x{first:x} and 0x{second:x})"
            ),
            MisMapping::NotWholePages { len } => write!(
                f,
                "is mapped over {len} bytes: not a whole number of {PAGE_SIZE}-byte pages, \
                 or more than {} of them",
                PageIndex::MAX
            ),
        }
    }
}

/// What was being done to a file under /proc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcAccess {
    Open,
    Read,
    List,
}

impl fmt::Display for ProcAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProcAccess::Open => "opening",
            ProcAccess::Read => "reading",
            ProcAccess::List => "listing",
        })
    }
}

/// Why a `PAGEMAP_SCAN` walk over guest RAM failed.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error(transparent)]
    Ioctl(#[from] io::Error),
    /// A walk without an output buffer ended before the end of guest RAM.
    #[error("the walk stopped at 0x{at:x}")]
    Stopped { at: u64 },
    /// A walk resumed after a full output buffer did not move on.
    #[error("made no progress at 0x{at:x}")]
    NoProgress { at: u64 },
}

/// Why one tracking method cannot be used.
#[derive(Debug)]
pub struct MethodFailure {
    pub method: TrackingMethod,
    pub error: TrackerError,
}

impl fmt::Display for MethodFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.method, self.error)?;
        let mut source = self.error.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// Method failures one after the other, `; ` between them.
pub(crate) struct FailureList<'a>(pub &'a [MethodFailure]);

impl fmt::Display for FailureList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, failure) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{failure}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_method_is_shown_with_every_cause() {
        let failure = MethodFailure {
            method: TrackingMethod::PagemapScan,
            error: TrackerError::PagemapScanUnsupported {
                source: WalkError::Ioctl(io::Error::from_raw_os_error(libc::ENOTTY)),
            },
        };
        let shown = failure.to_string();
        assert!(
            shown.starts_with("PAGEMAP_SCAN with userfaultfd async write-protect: "),
            "{shown}"
        );
        assert!(
            shown.ends_with("PAGEMAP_SCAN ioctl (needs Linux 6.7+): Inappropriate ioctl for device (os error 25)"),
            "{shown}"
        );
    }

    #[test]
    fn no_method_works_lists_every_failure() {
        let error = TrackerError::NoMethodWorks {
            pid: 7,
            failures: vec![
                MethodFailure {
                    method: TrackingMethod::PagemapScan,
                    error: TrackerError::NoHookSocket,
                },
                MethodFailure {
                    method: TrackingMethod::SoftDirty,
                    error: TrackerError::SoftDirtyUnsupported,
                },
            ],
        };
        let shown = error.to_string();
        assert!(
            shown.starts_with("no method can track guest memory writes of process 7: "),
            "{shown}"
        );
        let pagemap_scan = shown.find("no hook socket").expect(&shown);
        let separator = shown.find("; soft-dirty bits").expect(&shown);
        assert!(pagemap_scan < separator, "{shown}");
        assert!(
            shown.ends_with("the kernel lacks CONFIG_MEM_SOFT_DIRTY"),
            "{shown}"
        );
    }
}
