//! The sending side: [`migrate_source`].

mod codec;
mod compressors;
mod dedup;
mod flow;
mod pipeline;
mod postcopy;
mod precopy;
mod rate;
mod reporter;
mod resume;
mod switchover;
mod threads;
mod writes;

pub use resume::resume_postcopy_after_restart;

use std::net::Shutdown;
use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mllm_core::convert::saturating_u64;
use mllm_core::strategy::Strategy;
use mllm_core::trace::{DiskAccess, DiskTrace, DiskTraceHeader};
use mllm_core::PageSet;
use mllm_qemu::qmp::wall_clock_us;
use mllm_qemu::QemuProcess;
use mllm_tls::PeerStream;
use mllm_wire::{
    CompressionSetting, Conversation, HeldContent, Message, MigrationRequest, Negotiated, Role,
    TrafficClass, MAX_HELD_BLOCKS, PAGE_SIZE_U32,
};
use serde_json::json;

use self::codec::CodecTuner;
use self::dedup::Dedup;
use self::flow::Flow;
use self::pipeline::Pipeline;
use self::postcopy::Owed;
use self::precopy::{Measured, Transfer};
use self::reporter::Reporter;
use self::threads::AskedPages;
use self::writes::WriteLog;
use crate::device_state::ignore_shared_ram;
use crate::disk::TrackedDisk;
use crate::error::{Context, MigrationError, Recovery, SourceError};
use crate::guest_ram::GuestRam;
use crate::memory_trace::TraceFile;
use crate::peer::PeerLink;
use crate::settings::SourceSettings;
use crate::tracking::start_tracking;
use mllm_control::{Phase, Progress};
use mllm_control::{SourceReport, SourceTimings};

/// Frames queued for the sender thread beyond the one it is writing: enough
/// to cover compressing the next batch, small next to the link's queue.
const QUEUED_FRAMES: usize = 4;
/// The disk history a learning strategy sees before its first plan.
const DISK_HISTORY: Duration = Duration::from_secs(60);
/// How long a cancelled QEMU migration may take to settle before `cont`.
const CANCEL_SETTLE: Duration = Duration::from_secs(5);

/// Migrates the running VM `vm`, whose guest RAM is the shared file
/// `ram_file`, to the destination agent at the other end of `stream` (a
/// TCP connection, or a TLS session of `mllm-tls`), with pre-copy.
/// `progress` is called at phase changes and about every 100 ms.
///
/// `disks` are the VM's disks as this agent serves them to QEMU (at most
/// one for now); their used blocks move with the memory, and blocks the
/// guest writes meanwhile are sent again, round after round.
///
/// On success the destination runs the VM and the source QEMU is left
/// stopped (its owner quits it). On failure the source VM runs again (or
/// never stopped) with its memory untouched: the agent only reads it. The
/// error names the cause and says what became of the source VM.
///
/// The QEMU must have been started with shared RAM and the hook preloaded
/// ([`crate::make_migratable`]).
pub fn migrate_source(
    vm: &QemuProcess,
    ram_file: &Path,
    disks: &[Arc<TrackedDisk>],
    stream: impl Into<PeerStream>,
    settings: &SourceSettings,
    progress: &dyn Fn(&Progress),
) -> Result<SourceReport, SourceError> {
    migrate(vm, ram_file, disks, stream.into(), None, settings, progress)
}

/// [`migrate_source`], surviving a link failure in post-copy: `reconnect`
/// opens a new connection to the same destination agent, and is called
/// (with backoff) until the destination answers or
/// [`SourceSettings::recovery_timeout`] passes since the failure. The new
/// connection resumes the post-copy where the destination stands: it names
/// the pages and blocks it still lacks, and only those are sent. Should
/// the destination stay unreachable, the error says so
/// ([`MigrationError::DestinationUnreachable`]); the source VM then stays
/// paused with every page the destination lacks.
pub fn migrate_source_with_reconnect(
    vm: &QemuProcess,
    ram_file: &Path,
    disks: &[Arc<TrackedDisk>],
    stream: impl Into<PeerStream>,
    reconnect: &dyn Fn() -> std::io::Result<PeerStream>,
    settings: &SourceSettings,
    progress: &dyn Fn(&Progress),
) -> Result<SourceReport, SourceError> {
    migrate(
        vm,
        ram_file,
        disks,
        stream.into(),
        Some(reconnect),
        settings,
        progress,
    )
}

