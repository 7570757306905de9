use super::*;

const FLEET: &str = r#"
    name = "small"
    seed = 5
    warmup_intervals = 10
    [[link]]
    name = "a"
    bandwidth_mbit = 200
    rtt_ms = 20
    concurrent = 2
    [[link]]
    name = "b"
    bandwidth_mbit = 100
    rtt_ms = 40
    concurrent = 1
    [[group]]
    name = "small"
    count = 4
    link = "a"
    [group.vm]
    memory_mib = 16
    workload = { class = "zipf", exponent = 1.0, rate = 0.01 }
    [[group]]
    name = "big"
    count = 2
    link = "b"
    [group.vm]
    memory_mib = 32
    workload = { class = "hot_set", hot = 0.05, hot_probability = 0.5, warm = 0.1, warm_probability = 0.05, background = 0.001 }
    [group.vm.disk]
    size_gib = 0.0625
    allocated = 0.5
    used = 0.3
    reads = { class = "uniform", rate = 0.01 }
    writes = { class = "uniform", rate = 0.001 }
"#;

#[test]
fn every_vm_migrates_once_and_queues_respect_concurrency() {
    let scenario = FleetScenario::parse(FLEET).unwrap();
    for policy in [
        Policy::Precopy,
        Policy::Mllm(mllm_core::workingset::EstimatorKind::Improved),
    ] {
        let (summary, vms) = simulate(&scenario, policy);
        assert_eq!((summary.vms, summary.completed), (6, 6), "{policy}");
        assert_eq!(
            vms.iter().map(|v| v.vm).collect::<Vec<_>>(),
            (0..6).collect::<Vec<_>>()
        );
        // Link b takes one migration at a time: its two VMs do not overlap
        // (up to the first one's downtime, by which its own clock runs
        // ahead of the fleet's).
        let on_b: Vec<&FleetVmResult> = vms.iter().filter(|v| v.link == "b").collect();
        let first = on_b
            .iter()
            .min_by(|x, y| x.start_s.total_cmp(&y.start_s))
            .unwrap();
        let first_end = first.start_s + first.result.total_time_ms / 1e3;
        let second_start = on_b[0].start_s.max(on_b[1].start_s);
        assert!(
            second_start >= first_end - first.result.downtime_ms / 1e3,
            "{policy}: {second_start} < {first_end}"
        );
        let latest_end = vms
            .iter()
            .map(|v| v.start_s + v.result.total_time_ms / 1e3)
            .fold(0.0, f64::max);
        assert_eq!(summary.makespan_s, latest_end);
        assert_eq!(
            summary.link_bytes,
            vms.iter().map(|v| v.result.link_bytes).sum::<u64>()
        );
    }
}

#[test]
fn fleet_runs_are_deterministic() {
    let scenario = FleetScenario::parse(FLEET).unwrap();
    let policy = Policy::Mllm(mllm_core::workingset::EstimatorKind::Improved);
    let (_, first) = simulate(&scenario, policy);
    let (_, second) = simulate(&scenario, policy);
    assert_eq!(first, second);
}

#[test]
fn percentile_is_nearest_rank() {
    let values = [1.0, 2.0, 3.0, 4.0];
    assert_eq!(percentile(&values, 0.5), 2.0);
    assert_eq!(percentile(&values, 0.95), 4.0);
    assert_eq!(percentile(&[], 0.5), 0.0);
}
