//! What the guest does, interval by interval, during a simulated migration:
//! from a synthetic workload or from recorded traces.

use mllm_core::convert::saturating_u64;
use mllm_core::strategy::GuestInterval;
use mllm_core::synth::{DiskWorkload, DiskWorkloadSpec, Workload, WorkloadSpec};
use mllm_core::trace::{BlockInterval, MemoryTrace, MemoryTraceHeader};
use mllm_core::vm::DiskLayout;
use mllm_core::PageSet;

pub trait IntervalSource: Send + Sync {
    /// Interval `index` of the guest's activity; sources are endless.
    fn interval(&self, index: u64) -> GuestInterval;
}

/// Seeded synthetic memory and disk workloads.
#[derive(Debug)]
pub struct SyntheticSource {
    memory: Workload,
    disk: Option<DiskWorkload>,
    interval_s: f64,
}

impl SyntheticSource {
    pub fn new(
        memory: WorkloadSpec,
        header: MemoryTraceHeader,
        disk: Option<(&DiskWorkloadSpec, &DiskLayout)>,
        interval_s: f64,
        seed: u64,
    ) -> Self {
        let interval_us = saturating_u64((interval_s * 1e6).round());
        SyntheticSource {
            memory: Workload::new(memory, header.page_count, seed),
            disk: disk
                .map(|(spec, layout)| DiskWorkload::new(spec, layout, interval_us, seed ^ 0xd15c)),
            interval_s,
        }
    }
}

impl IntervalSource for SyntheticSource {
    fn interval(&self, index: u64) -> GuestInterval {
        let disk = self
            .disk
            .as_ref()
            .map(|d| d.interval(index))
            .unwrap_or_default();
        GuestInterval {
            duration_s: self.interval_s,
            memory_writes: self.memory.accesses(index),
            disk_reads: disk.reads,
            disk_writes: disk.writes,
        }
    }
}

/// Recorded traces, replayed in a loop when the migration outlasts them (the
/// guest is assumed to keep doing what it did). A disk trace is folded onto
/// the memory trace's intervals (the first interval's length).
#[derive(Debug)]
pub struct TraceSource {
    memory: MemoryTrace,
    disk: Vec<BlockInterval>,
}

impl TraceSource {
    pub fn new(memory: MemoryTrace, disk: Vec<BlockInterval>) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !memory.intervals.is_empty(),
            "the memory trace has no interval"
        );
        anyhow::ensure!(
            memory.intervals.iter().all(|i| i.duration_us > 0),
            "the memory trace has an interval of zero length"
        );
        Ok(TraceSource { memory, disk })
    }
}

impl IntervalSource for TraceSource {
    fn interval(&self, index: u64) -> GuestInterval {
        let memory = cycle(&self.memory.intervals, index);
        let disk = if self.disk.is_empty() {
            BlockInterval::default()
        } else {
            cycle(&self.disk, index).clone()
        };
        GuestInterval {
            duration_s: memory.duration_us as f64 / 1e6,
            memory_writes: memory.pages().to_vec(),
            disk_reads: disk.reads,
            disk_writes: disk.writes,
        }
    }
}

/// Item `index` of `items` replayed in a loop; `items` is not empty.
fn cycle<T>(items: &[T], index: u64) -> &T {
    let position = index % items.len() as u64;
    &items[usize::try_from(position).expect("a remainder is below its usize divisor")]
}

/// `count` pages taken as zero at the start of a migration replaying
/// `trace`, when only their number is known (the agent reports how many
/// zero pages its first round sent): never pages the trace writes, which
/// hold data when they are sent again, and evenly spread over the others,
/// where they lie being unknown. Fails if the trace leaves fewer unwritten.
pub fn zero_pages_outside_writes(trace: &MemoryTrace, count: u64) -> anyhow::Result<PageSet> {
    let mut unwritten = PageSet::full(trace.header.page_count);
    for interval in &trace.intervals {
        unwritten.remove_all(interval.pages());
    }
    anyhow::ensure!(
        count <= unwritten.count(),
        "{count} zero pages asked for, but the trace writes all but {} of its {} pages",
        unwritten.count(),
        trace.header.page_count
    );
    Ok(unwritten.evenly_spaced(count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mllm_core::trace::WriteInterval;

    #[test]
    fn trace_source_loops_and_places_zero_pages_outside_its_writes() {
        let memory = MemoryTrace {
            header: MemoryTraceHeader {
                page_size: 4096,
                page_count: 10,
            },
            intervals: vec![
                WriteInterval::new(500_000, vec![1]),
                WriteInterval::new(500_000, vec![2]),
            ],
        };
        let zero = zero_pages_outside_writes(&memory, 4).unwrap();
        assert_eq!(zero.iter().collect::<Vec<_>>(), vec![3, 5, 7, 9]);
        let err = zero_pages_outside_writes(&memory, 9).unwrap_err();
        assert!(err.to_string().contains("all but 8"), "{err}");
        let source = TraceSource::new(memory, vec![]).unwrap();
        assert_eq!(source.interval(3).memory_writes, vec![2]);
        assert_eq!(source.interval(4).duration_s, 0.5);
    }
}
