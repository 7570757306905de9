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
        if let Some(reads) = &mut self.disk_reads {
            reads.observe(&interval.disk_reads);
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
