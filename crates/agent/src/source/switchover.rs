//! The switch: stop the VM, send the last written pages (and in test mode a
//! digest of all of them), relay QEMU's device state, and wait until the
//! destination says its VM runs. In post-copy the strategy leaves some pages
//! for after the switch: the destination learns which, drops its stale
//! copies, and once it runs they are pushed in the strategy's order while
//! those its guest touches first are sent on demand (by the sender thread,
//! `threads.rs`), until the destination holds them all.

use std::time::Duration;

use mllm_core::memory::{push_merged, PageIndex, PageRange};
use mllm_core::strategy::{SendQueue, Space};
use mllm_core::PageSet;
use mllm_qemu::qmp::wall_clock_us;
use mllm_wire::{
    Ack, BlockDigests, CompressionSetting, DeviceState, DiskDigest, HandOver, Message,
    PendingBlocks, PendingPages, SourceStopped,
};
use serde_json::json;

use super::flow::{Flow, FlowSnapshot};
use super::pipeline::Pipeline;
use super::postcopy::Owed;
use super::precopy::send_round;
use super::reporter::Reporter;
use super::{SourceContext, SourceVmPhase};
use crate::device_state::OutgoingDeviceState;
use crate::disk::TrackedDisk;
use crate::error::{Context, MigrationError};
use crate::guest_ram::GuestRam;
use mllm_control::Phase;
use mllm_core::convert::saturating_u64;

const REPORT_INTERVAL: Duration = Duration::from_millis(100);
/// Test mode: page digests per frame (at most 15 bytes each).
const DIGESTS_PER_FRAME: usize = 256 * 1024;
/// Pages per pushed batch after the switch: a page the guest faults on
/// waits behind at most one such batch at the source.
const PUSH_BATCH_PAGES: usize = 32;
/// Queued beyond one round trip's worth of link, so the link never idles
/// between an acknowledgement and the next batch.
const PUSH_SLACK: Duration = Duration::from_millis(10);
/// Least in flight whatever the measured rate, so a slow start still moves.
const PUSH_MIN_IN_FLIGHT: u64 = 256 << 10;

pub(super) struct Switched {
    /// Pages moved after the switch.
    pub postcopy: bool,
    pub stopped_us: u64,
    pub device_state_bytes: u64,
    pub device_state_sent_us: u64,
    /// Test mode: milliseconds the paused VM waited for this side's digests.
    pub verify_ms: f64,
    /// When the destination said it runs the VM, if that arrived.
    pub destination_running_us: Option<u64>,
    pub released_us: u64,
    /// Post-copy: the link failed after the hand-over, before the
    /// destination had every page; a new connection must finish the job.
    pub interrupted: Option<Interrupted>,
}

/// A post-copy whose link failed.
pub(super) struct Interrupted {
    pub cause: MigrationError,
    /// Every page and block moved after the switch, in the strategy's
    /// order: a resumed push follows it, skipping what arrived.
    pub order: Vec<(Space, u32)>,
}

/// What pushing pages after the switch works with: the current
/// connection's pipeline and flow, and what the source still owes.
pub(super) struct PushLink<'p, 'a> {
    pub pipeline: &'p mut Pipeline<'a>,
    pub flow: &'a Flow,
    pub owed: &'a Owed,
    pub owed_blocks: &'a Owed,
    pub ram: &'a GuestRam,
    pub disk: Option<&'a TrackedDisk>,
    pub rtt: Duration,
    pub compression: CompressionSetting,
    pub reporter: &'p mut Reporter<'a>,
    /// The round the progress reports name.
    pub round: u32,
}

impl PushLink<'_, '_> {
    fn report(&mut self, pending_bytes: f64) {
        self.reporter.report(
            Phase::Postcopy,
            self.round,
            self.flow.snapshot(),
            saturating_u64(pending_bytes),
        );
    }
}

