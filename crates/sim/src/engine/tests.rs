use std::sync::Arc;

use mllm_core::link::Link;
use mllm_core::synth::WorkloadSpec;
use mllm_core::vm::PageCost;
use mllm_core::workingset::EstimatorKind;

use super::*;
use crate::policy::Policy;
use crate::run::{simulate, SimConfig};
use crate::scenario::{DiskSpec, VmSpec};
use crate::source::IntervalSource;

const IDLE: WorkloadSpec = WorkloadSpec::Uniform { rate: 0.0 };

fn vm(
    memory_mib: u64,
    workload: WorkloadSpec,
    disk: Option<DiskSpec>,
) -> (Arc<VmLayout>, Arc<dyn IntervalSource>) {
    VmSpec {
        memory_mib,
        page_size: 4096,
        workload,
        disk,
        device_state_kib: 300,
    }
    .build(1.0, 11)
}

fn disk(reads: WorkloadSpec, writes: WorkloadSpec) -> DiskSpec {
    DiskSpec {
        size_gib: 0.125,
        block_kib: 64,
        allocated: 0.7,
        used: 0.4,
        reads,
        writes,
    }
}

fn config(mbit: f64) -> SimConfig {
    let mut config = SimConfig::new(Link::from_mbit(mbit, 50.0));
    config.warmup_intervals = 20;
    config
}

#[test]
fn without_writes_every_policy_takes_its_bytes_over_bandwidth_plus_one_rtt() {
    let reads = WorkloadSpec::Zipf {
        exponent: 1.0,
        rate: 0.01,
    };
    for with_disk in [false, true] {
        let (mut layout, source) = vm(32, IDLE, with_disk.then(|| disk(reads.clone(), IDLE)));
        if with_disk {
            // Compressed pages, a third of them zero: each priced by its kind.
            let vm = Arc::make_mut(&mut layout);
            vm.page_cost = PageCost {
                data_bytes: 1800,
                zero_bytes: 4,
            };
            vm.zero_pages =
                PageSet::full(vm.memory_pages).evenly_spaced(u64::from(vm.memory_pages / 3));
        }
        let config = config(100.0);
        for policy in Policy::all() {
            let result = simulate(layout.clone(), source.clone(), policy, &config);
            assert!(result.completed, "{policy}");
            let seconds = result.link_bytes as f64 / 12.5e6 + 0.05;
            assert!(
                (result.total_time_ms / 1e3 - seconds).abs() < 1e-6,
                "{policy}: {result:?}"
            );
            let disk_blocks = layout.disk.as_ref().map_or(0, |d| match policy {
                Policy::Mllm(_) => d.used.count(),
                _ => d.allocated.count(),
            });
            let memory = layout.copy_bytes(&PageSet::full(layout.memory_pages));
            let expected = memory + disk_blocks * 65536 + layout.device_state_bytes;
            assert_eq!(result.link_bytes, expected, "{policy} sent each item once");
            assert_eq!(
                result.retransmitted_pages + result.retransmitted_blocks,
                0,
                "{policy}"
            );
            if !with_disk {
                let paused = (300.0 * 1024.0 / 12.5e6 + 0.025) * 1e3;
                assert!(
                    (result.downtime_ms - paused).abs() < 1e-6,
                    "{policy}: {}",
                    result.downtime_ms
                );
            }
        }
    }
}

/// A hot set rewritten faster than the link drains it: 64 MiB over 10 Mbit/s.
fn write_heavy() -> (Arc<VmLayout>, Arc<dyn IntervalSource>) {
    vm(
        64,
        mllm_core::synth::WorkloadClass::HotSet.default_spec(),
        None,
    )
}

#[test]
fn precopy_gives_up_on_a_hot_set_that_outruns_the_link() {
    let (layout, source) = write_heavy();
    let result = simulate(layout.clone(), source, Policy::Precopy, &config(10.0));
    assert!(result.completed);
    assert!(
        result.rounds > 3 && result.rounds <= 30,
        "{} rounds",
        result.rounds
    );
    assert!(
        result.memory_bytes >= 3 * layout.memory_bytes(),
        "stopped by the 3x rule"
    );
    assert!(
        result.downtime_ms > 1000.0,
        "the hot set moves while paused: {}",
        result.downtime_ms
    );
    assert!(result.retransmitted_pages > 0);
}

#[test]
fn postcopy_faults_on_pages_written_before_they_arrive() {
    let (layout, source) = write_heavy();
    let result = simulate(layout.clone(), source, Policy::Postcopy, &config(10.0));
    assert!(
        result.postcopy_faults > 100,
        "{} faults",
        result.postcopy_faults
    );
    assert_eq!(
        result.retransmitted_pages, 0,
        "post-copy sends each page once"
    );
    assert_eq!(
        result.memory_bytes,
        layout.copy_bytes(&PageSet::full(layout.memory_pages))
    );
    assert!(result.downtime_ms < 300.0);
    assert!(result.fault_wait_ms >= result.postcopy_faults as f64 * 50.0);
}

