//! Running simulated migrations of one VM.

use std::sync::Arc;

use mllm_core::link::Link;
use mllm_core::planner::PlannerConfig;
use mllm_core::vm::VmLayout;
use rayon::prelude::*;

use mllm_core::strategy::PrecopyLimits;

use crate::engine::Migration;
use crate::policy::Policy;
use crate::result::SimResult;
use crate::source::IntervalSource;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimConfig {
    pub link: Link,
    /// Downtime target, interval length, deferral cost, pass rules.
    pub planner: PlannerConfig,
    pub precopy_limits: PrecopyLimits,
    /// Intervals the tracker has observed before the migration starts.
    pub warmup_intervals: u64,
    /// A migration still running after this long is reported incomplete.
    pub max_duration_s: f64,
    /// How far ahead the hierarchical estimator's region model learns to look.
    pub estimator_horizon: u32,
}

impl SimConfig {
    pub fn new(link: Link) -> Self {
        SimConfig {
            link,
            planner: PlannerConfig::default(),
            precopy_limits: PrecopyLimits::default(),
            warmup_intervals: 30,
            max_duration_s: 24.0 * 3600.0,
            estimator_horizon: 10,
        }
    }
}

/// A migration of `layout`, running `source`, by `policy`, ready to advance.
pub fn start(
    layout: Arc<VmLayout>,
    source: Arc<dyn IntervalSource>,
    policy: Policy,
    config: &SimConfig,
) -> Migration {
    let blocks = layout.disk.as_ref().map(|disk| disk.blocks());
    let strategy = policy.strategy(layout.memory_pages, blocks, config);
    Migration::new(
        policy.to_string(),
        layout,
        source,
        strategy,
        config.link,
        config.warmup_intervals,
        config.max_duration_s,
    )
}

pub fn simulate(
    layout: Arc<VmLayout>,
    source: Arc<dyn IntervalSource>,
    policy: Policy,
    config: &SimConfig,
) -> SimResult {
    start(layout, source, policy, config).run()
}

/// Each policy on the same VM, guest activity and link, in parallel.
pub fn compare(
    layout: Arc<VmLayout>,
    source: Arc<dyn IntervalSource>,
    policies: &[Policy],
    config: &SimConfig,
) -> Vec<SimResult> {
    policies
        .par_iter()
        .map(|&policy| simulate(layout.clone(), source.clone(), policy, config))
        .collect()
}
