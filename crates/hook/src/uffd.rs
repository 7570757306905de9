//! Creates and registers the userfaultfds the hook hands over, in one of two
//! modes:
//! - asynchronous write-protect: writes are never blocked, the kernel only
//!   clears the page's write-protect bit, which the agent then reads (and
//!   sets again) with `PAGEMAP_SCAN`;
//! - missing pages: a thread touching a page absent from the shared file
//!   sleeps until the agent installs it.
//!
//! The kernel ABI is declared in `mllm_hook_protocol::uffd_abi`, shared with
//! the agent, which resolves faults on the same descriptor.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use mllm_hook_protocol::uffd_abi::{
    UffdioApi, UffdioRange, UffdioRegister, UffdioWriteprotect, UFFDIO_API, UFFDIO_REGISTER,
    UFFDIO_REGISTER_MODE_MISSING, UFFDIO_REGISTER_MODE_WP, UFFDIO_WRITEPROTECT,
    UFFDIO_WRITEPROTECT_MODE_WP, UFFD_API, UFFD_USER_MODE_ONLY,
};
use mllm_hook_protocol::{
    UffdFeatures, UFFD_FEATURE_MISSING_SHMEM, UFFD_FEATURE_WP_ASYNC,
    UFFD_FEATURE_WP_HUGETLBFS_SHMEM, UFFD_FEATURE_WP_UNPOPULATED,
};

pub struct Registered {
    pub uffd: OwnedFd,
    pub features: UffdFeatures,
}

/// Which faults a userfaultfd must be able to hold, which decides whether an
/// unprivileged QEMU may have one.
#[derive(Clone, Copy)]
enum FaultsHeld {
    /// Faults taken in user mode are enough: without CAP_SYS_PTRACE (and
    /// vm.unprivileged_userfaultfd=0) fall back to UFFD_USER_MODE_ONLY.
    UserMode,
    /// Faults the kernel takes on QEMU's behalf too (a `read(2)` into a
    /// missing page): a user-mode-only descriptor would fail those with
    /// EFAULT instead of making them wait.
    UserAndKernelMode,
}

/// Registers `[start, start + len)` of this process for asynchronous
/// write-protection and write-protects all of it.
pub fn write_protect(start: u64, len: u64) -> Result<Registered, String> {
    // Asynchronous write-protect faults are resolved by the kernel before
    // the user-mode restriction applies, so tracking is the same.
    let supported = supported_features(FaultsHeld::UserMode)?;
    if supported & UFFD_FEATURE_WP_ASYNC == 0 {
        return Err("kernel lacks UFFD_FEATURE_WP_ASYNC (needs Linux 6.7+)".into());
    }
    // Without WP_UNPOPULATED, pages not yet mapped would escape tracking;
    // without WP_HUGETLBFS_SHMEM, registering shared memory fails below with
    // a clear errno. Ask for what the kernel has and report what was granted.
    let features = supported
        & (UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_HUGETLBFS_SHMEM);
    let uffd = open_userfaultfd(FaultsHeld::UserMode)?;
    enable_features(&uffd, features)?;
    let range = || UffdioRange { start, len };
    let mut register = UffdioRegister {
        range: range(),
        mode: UFFDIO_REGISTER_MODE_WP,
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
        mode: UFFDIO_WRITEPROTECT_MODE_WP,
    };
    ioctl(
        &uffd,
        UFFDIO_WRITEPROTECT,
        &mut protect,
        "UFFDIO_WRITEPROTECT",
    )?;
    Ok(Registered {
        uffd,
        features: UffdFeatures(features),
    })
}

/// Registers `[start, start + len)` of this process, a shared-memory
/// mapping, for missing-page faults.
pub fn register_missing(start: u64, len: u64) -> Result<Registered, String> {
    let supported = supported_features(FaultsHeld::UserAndKernelMode)?;
    if supported & UFFD_FEATURE_MISSING_SHMEM == 0 {
        return Err("kernel lacks UFFD_FEATURE_MISSING_SHMEM (needs Linux 4.11+)".into());
    }
    let uffd = open_userfaultfd(FaultsHeld::UserAndKernelMode)?;
    enable_features(&uffd, UFFD_FEATURE_MISSING_SHMEM)?;
    let mut register = UffdioRegister {
        range: UffdioRange { start, len },
        mode: UFFDIO_REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    ioctl(
        &uffd,
        UFFDIO_REGISTER,
        &mut register,
        "UFFDIO_REGISTER (missing mode)",
    )?;
    Ok(Registered {
        uffd,
        features: UffdFeatures(UFFD_FEATURE_MISSING_SHMEM),
    })
}

/// A userfaultfd accepts UFFDIO_API only once, so the supported features are
/// asked on a throwaway descriptor: requesting none returns them all.
fn supported_features(faults: FaultsHeld) -> Result<u64, String> {
    let probe = open_userfaultfd(faults)?;
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

fn open_userfaultfd(faults: FaultsHeld) -> Result<OwnedFd, String> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    let opened = match userfaultfd(flags) {
        Err(error) if error.raw_os_error() == Some(libc::EPERM) => match faults {
            FaultsHeld::UserMode => userfaultfd(flags | UFFD_USER_MODE_ONLY),
            FaultsHeld::UserAndKernelMode => {
                return Err(format!(
                    "userfaultfd: {error}: faults the kernel takes on QEMU's behalf need \
                     CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1"
                ))
            }
        },
        other => other,
    };
    opened.map_err(|error| format!("userfaultfd: {error}"))
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

fn ioctl<T>(uffd: &OwnedFd, request: u64, arg: &mut T, what: &str) -> Result<(), String> {
    // SAFETY: each request is paired with the #[repr(C)] structure the kernel
    // expects for it, borrowed mutably for the duration of the call.
    let result = unsafe { libc::ioctl(uffd.as_raw_fd(), request as libc::Ioctl, arg as *mut T) };
    if result < 0 {
        return Err(format!("{what}: {}", io::Error::last_os_error()));
    }
    Ok(())
}
