//! QEMU's own methods, as the lab runs them: the disk is mirrored first
//! (drive-mirror to an NBD export: every allocated block in address order,
//! blocks written meanwhile copied again) and must be in sync at the switch;
//! memory moves by pre-copy, post-copy, or one pre-copy pass then post-copy.

use mllm_core::planner::{PlannerConfig, SwitchRule};

use super::queue::{SendQueue, Space};
use super::strategy::{Strategy, Switch, TransferState};

/// When a pre-copy that does not converge is stopped anyway, after Xen's rule
/// of thumb: a number of passes, or a multiple of the RAM size sent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrecopyLimits {
    pub max_rounds: u64,
    pub max_sent_ratio: f64,
}

impl Default for PrecopyLimits {
    fn default() -> Self {
        PrecopyLimits {
            max_rounds: 30,
            max_sent_ratio: 3.0,
        }
    }
}

/// Bytes that fit in the downtime target at the current bandwidth.
fn downtime_budget(state: &TransferState, config: &PlannerConfig) -> u64 {
    SwitchRule::new(&state.layout, &state.link, config).downtime_budget_bytes
}

fn pending_blocks_in_order(state: &TransferState) -> Vec<u32> {
    state
        .pending_blocks()
        .map_or_else(Vec::new, |blocks| blocks.iter().collect())
}

/// Iterative pre-copy: pass after pass over what was dirtied, until the rest
/// fits in the downtime target or the limits stop it; everything left moves
/// while the guest is paused.
pub struct Precopy {
    config: PlannerConfig,
    limits: PrecopyLimits,
    rounds: u64,
}

impl Precopy {
    pub fn new(config: PlannerConfig, limits: PrecopyLimits) -> Self {
        Precopy {
            config,
            limits,
            rounds: 0,
        }
    }
}

impl Strategy for Precopy {
    fn copies_unused_blocks(&self) -> bool {
        true
    }

    fn next_pass(&mut self, state: &TransferState) -> Option<SendQueue> {
        if self.rounds > 0 {
            let sent_ratio = state.memory_bytes_sent as f64 / state.layout.memory_bytes() as f64;
            if state.pending_bytes() <= downtime_budget(state, &self.config)
                || self.rounds >= self.limits.max_rounds
                || sent_ratio >= self.limits.max_sent_ratio
            {
                return None;
            }
        }
        self.rounds += 1;
        Some(state.pending_in_address_order())
    }

    fn switch(&mut self, state: &TransferState) -> Switch {
        Switch {
            downtime: state.pending_in_address_order(),
            postcopy: SendQueue::new(),
        }
    }

    fn rounds(&self) -> u64 {
        self.rounds
    }
}

/// Post-copy from the start: once the disk mirror is in sync, the guest moves
/// and every page is pushed in address order or fetched on fault.
pub struct Postcopy {
    config: PlannerConfig,
    disk_passes: u64,
}

impl Postcopy {
    pub fn new(config: PlannerConfig) -> Self {
        Postcopy {
            config,
            disk_passes: 0,
        }
    }
}

impl Strategy for Postcopy {
    fn copies_unused_blocks(&self) -> bool {
        true
    }

    fn next_pass(&mut self, state: &TransferState) -> Option<SendQueue> {
        mirror_pass(state, &self.config, &mut self.disk_passes)
    }

    fn switch(&mut self, state: &TransferState) -> Switch {
        Switch {
            downtime: SendQueue::new().then(Space::Disk, pending_blocks_in_order(state)),
            postcopy: SendQueue::new().then(Space::Memory, state.pending_pages().iter().collect()),
        }
    }

    fn rounds(&self) -> u64 {
        0
    }
}

/// Another disk mirror pass while the dirty blocks do not fit the downtime.
fn mirror_pass(
    state: &TransferState,
    config: &PlannerConfig,
    passes: &mut u64,
) -> Option<SendQueue> {
    let blocks = pending_blocks_in_order(state);
    let block = state
        .layout
        .disk
        .as_ref()
        .map_or(0, |d| u64::from(d.block_size));
    let bytes = blocks.len() as u64 * block;
    let limit = PrecopyLimits::default().max_rounds;
    if bytes <= downtime_budget(state, config) || *passes >= limit {
        return None;
    }
    *passes += 1;
    Some(SendQueue::new().then(Space::Disk, blocks))
}

/// One pre-copy pass over all memory (after the disk), then post-copy for
/// the pages dirtied meanwhile: QEMU's postcopy-ram started after the first
/// pass.
pub struct Hybrid {
    config: PlannerConfig,
    rounds: u64,
    disk_passes: u64,
}

impl Hybrid {
    pub fn new(config: PlannerConfig) -> Self {
        Hybrid {
            config,
            rounds: 0,
            disk_passes: 0,
        }
    }
}

impl Strategy for Hybrid {
    fn copies_unused_blocks(&self) -> bool {
        true
    }

    fn next_pass(&mut self, state: &TransferState) -> Option<SendQueue> {
        if self.rounds == 0 {
            self.rounds = 1;
            return Some(state.pending_in_address_order());
        }
        mirror_pass(state, &self.config, &mut self.disk_passes)
    }

    fn switch(&mut self, state: &TransferState) -> Switch {
        Switch {
            downtime: SendQueue::new().then(Space::Disk, pending_blocks_in_order(state)),
            postcopy: SendQueue::new().then(Space::Memory, state.pending_pages().iter().collect()),
        }
    }

    fn rounds(&self) -> u64 {
        self.rounds
    }
}
