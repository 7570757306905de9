//! Post-copy after the link failed, at the source. The destination runs the
//! VM and lacks pages only this host has, so one failure does not end the
//! migration: the source reconnects (through the caller's `reconnect`, with
//! backoff), names the migration by its id (`ResumeRequest`), and learns
//! from the destination what it still lacks (`ResumeAccept`). That answer
//! is the truth: what was in flight when the link failed either arrived
//! (and is not named) or did not (and is). Exactly those pages and blocks
//! are then pushed in the strategy's order while faults are served, as on
//! the first connection. The recovery timeout counts from each failure;
//! past it the source says the destination is unreachable. Either way the
//! source VM stays paused: the guest is the destination's since the
//! hand-over (`mllm_wire::conversation`, "Ownership").
//!
//! The source agent itself may die in post-copy too: the pages the
//! destination lacks stay in the paused VM's RAM file (and disk image),
//! which outlive the agent, so a restarted agent that recorded the
//! migration's id resumes it the same way ([`resume_postcopy_after_restart`]).

use std::io;
use std::net::Shutdown;
use std::path::Path;
use std::sync::Arc;

use mllm_tls::PeerStream;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use mllm_control::{Phase, PostcopyReport, Progress};
use mllm_core::convert::saturating_u64;
use mllm_core::strategy::Space;
use mllm_qemu::qmp::wall_clock_us;
use mllm_wire::{
    Ack, CompressionSetting, Conversation, Message, ResumeAccept, ResumeRequest, Role, Traffic,
};

use super::codec::CodecTuner;
use super::flow::{Flow, FlowSnapshot};
use super::pipeline::Pipeline;
use super::postcopy::Owed;
use super::reporter::Reporter;
use super::switchover::{push, Interrupted, PushLink};
use super::threads::{self, AskedPages};
use super::{movable_disk, usable_compression, SourceVmPhase, VmState, QUEUED_FRAMES};
use crate::disk::TrackedDisk;
use crate::error::{Context, MigrationError};
use crate::guest_ram::GuestRam;
use crate::peer::PeerLink;
use crate::settings::SourceSettings;

/// The first pause between attempts to reach the destination again; it
/// doubles up to `LONGEST_RETRY`.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LONGEST_RETRY: Duration = Duration::from_secs(2);

/// What serving a post-copy again needs.
pub(super) struct Resumption<'a> {
    pub reconnect: &'a dyn Fn() -> io::Result<PeerStream>,
    pub migration_id: u128,
    pub ram: &'a GuestRam,
    pub disk: Option<&'a TrackedDisk>,
    pub owed: &'a Owed,
    pub owed_blocks: &'a Owed,
    pub compression: CompressionSetting,
    pub settings: &'a SourceSettings,
    pub progress: &'a dyn Fn(&Progress),
    pub started: Instant,
    /// The round the progress reports name.
    pub round: u32,
    pub vm_state: &'a mut VmState,
}

/// A post-copy finished over resumed connections.
pub(super) struct Resumed {
    pub released_us: u64,
    /// What crossed the resumed connections, each way.
    pub sent: Traffic,
    pub received: Traffic,
    /// How each resume went, in order.
    pub resumes: Vec<ResumeOutcome>,
}

/// One resumed connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct ResumeOutcome {
    /// From the failure the source saw to the destination's answer.
    pub recovered: Duration,
    /// What the destination still lacked then.
    pub pages_missing: u64,
    pub blocks_missing: u64,
}

/// Finishes a post-copy that a previous agent on this host left when it
/// stopped or crashed after the hand-over: the destination runs the VM,
/// stalled on the pages only `ram_file` (and the blocks only `disks`) hold.
/// Connects through `reconnect` as after a link failure, names migration
/// `migration_id` (which the previous agent recorded), and sends exactly
/// what the destination says it lacks, in page order (the strategy's order
/// died with the previous agent) while its guest's faults go first.
///
/// A destination that does not know the migration refuses
/// ([`MigrationError::ResumeRefused`]): it finished the post-copy before
/// the agent died, or it never ran the VM; the source VM must then stay
/// paused until an operator knows which. Whatever the outcome, this never
/// resumes the source VM.
pub fn resume_postcopy_after_restart(
    ram_file: &Path,
    disks: &[Arc<TrackedDisk>],
    reconnect: &dyn Fn() -> io::Result<PeerStream>,
    migration_id: u128,
    settings: &SourceSettings,
    progress: &dyn Fn(&Progress),
) -> Result<PostcopyReport, MigrationError> {
    let ram = GuestRam::open(ram_file)?;
    let disk = movable_disk(disks)?;
    let owed = Owed::new(ram.pages());
    let owed_blocks = Owed::new(disk.map_or(0, TrackedDisk::blocks));
    let mut vm_state = VmState {
        was_running: true,
        phase: SourceVmPhase::HandedOver,
        destination_declined: false,
    };
    // Every page, then every block: only what the destination names as
    // missing is owed, and only what is owed is pushed.
    let order: Vec<(Space, u32)> = (0..ram.pages())
        .map(|page| (Space::Memory, page))
        .chain((0..disk.map_or(0, TrackedDisk::blocks)).map(|block| (Space::Disk, block)))
        .collect();
    let resumption = Resumption {
        reconnect,
        migration_id,
        ram: &ram,
        disk,
        owed: &owed,
        owed_blocks: &owed_blocks,
        compression: settings.compression,
        settings,
        progress,
        started: Instant::now(),
        round: 0,
        vm_state: &mut vm_state,
    };
    let restarted = Interrupted {
        cause: MigrationError::Invalid(
            "the source agent restarted after the hand-over, in post-copy".into(),
        ),
        order,
    };
    let resumed = serve(resumption, restarted)?;
    Ok(postcopy_report(&owed, &owed_blocks, &resumed.resumes))
}