fn migrate(
    vm: &QemuProcess,
    ram_file: &Path,
    disks: &[Arc<TrackedDisk>],
    stream: PeerStream,
    reconnect: Option<&dyn Fn() -> std::io::Result<PeerStream>>,
    settings: &SourceSettings,
    progress: &dyn Fn(&Progress),
) -> Result<SourceReport, SourceError> {
    let mut vm_state = VmState::default();
    let local = LocalVm {
        vm,
        ram_file,
        disks,
    };
    run(local, stream, reconnect, settings, progress, &mut vm_state).map_err(|cause| SourceError {
        vm: vm.config.name.clone(),
        recovery: recover(vm, &vm_state),
        cause: Box::new(cause),
    })
}

/// What the migration did to the source VM, so a failure can undo exactly that.
#[derive(Debug, Default)]
struct VmState {
    /// The VM was running when the migration began.
    was_running: bool,
    phase: SourceVmPhase,
    /// After the hand-over, the destination aborted before it reported the
    /// VM running: it never ran it and never will.
    destination_declined: bool,
}

/// How far the migration went with the source VM; each phase includes the
/// ones before it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum SourceVmPhase {
    /// Running (or paused, as it was): only its memory was read.
    #[default]
    Untouched,
    /// Paused by the migration, or the pause was attempted.
    Stopped,
    /// Paused, and QEMU's device-state migration started.
    QemuMigrating,
    /// The hand-over is recorded (and about to be sent): the destination may
    /// run the VM, so the source resumes it only if the destination says it
    /// never will (`VmState::destination_declined`).
    HandedOver,
    /// The destination reported the VM running: the source must never
    /// resume it.
    DestinationRuns,
}

/// The VM as this host runs it.
#[derive(Clone, Copy)]
struct LocalVm<'a> {
    vm: &'a QemuProcess,
    ram_file: &'a Path,
    disks: &'a [Arc<TrackedDisk>],
}

/// Everything the pre-copy rounds and the switch-over work with.
struct SourceContext<'a> {
    vm: &'a QemuProcess,
    ram: &'a GuestRam,
    /// The VM's disk; a strategy's `Space::Disk` items are its blocks.
    disk: Option<&'a TrackedDisk>,
    /// Decides each pass and the switch (`mllm_core::strategy`).
    strategy: Box<dyn Strategy>,
    transfer: Transfer,
    /// Post-copy: what the destination still lacks after the switch.
    owed: &'a Owed,
    /// The same for the disk's blocks.
    owed_blocks: &'a Owed,
    /// De-duplication, unless it is off.
    dedup: Option<&'a Dedup>,
    /// The handshake's round trip: how much in flight keeps the link busy.
    rtt: Duration,
    /// A link failure after the hand-over in post-copy is worth a new
    /// connection: the caller gave a way to open one.
    can_resume: bool,
    compression: CompressionSetting,
    writes: WriteLog,
    pipeline: Pipeline<'a>,
    flow: &'a Flow,
    settings: &'a SourceSettings,
    reporter: Reporter<'a>,
    vm_state: &'a mut VmState,
    started: Instant,
}

impl<'a> SourceContext<'a> {
    /// What pushing pages after the switch needs, on this connection.
    fn push_link(&mut self) -> switchover::PushLink<'_, 'a> {
        switchover::PushLink {
            round: self.pipeline.round() - 1,
            pipeline: &mut self.pipeline,
            flow: self.flow,
            owed: self.owed,
            owed_blocks: self.owed_blocks,
            ram: self.ram,
            disk: self.disk,
            rtt: self.rtt,
            compression: self.compression,
            reporter: &mut self.reporter,
        }
    }

    fn measure(&self) -> Measured {
        let flow = self.flow.snapshot();
        Measured {
            rate: flow.rate,
            rtt_s: self.rtt.as_secs_f64(),
            in_flight_bytes: flow.unacked_bytes,
            elapsed_s: self.started.elapsed().as_secs_f64(),
            memory_bytes_sent: self.pipeline.memory_bytes(),
            bytes_per_written_page: self.pipeline.bytes_per_written_page(),
        }
    }

