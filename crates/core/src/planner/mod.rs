//! The migration planner: from the estimators' scores, the link, the VM's sizes
//! and a downtime target, what to send, in which order, when to switch, and
//! what it will cost.
//!
//! Memory: pages outside the write workingset are pre-copied, never-written
//! pages first, then the others from coldest to warmest (the warmest go last, so
//! they have the least time to be dirtied again). The workingset is left out
//! of the first pass: it would cross again anyway. A live migration starts
//! without a write history: its first pass goes region by region in a
//! spread order, so what it sends before it has seen writes is an even
//! sample of the guest, not all of one hot region, and the strategy leaves
//! out of the rest of the pass the pages it sees written meanwhile
//! ([`crate::strategy::Mllm`]).
//!
//! After each pass the workingset is re-estimated with everything observed so
//! far, over the length of the next pass: a page likely written again before
//! that pass ends would cross again and still be pending at the switch, so it
//! waits for the switch; the others, the workingset of the first pass among
//! them, are pre-copied, hottest last. The [`SwitchRule`] decides between
//! that pass and the switch. At the switch, pending pages go hottest first:
//! as many as the downtime budget allows while the guest is paused, the rest
//! by post-copy push, with faults served on demand. Each page that waits for
//! the switch beyond the budget risks a fault, a round trip of the guest's
//! time: the later passes' short horizon keeps that set to the pages
//! pre-copy could not have moved anyway.
//!
//! Disk: the used blocks of the read workingset are sent first, before memory,
//! so the destination holds what the guest reads when it starts there; the
//! other used blocks are pushed after the switch; unused blocks are never sent.

mod forecast;
mod order;
mod scores;

pub use forecast::Forecast;

/// Pages per region of the first pass's spread order when no write has been
/// seen yet: 2 MiB of 4 KiB pages, a huge page.
const SPREAD_REGION_PAGES: u32 = 512;

use std::fmt;

use scores::Scores;

use serde::{Deserialize, Serialize};

use crate::link::Link;
use crate::pageset::PageSet;
use crate::vm::VmLayout;
use crate::workingset::{Estimator, Goal, Objective};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannerConfig {
    /// Longest acceptable pause of the guest (QEMU's default is 300 ms).
    pub downtime_target_s: f64,
    /// Length of one tracker interval.
    pub interval_s: f64,
    /// Cost of deferring a page, in page transfers (see [`Objective::Migration`]).
    pub deferral_cost: f64,
    pub max_passes: u32,
    /// A pass must shrink the next one by this share to be worth it.
    pub min_shrink: f64,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            downtime_target_s: 0.3,
            interval_s: 1.0,
            deferral_cost: 0.5,
            max_passes: 10,
            min_shrink: 0.2,
        }
    }
}

/// Everything the planner reads.
pub struct PlanInput<'a> {
    pub layout: &'a VmLayout,
    pub link: Link,
    pub config: PlannerConfig,
    pub memory_writes: &'a dyn Estimator,
    pub disk_reads: Option<&'a dyn Estimator>,
}

impl fmt::Debug for PlanInput<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlanInput")
            .field("layout", &self.layout)
            .field("link", &self.link)
            .field("config", &self.config)
            .field("memory_writes", &self.memory_writes.name())
            .field("disk_reads", &self.disk_reads.map(|e| e.name()))
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MigrationPlan {
    /// Used blocks of the read workingset, hottest first, sent before memory.
    pub disk_first: Vec<u32>,
    /// The first memory pass, in sending order.
    pub memory_precopy: Vec<u32>,
    /// The write workingset, hottest first: it is left out of the first pass.
    pub memory_deferred: Vec<u32>,
    /// Used blocks pushed after the switch, in order (read-scored ones first).
    pub disk_after_switch: Vec<u32>,
    pub switch: SwitchRule,
    pub forecast: Forecast,
}

/// When pre-copy stops.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwitchRule {
    /// Bytes that fit in the downtime target besides the device state.
    pub downtime_budget_bytes: u64,
    pub max_passes: u32,
    pub min_shrink: f64,
}

