//! Where a workload keeps its records: guest memory or a block device.

use std::io;

use crate::aligned::AlignedBuf;
pub use crate::aligned::PAGE_SIZE;
use crate::record::{Corruption, RecordFormat};

/// A fixed array of records addressed by index.
pub trait RecordStore {
    fn record_count(&self) -> u64;

    /// Bytes per record.
    fn record_size(&self) -> usize;

    /// What a record is called in messages: "page" or "block".
    fn record_kind(&self) -> &'static str;

    /// Writes records `first`, `first + 1`, … at the given versions.
    fn write(&mut self, first: u64, versions: &[u64]) -> io::Result<()>;

    /// Checks records `first`, `first + 1`, … against the given versions and
    /// appends every failure to `failures`.
    fn check(
        &mut self,
        first: u64,
        versions: &[u64],
        failures: &mut Vec<(u64, Corruption)>,
    ) -> io::Result<()>;
}

/// Records in an anonymous memory arena, one per 4 KiB page.
#[derive(Debug)]
pub struct MemStore {
    arena: AlignedBuf,
    format: RecordFormat,
}

impl MemStore {
    /// An arena of `pages` zero pages; nothing is touched until written.
    pub fn new(pages: u64, seed: u64, random_fraction: f64) -> Self {
        let len = usize::try_from(pages)
            .ok()
            .and_then(|p| p.checked_mul(PAGE_SIZE))
            .expect("arena size fits the address space");
        MemStore {
            arena: AlignedBuf::zeroed(len),
            format: RecordFormat::new(PAGE_SIZE, seed, random_fraction),
        }
    }

    /// Raw access for tests that play a broken migration.
    #[cfg(test)]
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.arena
    }
}

impl RecordStore for MemStore {
    fn record_count(&self) -> u64 {
        (self.arena.len() / PAGE_SIZE) as u64
    }

    fn record_size(&self) -> usize {
        PAGE_SIZE
    }

    fn record_kind(&self) -> &'static str {
        "page"
    }

    fn write(&mut self, first: u64, versions: &[u64]) -> io::Result<()> {
        for (index, &version) in (first..).zip(versions) {
            self.format
                .fill(&mut self.arena[page_range(index)], index, version);
        }
        Ok(())
    }

    fn check(
        &mut self,
        first: u64,
        versions: &[u64],
        failures: &mut Vec<(u64, Corruption)>,
    ) -> io::Result<()> {
        for (index, &version) in (first..).zip(versions) {
            let page = &self.arena[page_range(index)];
            if let Err(corruption) = self.format.check(page, index, version) {
                failures.push((index, corruption));
            }
        }
        Ok(())
    }
}

fn page_range(index: u64) -> std::ops::Range<usize> {
    let start = usize::try_from(index).expect("records index the in-memory arena") * PAGE_SIZE;
    start..start + PAGE_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_pages_check_out_and_damage_is_reported_per_page() {
        let mut store = MemStore::new(8, 1, 0.5);
        assert_eq!(store.record_count(), 8);
        let versions = [0, 1, 2, 3, 4, 5, 6, 7];
        store.write(0, &versions).unwrap();
        let mut failures = Vec::new();
        store.check(0, &versions, &mut failures).unwrap();
        assert!(failures.is_empty());

        store.bytes_mut()[3 * PAGE_SIZE + 1000] ^= 0xFF;
        store.check(0, &versions, &mut failures).unwrap();
        assert_eq!(failures, [(3, Corruption::BadChecksum)]);
    }
}