    /// Pages and blocks written since the previous scan become pending.
    fn scan_writes(&mut self) -> Result<(), MigrationError> {
        let written = self.writes.take()?;
        self.transfer.written(&written);
        if let Some(disk) = self.disk {
            self.transfer.written_blocks(&disk.take_dirty());
        }
        Ok(())
    }

    /// Hands the strategy the guest's writes scanned since it last looked,
    /// if it learns from them; the disk blocks read and written meanwhile
    /// go with the latest interval (the disk is not sampled per interval).
    fn observe_writes(&mut self) {
        let mut intervals = self.writes.take_intervals();
        if let (Some(last), Some(disk)) = (intervals.last_mut(), self.disk) {
            let activity = disk.take_activity();
            last.disk_reads = activity.reads;
            last.disk_writes = activity.writes;
        }
        for interval in intervals {
            self.strategy.observe(&interval);
        }
    }

    /// Shows a learning strategy the blocks the guest read in each interval
    /// of the last minute before the migration (from the disk's access
    /// trace), before its first plan: the disk read workingset it sends
    /// first comes from them.
    fn observe_disk_history(&mut self) {
        let (true, Some(disk)) = (self.strategy.learns(), self.disk) else {
            return;
        };
        // The history below covers what the counters hold.
        let _ = disk.take_activity();
        let accesses = disk.recent_accesses();
        let Some(last) = accesses.last() else {
            return;
        };
        let start = last
            .time_us
            .saturating_sub(saturating_u64(DISK_HISTORY.as_secs_f64() * 1e6));
        let trace = DiskTrace {
            header: DiskTraceHeader {
                disk_bytes: disk.size(),
            },
            records: accesses
                .into_iter()
                .filter(|access| access.time_us >= start)
                .map(|access| DiskAccess {
                    time_us: access.time_us - start,
                    ..access
                })
                .collect(),
        };
        let interval_us = saturating_u64(self.settings.trace_interval.as_secs_f64() * 1e6).max(1);
        for interval in trace.block_intervals(PAGE_SIZE_U32, interval_us) {
            self.strategy.observe_disk_reads(&interval.reads);
        }
    }

    /// `pending_bytes`: known to be left beyond the unacknowledged batches.
    fn report(&mut self, phase: Phase, pending_bytes: f64) {
        let flow = self.flow.snapshot();
        // After the final round the pipeline already counts the next one.
        let round = match phase {
            Phase::DeviceState
            | Phase::WaitingForDestination
            | Phase::Postcopy
            | Phase::Completed => self.pipeline.round() - 1,
            _ => self.pipeline.round(),
        };
        self.reporter
            .report(phase, round, flow, saturating_u64(pending_bytes));
    }
}

