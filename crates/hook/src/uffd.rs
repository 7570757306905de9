//! Creates a userfaultfd that write-protects a range asynchronously: writes
//! are never blocked, the kernel only clears the page's write-protect bit,
//! which the agent then reads (and sets again) with `PAGEMAP_SCAN`.
//!
//! The ABI is declared here from the kernel's `include/uapi/linux/userfaultfd.h`
//! because the installed headers (and the libc crate) predate
//! `UFFD_FEATURE_WP_ASYNC` (Linux 6.7); the feature bits are declared in
//! `mllm-hook-protocol`, whose replies report them.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use mllm_hook_protocol::{
    UffdFeatures, UFFD_FEATURE_WP_ASYNC, UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
    UFFD_FEATURE_WP_UNPOPULATED,
};

const UFFD_API: u64 = 0xAA;
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
const REGISTER_MODE_WP: u64 = 1 << 1;
const WRITEPROTECT_MODE_WP: u64 = 1 << 0;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// `_IOWR(0xAA, nr, size)` in the generic ioctl encoding used by x86 and arm64.
const fn uffd_iowr(nr: u64, size: usize) -> libc::Ioctl {
    ((3 << 30) | ((size as u64) << 16) | (0xAA << 8) | nr) as libc::Ioctl
}

const UFFDIO_API: libc::Ioctl = uffd_iowr(0x3F, size_of::<UffdioApi>());
const UFFDIO_REGISTER: libc::Ioctl = uffd_iowr(0x00, size_of::<UffdioRegister>());
const UFFDIO_WRITEPROTECT: libc::Ioctl = uffd_iowr(0x06, size_of::<UffdioWriteprotect>());

pub struct WriteProtected {
    pub uffd: OwnedFd,
    pub features: UffdFeatures,
}

/// Registers `[start, start + len)` of this process for asynchronous
/// write-protection and write-protects all of it.
pub fn write_protect(start: u64, len: u64) -> Result<WriteProtected, String> {
    let supported = supported_features()?;
    if supported & UFFD_FEATURE_WP_ASYNC == 0 {
        return Err("kernel lacks UFFD_FEATURE_WP_ASYNC (needs Linux 6.7+)".into());
    }
    // Without WP_UNPOPULATED, pages not yet mapped would escape tracking;
    // without WP_HUGETLBFS_SHMEM, registering shared memory fails below with
    // a clear errno. Ask for what the kernel has and report what was granted.
    let features = supported
        & (UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_HUGETLBFS_SHMEM);
    let uffd = open_userfaultfd()?;
    enable_features(&uffd, features)?;
    let range = || UffdioRange { start, len };
    let mut register = UffdioRegister {
        range: range(),
        mode: REGISTER_MODE_WP,
        ioctls: 0,
    };
    ioctl(
        &uffd,
        UFFDIO_REGISTER,
        &mut register,
        "UFFDIO_REGISTER (write-protect mode)",
    )?;
    let mut protect = UffdioWriteprotect {
        range: range(),
        mode: WRITEPROTECT_MODE_WP,
    };
    ioctl(
        &uffd,
        UFFDIO_WRITEPROTECT,
        &mut protect,
        "UFFDIO_WRITEPROTECT",
    )?;
    Ok(WriteProtected {
        uffd,
        features: UffdFeatures(features),
    })
}

/// A userfaultfd accepts UFFDIO_API only once, so the supported features are
/// asked on a throwaway descriptor: requesting none returns them all.
fn supported_features() -> Result<u64, String> {
    let probe = open_userfaultfd()?;
    let mut api = UffdioApi {
        api: UFFD_API,
        features: 0,
        ioctls: 0,
    };
    ioctl(&probe, UFFDIO_API, &mut api, "UFFDIO_API (feature query)")?;
    Ok(api.features)
}

fn enable_features(uffd: &OwnedFd, features: u64) -> Result<(), String> {
    let mut api = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    ioctl(uffd, UFFDIO_API, &mut api, "UFFDIO_API")
}

fn open_userfaultfd() -> Result<OwnedFd, String> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    let fd = match userfaultfd(flags) {
        // Without CAP_SYS_PTRACE (and vm.unprivileged_userfaultfd=0) only
        // user-mode faults may be handled; asynchronous write-protect faults
        // are resolved by the kernel before that restriction applies, so
        // tracking is the same.
        Err(error) if error.raw_os_error() == Some(libc::EPERM) => {
            userfaultfd(flags | UFFD_USER_MODE_ONLY)
        }
        other => other,
    };
    fd.map_err(|error| format!("userfaultfd: {error}"))
}

fn userfaultfd(flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: the syscall takes only a flags word.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(fd).map_err(|_| io::Error::other("descriptor out of range"))?;
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ioctl<T>(uffd: &OwnedFd, request: libc::Ioctl, arg: &mut T, what: &str) -> Result<(), String> {
    // SAFETY: each request is paired with the #[repr(C)] structure the kernel
    // expects for it, borrowed mutably for the duration of the call.
    let result = unsafe { libc::ioctl(uffd.as_raw_fd(), request, arg as *mut T) };
    if result < 0 {
        return Err(format!("{what}: {}", io::Error::last_os_error()));
    }
    Ok(())
}