/// What a post-copy moved from the source, over every connection.
pub(super) fn postcopy_report(
    owed: &Owed,
    owed_blocks: &Owed,
    resumes: &[ResumeOutcome],
) -> PostcopyReport {
    let pages = owed.counts();
    let blocks = owed_blocks.counts();
    PostcopyReport {
        pages_pushed: pages.pushed,
        pages_on_demand: pages.sent_on_demand,
        requests: pages.requests + blocks.requests,
        blocks_pushed: blocks.pushed,
        blocks_on_demand: blocks.sent_on_demand,
        resumes: resumes.len().try_into().unwrap_or(u32::MAX),
        longest_recovery_ms: resumes
            .iter()
            .map(|resume| saturating_u64(resume.recovered.as_secs_f64() * 1000.0))
            .max()
            .unwrap_or(0),
        pages_missing_at_resume: resumes.last().map_or(0, |resume| resume.pages_missing),
        blocks_missing_at_resume: resumes.last().map_or(0, |resume| resume.blocks_missing),
    }
}

/// Reconnects and serves until the destination holds every page, across
/// as many link failures as come, each survived within the recovery
/// timeout.
pub(super) fn serve(
    resumption: Resumption<'_>,
    interrupted: Interrupted,
) -> Result<Resumed, MigrationError> {
    let Interrupted { mut cause, order } = interrupted;
    let mut sent = Traffic::default();
    let mut received = Traffic::default();
    let mut resumes = Vec::new();
    loop {
        let lost_at = Instant::now();
        tracing::warn!(
            cause = %cause.chain(),
            "post-copy interrupted; reconnecting to the destination"
        );
        let (link, conversation, missing) = reconnect(&resumption, lost_at)?;
        // The destination runs the VM: it resumed this post-copy.
        resumption.vm_state.phase = SourceVmPhase::DestinationRuns;
        owe_what_is_missing(&resumption, &missing)?;
        let resumed = ResumeOutcome {
            recovered: lost_at.elapsed(),
            pages_missing: resumption.owed.owed_count(),
            blocks_missing: resumption.owed_blocks.owed_count(),
        };
        tracing::info!(?resumed, "post-copy resumed");
        resumes.push(resumed);
        let (served, connection_sent, connection_received) =
            serve_connection(&resumption, link, conversation, &order);
        sent.add(&connection_sent);
        received.add(&connection_received);
        match served {
            Ok(released_us) => {
                return Ok(Resumed {
                    released_us,
                    sent,
                    received,
                    resumes,
                })
            }
            Err(error) if error.is_link_failure() => cause = error,
            Err(error) => return Err(error),
        }
    }
}

