//! The hook's only thread: accepts the agent's connections one at a time and
//! answers each request (see `mllm-hook-protocol`).
//!
//! Nothing here runs on QEMU's threads; the ioctls it makes hold QEMU's
//! memory-map lock only for the length of a page-table walk.

use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use mllm_hook_protocol::{Reply, Request, MAX_REQUEST_LEN};

use crate::uffd;

/// How long a connected client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed accept, so a persistent error cannot spin a core.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

pub fn bind(path: &Path) -> io::Result<UnixListener> {
    // A socket left by an earlier QEMU at this path would make bind fail.
    // Anything else there is not ours to delete: bind reports it.
    if let Ok(existing) = std::fs::symlink_metadata(path) {
        if existing.file_type().is_socket() {
            std::fs::remove_file(path)?;
        }
    }
    UnixListener::bind(path)
}

/// The hook's copies of the descriptors it armed, one per kind: each keeps
/// its registration alive whatever the agent does with its own copy.
#[derive(Default)]
struct Held {
    write_protect: Option<OwnedFd>,
    missing: Option<OwnedFd>,
}

pub fn serve(listener: UnixListener) {
    let mut held = Held::default();
    for connection in listener.incoming() {
        let result = match connection {
            Ok(stream) => answer(&stream, &mut held),
            Err(error) => {
                std::thread::sleep(ACCEPT_RETRY_DELAY);
                Err(error)
            }
        };
        if let Err(error) = result {
            eprintln!("mllm-hook: {error}");
        }
    }
}

fn answer(stream: &UnixStream, held: &mut Held) -> io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut line = Vec::new();
    // One byte more than a request may have, so that a longer one is refused
    // as too long rather than parsed cut.
    let limit = MAX_REQUEST_LEN as u64 + 1;
    BufReader::new(stream.take(limit)).read_until(b'\n', &mut line)?;
    let request = match Request::parse(&line) {
        Ok(request) => request,
        Err(error) => return send_reply(stream, &refusal(error.to_string()), None),
    };
    let (start, len, register): (_, _, fn(u64, u64) -> _) = match request {
        Request::WriteProtect { start, len } => (start, len, uffd::write_protect),
        Request::Missing { start, len } => (start, len, uffd::register_missing),
    };
    if let Err(reason) = check_page_aligned(start, len, page_size()) {
        return send_reply(stream, &refusal(reason), None);
    }
    // Earlier descriptors of either kind must go first, or their
    // registration of the same range makes the new one fail with EBUSY: a
    // restarted agent re-arms, and a VM that arrived by post-copy (missing
    // mode) is later tracked to leave again (write-protect). Neither is in
    // use once a new one is asked for.
    *held = Held::default();
    let held_copy = match request {
        Request::WriteProtect { .. } => &mut held.write_protect,
        Request::Missing { .. } => &mut held.missing,
    };
    match register(start, len) {
        Ok(registered) => {
            let reply = Reply::Armed {
                features: registered.features,
            };
            let sent = send_reply(stream, &reply, Some(registered.uffd.as_fd()));
            *held_copy = Some(registered.uffd);
            sent
        }
        Err(reason) => send_reply(stream, &refusal(reason), None),
    }
}

fn refusal(reason: String) -> Reply {
    Reply::Refused { reason }
}

/// Refuses what UFFDIO_REGISTER would reject with a bare EINVAL: an empty
/// range, or one not aligned to pages.
fn check_page_aligned(start: u64, len: u64, page_size: u64) -> Result<(), String> {
    // Page sizes are powers of two: aligned means no bit below the size.
    if len == 0 || (start | len) & (page_size - 1) != 0 {
        return Err(format!(
            "range 0x{start:x}+{len} is empty or not aligned to {page_size}-byte pages"
        ));
    }
    Ok(())
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE).cast_unsigned() }
}

/// Sends `reply`, with `fd` attached as SCM_RIGHTS when given.
fn send_reply(stream: &UnixStream, reply: &Reply, fd: Option<BorrowedFd>) -> io::Result<()> {
    let line = reply.encode();
    let mut iov = libc::iovec {
        iov_base: line.as_ptr() as *mut libc::c_void,
        iov_len: line.len(),
    };
    // u64 elements give the control buffer the alignment cmsghdr needs.
    let mut control = [0u64; 4];
    // SAFETY: msghdr is a plain C structure; every pointer stored in it
    // (iov, control) outlives the sendmsg call, and the control message is
    // written inside `control`, whose size covers CMSG_SPACE of one int.
    let sent = unsafe {
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        if let Some(fd) = fd {
            let fd_len: u32 = 4; // size_of::<c_int>() on every Linux target
            message.msg_control = control.as_mut_ptr().cast();
            message.msg_controllen = libc::CMSG_SPACE(fd_len) as usize;
            let header = libc::CMSG_FIRSTHDR(&message);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(fd_len) as usize;
            libc::CMSG_DATA(header)
                .cast::<libc::c_int>()
                .write_unaligned(fd.as_raw_fd());
        }
        libc::sendmsg(stream.as_raw_fd(), &message, libc::MSG_NOSIGNAL)
    };
    match usize::try_from(sent) {
        Ok(count) if count == line.len() => Ok(()),
        Ok(_) => Err(io::Error::new(io::ErrorKind::WriteZero, "reply cut short")),
        Err(_) => Err(io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `request` to `answer` as the agent would; the reply that comes
    /// back (its descriptor, if any, is closed as it is read).
    fn ask(request: Request, held: &mut Held) -> Reply {
        let (agent, hook) = UnixStream::pair().unwrap();
        io::Write::write_all(&mut &agent, request.encode().as_bytes()).unwrap();
        answer(&hook, held).unwrap();
        drop(hook);
        let mut reply = Vec::new();
        io::Read::read_to_end(&mut &agent, &mut reply).unwrap();
        Reply::parse(&reply).unwrap()
    }

    /// A VM that arrived by post-copy (its RAM registered for missing
    /// pages) is later tracked to leave again (write-protect), and back.
    #[test]
    fn a_range_armed_for_one_kind_can_be_armed_for_the_other() {
        let len: usize = 16 * 4096;
        // SAFETY: a fresh anonymous shared mapping, unmapped below; nothing
        // else refers to it.
        let start = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(start, libc::MAP_FAILED);
        let range = (start as u64, len as u64);
        let mut held = Held::default();
        let requests = [
            Request::Missing {
                start: range.0,
                len: range.1,
            },
            Request::WriteProtect {
                start: range.0,
                len: range.1,
            },
            Request::Missing {
                start: range.0,
                len: range.1,
            },
        ];
        for request in requests {
            let reply = ask(request, &mut held);
            assert!(
                matches!(reply, Reply::Armed { .. }),
                "{request:?}: {reply:?}"
            );
        }
        drop(held);
        // SAFETY: the mapping made above, no longer registered anywhere.
        assert_eq!(unsafe { libc::munmap(start, len) }, 0);
    }

    #[test]
    fn empty_and_unaligned_ranges_are_refused() {
        assert_eq!(check_page_aligned(0x7f00_0000_0000, 8192, 4096), Ok(()));
        for (start, len) in [(0x1001, 4096), (0x1000, 4000), (0x1000, 0)] {
            let refusal = check_page_aligned(start, len, 4096).unwrap_err();
            assert!(refusal.contains("aligned"), "{refusal}");
        }
    }
}
