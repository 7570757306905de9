//! Pre-copy and post-copy as QEMU does them, the pre-copy also being what
//! mllm's live engine runs today. The disk is mirrored first (drive-mirror
//! to an NBD export: every allocated block in address order, blocks written
//! meanwhile copied again) and must be in sync at the switch; memory moves by
//! pre-copy, post-copy, or one pre-copy pass then post-copy.

use super::queue::{SendQueue, Space};
use super::{Pass, Strategy, Switch, SwitchReason, TransferState};
use crate::planner::{PlannerConfig, SwitchRule};

/// What to do when pre-copy hits a bound without the predicted downtime
/// fitting the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundAction {
    /// Stop the guest and move what is left, exceeding the downtime target.
    Switch,
    /// Give up; the guest keeps running on the source.
    Abort,
}

/// When a pre-copy that does not converge is stopped anyway: after a number
/// of passes, a time, or (Xen's rule of thumb) a multiple of the RAM size sent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrecopyLimits {
    /// Pre-copy passes (the final one, with the guest paused, not counted).
    pub max_rounds: u64,
    pub max_duration_s: Option<f64>,
    pub max_sent_ratio: Option<f64>,
    pub on_bound: BoundAction,
}

impl Default for PrecopyLimits {
    /// QEMU's: switch anyway after 30 passes or three times the RAM sent.
    fn default() -> Self {
        PrecopyLimits {
            max_rounds: 30,
            max_duration_s: None,
            max_sent_ratio: Some(3.0),
            on_bound: BoundAction::Switch,
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
#[derive(Debug)]
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

impl Precopy {
    /// After a pass: switch once the predicted downtime fits the target, or
    /// apply the bound action once a bound is hit; else `None`, another pass.
    fn decide(&self, state: &TransferState) -> Option<Pass> {
        let predicted = state.predicted_downtime_s();
        let predicted_ms = predicted.map(|s| s * 1000.0);
        if let Some(predicted) = predicted {
            if predicted <= self.config.downtime_target_s {
                return Some(Pass::Switch(SwitchReason::Converged {
                    predicted_ms: predicted * 1000.0,
                }));
            }
        }
        let limits = &self.limits;
        let sent_ratio = state.memory_bytes_sent as f64 / state.layout.memory_bytes() as f64;
        let (reason, what) = if self.rounds >= limits.max_rounds {
            (
                SwitchReason::RoundLimit { predicted_ms },
                format!("round bound hit after {} rounds", self.rounds),
            )
        } else if limits
            .max_duration_s
            .is_some_and(|limit| state.elapsed_s >= limit)
        {
            (
                SwitchReason::TimeLimit { predicted_ms },
                format!("time bound hit after {:.1} s", state.elapsed_s),
            )
        } else if limits
            .max_sent_ratio
            .is_some_and(|limit| sent_ratio >= limit)
        {
            (
                SwitchReason::SentLimit { predicted_ms },
                format!("{sent_ratio:.1} times the RAM sent"),
            )
        } else {
            return None;
        };
        Some(match limits.on_bound {
            BoundAction::Switch => Pass::Switch(reason),
            BoundAction::Abort => Pass::Abort(format!(
                "pre-copy did not converge: {what} with the final transfer predicted at {} \
                 against a downtime target of {} ms (the guest writes memory faster than \
                 the link carries it)",
                predicted_ms.map_or("unknown".into(), |ms| format!("{ms:.0} ms")),
                self.config.downtime_target_s * 1000.0
            )),
        })
    }
}

impl Strategy for Precopy {
    fn copies_unused_blocks(&self) -> bool {
        true
    }

    fn next_pass(&mut self, state: &TransferState) -> Pass {
        if self.rounds > 0 {
            if let Some(end) = self.decide(state) {
                return end;
            }
        }
        self.rounds += 1;
        Pass::Send(state.pending_in_address_order())
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
#[derive(Debug)]
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

    fn next_pass(&mut self, state: &TransferState) -> Pass {
        mirror_pass(state, &self.config, &mut self.disk_passes)
    }

    fn switch(&mut self, state: &TransferState) -> Switch {
        postcopy_switch(state)
    }

    fn rounds(&self) -> u64 {
        0
    }
}

/// QEMU's post-copy switch: the disk mirror completes while the guest is
/// paused, then every pending page is pushed in address order.
fn postcopy_switch(state: &TransferState) -> Switch {
    Switch {
        downtime: SendQueue::new().then(Space::Disk, pending_blocks_in_order(state)),
        postcopy: SendQueue::new().then(Space::Memory, state.pending_pages().iter().collect()),
    }
}

/// Another disk mirror pass while the dirty blocks do not fit the downtime.
fn mirror_pass(state: &TransferState, config: &PlannerConfig, passes: &mut u64) -> Pass {
    let blocks = pending_blocks_in_order(state);
    let block = state
        .layout
        .disk
        .as_ref()
        .map_or(0, |d| u64::from(d.block_size));
    let bytes = blocks.len() as u64 * block;
    let limit = PrecopyLimits::default().max_rounds;
    if bytes <= downtime_budget(state, config) || *passes >= limit {
        return Pass::Switch(SwitchReason::Planned);
    }
    *passes += 1;
    Pass::Send(SendQueue::new().then(Space::Disk, blocks))
}

/// One pre-copy pass over all memory (after the disk), then post-copy for
/// the pages dirtied meanwhile: QEMU's postcopy-ram started after the first
/// pass.
#[derive(Debug)]
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

    fn next_pass(&mut self, state: &TransferState) -> Pass {
        if self.rounds == 0 {
            self.rounds = 1;
            return Pass::Send(state.pending_in_address_order());
        }
        mirror_pass(state, &self.config, &mut self.disk_passes)
    }

    fn switch(&mut self, state: &TransferState) -> Switch {
        postcopy_switch(state)
    }

    fn rounds(&self) -> u64 {
        self.rounds
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::link::Link;
    use crate::vm::VmLayout;
    use crate::PageSet;

    const PAGES: u32 = 100_000;

    /// After a pass: `dirty` pages pending at 4096 bytes each, 1 MB in
    /// flight, the link at 10 MB/s (3 MB fit in 300 ms), 10 s elapsed.
    fn state(dirty: u32) -> TransferState {
        let mut memory_valid = PageSet::full(PAGES);
        for page in 0..dirty {
            memory_valid.remove(page);
        }
        let mut layout = VmLayout::uncompressed(4096, PAGES, None, 0);
        layout.page_cost.data_bytes = 4096;
        TransferState {
            layout: Arc::new(layout),
            link: Link {
                bandwidth_bytes_per_s: 10e6,
                rtt_s: 0.05,
                fetch_service_s: 0.0,
            },
            in_flight_bytes: 1_000_000,
            elapsed_s: 10.0,
            memory_valid,
            disk_valid: None,
            zero_pages: PageSet::new(PAGES),
            memory_bytes_sent: u64::from(PAGES) * 4096,
        }
    }

    /// A pre-copy that has sent `rounds` passes.
    fn precopy_after(rounds: u64, limits: PrecopyLimits) -> Precopy {
        let mut precopy = Precopy::new(PlannerConfig::default(), limits);
        precopy.rounds = rounds;
        precopy
    }

    fn unbounded() -> PrecopyLimits {
        PrecopyLimits {
            max_sent_ratio: None,
            ..PrecopyLimits::default()
        }
    }

    #[test]
    fn the_first_pass_sends_everything_in_address_order() {
        let mut precopy = Precopy::new(PlannerConfig::default(), unbounded());
        match precopy.next_pass(&state(PAGES)) {
            Pass::Send(queue) => assert_eq!(queue.len(), PAGES as usize),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn switches_once_the_final_transfer_fits_the_target() {
        let mut precopy = precopy_after(3, unbounded());
        // 1 MB in flight + 400 pages (1.6 MB) = 264 ms.
        match precopy.next_pass(&state(400)) {
            Pass::Switch(SwitchReason::Converged { predicted_ms }) => {
                assert!((predicted_ms - 263.84).abs() < 0.01, "{predicted_ms}")
            }
            other => panic!("{other:?}"),
        }
        // 1 MB + 1000 pages (4.1 MB) = 510 ms: another pass of those pages.
        match precopy.next_pass(&state(1000)) {
            Pass::Send(queue) => assert_eq!(queue.len(), 1000),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unknown_rate_never_converges() {
        let mut precopy = precopy_after(1, unbounded());
        let mut unknown = state(0);
        unknown.link.bandwidth_bytes_per_s = 0.0;
        assert!(matches!(precopy.next_pass(&unknown), Pass::Send(_)));
    }

    #[test]
    fn bounds_switch_or_abort_by_setting() {
        let mut limits = PrecopyLimits {
            max_rounds: 5,
            ..unbounded()
        };
        assert!(matches!(
            precopy_after(5, limits).next_pass(&state(PAGES)),
            Pass::Switch(SwitchReason::RoundLimit { .. })
        ));
        limits.on_bound = BoundAction::Abort;
        match precopy_after(5, limits).next_pass(&state(PAGES)) {
            Pass::Abort(reason) => {
                assert!(reason.contains("did not converge"), "{reason}");
                assert!(reason.contains("5 rounds"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        limits.max_rounds = 100;
        limits.max_duration_s = Some(5.0);
        match precopy_after(5, limits).next_pass(&state(PAGES)) {
            Pass::Abort(reason) => assert!(reason.contains("time bound"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn qemu_gives_up_after_three_times_the_ram() {
        let mut heavy = state(PAGES);
        heavy.memory_bytes_sent = 3 * u64::from(PAGES) * 4096;
        assert!(matches!(
            precopy_after(2, PrecopyLimits::default()).next_pass(&heavy),
            Pass::Switch(SwitchReason::SentLimit { .. })
        ));
    }
}
