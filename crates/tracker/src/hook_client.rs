//! The agent's side of the `mllm-hook` protocol: ask the hook inside QEMU
//! to write-protect guest RAM and receive its userfaultfd.
//!
//! Request `WP <start_hex> <len_decimal>\n`; reply `OK 0x<features>\n` with
//! the descriptor attached (SCM_RIGHTS), or `ERR <reason>\n`. The hook side
//! is `crates/hook/src/protocol.rs`; keep both in step.

use std::fmt;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::maps::RamMapping;
use crate::uapi::{
    UFFD_FEATURE_WP_ASYNC, UFFD_FEATURE_WP_HUGETLBFS_SHMEM, UFFD_FEATURE_WP_UNPOPULATED,
};

/// Registering and write-protecting takes a page-table walk over guest RAM:
/// milliseconds per GiB, far below this.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// The reply is one short line.
const MAX_REPLY_LEN: usize = 512;

/// A userfaultfd registered over guest RAM in QEMU, write-protecting it.
#[derive(Debug)]
pub struct ArmedHook {
    /// Keeping this open keeps the registration alive even if the hook
    /// drops its own copy.
    pub uffd: OwnedFd,
    pub features: UffdFeatures,
}

/// The `UFFD_FEATURE_*` bits the kernel granted to the hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UffdFeatures(pub u64);

impl UffdFeatures {
    pub fn contains(&self, bits: u64) -> bool {
        self.0 & bits == bits
    }
}

impl fmt::Display for UffdFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(u64, &str); 3] = [
            (UFFD_FEATURE_WP_ASYNC, "wp_async"),
            (UFFD_FEATURE_WP_UNPOPULATED, "wp_unpopulated"),
            (UFFD_FEATURE_WP_HUGETLBFS_SHMEM, "wp_hugetlbfs_shmem"),
        ];
        let names: Vec<&str> = NAMES
            .iter()
            .filter(|(bit, _)| self.contains(*bit))
            .map(|(_, name)| *name)
            .collect();
        write!(f, "0x{:x} ({})", self.0, names.join(", "))
    }
}

/// Asks the hook listening on `socket_path` to write-protect `ram` and
/// returns the userfaultfd it armed.
pub fn arm_hook(socket_path: &Path, ram: RamMapping) -> Result<ArmedHook> {
    let context = || format!("arming the mllm hook at {}", socket_path.display());
    let mut stream = UnixStream::connect(socket_path).with_context(context)?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .with_context(context)?;
    writeln!(stream, "WP {:x} {}", ram.start, ram.len).with_context(context)?;
    let (reply, uffd) = receive_reply(&stream).with_context(context)?;
    let reply = reply.trim_end();
    match (reply.split_once(' '), uffd) {
        (Some(("OK", features)), Some(uffd)) => {
            let bits = u64::from_str_radix(features.trim_start_matches("0x"), 16)
                .with_context(|| format!("hook sent malformed features in {reply:?}"))?;
            Ok(ArmedHook {
                uffd,
                features: UffdFeatures(bits),
            })
        }
        (Some(("ERR", reason)), _) => bail!("the hook refused: {reason}"),
        _ => bail!("unexpected reply from the hook: {reply:?}"),
    }
}

/// Reads the reply line and the descriptor that may come with its first bytes.
fn receive_reply(stream: &UnixStream) -> io::Result<(String, Option<OwnedFd>)> {
    let mut reply = Vec::new();
    let mut uffd = None;
    while !reply.ends_with(b"\n") {
        let mut chunk = [0u8; MAX_REPLY_LEN];
        let (read, fd) = receive_chunk(stream, &mut chunk)?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the hook closed the connection without replying",
            ));
        }
        uffd = uffd.or(fd);
        reply.extend_from_slice(&chunk[..read]);
        if reply.len() > MAX_REPLY_LEN {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "reply too long"));
        }
    }
    let reply = String::from_utf8(reply)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "reply is not UTF-8"))?;
    Ok((reply, uffd))
}

fn receive_chunk(stream: &UnixStream, buffer: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    };
    // u64 elements give the control buffer the alignment cmsghdr needs.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is a plain C structure whose pointers (iov, control)
    // outlive the call; the kernel writes at most msg_controllen bytes of
    // control data, and the headers are read back only through the CMSG
    // macros within that length.
    unsafe {
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = std::mem::size_of_val(&control);
        let read = libc::recvmsg(stream.as_raw_fd(), &mut message, libc::MSG_CMSG_CLOEXEC);
        if read < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut fd = None;
        let mut header = libc::CMSG_FIRSTHDR(&message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let raw = libc::CMSG_DATA(header)
                    .cast::<libc::c_int>()
                    .read_unaligned();
                fd = Some(OwnedFd::from_raw_fd(raw));
            }
            header = libc::CMSG_NXTHDR(&message, header);
        }
        Ok((read as usize, fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_name_the_write_protect_bits() {
        let granted = UffdFeatures(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED);
        assert!(granted.contains(UFFD_FEATURE_WP_ASYNC));
        assert!(!granted.contains(UFFD_FEATURE_WP_HUGETLBFS_SHMEM));
        assert_eq!(granted.to_string(), "0xa000 (wp_async, wp_unpopulated)");
    }
}
