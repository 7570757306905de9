//! Records in a range of a block device, read and written with `O_DIRECT`.
//!
//! Direct I/O bypasses the guest's page cache, so every read and write
//! reaches the virtual disk (and the host's disk server sees it), and a
//! read after migration returns what the destination disk really holds.
//! Writes are not followed by fdatasync: the device sees them at once anyway.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use crate::aligned::AlignedBuf;
use crate::record::{Corruption, RecordFormat, HEADER_LEN};
use crate::store::RecordStore;

/// Largest single read or write; bounds the buffer and the time one call blocks.
const MAX_IO_BYTES: usize = 1 << 20;
/// Direct I/O must be aligned to the device's logical block size, at most 4 KiB
/// in practice; 512 is the smallest and what virtio-blk reports by default.
const SECTOR: u64 = 512;

/// Where the records live on the device.
#[derive(Debug, Clone, Copy)]
pub struct DiskRange {
    pub offset: u64,
    pub length: u64,
    pub block_size: u64,
}

impl DiskRange {
    fn validate(&self) -> io::Result<()> {
        let problem =
            if !self.block_size.is_multiple_of(SECTOR) || self.block_size <= HEADER_LEN as u64 {
                Some(format!(
                    "block size {} must be a positive multiple of {SECTOR}",
                    self.block_size
                ))
            } else if !self.offset.is_multiple_of(SECTOR) {
                Some(format!(
                    "offset {} must be a multiple of {SECTOR}",
                    self.offset
                ))
            } else if self.length == 0 || !self.length.is_multiple_of(self.block_size) {
                Some(format!(
                    "length {} must be a positive multiple of the block size {}",
                    self.length, self.block_size
                ))
            } else {
                None
            };
        match problem {
            Some(text) => Err(io::Error::new(io::ErrorKind::InvalidInput, text)),
            None => Ok(()),
        }
    }
}

/// Whether the device accepted `O_DIRECT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    Direct,
    /// The file system refused `O_DIRECT` (tmpfs, for instance); only for tests
    /// and experiments on plain files, since reads may then come from the cache.
    Buffered,
}

#[derive(Debug)]
pub struct DiskStore {
    file: File,
    range: DiskRange,
    /// `range.block_size`, as the length of a record in memory.
    block_size: usize,
    format: RecordFormat,
    buffer: AlignedBuf,
}

impl DiskStore {
    pub fn open(
        path: &Path,
        range: DiskRange,
        seed: u64,
        random_fraction: f64,
    ) -> io::Result<(DiskStore, IoMode)> {
        range.validate()?;
        let (mut file, mode) = open_direct_or_buffered(path)?;
        let device_size = file.seek(SeekFrom::End(0))?;
        let end = range.offset.saturating_add(range.length);
        if end > device_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "range ends at byte {end}, beyond the end of {} ({device_size} bytes)",
                    path.display()
                ),
            ));
        }
        let block_size = usize::try_from(range.block_size).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("block size {} does not fit in memory", range.block_size),
            )
        })?;
        let store = DiskStore {
            file,
            range,
            block_size,
            format: RecordFormat::new(block_size, seed, random_fraction),
            buffer: AlignedBuf::zeroed(MAX_IO_BYTES.max(block_size)),
        };
        Ok((store, mode))
    }

    fn records_per_io(&self) -> usize {
        self.buffer.len() / self.block_size
    }

    fn byte_offset(&self, index: u64) -> u64 {
        self.range.offset + index * self.range.block_size
    }
}

fn open_direct_or_buffered(path: &Path) -> io::Result<(File, IoMode)> {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    let direct = options.clone().custom_flags(libc::O_DIRECT).open(path);
    match direct {
        Ok(file) => Ok((file, IoMode::Direct)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            Ok((options.open(path)?, IoMode::Buffered))
        }
        Err(e) => Err(e),
    }
}

impl RecordStore for DiskStore {
    fn record_count(&self) -> u64 {
        self.range.length / self.range.block_size
    }

    fn record_size(&self) -> usize {
        self.block_size
    }