/// Called once the strategy decided to switch.
pub(super) fn run(ctx: &mut SourceContext<'_>) -> Result<Switched, MigrationError> {
    settle_references(ctx)?;
    ctx.report(Phase::FinalRound, 0.0);
    // Marked first: if `stop` fails half-way (a QMP timeout), resuming a
    // running VM is harmless, leaving a stopped one stopped is not.
    ctx.vm_state.phase = SourceVmPhase::Stopped;
    ctx.vm
        .qmp
        .execute("stop", json!({}))
        .map_err(|e| MigrationError::qemu("stopping the source VM", e))?;
    let stopped_us = wall_clock_us();
    ctx.pipeline.send(Message::SourceStopped(SourceStopped))?;
    // QEMU drained the disk's requests when it stopped: the last written
    // blocks are marked too.
    let scan_started = std::time::Instant::now();
    ctx.scan_writes().during("final scan")?;
    ctx.observe_writes();
    let plan_started = std::time::Instant::now();
    let switch = ctx.strategy.switch(ctx.transfer.state());
    // Both run while the VM is paused: their cost is downtime.
    tracing::debug!(
        scan_ms = (plan_started - scan_started).as_secs_f64() * 1000.0,
        plan_ms = plan_started.elapsed().as_secs_f64() * 1000.0,
        "switch decided"
    );
    let after_switch = items_in_order(switch.postcopy);
    let (pending, pending_blocks) = split_by_space(&after_switch);
    let postcopy = ctx.flow.is_postcopy();
    if !after_switch.is_empty() && !postcopy {
        return Err(MigrationError::Invalid(
            "the strategy wants pages moved after the switch, but the migration was requested \
             as pre-copy"
                .into(),
        ));
    }
    // Test mode: the paused VM's RAM and disk no longer change, so their
    // digests are taken while the final round crosses the link; the switch
    // waits only for what hashing takes beyond it, timed as `verify_ms`.
    let (ram, disk) = (ctx.ram, ctx.disk);
    let (mut digests, verify_wait) = std::thread::scope(|scope| {
        let hashing = ctx
            .settings
            .verify
            .then(|| scope.spawn(|| SwitchDigests::take(ram, disk, &pending, &pending_blocks)));
        send_round(ctx, Phase::FinalRound, switch.downtime, true)?;
        let waiting = std::time::Instant::now();
        let digests = hashing
            .map(|thread| thread.join().expect("the digest thread panicked"))
            .transpose()?
            .unwrap_or_default();
        Ok::<_, MigrationError>((digests, waiting.elapsed()))
    })?;
    if ctx.settings.verify {
        tracing::info!(
            waited_ms = verify_wait.as_secs_f64() * 1000.0,
            "test mode: digests taken after the final round"
        );
    }
    if postcopy {
        // Owed before the destination hears of them: it may ask at once.
        // Blocks first: the pages' announcement starts the destination's
        // post-copy, which then expects no more announcements.
        if ctx.disk.is_some() {
            ctx.owed_blocks.owe(&pending_blocks);
            ctx.pipeline.send(Message::PendingBlocks(PendingBlocks {
                disk: 0,
                ranges: as_ranges(&pending_blocks),
            }))?;
            for digest in std::mem::take(&mut digests.disk) {
                ctx.pipeline.send(digest)?;
            }
        }
        ctx.owed.owe(&pending);
        ctx.pipeline.send(Message::PendingPages(PendingPages {
            ranges: as_ranges(&pending),
        }))?;
    }
    for digest in digests.ram.into_iter().chain(digests.disk) {
        ctx.pipeline.send(digest)?;
    }

    ctx.report(Phase::DeviceState, 0.0);
    ctx.vm_state.phase = SourceVmPhase::QemuMigrating;
    let outgoing = OutgoingDeviceState::start(ctx.vm)?;
    let pipeline = &mut ctx.pipeline;
    let device_state_bytes = outgoing
        .relay(ctx.vm, ctx.settings.link_timeout, |chunk| {
            pipeline.send(Message::DeviceState(DeviceState { chunk }))
        })
        .map_err(|error| ctx.flow.cause_or(error))?;
    // Recorded before it can arrive: from here the source never resumes the
    // VM on its own (see `mllm_wire::conversation`, "Ownership").
    ctx.vm_state.phase = SourceVmPhase::HandedOver;
    let mut device_state_sent_us = wall_clock_us();
    let handed_over = (|| {
        ctx.pipeline
            .send(Message::HandOver(HandOver { device_state_bytes }))?;
        device_state_sent_us = wall_clock_us();
        if postcopy {
            push(&mut ctx.push_link(), &after_switch)?;
        } else {
            // Silence on the link is caught by the receiver's timeout, so
            // waiting for the last batches needs no bound of its own however
            // many there are.
            while ctx
                .flow
                .wait_until(REPORT_INTERVAL, |flow| flow.unacked_bytes == 0)?
                .is_none()
            {
                ctx.report(Phase::WaitingForDestination, 0.0);
            }
        }
        ctx.report(Phase::WaitingForDestination, 0.0);
        ctx.flow.wait_for_outcome(ctx.settings.link_timeout)
    })();
    let interrupted = match handed_over {
        Ok(()) => None,
        // The destination may run the VM and lacks pages only this host
        // has: the link's failure is worth a reconnection (`resume.rs`).
        Err(error) if postcopy && ctx.can_resume && error.is_link_failure() => Some(Interrupted {
            cause: error,
            order: after_switch,
        }),
        Err(error) => return Err(error),
    };
    let destination_running_us = ctx.flow.destination_running_us();
    if interrupted.is_none() {
        // Tells the destination the source let go. The VM is the
        // destination's since the hand-over, so a failure to send changes
        // nothing: ignored.
        let _ = ctx.pipeline.send(Message::Ack(Ack));
        ctx.report(Phase::Completed, 0.0);
    }
    Ok(Switched {
        postcopy,
        stopped_us,
        device_state_bytes,
        device_state_sent_us,
        verify_ms: verify_wait.as_secs_f64() * 1000.0,
        destination_running_us,
        released_us: wall_clock_us(),
        interrupted,
    })
}

