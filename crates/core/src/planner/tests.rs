use proptest::prelude::*;

use super::*;
use crate::synth::{Workload, WorkloadClass};
use crate::vm::DiskLayout;
use crate::workingset::{EstimatorKind, Improved};

const PAGES: u32 = 8192;

fn layout(disk: Option<DiskLayout>) -> VmLayout {
    VmLayout::uncompressed(4096, PAGES, disk, 300_000)
}

fn input<'a>(
    layout: &'a VmLayout,
    link: Link,
    memory: &'a dyn Estimator,
    disk: Option<&'a dyn Estimator>,
) -> PlanInput<'a> {
    PlanInput {
        layout,
        link,
        config: PlannerConfig::default(),
        memory_writes: memory,
        disk_reads: disk,
    }
}

fn observed(kind: EstimatorKind, items: u32, history: &[Vec<u32>]) -> Box<dyn Estimator> {
    let mut estimator = kind.build(items, 10);
    history.iter().for_each(|h| estimator.observe(h));
    estimator
}

#[test]
fn without_writes_everything_is_precopied_once_in_spread_order() {
    let disk = DiskLayout::synthetic(4096, 65536, 0.8, 0.5, 1);
    let used_blocks = disk.used.count();
    let mut vm = layout(Some(disk));
    // A quarter of the pages are zero: markers in the first pass.
    vm.zero_pages = PageSet::full(PAGES).evenly_spaced(u64::from(PAGES / 4));
    let link = Link::from_mbit(100.0, 50.0);
    let memory = Improved::new(PAGES, 10);
    let reads = Improved::new(4096, 10);
    let plan = plan(&input(&vm, link, &memory, Some(&reads)));
    assert_eq!(
        plan.memory_precopy,
        order::spread(&PageSet::full(PAGES), SPREAD_REGION_PAGES)
    );
    assert!(plan.memory_deferred.is_empty() && plan.disk_first.is_empty());
    assert_eq!(plan.disk_after_switch.len() as u64, used_blocks);
    let f = plan.forecast;
    assert_eq!(f.passes, 1);
    assert_eq!(f.postcopy_faults, 0.0);
    let memory_bytes = u64::from(PAGES / 4) * 4 + u64::from(PAGES * 3 / 4) * 4100;
    let bytes = memory_bytes + used_blocks * 65536 + vm.device_state_bytes;
    assert_eq!(f.link_bytes, bytes);
    assert!((f.total_s - (bytes as f64 / 12.5e6 + 0.05)).abs() < 1e-9);
    assert!((f.downtime_s - (300_000.0 / 12.5e6 + 0.025)).abs() < 1e-9);
}

/// A live migration plans before it knows the link's rate: the blocks the
/// guest keeps reading still go first.
#[test]
fn before_the_rate_is_known_the_hot_read_blocks_go_first() {
    let disk = DiskLayout::synthetic(4096, 4096, 1.0, 1.0, 1);
    let vm = layout(Some(disk));
    let unknown = Link {
        bandwidth_bytes_per_s: 0.0,
        ..Link::from_mbit(100.0, 50.0)
    };
    let memory = Improved::new(PAGES, 10);
    let hot: Vec<u32> = (100..120).collect();
    let reads = observed(EstimatorKind::Improved, 4096, &[hot.clone(), hot.clone()]);
    let plan = plan(&input(&vm, unknown, &memory, Some(reads.as_ref())));
    let mut first = plan.disk_first.clone();
    first.sort_unstable();
    assert_eq!(first, hot);
    assert_eq!(plan.disk_after_switch.len(), 4096 - hot.len());
}

#[test]
fn hot_pages_are_deferred_and_never_written_pages_go_first() {
    let hot: Vec<u32> = (1000..1100).collect();
    let history: Vec<Vec<u32>> = (0..20).map(|_| hot.clone()).collect();
    let vm = layout(None);
    let memory = observed(EstimatorKind::Improved, PAGES, &history);
    let plan = plan(&input(
        &vm,
        Link::from_mbit(100.0, 50.0),
        memory.as_ref(),
        None,
    ));
    assert_eq!(
        plan.memory_deferred
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        hot.iter().copied().collect()
    );
    assert_eq!(plan.memory_precopy.len(), PAGES as usize - 100);
    assert_eq!(
        plan.memory_precopy[..1000],
        (0..1000).collect::<Vec<_>>()[..]
    );
    // A hundred pages fit in the downtime budget: no post-copy, no faults.
    assert_eq!(plan.forecast.postcopy_faults, 0.0);
    let paused_for_state = 300_000.0 / 12.5e6 + 0.025;
    let expected = paused_for_state + 100.0 * 4100.0 / 12.5e6;
    assert!(
        (plan.forecast.downtime_s - expected).abs() < 1e-9,
        "{}",
        plan.forecast.downtime_s
    );
}

#[test]
fn a_slower_link_defers_warmer_pages() {
    // Page 7 is written every 30 intervals, page 9 every interval.
    let history: Vec<Vec<u32>> = (0..120)
        .map(|i| if i % 30 == 0 { vec![7, 9] } else { vec![9] })
        .collect();
    let vm = layout(None);
    let memory = observed(EstimatorKind::Improved, PAGES, &history);
    let deferred = |mbit| {
        plan(&input(
            &vm,
            Link::from_mbit(mbit, 50.0),
            memory.as_ref(),
            None,
        ))
        .memory_deferred
    };
    assert_eq!(
        deferred(10_000.0),
        Vec::<u32>::new(),
        "a 0.03 s pre-copy sends even the hot page"
    );
    assert_eq!(
        deferred(100.0),
        vec![9],
        "a 2.7 s pre-copy defers the hot page only"
    );
    assert_eq!(
        deferred(10.0),
        vec![9, 7],
        "a 27 s pre-copy defers the warm one too, after the hot one"
    );
}

