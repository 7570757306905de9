//! The missing-page userfaultfd over guest RAM: waiting for faults and
//! resolving them.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use mllm_core::memory::{PageIndex, PAGE_SIZE};
use mllm_hook_protocol::uffd_abi::{
    UffdEvent, UffdioCopy, UffdioRange, UFFDIO_COPY, UFFDIO_WAKE, UFFD_MSG_SIZE,
};
use mllm_hook_protocol::{Request, UffdFeatures};
use mllm_tracker::{request_userfaultfd, RamMapping};

use crate::FaultError;

/// Fault messages read per `read(2)`: a few vCPUs and device threads rarely
/// have more pending at once, and draining simply reads again.
const MESSAGES_PER_READ: usize = 64;

/// `UFFDIO_COPY` fails with `EAGAIN` only while QEMU's mappings change under
/// a non-cooperative event, none of which the hook enables: a handful of
/// retries covers a race, more means something is wrong.
const COPY_ATTEMPTS: u32 = 100;

/// Asks the hook listening on `hook_socket` to register `ram` (QEMU's guest
/// RAM, as found by `mllm_tracker::find_ram_mapping`) for missing-page
/// faults, and returns the userfaultfd it armed.
///
/// From then on, QEMU threads touching a page the RAM file does not hold
/// sleep until the page is installed: serve faults from now on.
pub fn arm_missing(hook_socket: &Path, ram: RamMapping) -> Result<MissingPages, FaultError> {
    let request = Request::Missing {
        start: ram.start,
        len: ram.len,
    };
    let armed = request_userfaultfd(hook_socket, request).map_err(FaultError::Arm)?;
    Ok(MissingPages {
        uffd: File::from(armed.uffd),
        ram,
        features: armed.features,
    })
}

/// What [`MissingPages::install`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// The page was missing and now holds the content; the threads waiting
    /// on it resumed.
    Copied,
    /// The page was already in the RAM file (installed earlier, or written
    /// through another mapping): it was left as it was, and the threads
    /// waiting on it were woken so that none stays asleep.
    AlreadyPresent,
}

/// A userfaultfd registering guest RAM inside QEMU in missing mode.
///
/// Closing it (dropping this) does not end the registration while the hook
/// holds its own copy; see `mllm-hook-protocol`.
#[derive(Debug)]
pub struct MissingPages {
    uffd: File,
    ram: RamMapping,
    features: UffdFeatures,
}

impl MissingPages {
    /// Guest RAM in QEMU's address space.
    pub fn ram(&self) -> RamMapping {
        self.ram
    }

    /// The `UFFD_FEATURE_*` bits enabled on the descriptor.
    pub fn features(&self) -> UffdFeatures {
        self.features
    }

    /// Waits up to `timeout` for a thread to fault on a missing page and
    /// returns that page (counted from the start of guest RAM), or `None`
    /// when none did. Each fault is reported once: several threads on one
    /// page are several faults.
    pub fn wait_fault(&self, timeout: Duration) -> Result<Option<PageIndex>, FaultError> {
        let mut faults = Vec::with_capacity(1);
        self.read_within(timeout, 1, &mut faults)?;
        Ok(faults.pop())
    }

    /// Waits up to `timeout` for a fault, then appends every fault pending
    /// to `faults`, in the order they were taken; returns how many it
    /// appended (0 when the time ran out).
    pub fn wait_faults(
        &self,
        timeout: Duration,
        faults: &mut Vec<PageIndex>,
    ) -> Result<usize, FaultError> {
        let mut read = self.read_within(timeout, MESSAGES_PER_READ, faults)?;
        let mut appended = read;
        // A full buffer may have left faults behind.
        while read == MESSAGES_PER_READ {
            read = self.read_faults(MESSAGES_PER_READ, faults)?;
            appended += read;
        }
        Ok(appended)
    }

    /// Fills the missing `page` with `content` atomically (`UFFDIO_COPY`):
    /// no thread ever sees it in part. The threads waiting on it resume.
    ///
    /// A page can be installed before any thread faults on it; it then never
    /// faults. When the page is already present, which happens when a
    /// fault's fetch races a background push of the same page, it is left
    /// as is and its waiters are woken ([`Installed::AlreadyPresent`]).
    pub fn install(
        &self,
        page: PageIndex,
        content: &[u8; PAGE_SIZE],
    ) -> Result<Installed, FaultError> {
        let target = self.page_range(page)?;
        let mut attempts = 0;
        loop {
            let mut copy = UffdioCopy {
                dst: target.start,
                src: content.as_ptr().expose_provenance() as u64,
                len: target.len,
                mode: 0,
                copy: 0,
            };
            let error = match self.ioctl(UFFDIO_COPY, &mut copy) {
                Ok(()) => return Ok(Installed::Copied),
                Err(error) => error,
            };
            attempts += 1;
            match error.raw_os_error() {
                // UFFDIO_COPY wakes only after copying: the waiters of a
                // page that was already there still sleep.
                Some(libc::EEXIST) => {
                    self.wake(page)?;
                    return Ok(Installed::AlreadyPresent);
                }
                // Nothing copied (a page is never copied in part): the
                // kernel's documentation says to retry.
                Some(libc::EAGAIN) if attempts < COPY_ATTEMPTS => std::thread::yield_now(),
                _ => {
                    return Err(FaultError::Install {
                        page,
                        source: error,
                    })
                }
            }
        }
    }

