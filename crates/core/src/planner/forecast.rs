//! What a plan is expected to cost, before it runs.
//!
//! The model: every pre-copied page that has a write rate `λ` (from its score
//! `p`, `λ = -ln(1 - p)` per interval) is dirtied during a pass of `T` seconds
//! with probability `1 - exp(-λ T / interval)` and then sent again in the next
//! pass; passes repeat until the [`SwitchRule`] stops them. The workingset
//! left out of the first pass joins a later one, except the pages likely
//! written before that pass would end (the planner's rule, with `λ`). At the
//! switch the dirty pages and the workingset still waiting are pending: the
//! hottest fill the downtime budget, the rest are pushed after the switch,
//! then the remaining used blocks. A pushed item faults if the guest touches
//! it before it arrives.
//! The link is busy from start to end, so the total time is all bytes at link
//! speed plus one round trip: half for the last byte to arrive, half for the
//! destination's confirmation that releases the source.

use serde::{Deserialize, Serialize};

use super::scores::Scores;
use super::{PlanInput, SwitchRule};
use crate::convert::{saturating_u64, saturating_usize};
use crate::pageset::PageSet;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    pub total_s: f64,
    pub downtime_s: f64,
    /// From the start to the switch.
    pub precopy_s: f64,
    pub link_bytes: u64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub passes: u32,
    /// Expected post-copy faults: pages written and blocks read before they
    /// arrive.
    pub postcopy_faults: f64,
}

pub(super) struct Transfers<'a> {
    pub disk_first: &'a [u32],
    pub precopy: &'a [u32],
    pub deferred: &'a [u32],
    pub disk_after_switch: &'a [u32],
}

pub(super) fn forecast(
    input: &PlanInput,
    rule: &SwitchRule,
    plan: &Transfers,
    writes: &Scores,
    reads: Option<&Scores>,
) -> Forecast {
    let link = &input.link;
    // The first pass moves pages as they are at the start (zero pages as
    // markers); what is sent again or deferred was written: data pages.
    let page = f64::from(input.layout.page_cost.data_bytes);
    let block = input
        .layout
        .disk
        .as_ref()
        .map_or(0.0, |d| d.block_size as f64);
    let interval = input.config.interval_s;

    let precopied = PageSet::from_items(input.layout.memory_pages, plan.precopy);
    // Pages pre-copied at least once, by write rate: each is dirty again
    // after a pass with the probability its rate gives.
    let mut sent_rates: Vec<f64> = writes.among(&precopied).map(|(_, p)| rate(p)).collect();
    // The workingset pages not pre-copied yet, hottest first.
    let mut waiting: Vec<(u32, f64)> = plan
        .deferred
        .iter()
        .map(|&item| (item, rate(writes.get(item))))
        .collect();
    let deferral_cost = input.config.deferral_cost;
    let intervals_for = |pages: f64| pages * page / link.bandwidth_bytes_per_s / interval;
    let mut passes = 1;
    let mut pass_bytes = input.layout.copy_bytes(&precopied) as f64;
    let mut precopy_bytes = pass_bytes;
    let pending_pages = loop {
        let pass_intervals = intervals_for(pass_bytes / page);
        let dirty = sent_rates.iter().fold(0.0, |sum, &rate| {
            sum + fault_probability_at(rate, pass_intervals)
        });
        // The waiting pages the next pass takes: those unlikely to be written
        // before it ends, its length estimated with all of them, then once
        // more with those it takes.
        let joining_within = |intervals: f64| {
            waiting
                .iter()
                .filter(|&&(_, rate)| fault_probability_at(rate, intervals) < deferral_cost)
                .count()
        };
        let first_guess = joining_within(intervals_for(dirty + waiting.len() as f64));
        let next_intervals = intervals_for(dirty + first_guess as f64);
        let next_pages = dirty + joining_within(next_intervals) as f64;
        if rule.should_switch(
            passes,
            saturating_u64(pass_bytes),
            saturating_u64(next_pages * page),
        ) {
            break dirty + waiting.len() as f64;
        }
        let (join, stay): (Vec<_>, Vec<_>) = std::mem::take(&mut waiting)
            .into_iter()
            .partition(|&(_, rate)| fault_probability_at(rate, next_intervals) < deferral_cost);
        sent_rates.extend(join.iter().map(|&(_, rate)| rate));
        waiting = stay;
        passes += 1;
        pass_bytes = next_pages * page;
        precopy_bytes += pass_bytes;
    };
    let downtime_pages = pending_pages.min((rule.downtime_budget_bytes as f64 / page).floor());
    let postcopy_pages = pending_pages - downtime_pages;
    let device_state = input.layout.device_state_bytes as f64;

    // Pushing starts as the paused guest's last bytes leave; each item arrives
    // one transfer after its predecessor.
    let seconds_per_page = page / link.bandwidth_bytes_per_s;
    let skip = saturating_usize(downtime_pages);
    let mut faults =
        waiting
            .iter()
            .enumerate()
            .skip(skip)
            .fold(0.0, |sum, (position, &(item, _))| {
                let arrival = (position - skip + 1) as f64 * seconds_per_page;
                sum + fault_probability(writes.get(item), arrival / interval)
            });
    if let Some(reads) = reads {
        let memory_push = postcopy_pages * seconds_per_page;
        let seconds_per_block = block / link.bandwidth_bytes_per_s;
        faults =
            plan.disk_after_switch
                .iter()
                .enumerate()
                .fold(faults, |sum, (position, &item)| {
                    let arrival = memory_push + (position + 1) as f64 * seconds_per_block;
                    sum + fault_probability(reads.get(item), arrival / interval)
                });
    }

    let memory_bytes = precopy_bytes + pending_pages * page;
    let disk_bytes = (plan.disk_first.len() + plan.disk_after_switch.len()) as f64 * block;
    let link_bytes = memory_bytes + disk_bytes + device_state;
    let precopy_s =
        (plan.disk_first.len() as f64 * block + precopy_bytes) / link.bandwidth_bytes_per_s;
    Forecast {
        total_s: link_bytes / link.bandwidth_bytes_per_s + link.rtt_s,
        downtime_s: (downtime_pages * page + device_state) / link.bandwidth_bytes_per_s
            + link.rtt_s / 2.0,
        precopy_s,
        link_bytes: saturating_u64(link_bytes.round()),
        memory_bytes: saturating_u64(memory_bytes.round()),
        disk_bytes: saturating_u64(disk_bytes.round()),
        passes,
        postcopy_faults: faults,
    }
}

/// Accesses per interval of an item accessed with probability `p` in one.
fn rate(p: f64) -> f64 {
    -(1.0 - p.min(1.0 - 1e-9)).ln()
}

/// Probability of an access within `intervals` for an item whose per-interval
/// probability is `p`.
fn fault_probability(p: f64, intervals: f64) -> f64 {
    fault_probability_at(rate(p), intervals)
}

/// The same, from the item's access rate per interval.
fn fault_probability_at(rate: f64, intervals: f64) -> f64 {
    1.0 - (-rate * intervals).exp()
}