#[test]
fn switch_rule_stops_on_budget_stall_or_pass_limit() {
    let rule = SwitchRule {
        downtime_budget_bytes: 1000,
        max_passes: 5,
        min_shrink: 0.2,
    };
    assert!(rule.should_switch(1, 1_000_000, 900));
    assert!(
        rule.should_switch(1, 1_000_000, 850_000),
        "shrinking by 15% is a stall"
    );
    assert!(!rule.should_switch(1, 1_000_000, 700_000));
    assert!(rule.should_switch(5, 1_000_000, 10_000));
}

#[test]
fn switch_fills_the_downtime_budget_with_the_hottest_pages() {
    let history: Vec<Vec<u32>> = (0..40)
        .map(|i| (0..2000).filter(|p| i % (1 + p / 500) == 0).collect())
        .collect();
    let vm = layout(None);
    let memory = observed(EstimatorKind::Improved, PAGES, &history);
    let link = Link::from_mbit(100.0, 50.0);
    let input = input(&vm, link, memory.as_ref(), None);
    let pending = PageSet::from_items(PAGES, &(0..2000).collect::<Vec<_>>());
    let plan = switch_plan(&input, &pending, None);
    let budget = SwitchRule::new(&vm, &link, &input.config).downtime_budget_bytes;
    assert_eq!(
        plan.downtime_pages.len() as u64,
        budget / 4100,
        "data pages"
    );
    assert_eq!(plan.downtime_pages.len() + plan.postcopy_pages.len(), 2000);
    // Pages 0..500 are written every interval: they are the hottest.
    assert!(plan.downtime_pages[..500].iter().all(|&p| p < 500));
    assert!(plan.postcopy_pages.iter().all(|&p| p >= 500));
}

#[test]
fn next_step_continues_while_passes_shrink() {
    let vm = layout(None);
    let memory = Improved::new(PAGES, 10);
    let input = input(&vm, Link::from_mbit(100.0, 50.0), &memory, None);
    let pending = PageSet::from_items(PAGES, &(0..3000).collect::<Vec<_>>());
    assert_eq!(
        next_step(&input, &pending, 1, 100 << 20),
        Step::Pass((0..3000).collect())
    );
    let small = PageSet::from_items(PAGES, &[5, 6]);
    assert_eq!(
        next_step(&input, &small, 2, 12 << 20),
        Step::Switch,
        "two pages fit the budget"
    );
    assert_eq!(
        next_step(&input, &pending, 2, 13 << 20),
        Step::Switch,
        "not shrinking enough"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Unused blocks are never sent, whatever the guest read: not first, not
    /// after the switch, not in a switch plan.
    #[test]
    fn planner_never_sends_an_unused_block(
        seed in any::<u64>(), used in 0.05f64..0.6, unused_reads in proptest::collection::vec(0u32..4096, 0..50),
        class_index in 0usize..5,
    ) {
        let disk = DiskLayout::synthetic(4096, 65536, 0.7, used, seed);
        let used_set = disk.used.clone();
        let workload = Workload::new(WorkloadClass::ALL[class_index].default_spec(), 4096, seed);
        let history: Vec<Vec<u32>> = (0..15).map(|i| {
            let mut reads = workload.accesses(i);
            reads.extend(&unused_reads);
            reads.sort_unstable();
            reads.dedup();
            reads
        }).collect();
        let vm = layout(Some(disk));
        let memory = Improved::new(PAGES, 10);
        for kind in EstimatorKind::ALL {
            let reads = observed(kind, 4096, &history);
            let input = input(&vm, Link::from_mbit(1000.0, 20.0), &memory, Some(reads.as_ref()));
            let plan = plan(&input);
            let sent: Vec<u32> = plan.disk_first.iter().chain(&plan.disk_after_switch).copied().collect();
            prop_assert!(sent.iter().all(|&b| used_set.contains(b)), "{} sent an unused block", kind.name());
            prop_assert_eq!(sent.len() as u64, used_set.count(), "every used block is sent once");
            let switch = switch_plan(&input, &PageSet::new(PAGES), Some(&used_set));
            prop_assert!(switch.postcopy_blocks.iter().all(|&b| used_set.contains(b)));
        }
    }

    /// Each page is either pre-copied or deferred, exactly once.
    #[test]
    fn memory_plan_partitions_the_pages(seed in any::<u64>(), class_index in 0usize..5, mbit in 10f64..10_000.0) {
        let workload = Workload::new(WorkloadClass::ALL[class_index].default_spec(), PAGES, seed);
        let history: Vec<Vec<u32>> = (0..20).map(|i| workload.accesses(i)).collect();
        let vm = layout(None);
        for kind in EstimatorKind::ALL {
            let memory = observed(kind, PAGES, &history);
            let plan = plan(&input(&vm, Link::from_mbit(mbit, 50.0), memory.as_ref(), None));
            let mut all: Vec<u32> = plan.memory_precopy.iter().chain(&plan.memory_deferred).copied().collect();
            all.sort_unstable();
            prop_assert_eq!(all, (0..PAGES).collect::<Vec<_>>(), "{}", kind.name());
            prop_assert!(plan.forecast.total_s >= plan.forecast.precopy_s);
            prop_assert!(plan.forecast.link_bytes >= vm.memory_bytes());
        }
    }
}
