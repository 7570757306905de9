//! The userfaultfd kernel ABI that both ends use on the descriptor the hook
//! hands over: the hook creates and registers it, the client resolves faults
//! on it. Declared from the kernel's `include/uapi/linux/userfaultfd.h`
//! because the installed headers (and the libc crate) predate parts of it
//! (`UFFD_FEATURE_WP_ASYNC`, Linux 6.7). Plain data: the callers make the
//! system calls.
//!
//! Ioctl numbers are `u64`; callers pass them as `libc::Ioctl`.

use std::mem::size_of;

pub const UFFD_API: u64 = 0xAA;
/// `userfaultfd(2)` flag: handle only faults taken in user mode.
pub const UFFD_USER_MODE_ONLY: i32 = 1;

/// `UFFD_FEATURE_*` bits the hook asks for.
pub const UFFD_FEATURE_MISSING_SHMEM: u64 = 1 << 5;
pub const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;

pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct UffdioApi {
    pub api: u64,
    pub features: u64,
    pub ioctls: u64,
}

/// `struct uffdio_range`: `len` bytes from address `start`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct UffdioRange {
    pub start: u64,
    pub len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct UffdioRegister {
    pub range: UffdioRange,
    pub mode: u64,
    pub ioctls: u64,
}

/// `struct uffdio_writeprotect`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct UffdioWriteprotect {
    pub range: UffdioRange,
    pub mode: u64,
}

/// `struct uffdio_copy`: copies `len` bytes from `src` in the caller's
/// address space to `dst` in the registered one.
#[repr(C)]
#[derive(Debug, Default)]
pub struct UffdioCopy {
    pub dst: u64,
    pub src: u64,
    pub len: u64,
    pub mode: u64,
    /// Written by the kernel: bytes copied, or a negated errno.
    pub copy: i64,
}

/// `_IOWR(0xAA, nr, size)` in the generic ioctl encoding used by x86 and arm64.
const fn uffd_iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (0xAA << 8) | nr
}

/// `_IOR(0xAA, nr, size)`, likewise.
const fn uffd_ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (0xAA << 8) | nr
}

pub const UFFDIO_REGISTER: u64 = uffd_iowr(0x00, size_of::<UffdioRegister>());
pub const UFFDIO_WAKE: u64 = uffd_ior(0x02, size_of::<UffdioRange>());
pub const UFFDIO_COPY: u64 = uffd_iowr(0x03, size_of::<UffdioCopy>());
pub const UFFDIO_WRITEPROTECT: u64 = uffd_iowr(0x06, size_of::<UffdioWriteprotect>());
pub const UFFDIO_API: u64 = uffd_iowr(0x3F, size_of::<UffdioApi>());

/// Size of `struct uffd_msg`; a read from the descriptor must ask for a
/// multiple of it and returns whole messages.
pub const UFFD_MSG_SIZE: usize = 32;
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// `uffd_msg.arg.pagefault.flags`: the fault was a write.
pub const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;

/// One `struct uffd_msg`, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UffdEvent {
    /// A thread sleeps on `address` (rounded down to its page) until the
    /// page is resolved; `flags` are `UFFD_PAGEFAULT_FLAG_*`.
    Pagefault { flags: u64, address: u64 },
    /// Any other event, by its code. Each comes only to a descriptor that
    /// enabled its `UFFD_FEATURE_EVENT_*`.
    Other { event: u8 },
}

impl UffdEvent {
    /// Decodes a message as read from the descriptor: `__packed`, the event
    /// code in the first byte, and for a page fault `flags` and `address`
    /// as the first two `u64`s of the union at byte 8.
    pub fn decode(message: &[u8; UFFD_MSG_SIZE]) -> UffdEvent {
        let word = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&message[at..at + 8]);
            u64::from_ne_bytes(bytes)
        };
        match message[0] {
            UFFD_EVENT_PAGEFAULT => UffdEvent::Pagefault {
                flags: word(8),
                address: word(16),
            },
            event => UffdEvent::Other { event },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_and_layouts_match_the_kernel() {
        assert_eq!(UFFDIO_API, 0xC018_AA3F);
        assert_eq!(UFFDIO_REGISTER, 0xC020_AA00);
        assert_eq!(UFFDIO_WAKE, 0x8010_AA02);
        assert_eq!(UFFDIO_COPY, 0xC028_AA03);
        assert_eq!(UFFDIO_WRITEPROTECT, 0xC018_AA06);
    }

    #[test]
    fn page_faults_and_other_events_decode() {
        let mut message = [0u8; UFFD_MSG_SIZE];
        message[0] = UFFD_EVENT_PAGEFAULT;
        message[8..16].copy_from_slice(&UFFD_PAGEFAULT_FLAG_WRITE.to_ne_bytes());
        message[16..24].copy_from_slice(&0x7f00_0000_1000u64.to_ne_bytes());
        assert_eq!(
            UffdEvent::decode(&message),
            UffdEvent::Pagefault {
                flags: UFFD_PAGEFAULT_FLAG_WRITE,
                address: 0x7f00_0000_1000
            }
        );
        message[0] = 0x15; // UFFD_EVENT_REMOVE
        assert_eq!(
            UffdEvent::decode(&message),
            UffdEvent::Other { event: 0x15 }
        );
    }
}
