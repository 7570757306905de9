//! MLLM: the planner's decisions, with estimators that keep learning from the
//! tracker while the migration runs.

use std::fmt;

use super::queue::{SendQueue, Space};
use super::{GuestInterval, Pass, Strategy, Switch, SwitchReason, TransferState};
use crate::planner::{self, Forecast, PlanInput, PlannerConfig, Step};
use crate::workingset::Estimator;
use crate::PageSet;

pub struct Mllm {
    config: PlannerConfig,
    memory_writes: Box<dyn Estimator>,
    disk_reads: Option<Box<dyn Estimator>>,
    /// How the used blocks outside the read workingset move.
    disk: DiskMove,
    rounds: u32,
    last_pass_bytes: u64,
    forecast: Option<Forecast>,
    /// Pages seen written while the first pass is sent.
    written_in_first_pass: PageSet,
}

/// How MLLM moves the disk's blocks besides the read workingset, which
/// always goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskMove {
    /// After the switch, pushed in predicted-read order and fetched when the
    /// guest needs one first: the published design.
    #[default]
    AfterSwitch,
    /// Before the switch, like pre-copy: every used block in the first
    /// pass, blocks written meanwhile in every pass, the rest while the
    /// guest is paused. What measured better live on a disk with random
    /// reads (docs/disk.md): a fetched block costs the guest two round trips.
    Precopy,
    /// Every used block in the first pass, like pre-copy; what the guest
    /// writes after it is not sent again round after round but after the
    /// switch: the disk's write workingset crosses once.
    PrecopyThenAfterSwitch,
}

impl DiskMove {
    /// Every name [`DiskMove::from_str`] accepts, for error messages.
    pub const NAMES: &'static str = "precopy, after-switch, precopy-then-after-switch";

    pub fn name(self) -> &'static str {
        match self {
            DiskMove::AfterSwitch => "after-switch",
            DiskMove::Precopy => "precopy",
            DiskMove::PrecopyThenAfterSwitch => "precopy-then-after-switch",
        }
    }
}

impl std::str::FromStr for DiskMove {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [
            DiskMove::AfterSwitch,
            DiskMove::Precopy,
            DiskMove::PrecopyThenAfterSwitch,
        ]
        .into_iter()
        .find(|mode| mode.name() == text)
        .ok_or_else(|| format!("unknown disk move {text:?}: one of {}", Self::NAMES))
    }
}

