//! Pre-copy rounds, as the strategy (`mllm_core::strategy`) orders them:
//! after each round drains, a scan of the guest's writes, then the
//! strategy's next pass or its decision to switch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mllm_core::convert::saturating_u32;
use mllm_core::link::Link;
use mllm_core::memory::{PageIndex, PageRange, PAGE_SIZE_U32};
use mllm_core::strategy::{left_out, Pass, SendQueue, Space, SwitchReason, TransferState};
use mllm_core::vm::{DiskLayout, VmLayout};
use mllm_core::PageSet;

use super::SourceContext;
use crate::error::MigrationError;

type Result<T, E = MigrationError> = std::result::Result<T, E>;
use mllm_control::Phase;
use mllm_control::RoundReport;

/// Pages between two progress reports while a round is read.
const PAGES_PER_REPORT: u64 = 64;
const REPORT_INTERVAL: Duration = Duration::from_millis(100);
/// How often a pass being sent asks the strategy what to leave out of it.
const REVISION_INTERVAL: Duration = Duration::from_millis(250);

/// What the destination holds, in the strategy's terms: pages and blocks
/// are valid once queued and invalid again when a scan finds them written.
pub(super) struct Transfer {
    state: TransferState,
}

impl Transfer {
    /// `used_blocks`: the disk's blocks that hold data, if the VM has a
    /// disk. The others are zero on both sides (the destination's image
    /// starts empty): they count as held and never cross the link.
    pub fn new(pages: PageIndex, used_blocks: Option<PageSet>) -> Transfer {
        let disk = used_blocks.map(|used| DiskLayout {
            block_size: PAGE_SIZE_U32,
            allocated: used.clone(),
            used,
        });
        let disk_valid = disk.as_ref().map(|disk| disk.used.complement());
        // Device state is relayed after the switch decision and is not
        // priced in it, as QEMU's own downtime estimate does not either.
        let layout = VmLayout::uncompressed(PAGE_SIZE_U32, pages, disk, 0);
        Transfer {
            state: TransferState {
                memory_valid: PageSet::new(pages),
                disk_valid,
                zero_pages: PageSet::new(pages),
                layout: Arc::new(layout),
                link: Link {
                    bandwidth_bytes_per_s: 0.0,
                    rtt_s: 0.0,
                    fetch_service_s: 0.0,
                },
                in_flight_bytes: 0,
                elapsed_s: 0.0,
                memory_bytes_sent: 0,
            },
        }
    }

    /// Pages the guest wrote since the previous scan must be sent again.
    pub fn written(&mut self, ranges: &[PageRange]) {
        for range in ranges {
            for page in range.pages() {
                self.state.memory_valid.remove(page);
            }
        }
    }

    /// Blocks the guest wrote since the previous scan must be sent again.
    pub fn written_blocks(&mut self, blocks: &[u32]) {
        if let Some(valid) = &mut self.state.disk_valid {
            for &block in blocks {
                valid.remove(block);
            }
        }
    }

    /// The state as of now, from what the link and pipeline measured.
    pub fn measured(&mut self, measured: Measured) -> &TransferState {
        let state = &mut self.state;
        state.link.bandwidth_bytes_per_s = measured.rate.unwrap_or(0.0);
        state.link.rtt_s = measured.rtt_s;
        state.in_flight_bytes = measured.in_flight_bytes;
        state.elapsed_s = measured.elapsed_s;
        state.memory_bytes_sent = measured.memory_bytes_sent;
        // Written pages are rarely zero: every pending page is priced as a
        // data page of the compression seen so far.
        Arc::make_mut(&mut state.layout).page_cost.data_bytes =
            saturating_u32(measured.bytes_per_written_page.round());
        state
    }

    pub fn state(&self) -> &TransferState {
        &self.state
    }

    fn sent(&mut self, space: Space, item: u32) {
        match (space, &mut self.state.disk_valid) {
            (Space::Memory, _) => self.state.memory_valid.insert(item),
            (Space::Disk, Some(valid)) => valid.insert(item),
            (Space::Disk, None) => unreachable!("a block was sent for a VM without a disk"),
        }
    }
}

/// What the source measured, for the strategy.
pub(super) struct Measured {
    pub rate: Option<f64>,
    pub rtt_s: f64,
    pub in_flight_bytes: u64,
    pub elapsed_s: f64,
    pub memory_bytes_sent: u64,
    pub bytes_per_written_page: f64,
}

