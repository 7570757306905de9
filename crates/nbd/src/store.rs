//! The storage behind an export, and a sparse raw image file as one.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// How `write_zeroes` may make a range read as zeroes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zeroing {
    /// Deallocating the range is fine (the client allowed holes).
    MayTrim,
    /// The range must stay allocated (`NBD_CMD_FLAG_NO_HOLE`): later writes
    /// there must not fail for want of space.
    Allocate,
}

/// Bytes of an export that lie as they are in a file, at `offset`.
#[derive(Debug, Clone, Copy)]
pub struct FileRegion<'a> {
    pub file: BorrowedFd<'a>,
    pub offset: u64,
}

/// What an export reads from and writes to. The server calls it from several
/// threads at once, one call per request, after checking that every range
/// lies inside `0..size()`; overlapping requests in flight at the same time
/// may reach it in any order, as the protocol allows.
///
/// This is the seam for interposing: a wrapper that forwards to another store
/// sees every request (to trace it or mark blocks dirty) and may block in
/// `read_at` until the data is there (to fetch a missing block first).
///
/// `fua` asks that the operation's data be on stable storage before the call
/// returns; without it, only a later `flush` guarantees that.
pub trait BlockStore: Send + Sync {
    /// Export size in bytes; constant for the store's lifetime.
    fn size(&self) -> u64;

    /// Fills `buf` with the bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Where the bytes of `offset..offset+len` lie in a file, as `read_at`
    /// would return them, once the store has done what such a read does
    /// first (wait for missing data, record the request). The server then
    /// moves them from the file to the client's socket inside the kernel
    /// (`sendfile`) instead of copying them through a buffer twice; the
    /// file is read when the reply is sent, so the store must not change
    /// those bytes itself meanwhile (client writes may: overlapping
    /// requests in flight are unordered). `None`, the default, makes the
    /// server call `read_at`.
    fn read_region(&self, _offset: u64, _len: u64) -> io::Result<Option<FileRegion<'_>>> {
        Ok(None)
    }

    fn write_at(&self, data: &[u8], offset: u64, fua: bool) -> io::Result<()>;

    /// Makes every write that returned so far durable.
    fn flush(&self) -> io::Result<()>;

    /// The client no longer needs `offset..offset+len`; its content is
    /// unspecified until written again. Doing nothing is correct.
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()>;

    /// Makes `offset..offset+len` read as zeroes.
    fn write_zeroes(&self, offset: u64, len: u64, zeroing: Zeroing, fua: bool) -> io::Result<()>;

    /// Ranges within `offset..offset+len` that read as zeroes and that the
    /// store knows to be so without reading them: the server answers them as
    /// holes and skips `read_at` for them. Sorted, not overlapping. A store
    /// that fills ranges lazily must not report a range it has not filled
    /// yet as a hole. The default reports none.
    fn zero_ranges(&self, _offset: u64, _len: u64) -> io::Result<Vec<Range<u64>>> {
        Ok(Vec::new())
    }

    /// Whether `flush` and `fua` cover writes made through every connection
    /// to this store, so clients may spread requests over several
    /// connections (`NBD_FLAG_CAN_MULTI_CONN`). The default says no.
    fn shared_by_connections(&self) -> bool {
        false
    }
}

/// A raw disk image in a regular file, kept sparse: trimmed and zeroed
/// ranges become holes where the file system supports them.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    size: u64,
}

impl RawFile {
    /// Opens an existing image for reading and writing; its length is the
    /// export size.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Self::from_file(file)
    }

    /// Serves an already open image (read and write access).
    pub fn from_file(file: File) -> io::Result<Self> {
        let size = file.metadata()?.len();
        Ok(Self { file, size })
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        // fallocate refuses an empty range; the protocol lets clients send
        // one and expects no error.
        if len == 0 {
            return Ok(());
        }
        let (Ok(start), Ok(length)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len))
        else {
            return Err(invalid_range(offset, len));
        };
        // SAFETY: fallocate takes plain integers and a descriptor that
        // `self.file` keeps open for the call.
        let result = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, start, length) };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The slow way to zero a range, for file systems without fallocate's
    /// zeroing modes: plain writes from one bounded buffer.
    fn write_zero_buffers(&self, offset: u64, len: u64) -> io::Result<()> {
        const CHUNK: usize = 1 << 20;
        let remaining = |done: u64| usize::try_from(len - done).unwrap_or(usize::MAX);
        let zeroes = vec![0u8; CHUNK.min(remaining(0))];
        let mut done = 0u64;
        while done < len {
            let step = zeroes.len().min(remaining(done));
            self.file.write_all_at(&zeroes[..step], offset + done)?;
            done += step as u64;
        }
        Ok(())
    }

    fn sync_if(&self, fua: bool) -> io::Result<()> {
        if fua {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn seek(&self, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
        let offset = libc::off_t::try_from(offset).map_err(|_| invalid_range(offset, 0))?;
        // SAFETY: lseek takes plain integers and a descriptor that
        // `self.file` keeps open for the call. It moves the descriptor's file
        // position, which nothing here uses (all I/O is positional).
        let found = unsafe { libc::lseek(self.file.as_raw_fd(), offset, whence) };
        if found < 0 {
            let error = io::Error::last_os_error();
            // ENXIO: no data (or no hole) at or after `offset`.
            return match error.raw_os_error() {
                Some(libc::ENXIO) => Ok(None),
                _ => Err(error),
            };
        }
        Ok(Some(found.unsigned_abs()))
    }
}

fn invalid_range(offset: u64, len: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("range {offset}+{len} does not fit the file API"),
    )
}

fn unsupported(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS))
}

impl BlockStore for RawFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn read_region(&self, offset: u64, _len: u64) -> io::Result<Option<FileRegion<'_>>> {
        Ok(Some(FileRegion {
            file: self.file.as_fd(),
            offset,
        }))
    }

    fn write_at(&self, data: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.file.write_all_at(data, offset)?;
        self.sync_if(fua)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        match self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            // Trim is a hint: a file system that cannot punch keeps the data.
            Err(error) if unsupported(&error) => Ok(()),
            other => other,
        }?;
        self.sync_if(fua)
    }

    fn write_zeroes(&self, offset: u64, len: u64, zeroing: Zeroing, fua: bool) -> io::Result<()> {
        let mode = match zeroing {
            Zeroing::MayTrim => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            Zeroing::Allocate => libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        };
        match self.fallocate(mode, offset, len) {
            Err(error) if unsupported(&error) => self.write_zero_buffers(offset, len),
            other => other,
        }?;
        self.sync_if(fua)
    }

    /// Holes of the file, found with `SEEK_DATA` and `SEEK_HOLE`.
    fn zero_ranges(&self, offset: u64, len: u64) -> io::Result<Vec<Range<u64>>> {
        let end = offset.saturating_add(len);
        let mut holes = Vec::new();
        let mut position = offset;
        while position < end {
            let Some(data) = self.seek(position, libc::SEEK_DATA)? else {
                holes.push(position..end);
                break;
            };
            if data > position {
                holes.push(position..data.min(end));
            }
            if data >= end {
                break;
            }
            match self.seek(data, libc::SEEK_HOLE)? {
                Some(hole) if hole > data => position = hole,
                // Every file ends in an implicit hole; anything else would
                // mean the file changed under us: report no more holes.
                _ => break,
            }
        }
        Ok(holes)
    }

    /// Every connection writes through the same file and its one page cache,
    /// and `fdatasync` covers them all.
    fn shared_by_connections(&self) -> bool {
        true
    }
}
