//! What a migration policy decides; the engine does the rest (link clock,
//! dirtying, faults, accounting).

use std::sync::Arc;

use mllm_core::link::Link;
use mllm_core::vm::VmLayout;
use mllm_core::PageSet;

use super::queue::SendQueue;
use crate::source::GuestInterval;

/// What a policy sees of the migration in progress.
pub struct TransferState {
    pub layout: Arc<VmLayout>,
    /// The link at the bandwidth this migration currently gets.
    pub link: Link,
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
    pub fn pages_bytes(&self, pages: &[u32]) -> u64 {
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

    /// Pending blocks then pending pages, in address order.
    pub fn pending_in_address_order(&self) -> SendQueue {
        use super::queue::Space;
        SendQueue::new()
            .then(
                Space::Disk,
                self.pending_blocks()
                    .map_or_else(Vec::new, |b| b.iter().collect()),
            )
            .then(Space::Memory, self.pending_pages().iter().collect())
    }
}

/// The switch: what is sent while the guest is paused, and what is pushed
/// after it runs on the destination.
pub struct Switch {
    pub downtime: SendQueue,
    pub postcopy: SendQueue,
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

    /// Called at the start and whenever the queue runs dry before the switch:
    /// the next pass, or `None` to stop the guest and switch.
    fn next_pass(&mut self, state: &TransferState) -> Option<SendQueue>;

    /// Called with the guest stopped, once its last writes on the source are
    /// known.
    fn switch(&mut self, state: &TransferState) -> Switch;

    /// Memory pre-copy passes so far.
    fn rounds(&self) -> u64;

    /// The policy's own prediction of the migration, if it makes one.
    fn forecast(&self) -> Option<mllm_core::planner::Forecast> {
        None
    }
}