impl SwitchRule {
    pub fn new(layout: &VmLayout, link: &Link, config: &PlannerConfig) -> SwitchRule {
        SwitchRule {
            downtime_budget_bytes: link
                .bytes_in(config.downtime_target_s)
                .saturating_sub(layout.device_state_bytes),
            max_passes: config.max_passes,
            min_shrink: config.min_shrink,
        }
    }

    /// Switch when the next pass would fit in the downtime budget, would not
    /// shrink enough against the last one, or the passes are used up.
    pub fn should_switch(
        &self,
        passes_done: u32,
        last_pass_bytes: u64,
        next_pass_bytes: u64,
    ) -> bool {
        next_pass_bytes <= self.downtime_budget_bytes
            || passes_done >= self.max_passes
            || next_pass_bytes as f64 > (1.0 - self.min_shrink) * last_pass_bytes as f64
    }
}

/// What to do when a pre-copy pass ends.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Pre-copy these pages, in order.
    Pass(Vec<u32>),
    /// Stop the guest; [`switch_plan`] then says what moves when.
    Switch,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwitchPlan {
    /// Pages sent while the guest is paused: the hottest pending ones.
    pub downtime_pages: Vec<u32>,
    /// Pages pushed after the switch, hottest first.
    pub postcopy_pages: Vec<u32>,
    /// Blocks pushed after the pages.
    pub postcopy_blocks: Vec<u32>,
}

/// The plan before anything is sent: every page and used block pending.
pub fn plan(input: &PlanInput) -> MigrationPlan {
    let layout = input.layout;
    let memory_scores = Scores::of(input.memory_writes);
    let disk_scores = input.disk_reads.map(Scores::of);
    let all_pages = PageSet::full(layout.memory_pages);
    let disk_first = disk_workingset(input, disk_scores.as_ref());
    let disk_first_bytes = disk_first.len() as u64 * block_size(input);
    let horizon = precopy_horizon(input, &all_pages, disk_first_bytes);
    let workingset = memory_workingset(input, &all_pages, horizon);
    let mut precopied = all_pages;
    precopied.subtract(&workingset);
    let memory_precopy = if memory_scores.is_empty() {
        order::spread(&precopied, SPREAD_REGION_PAGES)
    } else {
        memory_scores.coldest_first(&precopied)
    };
    let memory_deferred = memory_scores.hottest_first(&workingset);
    let disk_after_switch = match &layout.disk {
        Some(disk) => {
            let mut pending = disk.used.clone();
            pending.remove_all(&disk_first);
            disk_order(disk_scores.as_ref(), &pending)
        }
        None => Vec::new(),
    };
    let switch = SwitchRule::new(layout, &input.link, &input.config);
    let transfers = forecast::Transfers {
        disk_first: &disk_first,
        precopy: &memory_precopy,
        deferred: &memory_deferred,
        disk_after_switch: &disk_after_switch,
    };
    let forecast = forecast::forecast(
        input,
        &switch,
        &transfers,
        &memory_scores,
        disk_scores.as_ref(),
    );
    MigrationPlan {
        disk_first,
        memory_precopy,
        memory_deferred,
        disk_after_switch,
        switch,
        forecast,
    }
}

/// After a pass: re-estimate the workingset with what the estimator has seen
/// since, over the length of the next pass, then another pass over the
/// pending pages outside it, or the switch. `pending_pages` are the pages the
/// destination lacks or holds stale. While the link's rate is unknown every
/// pending page is a candidate for the next pass.
pub fn next_step(
    input: &PlanInput,
    pending_pages: &PageSet,
    passes_done: u32,
    last_pass_bytes: u64,
) -> Step {
    let horizon = precopy_horizon(input, pending_pages, 0);
    let workingset = if horizon.is_finite() {
        memory_workingset(input, pending_pages, horizon)
    } else {
        PageSet::new(pending_pages.universe())
    };
    let mut outside = pending_pages.clone();
    outside.subtract(&workingset);
    // Pages pending after the first pass were written, or are the deferred
    // workingset: data pages.
    let next_pass_bytes = outside.count() * u64::from(input.layout.page_cost.data_bytes);
    let rule = SwitchRule::new(input.layout, &input.link, &input.config);
    if rule.should_switch(passes_done, last_pass_bytes, next_pass_bytes) {
        Step::Switch
    } else {
        Step::Pass(Scores::of(input.memory_writes).coldest_first(&outside))
    }
}