    /// Wakes the threads waiting on `page` (`UFFDIO_WAKE`), for a page made
    /// present some other way than [`MissingPages::install`], such as a write
    /// through another mapping of the RAM file. Threads woken while the page
    /// is still missing fault again.
    pub fn wake(&self, page: PageIndex) -> Result<(), FaultError> {
        let mut range = self.page_range(page)?;
        self.ioctl(UFFDIO_WAKE, &mut range)
            .map_err(|source| FaultError::Wake { page, source })
    }

    /// `page`'s addresses in QEMU.
    fn page_range(&self, page: PageIndex) -> Result<UffdioRange, FaultError> {
        let pages = self.ram.pages();
        if page >= pages {
            return Err(FaultError::PageOutOfRange { page, pages });
        }
        let page_size = PAGE_SIZE as u64;
        Ok(UffdioRange {
            start: self.ram.start + u64::from(page) * page_size,
            len: page_size,
        })
    }

    /// Reads up to `max_messages` faults into `faults`, waiting up to
    /// `timeout` for the first; returns how many it read.
    fn read_within(
        &self,
        timeout: Duration,
        max_messages: usize,
        faults: &mut Vec<PageIndex>,
    ) -> Result<usize, FaultError> {
        // A timeout too long to add to the clock is as good as none.
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let read = self.read_faults(max_messages, faults)?;
            if read > 0 {
                return Ok(read);
            }
            let left = match deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Ok(0),
                },
                None => None,
            };
            self.poll_readable(left)?;
        }
    }

    /// Reads the faults pending, at most `max_messages` of them, without
    /// waiting; returns how many it appended to `faults`.
    fn read_faults(
        &self,
        max_messages: usize,
        faults: &mut Vec<PageIndex>,
    ) -> Result<usize, FaultError> {
        let mut buffer = [0u8; UFFD_MSG_SIZE * MESSAGES_PER_READ];
        let buffer = &mut buffer[..UFFD_MSG_SIZE * max_messages.min(MESSAGES_PER_READ)];
        // The descriptor is non-blocking (the hook creates it so) and each
        // read returns whole messages.
        let read = match (&self.uffd).read(buffer) {
            Ok(read) => read,
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                0
            }
            Err(error) => return Err(FaultError::Wait(error)),
        };
        let (messages, _) = buffer[..read].as_chunks::<UFFD_MSG_SIZE>();
        for message in messages {
            faults.push(self.faulting_page(message)?);
        }
        Ok(messages.len())
    }

    fn faulting_page(&self, message: &[u8; UFFD_MSG_SIZE]) -> Result<PageIndex, FaultError> {
        match UffdEvent::decode(message) {
            UffdEvent::Pagefault { address, .. }
                if (self.ram.start..self.ram.end()).contains(&address) =>
            {
                Ok(self.ram.page_at(address))
            }
            UffdEvent::Pagefault { address, .. } => Err(FaultError::FaultOutsideRam {
                address,
                ram: self.ram,
            }),
            UffdEvent::Other { event } => Err(FaultError::UnexpectedEvent { event }),
        }
    }

    /// Waits until the descriptor is readable or `timeout` (`None`: no limit)
    /// passes; an interrupted wait returns early.
    fn poll_readable(&self, timeout: Option<Duration>) -> Result<(), FaultError> {
        let timeout_ms = timeout.map_or(-1, |timeout| {
            i32::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
        });
        let mut poll_fd = libc::pollfd {
            fd: self.uffd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, borrowed mutably for the call.
        let ready = unsafe { libc::poll(&mut poll_fd, 1, timeout_ms) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(FaultError::Wait(error));
        }
        // The kernel reports POLLERR for a descriptor whose API handshake
        // never happened; without this check the caller would spin.
        if poll_fd.revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
            return Err(FaultError::Wait(io::Error::other(
                "poll reports an error on the userfaultfd",
            )));
        }
        Ok(())
    }

    fn ioctl<T>(&self, request: u64, arg: &mut T) -> io::Result<()> {
        // SAFETY: each caller pairs `request` with the #[repr(C)] structure
        // the kernel expects for it, borrowed mutably for the call; the only
        // pointer inside one, UFFDIO_COPY's source, is a page the caller
        // borrows for the call too.
        let result =
            unsafe { libc::ioctl(self.uffd.as_raw_fd(), request as libc::Ioctl, arg as *mut T) };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
