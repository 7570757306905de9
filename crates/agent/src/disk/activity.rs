//! What the guest did to a disk through NBD: blocks dirtied since the
//! migration last looked, blocks read and written since the estimator last
//! looked, and the latest requests for the access trace.

use std::collections::VecDeque;
use std::time::Instant;

use mllm_core::trace::{DiskAccess, DiskOp};
use mllm_core::PageSet;

use super::BLOCK_SIZE;

/// Requests kept for [`super::TrackedDisk::recent_accesses`]: 64 Ki of
/// 24 bytes, 1.5 MiB per disk, some seconds of a busy guest.
const RECENT_ACCESSES: usize = 64 * 1024;

/// Blocks read and written through NBD in one interval, increasing and
/// without duplicates, as `mllm_core::strategy::GuestInterval` takes them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskActivity {
    pub reads: Vec<u32>,
    pub writes: Vec<u32>,
}

/// Every request served through NBD since the disk was opened, unlike the
/// access ring which keeps only the latest: what a measurement of guest I/O
/// checks the guest's own counts against. Trims and zeroing count as writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestTotals {
    pub reads: u64,
    pub bytes_read: u64,
    pub writes: u64,
    pub bytes_written: u64,
}

pub(super) struct Activity {
    started: Instant,
    dirty: PageSet,
    reads: PageSet,
    writes: PageSet,
    recent: VecDeque<DiskAccess>,
    dropped: u64,
    totals: RequestTotals,
}

impl Activity {
    pub(super) fn new(blocks: u32) -> Activity {
        Activity {
            started: Instant::now(),
            dirty: PageSet::new(blocks),
            reads: PageSet::new(blocks),
            writes: PageSet::new(blocks),
            recent: VecDeque::new(),
            dropped: 0,
            totals: RequestTotals::default(),
        }
    }

    /// Notes one request of `length` bytes at `offset`, which the NBD server
    /// has checked against the disk's size. Trims and zeroing count as
    /// writes: they change what the blocks read, and core's trace knows only
    /// reads and writes.
    pub(super) fn record(&mut self, op: DiskOp, offset: u64, length: u64) {
        // An empty request touches no block; a record of it would count as
        // one block when the trace is replayed.
        if length == 0 {
            return;
        }
        for block in blocks_covering(offset, length) {
            match op {
                DiskOp::Read => self.reads.insert(block),
                DiskOp::Write => {
                    self.writes.insert(block);
                    self.dirty.insert(block);
                }
            }
        }
        let totals = &mut self.totals;
        match op {
            DiskOp::Read => {
                totals.reads += 1;
                totals.bytes_read += length;
            }
            DiskOp::Write => {
                totals.writes += 1;
                totals.bytes_written += length;
            }
        }
        // Taken under the lock, so the ring is in time order, as a trace
        // file must be.
        let time_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        // NBD lengths are 32-bit; a longer call would come from a client
        // with extended headers, which the server does not offer.
        let length = u32::try_from(length).unwrap_or(u32::MAX);
        if self.recent.len() == RECENT_ACCESSES {
            self.recent.pop_front();
            self.dropped += 1;
        }
        self.recent.push_back(DiskAccess {
            time_us,
            op,
            offset,
            length,
        });
    }

    /// The dirty set, leaving `empty` (allocated by the caller outside the
    /// lock) in its place.
    pub(super) fn swap_dirty(&mut self, empty: PageSet) -> PageSet {
        std::mem::replace(&mut self.dirty, empty)
    }

    pub(super) fn swap_reads_and_writes(
        &mut self,
        empty_reads: PageSet,
        empty_writes: PageSet,
    ) -> (PageSet, PageSet) {
        (
            std::mem::replace(&mut self.reads, empty_reads),
            std::mem::replace(&mut self.writes, empty_writes),
        )
    }

    pub(super) fn recent(&self) -> Vec<DiskAccess> {
        self.recent.iter().copied().collect()
    }

    pub(super) fn dropped(&self) -> u64 {
        self.dropped
    }

    pub(super) fn totals(&self) -> RequestTotals {
        self.totals
    }
}

/// Every block that `offset..offset + length` touches, even in part.
pub(super) fn blocks_covering(offset: u64, length: u64) -> std::ops::Range<u32> {
    let block_size = BLOCK_SIZE as u64;
    let block = |index: u64| {
        u32::try_from(index).expect("the disk's block count was checked to fit u32 at open")
    };
    block(offset / block_size)..block((offset + length).div_ceil(block_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_marks_every_block_it_touches_in_part() {
        assert_eq!(blocks_covering(4095, 1), 0..1);
        assert_eq!(blocks_covering(4095, 2), 0..2);
        assert_eq!(blocks_covering(8192, 4096), 2..3);
        assert_eq!(blocks_covering(8192, 0), 2..2);
    }

    #[test]
    fn the_ring_drops_the_oldest_and_counts_them() {
        let mut activity = Activity::new(16);
        for request in 0..RECENT_ACCESSES as u64 + 3 {
            activity.record(DiskOp::Read, request % 16 * 4096, 512);
        }
        let recent = activity.recent();
        assert_eq!(recent.len(), RECENT_ACCESSES);
        assert_eq!(activity.dropped(), 3);
        assert_eq!(recent[0].offset, 3 * 4096);
        assert!(recent
            .windows(2)
            .all(|pair| pair[0].time_us <= pair[1].time_us));
        let all = RECENT_ACCESSES as u64 + 3;
        assert_eq!(
            activity.totals(),
            RequestTotals {
                reads: all,
                bytes_read: all * 512,
                writes: 0,
                bytes_written: 0
            },
            "the totals count the requests the ring dropped too"
        );
    }

    #[test]
    fn empty_requests_are_not_counted() {
        let mut activity = Activity::new(16);
        activity.record(DiskOp::Write, 4096, 0);
        activity.record(DiskOp::Write, 4096, 8192);
        let totals = activity.totals();
        assert_eq!((totals.writes, totals.bytes_written), (1, 8192));
    }
}
