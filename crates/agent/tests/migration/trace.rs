//! Memory write traces of a real guest: recorded while it just runs, again
//! (the hook re-arms), and during a migration (`real_guest`).

use std::fs::File;
use std::time::Duration;

use mllm_agent::record_memory_trace;
use mllm_core::trace::binary::read_memory;
use mllm_core::trace::WriteInterval;

use crate::support::{one_vm_pair_at_a_time, Vm, GUEST_MIB};

#[test]
fn a_running_guest_is_recorded_in_intervals_and_can_be_recorded_again() {
    let _one_at_a_time = one_vm_pair_at_a_time();
    let vm = Vm::boot_memload("traced");
    let dir = tempfile::tempdir().unwrap();
    // The second recording arms the hook again over the first one's.
    for attempt in ["first", "second"] {
        let path = dir.path().join(attempt);
        let summary = record_memory_trace(
            &vm.qemu,
            &vm.ram_file,
            &path,
            Duration::from_millis(100),
            Duration::from_secs(2),
        )
        .unwrap_or_else(|e| panic!("{attempt} recording: {e:#}"));
        let trace = read_memory(File::open(&path).unwrap()).unwrap();
        println!("{attempt}: {summary:?}");
        assert_eq!(trace.header.page_count as u64, (GUEST_MIB << 20) / 4096);
        assert_eq!(summary.intervals, trace.intervals.len() as u64);
        assert_eq!(summary.intervals, 20, "{attempt}");
        assert_eq!(summary.error, None);
        // Scans on a fixed schedule: each interval near 100 ms.
        for (index, interval) in trace.intervals.iter().enumerate() {
            let ms = interval.duration_us as f64 / 1000.0;
            assert!((50.0..=150.0).contains(&ms), "interval {index}: {ms:.1} ms");
        }
        assert_sees_the_workload(&trace.intervals);
    }
    vm.assert_alive_and_intact("after two recordings");
}

/// The memory workload writes 500 pages per second, 50 per interval, many
/// of them to the same hot pages: nearly every interval sees some, and the
/// pages written per second stay near the workload's rate plus the kernel's
/// own. A guest starved of CPU for a moment (two VM pairs share two cores in
/// this test binary) may leave one interval in ten silent, no more.
pub fn assert_sees_the_workload(intervals: &[WriteInterval]) {
    let empty = intervals
        .iter()
        .filter(|interval| interval.pages().is_empty())
        .count();
    assert!(
        empty * 10 <= intervals.len(),
        "{empty} of {} intervals without writes",
        intervals.len()
    );
    let seconds: f64 = intervals
        .iter()
        .map(|interval| interval.duration_us as f64 / 1e6)
        .sum();
    let writes: usize = intervals.iter().map(|i| i.pages().len()).sum();
    let per_second = writes as f64 / seconds;
    assert!(
        (100.0..2_000.0).contains(&per_second),
        "{per_second:.0} pages written per second"
    );
}