fn run(
    local: LocalVm<'_>,
    stream: PeerStream,
    reconnect: Option<&dyn Fn() -> std::io::Result<PeerStream>>,
    settings: &SourceSettings,
    progress: &dyn Fn(&Progress),
    vm_state: &mut VmState,
) -> Result<SourceReport, MigrationError> {
    let LocalVm { vm, ram_file, .. } = local;
    let started = Instant::now();
    let started_us = wall_clock_us();
    settings.validate()?;
    let disk = movable_disk(local.disks)?;
    let status = vm
        .qmp
        .execute("query-status", json!({}))
        .map_err(|e| MigrationError::qemu("asking the source QEMU whether the VM runs", e))?;
    vm_state.was_running = status["running"].as_bool() == Some(true);
    let ram = GuestRam::open(ram_file)?;
    let configured = vm.config.memory_mib << 20;
    if ram.len_bytes() != configured {
        return Err(MigrationError::Invalid(format!(
            "guest RAM file {} holds {} bytes but VM {} has {configured}: wrong file?",
            ram_file.display(),
            ram.len_bytes(),
            vm.config.name
        )));
    }
    progress(&Progress {
        phase: Phase::Connecting,
        round: 0,
        bytes_sent: 0,
        bytes_acknowledged: 0,
        // The disk's used blocks are not read yet: its size bounds them.
        bytes_remaining: ram.len_bytes() + disk.map_or(0, TrackedDisk::size),
        rate_bytes_per_s: None,
        eta_s: None,
        elapsed_s: 0.0,
    });
    // Created before anything happens to the VM: a path that cannot be
    // written fails the migration before it starts.
    let trace = match &settings.trace_file {
        Some(path) => Some(TraceFile::create(path, ram.pages())?),
        None => None,
    };
    let mut link = PeerLink::establish(stream, Role::Source, settings.link_timeout)?;
    let mut conversation = Conversation::new(Role::Source);
    let migration_id = settings.migration_id.unwrap_or_else(rand::random);
    let dedup = (settings.dedup.entries > 0)
        .then(|| Dedup::new(settings.dedup.entries, settings.dedup.misdirect_every));
    let request = MigrationRequest {
        vm_name: vm.config.name.clone(),
        ram_bytes: ram.len_bytes(),
        page_size: PAGE_SIZE_U32,
        disk_bytes: local.disks.iter().map(|disk| disk.size()).collect(),
        policy: settings.strategy.policy(),
        migration_id,
        verify: settings.verify,
    };
    request_migration(
        &mut link,
        &mut conversation,
        request,
        local.disks,
        settings.link_timeout,
        dedup.as_ref(),
    )?;
    let compression = usable_compression(settings.compression, &link.negotiated);
    let negotiated = link.negotiated.clone();
    ignore_shared_ram(vm)?;
    let tracker = start_tracking(vm, ram_file)?;
    let tracking_method = tracker.method().to_string();
    let used_blocks = match disk {
        Some(disk) => {
            // Tracking starts before the used blocks are read, as for pages:
            // whatever the guest writes from here is sent (again) later.
            disk.take_dirty();
            Some(disk.used_blocks()?)
        }
        None => None,
    };
    let initially_used = used_blocks.as_ref().map_or(0, PageSet::count);
    let strategy = settings.build_strategy(ram.pages(), disk.map(|disk| disk.blocks()));
    let writes = WriteLog::new(tracker, trace, strategy.learns(), settings.trace_interval);

    let flow = Flow::new(conversation);
    let owed = Owed::new(ram.pages());
    let owed_blocks = Owed::new(disk.map_or(0, |disk| disk.blocks()));
    let PeerLink {
        reader,
        writer,
        socket,
        rtt,
        ..
    } = link;
    let timeout = settings.link_timeout;
    let (queue, outbox) = sync_channel(QUEUED_FRAMES);
    let wake = queue.clone();
    let asked = AskedPages {
        owed: &owed,
        owed_blocks: &owed_blocks,
        disk,
        ram: &ram,
        dedup: dedup.as_ref(),
        compression,
    };
    let (outcome, sent, received) = std::thread::scope(|scope| {
        let sender =
            scope.spawn(|| threads::send_frames(writer, outbox, asked, &flow, &socket, timeout));
        let receiver =
            scope.spawn(|| threads::receive_frames(reader, asked, wake, &flow, &socket, timeout));
        let outcome = (|| -> Result<_, MigrationError> {
            let mut ctx = SourceContext {
                vm,
                ram: &ram,
                disk,
                strategy,
                transfer: Transfer::new(ram.pages(), used_blocks),
                owed: &owed,
                owed_blocks: &owed_blocks,
                dedup: dedup.as_ref(),
                rtt,
                can_resume: reconnect.is_some(),
                compression,
                writes,
                pipeline: Pipeline::new(
                    queue,
                    &flow,
                    dedup.as_ref(),
                    CodecTuner::new(
                        compression,
                        settings.adaptive_compression,
                        &negotiated,
                        std::thread::available_parallelism().map_or(1, usize::from),
                    ),
                    settings.batch_pages,
                )?,
                flow: &flow,
                settings,
                reporter: Reporter::new(progress, started),
                vm_state,
                started,
            };
            ctx.observe_disk_history();
            let precopy = precopy::run(&mut ctx)?;
            let switched = switchover::run(&mut ctx)?;
            let compression_used = ctx.pipeline.compression_used();
            Ok((
                precopy,
                switched,
                compression_used,
                ctx.pipeline.into_rounds(),
                ctx.writes.finish_trace(),
            ))
        })();
        let interrupted =
            matches!(&outcome, Ok((_, switched, ..)) if switched.interrupted.is_some());
        if outcome.is_err() || interrupted {
            // Unblocks both threads; the closed queue ends the sender too.
            let _ = socket.shutdown(Shutdown::Both);
        }
        let sent = sender.join().expect("the sender thread panicked");
        let received = receiver.join().expect("the receiver thread panicked");
        (outcome, sent, received)
    });
    if flow.destination_running_us().is_some() {
        // Whatever failed after this, the guest runs on the destination.
        vm_state.phase = SourceVmPhase::DestinationRuns;
    } else {
        vm_state.destination_declined = flow.destination_aborted();
    }
    let (precopy, mut switched, (compression_used, compression_batches), rounds, memory_trace) =
        outcome?;
    let mut sent = sent;
    let mut received = received;
    let mut resumes = Vec::new();
    if let (Some(interrupted), Some(reconnect)) = (switched.interrupted.take(), reconnect) {
        let resumption = resume::Resumption {
            reconnect,
            migration_id,
            ram: &ram,
            disk,
            owed: &owed,
            owed_blocks: &owed_blocks,
            compression,
            settings,
            progress,
            started,
            round: rounds.len().try_into().unwrap_or(u32::MAX),
            vm_state,
        };
        let resumed = resume::serve(resumption, interrupted)?;
        switched.released_us = resumed.released_us;
        sent.add(&resumed.sent);
        received.add(&resumed.received);
        resumes = resumed.resumes;
    }
    let postcopy = owed.counts();

    let pages_sent = rounds.iter().map(|round| round.pages).sum::<u64>()
        + postcopy.pushed
        + postcopy.sent_on_demand;
    let postcopy_blocks = owed_blocks.counts();
    let blocks_sent = rounds.iter().map(|round| round.blocks).sum::<u64>()
        + postcopy_blocks.pushed
        + postcopy_blocks.sent_on_demand;
    Ok(SourceReport {
        vm_name: vm.config.name.clone(),
        ram_bytes: ram.len_bytes(),
        tracking_method,
        compression: compression_used,
        compression_batches,
        switch_reason: precopy.reason,
        pages_sent,
        // Round 1 sends every page once: every later page is a resend.
        retransmitted_pages: pages_sent.saturating_sub(u64::from(ram.pages())),
        blocks_sent,
        retransmitted_blocks: blocks_sent.saturating_sub(initially_used),
        disk_bytes: sent.class_bytes(TrafficClass::Disk),
        rounds,
        memory_bytes: sent.class_bytes(TrafficClass::Memory),
        device_state_bytes: switched.device_state_bytes,
        link_bytes_sent: sent.total_bytes(),
        link_bytes_received: received.total_bytes(),
        rate_bytes_per_s: precopy.rate,
        postcopy: switched
            .postcopy
            .then(|| resume::postcopy_report(&owed, &owed_blocks, &resumes)),
        verified: settings.verify,
        verify_ms: switched.verify_ms,
        memory_trace,
        dedup: dedup.as_ref().map(Dedup::report),
        timings: SourceTimings {
            started_us,
            stopped_us: switched.stopped_us,
            device_state_sent_us: switched.device_state_sent_us,
            destination_running_us: switched
                .destination_running_us
                .unwrap_or(switched.released_us),
            released_us: switched.released_us,
        },
    })
}

