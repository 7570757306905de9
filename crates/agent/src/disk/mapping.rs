//! A read-only view of a whole disk image, so its digest goes through the
//! same `RamDigest::compute` as guest RAM and the two can never disagree on
//! the range layout.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

pub(super) struct ReadOnlyMapping {
    base: *const u8,
    len: usize,
}

impl ReadOnlyMapping {
    /// Maps the first `len` bytes of `file`; `len` is positive (the kernel
    /// refuses an empty mapping).
    pub(super) fn new(file: &File, len: usize) -> io::Result<ReadOnlyMapping> {
        // SAFETY: a fresh shared read-only mapping of an open file; the
        // kernel picks the address; the result is checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(ReadOnlyMapping {
            base: base.cast_const().cast(),
            len,
        })
    }

    pub(super) fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is valid for `len` bytes while self lives.
        // Writes to the image meanwhile (the guest through NBD) make the
        // bytes change under the slice, which makes a digest wrong, never
        // this process unsound beyond that; callers digest a quiet disk. The
        // image keeps its size, so no access past its end can fault.
        unsafe { std::slice::from_raw_parts(self.base, self.len) }
    }
}

impl Drop for ReadOnlyMapping {
    fn drop(&mut self) {
        // SAFETY: base and len are the mapping created in `new`.
        unsafe { libc::munmap(self.base.cast_mut().cast(), self.len) };
    }
}
