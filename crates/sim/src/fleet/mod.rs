//! Many VMs migrating over shared inter-datacenter links.
//!
//! Each link runs up to `concurrent` migrations at once and queues the rest,
//! smallest VM first (it frees its slot soonest). Running migrations share the
//! link's bandwidth equally, re-divided every interval: time advances in
//! interval steps, every running migration replaying one interval per step
//! (in parallel). A migration that finishes mid-step frees its share at the
//! next step. A VM's own clock includes its downtime, which the fleet clock
//! ignores: the two drift by at most the downtimes, well under a step each.
//! A VM uses one link, so links are simulated independently, in parallel.

mod scenario;

pub use scenario::{FleetScenario, GroupSpec, LinkSpec};

use std::collections::VecDeque;
use std::time::Instant;

use mllm_core::convert::saturating_usize;
use mllm_core::link::Link;
use mllm_core::synth::mix;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::engine::Migration;
use crate::policy::Policy;
use crate::result::SimResult;
use crate::run::{self, SimConfig};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetVmResult {
    pub vm: u32,
    pub group: String,
    pub link: String,
    /// Fleet time at which this VM's migration started.
    pub start_s: f64,
    pub result: SimResult,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetSummary {
    pub policy: String,
    pub vms: usize,
    pub completed: usize,
    /// Fleet time until the last VM was released.
    pub makespan_s: f64,
    /// Per-VM migration time, start to release (queueing excluded).
    pub mean_total_s: f64,
    pub p95_total_s: f64,
    pub mean_downtime_ms: f64,
    pub p99_downtime_ms: f64,
    pub max_downtime_ms: f64,
    pub link_bytes: u64,
    pub retransmitted_pages: u64,
    pub postcopy_faults: u64,
    /// Wall-clock time the simulation took.
    pub simulated_in_s: f64,
}

struct FleetVm {
    index: u32,
    group: usize,
    link: usize,
}

struct Running {
    vm: u32,
    start_s: f64,
    /// Built on the first step, in parallel with the others' steps: building
    /// replays the warm-up intervals, as costly as many steps.
    migration: Option<Migration>,
}

/// Migrates the whole fleet with `policy`.
pub fn simulate(scenario: &FleetScenario, policy: Policy) -> (FleetSummary, Vec<FleetVmResult>) {
    let started = Instant::now();
    let vms = expand(scenario);
    let mut finished: Vec<FleetVmResult> = (0..scenario.links.len())
        .into_par_iter()
        .flat_map(|link| simulate_link(scenario, &vms, link, policy))
        .collect();
    finished.sort_by_key(|r| r.vm);
    let summary = summarize(policy, &finished, started.elapsed().as_secs_f64());
    (summary, finished)
}

/// The migrations over one link: they share nothing with other links'.
fn simulate_link(
    scenario: &FleetScenario,
    vms: &[FleetVm],
    link: usize,
    policy: Policy,
) -> Vec<FleetVmResult> {
    let spec = &scenario.links[link];
    let mut queue: Vec<&FleetVm> = vms.iter().filter(|vm| vm.link == link).collect();
    queue.sort_by_key(|vm| (scenario.groups[vm.group].vm.data_bytes(), vm.index));
    let mut queue: VecDeque<&FleetVm> = queue.into();
    let mut running: Vec<Running> = Vec::new();
    let mut finished = Vec::new();
    let mut step: u64 = 0;
    while !running.is_empty() || !queue.is_empty() {
        let now = step as f64 * scenario.interval_s;
        let free = spec
            .concurrent
            .saturating_sub(running.len())
            .min(queue.len());
        running.extend(queue.drain(..free).map(|vm| Running {
            vm: vm.index,
            start_s: now,
            migration: None,
        }));

        let share = spec.bandwidth_mbit * 1e6 / 8.0 / running.len() as f64;
        running.par_iter_mut().for_each(|r| {
            let vm = &vms[r.vm as usize];
            let migration = r
                .migration
                .get_or_insert_with(|| start_vm(scenario, vm, policy));
            migration.advance(share);
        });

        let (done, still): (Vec<Running>, Vec<Running>) = running
            .into_iter()
            .partition(|r| r.migration.as_ref().is_some_and(Migration::is_done));
        running = still;
        finished.extend(done.into_iter().map(|r| {
            FleetVmResult {
                vm: r.vm,
                group: scenario.groups[vms[r.vm as usize].group].name.clone(),
                link: spec.name.clone(),
                start_s: r.start_s,
                result: r
                    .migration
                    .expect("a finished migration was built")
                    .into_result(),
            }
        }));
        step += 1;
    }
    finished
}

fn expand(scenario: &FleetScenario) -> Vec<FleetVm> {
    let mut vms = Vec::new();
    for (group_index, group) in scenario.groups.iter().enumerate() {
        let link = scenario
            .link_index(&group.link)
            .expect("validated fleet file");
        for _ in 0..group.count {
            vms.push(FleetVm {
                index: u32::try_from(vms.len()).expect("fleet beyond 2^32 VMs"),
                group: group_index,
                link,
            });
        }
    }
    vms
}

fn start_vm(scenario: &FleetScenario, vm: &FleetVm, policy: Policy) -> Migration {
    let link_spec = &scenario.links[vm.link];
    let mut config = SimConfig::new(Link::from_mbit(link_spec.bandwidth_mbit, link_spec.rtt_ms));
    config.planner.downtime_target_s = scenario.downtime_target_ms / 1e3;
    config.planner.interval_s = scenario.interval_s;
    config.warmup_intervals = scenario.warmup_intervals;
    let (layout, source) = scenario.groups[vm.group]
        .vm
        .build(scenario.interval_s, mix(scenario.seed, u64::from(vm.index)));
    run::start(layout, source, policy, &config)
}

fn summarize(policy: Policy, vms: &[FleetVmResult], simulated_in_s: f64) -> FleetSummary {
    let results: Vec<&SimResult> = vms.iter().map(|vm| &vm.result).collect();
    let mut totals: Vec<f64> = results.iter().map(|r| r.total_time_ms / 1e3).collect();
    let mut downtimes: Vec<f64> = results.iter().map(|r| r.downtime_ms).collect();
    totals.sort_by(f64::total_cmp);
    downtimes.sort_by(f64::total_cmp);
    let count = results.len().max(1) as f64;
    FleetSummary {
        policy: policy.to_string(),
        vms: results.len(),
        completed: results.iter().filter(|r| r.completed).count(),
        makespan_s: vms
            .iter()
            .map(|vm| vm.start_s + vm.result.total_time_ms / 1e3)
            .fold(0.0, f64::max),
        mean_total_s: totals.iter().sum::<f64>() / count,
        p95_total_s: percentile(&totals, 0.95),
        mean_downtime_ms: downtimes.iter().sum::<f64>() / count,
        p99_downtime_ms: percentile(&downtimes, 0.99),
        max_downtime_ms: downtimes.last().copied().unwrap_or(0.0),
        link_bytes: results.iter().map(|r| r.link_bytes).sum(),
        retransmitted_pages: results.iter().map(|r| r.retransmitted_pages).sum(),
        postcopy_faults: results.iter().map(|r| r.postcopy_faults).sum(),
        simulated_in_s,
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = saturating_usize((p * sorted.len() as f64).ceil());
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests;
