//! Pre-copy rounds: round 1 sends every page, each later round the pages the
//! guest wrote since the previous scan, until the policy says switch.

use std::time::Duration;

use anyhow::{bail, Result};
use mllm_control::{Phase, RoundReport, SwitchReason};
use mllm_tracker::PageRange;

use super::policy::{decide, AfterScan, Decision};
use super::SourceContext;

/// Pages between two progress reports while a round is read.
const PAGES_PER_REPORT: u64 = 64;
const REPORT_INTERVAL: Duration = Duration::from_millis(100);

/// How pre-copy ended.
pub(super) struct PrecopyEnd {
    pub reason: SwitchReason,
    /// Pages written since the last round was read: they go in the final round.
    pub dirty: Vec<PageRange>,
    /// The link rate the decision used.
    pub rate: Option<f64>,
}

pub(super) fn run(ctx: &mut SourceContext<'_>) -> Result<PrecopyEnd> {
    let everything = [PageRange::new(0, ctx.ram.pages())];
    send_round(ctx, Phase::Precopy, &everything, false)?;
    loop {
        wait_for_drain(ctx)?;
        let dirty = ctx.writes.take()?;
        let flow = ctx.flow.snapshot();
        let state = AfterScan {
            rounds_done: ctx.pipeline.round() - 1,
            elapsed: ctx.started.elapsed(),
            dirty_pages: dirty.iter().map(PageRange::len).sum(),
            unacked_bytes: flow.unacked_bytes,
            bytes_per_page: ctx.pipeline.bytes_per_written_page(),
            rate: flow.rate,
        };
        tracing::debug!(?state, predicted = ?state.predicted_final(), "pre-copy scan");
        match decide(ctx.settings, &state) {
            Decision::Switch(reason) => {
                return Ok(PrecopyEnd {
                    reason,
                    dirty,
                    rate: flow.rate,
                })
            }
            Decision::Abort(reason) => bail!(reason),
            Decision::Continue => {
                send_round(ctx, Phase::Precopy, &dirty, false)?;
            }
        }
    }
}

/// Reads and queues the pages of `ranges` as one round.
pub(super) fn send_round(
    ctx: &mut SourceContext<'_>,
    phase: Phase,
    ranges: &[PageRange],
    stopped: bool,
) -> Result<RoundReport> {
    let total: u64 = ranges.iter().map(PageRange::len).sum();
    let mut sent = 0;
    for range in ranges {
        for page in range.pages() {
            ctx.pipeline.send_page(ctx.ram, page)?;
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
            }
        }
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