/// At the switch: pending pages hottest first, split at the downtime budget;
/// pending blocks (used blocks the destination lacks) after them.
pub fn switch_plan(
    input: &PlanInput,
    pending_pages: &PageSet,
    pending_blocks: Option<&PageSet>,
) -> SwitchPlan {
    let mut pages = Scores::of(input.memory_writes).hottest_first(pending_pages);
    let rule = SwitchRule::new(input.layout, &input.link, &input.config);
    // More pages than memory can index all fit: saturate, then cap at the count.
    let fit =
        usize::try_from(rule.downtime_budget_bytes / u64::from(input.layout.page_cost.data_bytes))
            .unwrap_or(usize::MAX);
    let postcopy_pages = pages.split_off(fit.min(pages.len()));
    let disk_scores = input.disk_reads.map(Scores::of);
    SwitchPlan {
        downtime_pages: pages,
        postcopy_pages,
        postcopy_blocks: pending_blocks
            .map_or_else(Vec::new, |p| disk_order(disk_scores.as_ref(), p)),
    }
}

/// The expected pre-copy length in intervals: `ahead_bytes` plus the pending
/// pages outside the workingset, at link speed. The workingset depends on the
/// horizon, so it is estimated with every pending page and refined once.
fn precopy_horizon(input: &PlanInput, pending: &PageSet, ahead_bytes: u64) -> f64 {
    let horizon = |precopied: &PageSet| {
        input
            .link
            .transfer_s(ahead_bytes + input.layout.copy_bytes(precopied))
            / input.config.interval_s
    };
    let mut precopied = pending.clone();
    precopied.subtract(&memory_workingset(input, pending, horizon(pending)));
    horizon(&precopied)
}

/// The write workingset among `pending` pages over `horizon` intervals.
fn memory_workingset(input: &PlanInput, pending: &PageSet, horizon: f64) -> PageSet {
    let goal = Goal {
        horizon,
        objective: Objective::Migration {
            deferral_cost: input.config.deferral_cost,
        },
    };
    let mut workingset = input.memory_writes.predict(&goal);
    workingset.intersect_with(pending);
    workingset
}

/// Used blocks the guest is expected to read before the background push would
/// bring them, hottest first.
fn disk_workingset(input: &PlanInput, scores: Option<&Scores>) -> Vec<u32> {
    let (Some(disk), Some(reads), Some(scores)) = (&input.layout.disk, input.disk_reads, scores)
    else {
        return Vec::new();
    };
    let push_s = input
        .link
        .transfer_s(disk.used.count() * u64::from(disk.block_size));
    // A live migration plans before it has measured the link: then the
    // blocks read in the next interval, the hottest, go first.
    let horizon = if push_s.is_finite() {
        push_s / input.config.interval_s
    } else {
        1.0
    };
    let goal = Goal {
        horizon,
        objective: Objective::Accuracy,
    };
    let mut workingset = reads.predict(&goal);
    workingset.intersect_with(&disk.used);
    scores.hottest_first(&workingset)
}

/// Blocks to push after the switch: read-scored ones hottest first, then the
/// others in address order (sequential on the source's disk).
fn disk_order(scores: Option<&Scores>, pending: &PageSet) -> Vec<u32> {
    match scores {
        Some(scores) => scores.hottest_first(pending),
        None => pending.iter().collect(),
    }
}

fn block_size(input: &PlanInput) -> u64 {
    input
        .layout
        .disk
        .as_ref()
        .map_or(0, |disk| u64::from(disk.block_size))
}

#[cfg(test)]
mod tests;