/// The one disk a migration can move today, if the VM has one.
fn movable_disk(disks: &[Arc<TrackedDisk>]) -> Result<Option<&TrackedDisk>, MigrationError> {
    match disks {
        [] => Ok(None),
        [disk] => Ok(Some(disk)),
        _ => Err(MigrationError::Invalid(format!(
            "the VM has {} disks; this agent moves at most one disk per VM",
            disks.len()
        ))),
    }
}

/// Sends `request` and waits for the answer, telling `dedup` what the
/// destination's disks (the VM's `disks` there) already hold.
fn request_migration(
    link: &mut PeerLink,
    conversation: &mut Conversation,
    request: MigrationRequest,
    disks: &[Arc<TrackedDisk>],
    timeout: Duration,
    dedup: Option<&Dedup>,
) -> Result<(), MigrationError> {
    let failure = |error| MigrationError::link(error, Role::Destination, timeout);
    let request = Message::MigrationRequest(request);
    conversation.sending(&request)?;
    link.writer
        .send(&request)
        .map_err(failure)
        .during("sending the migration request")?;
    let mut held_blocks = 0usize;
    let answer = loop {
        let answer = link
            .reader
            .recv()
            .map_err(failure)
            .during("waiting for the answer to the migration request")?;
        conversation.received(&answer)?;
        let Message::HeldContent(held) = answer else {
            break answer;
        };
        held_blocks += held.blocks.len();
        check_held_content(&held, disks, held_blocks)?;
        if let Some(dedup) = dedup {
            dedup.destination_holds(held.disk, &held.blocks);
        }
    };
    match answer {
        Message::MigrationAccept(_) => Ok(()),
        Message::MigrationReject(reject) => Err(MigrationError::Refused {
            reason: reject.reason,
        }),
        Message::Abort(abort) => Err(MigrationError::PeerAborted {
            peer: Role::Destination,
            reason: abort.reason,
        }),
        other => unreachable!(
            "the conversation admitted {} as an answer",
            other.message_type()
        ),
    }
}