/// How pre-copy ended.
pub(super) struct PrecopyEnd {
    pub reason: SwitchReason,
    /// The link rate the decision used.
    pub rate: Option<f64>,
}

pub(super) fn run(ctx: &mut SourceContext<'_>) -> Result<PrecopyEnd> {
    loop {
        ctx.observe_writes();
        let measured = ctx.measure();
        let rate = measured.rate;
        let state = ctx.transfer.measured(measured);
        tracing::debug!(
            pending_pages = state.pending_pages().count(),
            in_flight = state.in_flight_bytes,
            predicted_s = ?state.predicted_downtime_s(),
            "pre-copy decision"
        );
        match ctx.strategy.next_pass(state) {
            Pass::Send(pass) => {
                send_round(ctx, Phase::Precopy, pass, false)?;
            }
            Pass::Switch(reason) => return Ok(PrecopyEnd { reason, rate }),
            Pass::Abort(reason) => return Err(MigrationError::NotConverging(reason)),
        }
        wait_for_drain(ctx)?;
        ctx.scan_writes()?;
    }
}

/// Reads and queues the pages of `pass` as one round.
pub(super) fn send_round(
    ctx: &mut SourceContext<'_>,
    phase: Phase,
    mut pass: SendQueue,
    stopped: bool,
) -> Result<RoundReport> {
    let total = pass.len() as u64;
    let mut sent = 0;
    let mut held_back: Option<PageSet> = None;
    let mut next_revision = Instant::now() + REVISION_INTERVAL;
    while let Some((space, item)) =
        pass.next(|space, item| !left_out(held_back.as_ref(), space, item))
    {
        match (space, ctx.disk) {
            (Space::Memory, _) => ctx.pipeline.send_page(ctx.ram, item)?,
            (Space::Disk, Some(disk)) => ctx.pipeline.send_block(disk, item)?,
            (Space::Disk, None) => {
                return Err(MigrationError::Invalid(format!(
                    "the strategy sent disk block {item}, but the VM has no disk"
                )))
            }
        }
        ctx.transfer.sent(space, item);
        sent += 1;
        if sent % PAGES_PER_REPORT == 0 {
            // The final round runs with the VM stopped: nothing to scan.
            if !stopped {
                ctx.writes.scan_if_due()?;
            }
            ctx.report(
                phase,
                (total - sent) as f64 * ctx.pipeline.bytes_per_page_this_round(),
            );
            if !stopped && Instant::now() >= next_revision {
                next_revision = Instant::now() + REVISION_INTERVAL;
                if let Some(held) = revise_pass(ctx) {
                    held_back = Some(held);
                }
            }
        }
    }
    if let Some(held) = &held_back {
        tracing::info!(
            pages = held.count(),
            "pages the strategy left out of the pass wait for the next"
        );
    }
    let report = ctx.pipeline.end_round(stopped)?;
    tracing::info!(
        round = report.round,
        pages = report.pages,
        zero_pages = report.zero_pages,
        bytes = report.bytes,
        stopped,
        "round queued"
    );
    Ok(report)
}

/// Shows the strategy what the guest wrote during the pass so far and asks
/// which pages the rest of the pass should leave out.
fn revise_pass(ctx: &mut SourceContext<'_>) -> Option<PageSet> {
    if !ctx.strategy.learns() {
        return None;
    }
    ctx.observe_writes();
    let measured = ctx.measure();
    let state = ctx.transfer.measured(measured);
    ctx.strategy.held_back(state)
}

/// Waits until what is still in flight could cross within half the downtime
/// target, so the next scan sees writes up to nearly the moment its pages
/// can leave, while the link stays busy with the rest. Scans for the trace
/// meanwhile when one is due.
fn wait_for_drain(ctx: &mut SourceContext<'_>) -> Result<()> {
    let half_target = ctx.settings.downtime_target.as_secs_f64() / 2.0;
    let drained = |flow: &super::flow::FlowSnapshot| match flow.rate {
        Some(rate) => flow.unacked_bytes as f64 <= rate * half_target,
        // Without a measured rate, wait for everything.
        None => flow.unacked_bytes == 0,
    };
    loop {
        let wake = ctx
            .writes
            .until_scan_due()
            .map_or(REPORT_INTERVAL, |due| due.min(REPORT_INTERVAL));
        if ctx.flow.wait_until(wake, drained)?.is_some() {
            return Ok(());
        }
        ctx.writes.scan_if_due()?;
        ctx.report(Phase::Precopy, 0.0);
    }
}