#[test]
fn mllm_improved_beats_precopy_and_original_on_a_write_heavy_hot_set() {
    let (layout, source) = write_heavy();
    let config = config(10.0);
    let run = |policy| simulate(layout.clone(), source.clone(), policy, &config);
    let precopy = run(Policy::Precopy);
    let original = run(Policy::Mllm(EstimatorKind::Original));
    let improved = run(Policy::Mllm(EstimatorKind::Improved));
    assert!(improved.completed && original.completed);
    assert!(
        improved.total_time_ms < precopy.total_time_ms,
        "{improved:?}\n{precopy:?}"
    );
    assert!(improved.link_bytes < precopy.link_bytes);
    assert!(
        improved.precopy_ms < original.precopy_ms,
        "{improved:?}\n{original:?}"
    );
    assert!(
        improved.downtime_ms <= 300.0 + 25.0 + 1e-6,
        "MLLM keeps to the target (plus RTT/2)"
    );
    let forecast = improved.forecast.expect("MLLM forecasts");
    assert!(forecast.total_s > 0.0 && forecast.link_bytes >= layout.memory_bytes());
}

#[test]
fn mllm_sends_used_blocks_only() {
    let reads = WorkloadSpec::Zipf {
        exponent: 1.0,
        rate: 0.01,
    };
    let writes = WorkloadSpec::Uniform { rate: 0.002 };
    let (layout, source) = vm(16, IDLE, Some(disk(reads, writes)));
    let used = layout.disk.as_ref().unwrap().used.count();
    for kind in EstimatorKind::ALL {
        let result = simulate(
            layout.clone(),
            source.clone(),
            Policy::Mllm(kind),
            &config(100.0),
        );
        assert_eq!(
            result.disk_bytes / 65536 - result.retransmitted_blocks,
            used,
            "{}",
            kind.name()
        );
    }
    let precopy = simulate(layout.clone(), source, Policy::Precopy, &config(100.0));
    let allocated = layout.disk.as_ref().unwrap().allocated.count();
    assert_eq!(
        precopy.disk_bytes / 65536 - precopy.retransmitted_blocks,
        allocated
    );
}

#[test]
fn a_stop_splits_the_interval_in_proportion() {
    let interval = GuestInterval {
        duration_s: 1.0,
        memory_writes: (0..10_000).collect(),
        disk_reads: vec![],
        disk_writes: vec![1, 2],
    };
    let (before, after) = split_at(&interval, 3, 0.25);
    assert_eq!(
        before.memory_writes.len() + after.memory_writes.len(),
        10_000
    );
    assert!((before.memory_writes.len() as f64 - 2500.0).abs() < 200.0);
    assert!((after.duration_s - 0.75).abs() < 1e-12);
    let (none, all) = split_at(&interval, 3, 0.0);
    assert!(none.memory_writes.is_empty() && all.memory_writes.len() == 10_000);
}

/// The guest writes the given pages at the end of the given 1-second intervals.
struct Writes(Vec<(u64, Vec<u32>)>);

impl IntervalSource for Writes {
    fn interval(&self, index: u64) -> GuestInterval {
        let written = self.0.iter().find(|(at, _)| *at == index);
        GuestInterval {
            duration_s: 1.0,
            memory_writes: written.map_or_else(Vec::new, |(_, pages)| pages.clone()),
            ..GuestInterval::default()
        }
    }
}

#[test]
fn precopy_resends_what_the_tracker_reports_at_each_pages_cost() {
    // 1000 pages, the odd ones zero: round 1 carries 2 MB over 10 Mbit/s
    // (1.6 s) and has read about 620 pages when the first interval ends.
    let mut layout = VmLayout::uncompressed(4096, 1000, None, 0);
    layout.page_cost = PageCost {
        data_bytes: 4000,
        zero_bytes: 4,
    };
    layout.zero_pages = PageSet::full(1000).evenly_spaced(500);
    assert!(layout.zero_pages.contains(1) && layout.zero_pages.contains(999));
    // Page 0 (data) and page 1 (zero) are written after round 1 read them,
    // page 999 (zero) before: it is read as data, and resent all the same,
    // since the tracker reports it at the scan after round 1.
    let source = Writes(vec![(0, vec![0, 1, 999])]);
    let mut config = config(10.0);
    config.warmup_intervals = 0;
    let result = simulate(Arc::new(layout), Arc::new(source), Policy::Precopy, &config);
    assert!(result.completed);
    assert_eq!(result.rounds, 1, "the three pages fit the downtime budget");
    assert_eq!(result.retransmitted_pages, 3, "{result:?}");
    let round_one = 500 * 4000 + 499 * 4 + 4000;
    assert_eq!(result.memory_bytes, round_one + 3 * 4000);
    let seconds = result.link_bytes as f64 / 1.25e6 + 0.05;
    assert!(
        (result.total_time_ms / 1e3 - seconds).abs() < 1e-9,
        "{result:?}"
    );
}