/// A resumed connection, tried until the destination answers, refuses, or
/// the recovery timeout passes since `lost_at`.
fn reconnect(
    resumption: &Resumption<'_>,
    lost_at: Instant,
) -> Result<(PeerLink, Conversation, ResumeAccept), MigrationError> {
    let deadline = lost_at + resumption.settings.recovery_timeout;
    let mut pause = FIRST_RETRY;
    loop {
        report(resumption, Phase::Reconnecting);
        let failure = match resume(resumption) {
            Ok(resumed) => return Ok(resumed),
            // The destination answered: trying again changes nothing.
            Err(error)
                if matches!(
                    error.root(),
                    MigrationError::ResumeRefused { .. }
                        | MigrationError::PeerAborted { .. }
                        | MigrationError::Protocol(_)
                ) =>
            {
                return Err(error)
            }
            Err(error) => error,
        };
        tracing::debug!(error = %failure.chain(), "the destination is still unreachable");
        let now = Instant::now();
        if now >= deadline {
            return Err(MigrationError::DestinationUnreachable {
                unreachable_for: lost_at.elapsed(),
                last_failure: Box::new(failure),
            });
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(LONGEST_RETRY);
    }
}

/// One attempt: a new connection, its handshake, and the resume request.
fn resume(
    resumption: &Resumption<'_>,
) -> Result<(PeerLink, Conversation, ResumeAccept), MigrationError> {
    let stream = (resumption.reconnect)()
        .map_err(|e| MigrationError::io("connecting to the destination agent again", e))?;
    let mut link = PeerLink::establish(stream, Role::Source, resumption.settings.link_timeout)?;
    let mut conversation = Conversation::new(Role::Source);
    let request = Message::ResumeRequest(ResumeRequest {
        migration_id: resumption.migration_id,
    });
    conversation.sending(&request)?;
    link.writer
        .send(&request)
        .map_err(|e| link.failure(e))
        .during("asking the destination to resume the post-copy")?;
    let answer = link
        .reader
        .recv()
        .map_err(|e| link.failure(e))
        .during("waiting for the answer to the resume request")?;
    conversation.received(&answer)?;
    match answer {
        Message::ResumeAccept(missing) => Ok((link, conversation, missing)),
        Message::MigrationReject(reject) => Err(MigrationError::ResumeRefused {
            reason: reject.reason,
        }),
        Message::Abort(abort) => Err(MigrationError::PeerAborted {
            peer: Role::Destination,
            reason: abort.reason,
        }),
        other => unreachable!(
            "the conversation admitted {} as an answer to a resume",
            other.message_type()
        ),
    }
}

/// What the destination still lacks is what is owed, nothing else.
fn owe_what_is_missing(
    resumption: &Resumption<'_>,
    missing: &ResumeAccept,
) -> Result<(), MigrationError> {
    resumption.owed.owe_exactly(&missing.pages)?;
    let mut blocks = Vec::with_capacity(missing.blocks.len());
    for &(disk, range) in &missing.blocks {
        // The one disk a migration moves is disk 0.
        if disk != 0 || resumption.disk.is_none() {
            return Err(MigrationError::Invalid(format!(
                "the destination says it lacks blocks of disk {disk}, which this migration \
                 does not move"
            )));
        }
        blocks.push(range);
    }
    resumption.owed_blocks.owe_exactly(&blocks)
}

/// Pushes what is owed over one resumed connection, serving the faults
/// that come meanwhile, until the destination's receipt; then releases
/// the VM. Returns when the source released it, and the connection's
/// traffic each way.
fn serve_connection(
    resumption: &Resumption<'_>,
    link: PeerLink,
    conversation: Conversation,
    order: &[(Space, u32)],
) -> (Result<u64, MigrationError>, Traffic, Traffic) {
    let flow = Flow::new(conversation);
    let PeerLink {
        reader,
        writer,
        socket,
        rtt,
        negotiated,
        ..
    } = link;
    let timeout = resumption.settings.link_timeout;
    let compression = usable_compression(resumption.compression, &negotiated);
    let (queue, outbox) = sync_channel(QUEUED_FRAMES);
    let wake = queue.clone();
    let asked = AskedPages {
        owed: resumption.owed,
        owed_blocks: resumption.owed_blocks,
        disk: resumption.disk,
        ram: resumption.ram,
        // References end at the switch: none to refuse after it.
        dedup: None,
        compression,
    };
    std::thread::scope(|scope| {
        let sender =
            scope.spawn(|| threads::send_frames(writer, outbox, asked, &flow, &socket, timeout));
        let receiver =
            scope.spawn(|| threads::receive_frames(reader, asked, wake, &flow, &socket, timeout));
        let outcome = (|| {
            let mut pipeline = Pipeline::new(
                queue,
                &flow,
                None,
                CodecTuner::new(
                    compression,
                    resumption.settings.adaptive_compression,
                    &negotiated,
                    std::thread::available_parallelism().map_or(1, usize::from),
                ),
                resumption.settings.batch_pages,
            )?;
            let mut reporter = Reporter::new(resumption.progress, resumption.started);
            push(
                &mut PushLink {
                    pipeline: &mut pipeline,
                    flow: &flow,
                    owed: resumption.owed,
                    owed_blocks: resumption.owed_blocks,
                    ram: resumption.ram,
                    disk: resumption.disk,
                    rtt,
                    compression,
                    reporter: &mut reporter,
                    round: resumption.round,
                },
                order,
            )?;
            reporter.report(
                Phase::WaitingForDestination,
                resumption.round,
                flow.snapshot(),
                0,
            );
            flow.wait_for_outcome(timeout)?;
            // The release; the VM is the destination's anyway.
            let _ = pipeline.send(Message::Ack(Ack));
            reporter.report(Phase::Completed, resumption.round, flow.snapshot(), 0);
            Ok(wall_clock_us())
        })();
        if outcome.is_err() {
            // Unblocks both threads; the closed queue ends the sender too.
            let _ = socket.shutdown(Shutdown::Both);
        }
        let sent = sender.join().expect("the sender thread panicked");
        let received = receiver.join().expect("the receiver thread panicked");
        (outcome, sent, received)
    })
}

/// Tells the caller the source is between connections.
fn report(resumption: &Resumption<'_>, phase: Phase) {
    let mut reporter = Reporter::new(resumption.progress, resumption.started);
    let idle = FlowSnapshot {
        unacked_bytes: 0,
        acked_bytes: 0,
        sent_bytes: 0,
        rate: None,
    };
    reporter.report(phase, resumption.round, idle, 0);
}