/// Ends de-duplication before the VM stops: no reference from here on, and
/// once every batch is acknowledged the destination's refusals are all in,
/// so their content goes out before `SourceStopped` (the sender sends it
/// ahead of the next frame). The guest still runs meanwhile: the wait, up
/// to one round trip, costs no downtime.
fn settle_references(ctx: &mut SourceContext<'_>) -> Result<(), MigrationError> {
    let Some(dedup) = ctx.dedup else {
        return Ok(());
    };
    if !dedup.stop_referencing() {
        return Ok(());
    }
    while ctx
        .flow
        .wait_until(REPORT_INTERVAL, |flow| flow.unacked_bytes == 0)?
        .is_none()
    {
        ctx.report(Phase::Precopy, 0.0);
    }
    Ok(())
}

/// The items of a queue, in the strategy's order.
fn items_in_order(mut queue: SendQueue) -> Vec<(Space, u32)> {
    let mut items = Vec::with_capacity(queue.len());
    while let Some(item) = queue.next(|_, _| true) {
        items.push(item);
    }
    items
}

/// Test mode: the digests the destination compares at the switch, in the
/// order they go out. Pages and blocks left for after the switch are left
/// out of the ranges' digests (the destination lacks them) and digested one
/// by one, for the destination to check each as it arrives.
#[derive(Default)]
struct SwitchDigests {
    ram: Vec<Message>,
    disk: Vec<Message>,
}

impl SwitchDigests {
    /// Only meaningful while the VM is stopped.
    fn take(
        ram: &GuestRam,
        disk: Option<&TrackedDisk>,
        pending: &[PageIndex],
        pending_blocks: &[u32],
    ) -> Result<SwitchDigests, MigrationError> {
        let mut pending_set = PageSet::new(ram.pages());
        pending_set.insert_all(pending);
        let mut digests = SwitchDigests {
            ram: vec![Message::RamDigest(
                ram.digest_without(|page| pending_set.contains(page)),
            )],
            disk: Vec::new(),
        };
        digests.ram.extend(
            pending
                .chunks(DIGESTS_PER_FRAME)
                .map(|pages| Message::PageDigests(ram.page_digests(pages))),
        );
        if let Some(disk) = disk {
            let mut pending_set = PageSet::new(disk.blocks());
            pending_set.insert_all(pending_blocks);
            let digest = disk.digest_without(|block| pending_set.contains(block))?;
            digests
                .disk
                .push(Message::DiskDigest(DiskDigest { disk: 0, digest }));
            for blocks in pending_blocks.chunks(DIGESTS_PER_FRAME) {
                digests.disk.push(Message::BlockDigests(BlockDigests {
                    disk: 0,
                    blocks: disk.block_digests(blocks)?,
                }));
            }
        }
        Ok(digests)
    }
}

/// Pages and blocks of `items`, each in the items' order.
fn split_by_space(items: &[(Space, u32)]) -> (Vec<PageIndex>, Vec<u32>) {
    let of = |wanted: Space| {
        items
            .iter()
            .filter(|&&(space, _)| space == wanted)
            .map(|&(_, item)| item)
            .collect()
    };
    (of(Space::Memory), of(Space::Disk))
}

/// `pages` as sorted, merged ranges.
fn as_ranges(pages: &[PageIndex]) -> Vec<PageRange> {
    let mut sorted = pages.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut ranges = Vec::new();
    for page in sorted {
        push_merged(&mut ranges, PageRange::new(page, page + 1));
    }
    ranges
}

/// Pushes the pages and blocks the destination still lacks, in the
/// strategy's order, keeping about one round trip of them in flight: enough
/// to fill the link, little enough that a page the guest asks for does not
/// queue behind seconds of pushed ones. Stops early once the destination
/// has them all.
pub(super) fn push(
    link: &mut PushLink<'_, '_>,
    items: &[(Space, u32)],
) -> Result<(), MigrationError> {
    link.pipeline
        .set_batch_pages(link.compression, PUSH_BATCH_PAGES)?;
    let window = (link.rtt + PUSH_SLACK).as_secs_f64();
    let room = |flow: &FlowSnapshot| {
        let limit = flow
            .rate
            .map_or(PUSH_MIN_IN_FLIGHT, |rate| saturating_u64(rate * window))
            .max(PUSH_MIN_IN_FLIGHT);
        flow.unacked_bytes <= limit
    };
    let mut left = items.len();
    for &(space, item) in items {
        left -= 1;
        if link.pipeline.batch_is_empty() {
            if link.flow.has_ended() {
                break;
            }
            while link.flow.wait_until(REPORT_INTERVAL, room)?.is_none() {
                link.report(0.0);
            }
            let pending = left as f64 * link.pipeline.bytes_per_written_page();
            link.report(pending);
        }
        match (space, link.disk) {
            (Space::Memory, _) if link.owed.take_for_push(item) => {
                link.pipeline.send_page(link.ram, item)?
            }
            (Space::Disk, Some(disk)) if link.owed_blocks.take_for_push(item) => {
                link.pipeline.send_block(disk, item)?
            }
            _ => {}
        }
    }
    link.pipeline.flush()
}