impl fmt::Debug for Mllm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mllm")
            .field("config", &self.config)
            .field("memory_writes", &self.memory_writes.name())
            .field("disk_reads", &self.disk_reads.as_ref().map(|e| e.name()))
            .field("disk", &self.disk)
            .field("rounds", &self.rounds)
            .field("last_pass_bytes", &self.last_pass_bytes)
            .field("forecast", &self.forecast)
            .field("written_in_first_pass", &self.written_in_first_pass.count())
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
            disk_reads,
            disk: DiskMove::default(),
            rounds: 0,
            last_pass_bytes: 0,
            forecast: None,
            written_in_first_pass: PageSet::new(memory_writes.items()),
            memory_writes,
        }
    }

    /// Moves the disk's other blocks as `disk` says.
    pub fn moving_disk(mut self, disk: DiskMove) -> Self {
        self.disk = disk;
        self
    }

    /// The pending blocks a pass sends: those written since they were sent,
    /// when the disk moves before the switch.
    fn blocks_for_pass(&self, state: &TransferState) -> Vec<u32> {
        match (self.disk, state.pending_blocks()) {
            (DiskMove::Precopy, Some(pending)) => pending.iter().collect(),
            _ => Vec::new(),
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

/// Each item once: the estimators count an interval's accesses per item, and
/// live sources may list one twice (a block read twice, scans merged).
fn distinct(items: &[u32]) -> Vec<u32> {
    let mut items = items.to_vec();
    items.sort_unstable();
    items.dedup();
    items
}

impl Strategy for Mllm {
    fn copies_unused_blocks(&self) -> bool {
        false
    }

    fn learns(&self) -> bool {
        true
    }

    fn observe(&mut self, interval: &GuestInterval) {
        if self.rounds == 1 {
            self.written_in_first_pass
                .insert_all(&interval.memory_writes);
        }
        self.memory_writes
            .observe(&distinct(&interval.memory_writes));
        self.observe_disk_reads(&interval.disk_reads);
    }

    fn observe_disk_reads(&mut self, blocks: &[u32]) {
        if let Some(reads) = &mut self.disk_reads {
            reads.observe(&distinct(blocks));
        }
    }

    fn next_pass(&mut self, state: &TransferState) -> Pass {
        if self.rounds == 0 {
            let plan = planner::plan(&self.input(state));
            self.forecast = Some(plan.forecast);
            self.rounds = 1;
            self.last_pass_bytes = state.pages_bytes(&plan.memory_precopy);
            let mut disk = plan.disk_first;
            if self.disk != DiskMove::AfterSwitch {
                disk.extend(plan.disk_after_switch);
            }
            return Pass::Send(
                SendQueue::new()
                    .then(Space::Disk, disk)
                    .then(Space::Memory, plan.memory_precopy),
            );
        }
        let step = planner::next_step(
            &self.input(state),
            &state.pending_pages(),
            self.rounds,
            self.last_pass_bytes,
        );
        match step {
            Step::Pass(pages) => {
                self.rounds += 1;
                self.last_pass_bytes = state.pages_bytes(&pages);
                Pass::Send(
                    SendQueue::new()
                        .then(Space::Disk, self.blocks_for_pass(state))
                        .then(Space::Memory, pages),
                )
            }
            Step::Switch => Pass::Switch(SwitchReason::Planned),
        }
    }

    /// The first pass leaves out the pages it sees written before it sends
    /// them. Sending one later costs nothing, as it crosses once either
    /// way, while a page written during the migration is likely written
    /// again before the pass ends (measured on `writeheavy`: about three in
    /// four within the next six seconds) and would then cross twice. The
    /// estimator cannot say better yet: after half a second it has too
    /// little history to predict any but the hottest pages.
    fn held_back(&mut self, state: &TransferState) -> Option<PageSet> {
        if self.rounds != 1 {
            return None;
        }
        let mut held = state.pending_pages();
        held.intersect_with(&self.written_in_first_pass);
        Some(held)
    }

    fn switch(&mut self, state: &TransferState) -> Switch {
        let plan = planner::switch_plan(
            &self.input(state),
            &state.pending_pages(),
            state.pending_blocks().as_ref(),
        );
        let (blocks_now, blocks_after) = match self.disk {
            DiskMove::AfterSwitch | DiskMove::PrecopyThenAfterSwitch => {
                (Vec::new(), plan.postcopy_blocks)
            }
            DiskMove::Precopy => (plan.postcopy_blocks, Vec::new()),
        };
        Switch {
            downtime: SendQueue::new()
                .then(Space::Disk, blocks_now)
                .then(Space::Memory, plan.downtime_pages),
            postcopy: SendQueue::new()
                .then(Space::Memory, plan.postcopy_pages)
                .then(Space::Disk, blocks_after),
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

    fn items(queue: SendQueue) -> Vec<u32> {
        let mut queue = queue;
        std::iter::from_fn(|| queue.next(|_, _| true))
            .map(|(_, item)| item)
            .collect()
    }

    /// A strategy after its first plan, made before it measured the link or
    /// saw a write, and three seconds of the guest writing `HOT`.
    fn learned_during_the_first_pass() -> Mllm {
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
        let nothing_seen = mllm.held_back(&state(12.5e6, PageSet::new(PAGES)));
        assert_eq!(nothing_seen.map(|held| held.count()), Some(0));
        for _ in 0..30 {
            mllm.observe(&GuestInterval {
                duration_s: 0.1,
                memory_writes: HOT.collect(),
                ..GuestInterval::default()
            });
        }
        mllm
    }

    /// A live migration plans its first pass before it has seen a write: it
    /// sends everything, and leaves the pages it sees written meanwhile out
    /// of the rest of the pass; they are pending for the next.
    #[test]
    fn the_first_pass_leaves_out_what_it_learns_is_written_again() {
        let mut mllm = learned_during_the_first_pass();
        // Half of the hot pages have gone already.
        let mut sent = PageSet::new(PAGES);
        (0..HOT.end / 2).for_each(|page| sent.insert(page));
        let held = mllm
            .held_back(&state(12.5e6, sent))
            .expect("learned enough to revise the pass");
        assert_eq!(
            held.iter().collect::<Vec<_>>(),
            (HOT.end / 2..HOT.end).collect::<Vec<_>>()
        );
    }

    /// After the first pass the workingset is re-estimated over the next
    /// pass's length: pages written every interval would cross again and
    /// still be pending at the switch, so they wait for it; pages the first
    /// pass left out because it saw them written once cross in the second.
    #[test]
    fn later_passes_send_what_the_first_left_out_except_the_hottest() {
        const WARM: std::ops::Range<u32> = 2000..4000;
        let mut mllm = learned_during_the_first_pass();
        let interval = |pages: Vec<u32>| GuestInterval {
            duration_s: 0.1,
            memory_writes: pages,
            ..GuestInterval::default()
        };
        mllm.observe(&interval(HOT.chain(WARM).collect()));
        for _ in 0..3 {
            mllm.observe(&interval(HOT.collect()));
        }
        let mut valid = PageSet::full(PAGES);
        for page in HOT.chain(WARM) {
            valid.remove(page);
        }
        let after_pass = state(12.5e6, valid);
        let next = match mllm.next_pass(&after_pass) {
            Pass::Send(pass) => items(pass),
            other => panic!("{other:?}"),
        };
        assert!(WARM.clone().all(|page| next.contains(&page)));
        assert!(HOT.clone().all(|page| !next.contains(&page)));
        let switch = mllm.switch(&after_pass);
        let mut moved = items(switch.downtime);
        moved.extend(items(switch.postcopy));
        assert!(HOT.clone().all(|page| moved.contains(&page)));
    }

    /// The disk blocks of each part of a migration, by how the disk moves:
    /// (first pass, later pass, while paused, after the switch).
    fn disk_blocks_by_phase(disk: DiskMove) -> [Vec<u32>; 4] {
        const BLOCKS: u32 = 256;
        let mut used = PageSet::new(BLOCKS);
        (0..128).for_each(|block| used.insert(block));
        let layout = VmLayout::uncompressed(
            4096,
            PAGES,
            Some(crate::vm::DiskLayout {
                block_size: 4096,
                allocated: used.clone(),
                used: used.clone(),
            }),
            0,
        );
        let mut at = state(12.5e6, PageSet::new(PAGES));
        at.layout = Arc::new(layout);
        at.disk_valid = Some(used.complement());
        let config = PlannerConfig::default();
        let mut mllm = Mllm::new(
            config,
            EstimatorKind::Improved.build(PAGES, 10),
            Some(EstimatorKind::Improved.build(BLOCKS, 10)),
        )
        .moving_disk(disk);
        let hot: Vec<u32> = (0..8).collect();
        for _ in 0..5 {
            mllm.observe_disk_reads(&hot);
        }
        let blocks = |queue: SendQueue| -> Vec<u32> {
            let mut queue = queue;
            std::iter::from_fn(|| queue.next(|_, _| true))
                .filter(|&(space, _)| space == Space::Disk)
                .map(|(_, block)| block)
                .collect()
        };
        let first = match mllm.next_pass(&at) {
            Pass::Send(pass) => blocks(pass),
            other => panic!("{other:?}"),
        };
        // Everything sent; the guest then rewrites blocks 3 and 100.
        let mut valid = PageSet::full(BLOCKS);
        valid.remove(3);
        valid.remove(100);
        at.memory_valid = PageSet::full(PAGES);
        at.disk_valid = Some(match disk {
            DiskMove::Precopy | DiskMove::PrecopyThenAfterSwitch => valid,
            DiskMove::AfterSwitch => {
                let mut held = used.complement();
                first.iter().for_each(|&block| held.insert(block));
                held.remove(3);
                held
            }
        });
        let later = match mllm.next_pass(&at) {
            Pass::Send(pass) => blocks(pass),
            Pass::Switch(_) => Vec::new(),
            Pass::Abort(reason) => panic!("{reason}"),
        };
        let switch = mllm.switch(&at);
        [
            first,
            later,
            blocks(switch.downtime),
            blocks(switch.postcopy),
        ]
    }

    #[test]
    fn the_read_workingset_goes_first_and_the_rest_after_the_switch_by_default() {
        let [first, later, paused, after] = disk_blocks_by_phase(DiskMove::AfterSwitch);
        assert_eq!(first[..8], (0..8).collect::<Vec<_>>()[..]);
        assert!(first.len() < 128, "only the workingset goes first");
        assert!(later.is_empty() && paused.is_empty());
        assert!(after.len() == 128 - first.len() + 1 && after.contains(&3));
    }

    #[test]
    fn a_disk_moved_by_precopy_is_sent_whole_and_again_where_written() {
        let [first, later, paused, after] = disk_blocks_by_phase(DiskMove::Precopy);
        assert_eq!(
            first[..8],
            (0..8).collect::<Vec<_>>()[..],
            "hot blocks first"
        );
        assert_eq!(first.len(), 128, "every used block in the first pass");
        let mut again = if later.is_empty() { paused } else { later };
        again.sort_unstable();
        assert_eq!(again, [3, 100]);
        assert!(after.is_empty(), "nothing after the switch: {after:?}");
    }

    #[test]
    fn a_disk_moved_by_precopy_then_after_the_switch_sends_rewritten_blocks_once() {
        let [first, later, paused, mut after] =
            disk_blocks_by_phase(DiskMove::PrecopyThenAfterSwitch);
        assert_eq!(first[..8], (0..8).collect::<Vec<_>>()[..]);
        assert_eq!(first.len(), 128, "every used block in the first pass");
        assert!(
            later.is_empty() && paused.is_empty(),
            "{later:?} {paused:?}"
        );
        after.sort_unstable();
        assert_eq!(after, [3, 100], "the rewritten blocks, after the switch");
    }

    #[test]
    fn disk_moves_are_named_as_operators_write_them() {
        for mode in [
            DiskMove::AfterSwitch,
            DiskMove::Precopy,
            DiskMove::PrecopyThenAfterSwitch,
        ] {
            assert_eq!(mode.name().parse::<DiskMove>(), Ok(mode));
        }
        let error = "postcopy".parse::<DiskMove>().unwrap_err();
        assert!(error.contains("precopy-then-after-switch"), "{error}");
    }
}
