//! The agent's side of the hook protocol (`mllm-hook-protocol`): ask the
//! hook inside QEMU to register guest RAM (for write tracking here; for
//! missing pages in `mllm-faults`) and receive its userfaultfd.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use mllm_hook_protocol::{Reply, Request, UffdFeatures, MAX_REPLY_LEN};

use crate::error::TrackerError;
use crate::maps::RamMapping;

/// Registering and write-protecting take a page-table walk over guest RAM:
/// milliseconds per GiB, far below this.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A userfaultfd the hook registered over a range of QEMU's address space.
#[derive(Debug)]
pub struct ArmedHook {
    /// Keeping this open keeps the registration alive even if the hook
    /// drops its own copy.
    pub uffd: OwnedFd,
    pub features: UffdFeatures,
}

/// Asks the hook listening on `socket_path` to write-protect `ram` and
/// returns the userfaultfd it armed.
pub fn arm_hook(socket_path: &Path, ram: RamMapping) -> Result<ArmedHook, TrackerError> {
    let request = Request::WriteProtect {
        start: ram.start,
        len: ram.len,
    };
    request_userfaultfd(socket_path, request)
}

/// Sends `request` to the hook listening on `socket_path` and returns the
/// userfaultfd that comes with its `OK` (every request that succeeds hands
/// one over).
pub fn request_userfaultfd(
    socket_path: &Path,
    request: Request,
) -> Result<ArmedHook, TrackerError> {
    let socket = || socket_path.to_owned();
    let unreachable_hook = |source| TrackerError::HookUnreachable {
        socket: socket(),
        source,
    };
    let mut stream = UnixStream::connect(socket_path).map_err(unreachable_hook)?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(unreachable_hook)?;
    stream
        .write_all(request.encode().as_bytes())
        .map_err(unreachable_hook)?;
    let (line, uffd) = receive_reply(&stream).map_err(unreachable_hook)?;
    let reply = Reply::parse(&line).map_err(|source| TrackerError::HookReplyMalformed {
        socket: socket(),
        source,
    })?;
    match (reply, uffd) {
        (Reply::Armed { features }, Some(uffd)) => Ok(ArmedHook { uffd, features }),
        (Reply::Armed { .. }, None) => Err(TrackerError::HookSentNoDescriptor { socket: socket() }),
        (Reply::Refused { reason }, _) => Err(TrackerError::HookRefused {
            socket: socket(),
            reason,
        }),
    }
}

/// Reads the reply line, or more than a reply may hold when the hook sends
/// too much, and the descriptor that may come with its first bytes.
fn receive_reply(stream: &UnixStream) -> io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut reply = Vec::new();
    let mut uffd = None;
    while !reply.contains(&b'\n') && reply.len() <= MAX_REPLY_LEN {
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
    }
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
    // macros within that length. A descriptor received with SCM_RIGHTS is
    // new in this process, so nothing else owns it.
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
        Ok((read.cast_unsigned(), fd))
    }
}