    fn record_kind(&self) -> &'static str {
        "block"
    }

    fn write(&mut self, first: u64, versions: &[u64]) -> io::Result<()> {
        let block_size = self.block_size;
        for (chunk_index, chunk) in versions.chunks(self.records_per_io()).enumerate() {
            let chunk_first = first + (chunk_index * self.records_per_io()) as u64;
            let bytes = chunk.len() * block_size;
            for ((index, &version), block) in (chunk_first..)
                .zip(chunk)
                .zip(self.buffer[..bytes].chunks_exact_mut(block_size))
            {
                self.format.fill(block, index, version);
            }
            self.file
                .write_all_at(&self.buffer[..bytes], self.byte_offset(chunk_first))?;
        }
        Ok(())
    }

    fn check(
        &mut self,
        first: u64,
        versions: &[u64],
        failures: &mut Vec<(u64, Corruption)>,
    ) -> io::Result<()> {
        let block_size = self.block_size;
        for (chunk_index, chunk) in versions.chunks(self.records_per_io()).enumerate() {
            let chunk_first = first + (chunk_index * self.records_per_io()) as u64;
            let bytes = chunk.len() * block_size;
            let offset = self.byte_offset(chunk_first);
            self.file.read_exact_at(&mut self.buffer[..bytes], offset)?;
            for ((index, &version), block) in (chunk_first..)
                .zip(chunk)
                .zip(self.buffer[..bytes].chunks_exact(block_size))
            {
                if let Err(corruption) = self.format.check(block, index, version) {
                    failures.push((index, corruption));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zero-filled file standing in for a block device; gone when dropped.
    fn temp_device(bytes: u64) -> tempfile::NamedTempFile {
        let device = tempfile::NamedTempFile::new().unwrap();
        device.as_file().set_len(bytes).unwrap();
        device
    }

    #[test]
    fn blocks_round_trip_and_a_damaged_block_is_found() {
        let device = temp_device(1 << 20);
        let file = device.as_file();
        let range = DiskRange {
            offset: 8192,
            length: 64 * 4096,
            block_size: 4096,
        };
        let (mut store, _mode) = DiskStore::open(device.path(), range, 3, 0.5).unwrap();
        assert_eq!(store.record_count(), 64);
        let versions: Vec<u64> = (0..64).map(|i| i % 5).collect();
        store.write(0, &versions).unwrap();

        let mut failures = Vec::new();
        store.check(0, &versions, &mut failures).unwrap();
        assert!(failures.is_empty(), "{failures:?}");

        // Nothing outside the range was touched.
        let mut before = [0xFFu8; 8192];
        file.read_exact_at(&mut before, 0).unwrap();
        assert!(before.iter().all(|&b| b == 0));

        // Damage block 10 behind the store's back.
        let mut byte = [0u8; 1];
        let at = 8192 + 10 * 4096 + 2000;
        file.read_exact_at(&mut byte, at).unwrap();
        file.write_all_at(&[byte[0] ^ 1], at).unwrap();
        file.sync_all().unwrap();
        store.check(0, &versions, &mut failures).unwrap();
        assert_eq!(failures, [(10, Corruption::BadChecksum)]);
    }

    #[test]
    fn stale_block_is_reported_with_its_version() {
        let device = temp_device(1 << 16);
        let range = DiskRange {
            offset: 0,
            length: 8 * 512,
            block_size: 512,
        };
        let (mut store, _mode) = DiskStore::open(device.path(), range, 3, 0.0).unwrap();
        store.write(0, &[0; 8]).unwrap();
        let mut failures = Vec::new();
        store.check(5, &[1], &mut failures).unwrap();
        assert_eq!(
            failures,
            [(
                5,
                Corruption::WrongVersion {
                    found: 0,
                    expected: 1
                }
            )]
        );
    }

    #[test]
    fn bad_geometry_and_short_devices_are_refused() {
        let device = temp_device(4096);
        let open = |offset, length, block_size| {
            let range = DiskRange {
                offset,
                length,
                block_size,
            };
            DiskStore::open(device.path(), range, 0, 0.0).map(|_| ())
        };
        assert!(open(0, 4096, 4096).is_ok());
        assert!(
            open(0, 4096, 1000).is_err(),
            "block size not sector aligned"
        );
        assert!(open(100, 4096, 4096).is_err(), "offset not sector aligned");
        assert!(open(0, 6000, 4096).is_err(), "length not whole blocks");
        assert!(open(0, 0, 4096).is_err(), "empty range");
        let err = open(0, 8192, 4096).unwrap_err();
        assert!(err.to_string().contains("beyond the end"), "{err}");
    }
}
