//! MLLM: the planner's decisions, with estimators that keep learning from the
//! tracker while the migration runs.

use std::fmt;

use super::queue::{SendQueue, Space};
use super::{GuestInterval, Pass, Strategy, Switch, SwitchReason, TransferState};
use crate::planner::{self, Forecast, PlanInput, PlannerConfig, Step};
use crate::workingset::Estimator;

pub struct Mllm {
    config: PlannerConfig,
    memory_writes: Box<dyn Estimator>,
    disk_reads: Option<Box<dyn Estimator>>,
    rounds: u32,
    last_pass_bytes: u64,
    /// The plan's pre-copy horizon, kept for the later passes.
    horizon: f64,
    forecast: Option<Forecast>,
}

impl fmt::Debug for Mllm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mllm")
            .field("config", &self.config)
            .field("memory_writes", &self.memory_writes.name())
            .field("disk_reads", &self.disk_reads.as_ref().map(|e| e.name()))
            .field("rounds", &self.rounds)
            .field("last_pass_bytes", &self.last_pass_bytes)
            .field("horizon", &self.horizon)
            .field("forecast", &self.forecast)
            .finish()
    }
}

impl Mllm {
    pub fn new(
        config: PlannerConfig,
        memory_writes: Box<dyn Estimator>,
        disk_reads: Option<Box<dyn Estimator>>,
    ) -> Self {
        Mllm {
            config,
            memory_writes,
            disk_reads,
            rounds: 0,
            last_pass_bytes: 0,
            horizon: 0.0,
            forecast: None,
        }
    }

    fn input<'a>(&'a self, state: &'a TransferState) -> PlanInput<'a> {
        PlanInput {
            layout: &state.layout,
            link: state.link,
            config: self.config,
            memory_writes: self.memory_writes.as_ref(),
            disk_reads: self.disk_reads.as_deref(),
        }
    }
}

impl Strategy for Mllm {
    fn copies_unused_blocks(&self) -> bool {
        false
    }

    fn learns(&self) -> bool {
        true
    }

    fn observe(&mut self, interval: &GuestInterval) {
        self.memory_writes.observe(&interval.memory_writes);
        self.observe_disk_reads(&interval.disk_reads);
    }

    fn observe_disk_reads(&mut self, blocks: &[u32]) {
        if let Some(reads) = &mut self.disk_reads {
            reads.observe(blocks);
        }
    }

    fn next_pass(&mut self, state: &TransferState) -> Pass {
        if self.rounds == 0 {
            let plan = planner::plan(&self.input(state));
            self.forecast = Some(plan.forecast);
            self.horizon = plan.horizon;
            self.rounds = 1;
            self.last_pass_bytes = state.pages_bytes(&plan.memory_precopy);
            return Pass::Send(
                SendQueue::new()
                    .then(Space::Disk, plan.disk_first)
                    .then(Space::Memory, plan.memory_precopy),
            );
        }
        if !self.horizon.is_finite() {
            // Planned before the link's rate was known (a live migration
            // measures it from the first pass): the pre-copy's horizon
            // comes from the first rate measured.
            self.horizon = planner::plan(&self.input(state)).horizon;
        }
        let step = planner::next_step(
            &self.input(state),
            &state.pending_pages(),
            self.horizon,
            self.rounds,
            self.last_pass_bytes,
        );
        match step {
            Step::Pass(pages) => {
                self.rounds += 1;
                self.last_pass_bytes = state.pages_bytes(&pages);
                Pass::Send(SendQueue::new().then(Space::Memory, pages))
            }
            Step::Switch => Pass::Switch(SwitchReason::Planned),
        }
    }

    fn switch(&mut self, state: &TransferState) -> Switch {
        let plan = planner::switch_plan(
            &self.input(state),
            &state.pending_pages(),
            state.pending_blocks().as_ref(),
        );
        Switch {
            downtime: SendQueue::new().then(Space::Memory, plan.downtime_pages),
            postcopy: SendQueue::new()
                .then(Space::Memory, plan.postcopy_pages)
                .then(Space::Disk, plan.postcopy_blocks),
        }
    }

    fn rounds(&self) -> u64 {
        u64::from(self.rounds)
    }

    fn forecast(&self) -> Option<Forecast> {
        self.forecast
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::link::Link;
    use crate::vm::VmLayout;
    use crate::workingset::EstimatorKind;
    use crate::PageSet;

    const PAGES: u32 = 4096;
    /// Pages the guest writes in every interval.
    const HOT: std::ops::Range<u32> = 0..64;

    fn state(bandwidth: f64, valid: PageSet) -> TransferState {
        TransferState {
            layout: Arc::new(VmLayout::uncompressed(4096, PAGES, None, 0)),
            link: Link {
                bandwidth_bytes_per_s: bandwidth,
                rtt_s: 0.05,
                fetch_service_s: 0.0,
            },
            in_flight_bytes: 0,
            elapsed_s: 1.0,
            memory_valid: valid,
            disk_valid: None,
            zero_pages: PageSet::new(PAGES),
            memory_bytes_sent: 0,
        }
    }

    /// A live migration plans its first pass before it has measured the
    /// link or seen a write: it sends everything, learns during the pass,
    /// and then keeps the pages written every interval out of pre-copy.
    #[test]
    fn planned_before_the_link_is_measured_it_learns_during_the_first_pass() {
        let config = PlannerConfig {
            interval_s: 0.1,
            ..PlannerConfig::default()
        };
        let estimator = EstimatorKind::Improved.build(PAGES, 10);
        let mut mllm = Mllm::new(config, estimator, None);
        match mllm.next_pass(&state(0.0, PageSet::new(PAGES))) {
            Pass::Send(first) => assert_eq!(first.len(), PAGES as usize),
            other => panic!("{other:?}"),
        }
        for _ in 0..30 {
            mllm.observe(&GuestInterval {
                duration_s: 0.1,
                memory_writes: HOT.collect(),
                ..GuestInterval::default()
            });
        }
        // After the pass the hot pages (and a few others) are dirty again.
        let mut valid = PageSet::full(PAGES);
        for page in HOT.chain(1000..1010) {
            valid.remove(page);
        }
        let after_pass = state(12.5e6, valid);
        let next = mllm.next_pass(&after_pass);
        assert!(mllm.horizon.is_finite(), "horizon {}", mllm.horizon);
        let resent: Vec<u32> = match next {
            Pass::Send(mut pass) => std::iter::from_fn(|| pass.next(|_, _| true))
                .map(|(_, page)| page)
                .collect(),
            Pass::Switch(_) => Vec::new(),
            Pass::Abort(reason) => panic!("{reason}"),
        };
        assert!(
            resent.iter().all(|page| !HOT.contains(page)),
            "the write workingset was pre-copied again: {resent:?}"
        );
        let switch = mllm.switch(&after_pass);
        let mut hot_after = switch.postcopy;
        let mut downtime = switch.downtime;
        let moved: Vec<u32> = std::iter::from_fn(|| downtime.next(|_, _| true))
            .chain(std::iter::from_fn(|| hot_after.next(|_, _| true)))
            .map(|(_, page)| page)
            .collect();
        assert!(HOT.clone().all(|page| moved.contains(&page)));
    }
}