/// `held` names blocks of a disk the VM has, and with the frames before it
/// (`held_blocks` in all) no more than the protocol allows.
fn check_held_content(
    held: &HeldContent,
    disks: &[Arc<TrackedDisk>],
    held_blocks: usize,
) -> Result<(), MigrationError> {
    let Some(disk) = disks.get(usize::from(held.disk)) else {
        return Err(MigrationError::Invalid(format!(
            "the destination named content it holds on disk {}, but the VM has {} disks",
            held.disk,
            disks.len()
        )));
    };
    if let Some(&(block, _)) = held
        .blocks
        .iter()
        .find(|(block, _)| *block >= disk.blocks())
    {
        return Err(MigrationError::Invalid(format!(
            "the destination named content it holds at block {block} of disk {}, beyond its {} blocks",
            held.disk,
            disk.blocks()
        )));
    }
    if held_blocks > MAX_HELD_BLOCKS {
        return Err(MigrationError::Invalid(format!(
            "the destination named more than {MAX_HELD_BLOCKS} blocks it holds"
        )));
    }
    Ok(())
}

/// The configured compression if the destination decodes it, else none.
fn usable_compression(wanted: CompressionSetting, negotiated: &Negotiated) -> CompressionSetting {
    if negotiated.supports(wanted.algorithm()) {
        wanted
    } else {
        tracing::warn!(
            compression = %wanted.algorithm(),
            "the destination cannot decode this compression; sending pages uncompressed"
        );
        CompressionSetting::None
    }
}

/// Undoes what the failed migration did to the source VM; says what it did.
fn recover(vm: &QemuProcess, state: &VmState) -> Recovery {
    if state.phase >= SourceVmPhase::QemuMigrating {
        let _ = vm.qmp.execute("migrate_cancel", json!({}));
        wait_for_settled_migration(vm);
    }
    if state.phase < SourceVmPhase::Stopped {
        return Recovery::NeverStopped;
    }
    match state.phase {
        SourceVmPhase::DestinationRuns => return Recovery::DestinationRuns,
        SourceVmPhase::HandedOver if !state.destination_declined => return Recovery::Undecided,
        _ => {}
    }
    if !state.was_running {
        return Recovery::StaysPaused;
    }
    match vm.qmp.execute("cont", json!({})) {
        Ok(_) => Recovery::Resumed,
        Err(error) => Recovery::ResumeFailed(error.to_string()),
    }
}

/// A cancelled migration settles asynchronously; `cont` before it has would
/// be undone by a migration that still completes and pauses the VM.
fn wait_for_settled_migration(vm: &QemuProcess) {
    let deadline = Instant::now() + CANCEL_SETTLE;
    while Instant::now() < deadline {
        let status = vm
            .qmp
            .execute("query-migrate", json!({}))
            .ok()
            .and_then(|info| info["status"].as_str().map(str::to_owned));
        match status.as_deref() {
            Some("active" | "cancelling" | "setup" | "device") => {
                std::thread::sleep(Duration::from_millis(5))
            }
            _ => return,
        }
    }
}
