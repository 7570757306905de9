use std::sync::Arc;

use mllm_core::link::Link;
use mllm_core::synth::WorkloadSpec;
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
        let (layout, source) = vm(32, IDLE, with_disk.then(|| disk(reads.clone(), IDLE)));
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
            let expected = layout.memory_bytes() + disk_blocks * 65536 + layout.device_state_bytes;
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
    assert_eq!(result.memory_bytes, layout.memory_bytes());
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
