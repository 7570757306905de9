//! mllm's own engine in the lab: the agents' library moves guest RAM (and
//! the disk, which the agents serve to the QEMUs over NBD) through the link
//! and relays QEMU's device state, in-process, and records the
//! guest's memory writes during pre-copy as a trace (`memory.trace` next to
//! `result.json`), which the simulator can replay.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use mllm_agent::{
    migrate_source, receive_migration, BoundAction, DedupSettings, DestinationReport,
    DestinationSettings, DiskMove, SourceReport, SourceSettings, SourceStrategy, TrackedDisk,
};
use mllm_link::Link;
use mllm_qemu::qmp::wall_clock_us;
use mllm_qemu::QemuProcess;

use crate::outcome::{MigrationOutcome, PostcopyResult};
use mllm_core::convert::saturating_u64;

/// The guest's RAM files (on tmpfs) and disks on both sides.
#[derive(Debug)]
pub struct GuestFiles<'a> {
    pub source_ram: &'a Path,
    pub destination_ram: &'a Path,
    /// As the agents serve them to the QEMUs; none for a diskless guest.
    pub source_disks: &'a [Arc<TrackedDisk>],
    pub destination_disks: &'a [Arc<TrackedDisk>],
}

/// The name of the memory write trace in a run's directory.
pub const TRACE_FILE: &str = "memory.trace";
/// The name of the source disk's access trace (its last 64 Ki requests).
pub const DISK_TRACE_FILE: &str = "disk.trace";

/// Migrates with mllm's agents by `strategy` and records the guest's memory
/// writes during pre-copy, one interval per 100 ms, into `trace_file`.
#[allow(clippy::too_many_arguments)] // the scenario's settings, each its own
pub fn migrate(
    strategy: SourceStrategy,
    mllm_disk: DiskMove,
    dedup: DedupSettings,
    downtime_target: Duration,
    timeout: Duration,
    source: &QemuProcess,
    destination: &QemuProcess,
    files: &GuestFiles,
    link: &Link,
    trace_file: &Path,
) -> MigrationOutcome {
    let started_us = wall_clock_us();
    let settings = SourceSettings {
        strategy,
        mllm_disk,
        dedup,
        downtime_target,
        // Same rule as for QEMU's methods: no bound on rounds, cancelled
        // (the source keeps running) when the scenario's timeout passes.
        max_rounds: u32::MAX,
        max_duration: Some(timeout),
        on_bound: BoundAction::Abort,
        // Test mode: every destination page is compared with the source's at the switch.
        verify: true,
        trace_file: Some(trace_file.to_owned()),
        ..SourceSettings::default()
    };
    match run(&settings, source, destination, files, link) {
        Ok((report, received)) => MigrationOutcome {
            error: None,
            started_us: report.timings.started_us,
            completed_us: Some(report.timings.released_us),
            stopped_us: Some(report.timings.stopped_us),
            resumed_us: Some(received.running_us),
            memory_bytes: report.memory_bytes,
            disk_bytes: report.disk_bytes,
            rounds: report.rounds.len() as u64,
            reported_downtime_ms: Some(saturating_u64(report.downtime_upper_bound_ms())),
            retransmitted_pages: Some(report.retransmitted_pages),
            retransmitted_blocks: Some(report.retransmitted_blocks),
            pages_sent: Some(report.pages_sent),
            tracking_method: Some(report.tracking_method),
            dedup: report.dedup,
            postcopy: received.postcopy.map(|postcopy| {
                let disk = received.disk_postcopy.as_ref();
                PostcopyResult {
                    pages: postcopy.pages_installed,
                    faults: postcopy.faults,
                    fault_p50_ms: postcopy.fault_p50_ms,
                    fault_p99_ms: postcopy.fault_p99_ms,
                    fault_max_ms: postcopy.fault_max_ms,
                    blocks: disk.map_or(0, |disk| disk.blocks_installed),
                    block_fetches: disk.map_or(0, |disk| disk.fetches),
                    block_fetch_p99_ms: disk.and_then(|disk| disk.fetch_p99_ms),
                }
            }),
            // The agents set QEMU up for device state themselves.
            qemu_settings: None,
        },
        Err(err) => MigrationOutcome {
            error: Some(format!("{err:#}")),
            started_us,
            ..MigrationOutcome::default()
        },
    }
}

fn run(
    settings: &SourceSettings,
    source: &QemuProcess,
    destination: &QemuProcess,
    files: &GuestFiles,
    link: &Link,
) -> Result<(SourceReport, DestinationReport)> {
    let listener = TcpListener::bind("127.0.0.1:0").context("destination agent cannot listen")?;
    let via_link = link.forward(listener.local_addr()?)?;
    std::thread::scope(|scope| {
        let destination_side = scope.spawn(|| -> Result<DestinationReport> {
            let (stream, _) = listener.accept()?;
            let report = receive_migration(
                destination,
                files.destination_ram,
                files.destination_disks,
                stream,
                &DestinationSettings::default(),
            )?;
            Ok(report)
        });
        let stream = TcpStream::connect(via_link).context("cannot reach the destination agent")?;
        let sent = migrate_source(
            source,
            files.source_ram,
            files.source_disks,
            stream,
            settings,
            &|progress| tracing::debug!(?progress, "mllm migration progress"),
        );
        let received = destination_side
            .join()
            .map_err(|_| anyhow!("the destination agent panicked"))?;
        let report = sent?;
        let received = received.context("destination agent")?;
        if let Some(error) = report.memory_trace.as_ref().and_then(|t| t.error.as_ref()) {
            tracing::warn!("the memory trace ended early: {error}");
        }
        Ok((report, received))
    })
}
