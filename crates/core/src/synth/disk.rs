//! Synthetic disk access traces: read and write patterns over the used blocks.

use serde::{Deserialize, Serialize};

use super::{mix, Workload, WorkloadSpec};
use crate::trace::{BlockInterval, DiskAccess, DiskOp, DiskTrace, DiskTraceHeader};
use crate::vm::DiskLayout;

/// The read and write patterns of a synthetic disk workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskWorkloadSpec {
    pub reads: WorkloadSpec,
    pub writes: WorkloadSpec,
}

/// Generates the blocks a guest reads and writes, interval by interval. The
/// patterns run over the used blocks only: a file system reads and rewrites its
/// live data.
#[derive(Debug)]
pub struct DiskWorkload {
    reads: Workload,
    writes: Workload,
    used_blocks: Vec<u32>,
    block_size: u32,
    disk_bytes: u64,
    interval_us: u64,
    seed: u64,
}

impl DiskWorkload {
    pub fn new(spec: &DiskWorkloadSpec, layout: &DiskLayout, interval_us: u64, seed: u64) -> Self {
        let used_blocks: Vec<u32> = layout.used.iter().collect();
        let items = u32::try_from(used_blocks.len())
            .expect("used blocks come from a PageSet, which numbers items in u32")
            .max(1);
        DiskWorkload {
            reads: Workload::new(spec.reads.clone(), items, mix(seed, 1)),
            writes: Workload::new(spec.writes.clone(), items, mix(seed, 2)),
            used_blocks,
            block_size: layout.block_size,
            disk_bytes: u64::from(layout.blocks()) * u64::from(layout.block_size),
            interval_us,
            seed,
        }
    }

    /// Blocks read and written in interval `index`.
    pub fn interval(&self, index: u64) -> BlockInterval {
        if self.used_blocks.is_empty() {
            return BlockInterval::default();
        }
        // Ranks are increasing and `used_blocks` is sorted, so the mapped
        // blocks stay increasing and unique.
        let to_blocks = |ranks: Vec<u32>| {
            ranks
                .into_iter()
                .map(|r| self.used_blocks[r as usize])
                .collect()
        };
        BlockInterval {
            reads: to_blocks(self.reads.accesses(index)),
            writes: to_blocks(self.writes.accesses(index)),
        }
    }

    /// The first `count` intervals as a request trace: one block-sized request
    /// per block touched, at a seeded instant inside its interval.
    pub fn trace(&self, count: u64) -> DiskTrace {
        let mut records = Vec::new();
        for index in 0..count {
            let interval = self.interval(index);
            let start = records.len();
            for (op, blocks) in [
                (DiskOp::Read, &interval.reads),
                (DiskOp::Write, &interval.writes),
            ] {
                for &block in blocks {
                    let jitter = mix(self.seed ^ u64::from(block), index) % self.interval_us;
                    records.push(DiskAccess {
                        time_us: index * self.interval_us + jitter,
                        op,
                        offset: u64::from(block) * u64::from(self.block_size),
                        length: self.block_size,
                    });
                }
            }
            records[start..].sort_by_key(|r| r.time_us);
        }
        DiskTrace {
            header: DiskTraceHeader {
                disk_bytes: self.disk_bytes,
            },
            records,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload() -> (DiskWorkload, DiskLayout) {
        let layout = DiskLayout::synthetic(8192, 4096, 0.8, 0.5, 1);
        let spec = DiskWorkloadSpec {
            reads: WorkloadSpec::Zipf {
                exponent: 1.0,
                rate: 0.02,
            },
            writes: WorkloadSpec::Uniform { rate: 0.005 },
        };
        (DiskWorkload::new(&spec, &layout, 1_000_000, 3), layout)
    }

    #[test]
    fn only_used_blocks_are_touched() {
        let (workload, layout) = workload();
        for index in 0..5 {
            let interval = workload.interval(index);
            assert!(!interval.reads.is_empty() && !interval.writes.is_empty());
            assert!(interval
                .reads
                .iter()
                .chain(&interval.writes)
                .all(|&b| layout.used.contains(b)));
        }
    }

    #[test]
    fn trace_folds_back_into_the_same_intervals() {
        let (workload, _) = workload();
        let trace = workload.trace(4);
        trace.validate().unwrap();
        let folded = trace.block_intervals(4096, 1_000_000);
        for (index, interval) in folded.iter().enumerate() {
            assert_eq!(interval, &workload.interval(index as u64));
        }
    }
}
