//! The one answer to "send another pass, or switch?", and to what moves at
//! the switch. A [`Strategy`] decides; whoever drives it does the rest: the
//! simulator (`mllm-sim`, with a modelled link and guest) and the live
//! source agent (`mllm-agent`, with the real tracker, link and QEMU) call
//! the same methods with the same [`TransferState`], so a policy measured in
//! the simulator is the policy that runs.
//!
//! Driving order: [`Strategy::next_pass`] at the start and each time the
//! previous pass has drained (after a fresh scan of the guest's writes),
//! until it returns [`Pass::Switch`] (or [`Pass::Abort`]); then, with the
//! guest paused and its last writes known, [`Strategy::switch`].
//!
//! The strategies: [`Precopy`] (QEMU's and mllm's pre-copy: pass after pass
//! until the rest fits the downtime target), [`Postcopy`] and [`Hybrid`]
//! (QEMU's post-copy, from the start or after one pass) and [`Mllm`] (the
//! workingset planner).

mod mllm;
mod qemu;
mod queue;

pub use mllm::{DiskMove, Mllm};
pub use qemu::{BoundAction, Hybrid, Postcopy, Precopy, PrecopyLimits};
pub use queue::{SendQueue, Space};

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::link::Link;
use crate::memory::PageIndex;
use crate::planner::Forecast;
use crate::vm::VmLayout;
use crate::PageSet;

/// One interval of guest activity, as a strategy that learns observes it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GuestInterval {
    pub duration_s: f64,
    /// Pages written, increasing.
    pub memory_writes: Vec<PageIndex>,
    /// Blocks read, increasing.
    pub disk_reads: Vec<u32>,
    /// Blocks written, increasing.
    pub disk_writes: Vec<u32>,
}

/// What a policy sees of the migration in progress.
#[derive(Clone, Debug)]
pub struct TransferState {
    pub layout: Arc<VmLayout>,
    /// The link at the bandwidth this migration currently gets (measured,
    /// live; zero while not yet known).
    pub link: Link,
    /// Bytes sent but not yet known to have arrived: they cross before
    /// anything sent next.
    pub in_flight_bytes: u64,
    /// Seconds since the migration started.
    pub elapsed_s: f64,
    /// Pages whose current content the destination holds.
    pub memory_valid: PageSet,
    /// Blocks whose current content the destination holds (holes, and for
    /// policies that skip them, unused blocks, count as held).
    pub disk_valid: Option<PageSet>,
    /// Pages that still hold only zeros on the source: zero at the start and
    /// not written since.
    pub zero_pages: PageSet,
    pub memory_bytes_sent: u64,
}

impl TransferState {
    pub fn pending_pages(&self) -> PageSet {
        self.memory_valid.complement()
    }

    pub fn pending_blocks(&self) -> Option<PageSet> {
        self.disk_valid.as_ref().map(PageSet::complement)
    }

    /// Link bytes of page `page` as it is now.
    pub fn page_bytes(&self, page: u32) -> u64 {
        self.layout.page_cost.bytes(self.zero_pages.contains(page))
    }

    /// Link bytes of `pages` as they are now.
    pub fn pages_bytes(&self, pages: &[PageIndex]) -> u64 {
        pages.iter().map(|&page| self.page_bytes(page)).sum()
    }

    pub fn pending_bytes(&self) -> u64 {
        let block = self
            .layout
            .disk
            .as_ref()
            .map_or(0, |d| u64::from(d.block_size));
        self.layout
            .page_cost
            .of(&self.pending_pages(), &self.zero_pages)
            + self
                .pending_blocks()
                .map_or(0, |blocks| blocks.count() * block)
    }

    /// How long the guest would stay paused if it stopped now: what is in
    /// flight, what is pending and the device state, over the link's rate.
    /// `None` while the rate is unknown.
    pub fn predicted_downtime_s(&self) -> Option<f64> {
        let rate = self.link.bandwidth_bytes_per_s;
        (rate > 0.0).then(|| {
            (self.in_flight_bytes + self.pending_bytes() + self.layout.device_state_bytes) as f64
                / rate
        })
    }

    /// Pending blocks then pending pages, in address order.
    pub fn pending_in_address_order(&self) -> SendQueue {
        SendQueue::new()
            .then(
                Space::Disk,
                self.pending_blocks()
                    .map_or_else(Vec::new, |b| b.iter().collect()),
            )
            .then(Space::Memory, self.pending_pages().iter().collect())
    }
}

/// Whether `item` of `space` is among the pages `held` (the strategy's last
/// [`Strategy::held_back`]) leaves out of the pass being sent.
pub fn left_out(held: Option<&PageSet>, space: Space, item: u32) -> bool {
    space == Space::Memory && held.is_some_and(|held| held.contains(item))
}

/// The switch: what is sent while the guest is paused, and what is pushed
/// after it runs on the destination.
#[derive(Debug)]
pub struct Switch {
    pub downtime: SendQueue,
    pub postcopy: SendQueue,
}

/// What to do after a pass has drained.
#[derive(Debug)]
pub enum Pass {
    /// Send these items next, in order.
    Send(SendQueue),
    /// Stop the guest; [`Strategy::switch`] says what moves when.
    Switch(SwitchReason),
    /// Give up: the guest keeps running on the source.
    Abort(String),
}

/// Why a strategy stopped the guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "reason")]
pub enum SwitchReason {
    /// The predicted downtime fit the target.
    Converged { predicted_ms: f64 },
    /// The round bound was hit; switched anyway.
    RoundLimit { predicted_ms: Option<f64> },
    /// The time bound was hit; switched anyway.
    TimeLimit { predicted_ms: Option<f64> },
    /// The bound on bytes sent (a multiple of RAM) was hit; switched anyway.
    SentLimit { predicted_ms: Option<f64> },
    /// The strategy switches by design here (post-copy, or the planner
    /// judged another pass not worth it).
    Planned,
}

pub trait Strategy: Send {
    /// Whether the disk copy includes allocated blocks the guest does not use.
    fn copies_unused_blocks(&self) -> bool;

    /// Whether the policy learns from the guest's activity: only then is it
    /// shown the intervals before the migration.
    fn learns(&self) -> bool {
        false
    }

    /// Sees each interval the guest runs on the source (and, if it learns,
    /// the warm-up ones before the migration).
    fn observe(&mut self, _interval: &GuestInterval) {}

    /// Sees the blocks read in one interval of the guest's disk history
    /// from before the migration (the disk server keeps it; the memory
    /// tracker has no such history), if it learns from disk reads.
    fn observe_disk_reads(&mut self, _reads: &[u32]) {}

    /// Called at the start and whenever the previous pass has drained,
    /// after a scan of the guest's writes.
    fn next_pass(&mut self, state: &TransferState) -> Pass;

    /// Called while a pass is sent, after the strategy has observed the
    /// intervals so far: the pages the rest of the pass should leave out
    /// (they stay pending), or `None` to send it as planned. Lets a
    /// strategy that starts without a write history, as a live migration
    /// does, use what it learns during its first pass.
    fn held_back(&mut self, _state: &TransferState) -> Option<PageSet> {
        None
    }

    /// Called with the guest stopped, once its last writes on the source are
    /// known.
    fn switch(&mut self, state: &TransferState) -> Switch;

    /// Memory pre-copy passes so far.
    fn rounds(&self) -> u64;

    /// The policy's own prediction of the migration, if it makes one.
    fn forecast(&self) -> Option<Forecast> {
        None
    }
}
