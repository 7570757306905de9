//! mllm's own engine in the lab: the agents' library moves guest RAM (and
//! the disk, which the agents serve to the QEMUs over NBD) through the link
//! and relays QEMU's device state, in-process, over mutual TLS as in
//! production (a throwaway CA and a certificate per agent each run; TLS
//! runs end to end through the link emulator), and records the
//! guest's memory writes during pre-copy as a trace (`memory.trace` next to
//! `result.json`), which the simulator can replay.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use mllm_agent::{
    migrate_source, receive_migration, BoundAction, CompressionSetting, DedupSettings,
    DestinationReport, DestinationSettings, DiskMove, SourceReport, SourceSettings, SourceStrategy,
    TrackedDisk,
};
use mllm_link::Link;
use mllm_qemu::qmp::wall_clock_us;
use mllm_qemu::QemuProcess;
use mllm_tls::{CertificateAuthority, PeerStream, TlsContext, Validity};

use crate::outcome::{CompressionResult, MigrationOutcome, PostcopyResult};
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

/// The agents' names in their certificates.
const SOURCE_NAME: &str = "source.lab.mllm";
const DESTINATION_NAME: &str = "destination.lab.mllm";

/// Migrates with mllm's agents by `strategy`, over TLS if `tls`, and
/// records the guest's memory writes during pre-copy, one interval per
/// 100 ms, into `trace_file`. The migration's time starts when the source
/// agent connects: with TLS it includes the handshake.
#[allow(clippy::too_many_arguments)] // the scenario's settings, each its own
pub fn migrate(
    strategy: SourceStrategy,
    mllm_disk: DiskMove,
    dedup: DedupSettings,
    tls: bool,
    compression: Option<CompressionSetting>,
    downtime_target: Duration,
    timeout: Duration,
    source: &QemuProcess,
    destination: &QemuProcess,
    files: &GuestFiles,
    link: &Link,
    trace_file: &Path,
) -> MigrationOutcome {
    let started_us = wall_clock_us();
    let defaults = SourceSettings::default();
    let settings = SourceSettings {
        compression: compression.unwrap_or(defaults.compression),
        adaptive_compression: compression.is_none(),
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
        ..defaults
    };
    match run(&settings, tls, source, destination, files, link) {
        Ok((connecting_us, report, received)) => MigrationOutcome {
            error: None,
            started_us: connecting_us,
            completed_us: Some(report.timings.released_us),
            stopped_us: Some(report.timings.stopped_us),
            resumed_us: Some(received.running_us),
            memory_bytes: report.memory_bytes,
            disk_bytes: report.disk_bytes,
            rounds: report.rounds.len() as u64,
            verify_ms: Some(report.verify_ms + received.verify_ms),
            reported_downtime_ms: Some(saturating_u64(report.downtime_upper_bound_ms())),
            retransmitted_pages: Some(report.retransmitted_pages),
            retransmitted_blocks: Some(report.retransmitted_blocks),
            pages_sent: Some(report.pages_sent),
            tracking_method: Some(report.tracking_method),
            dedup: report.dedup,
            compression: Some(CompressionResult {
                last: report.compression,
                batches: report.compression_batches,
            }),
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
            agents_tls: Some(tls),
            // The agents set QEMU up for device state themselves.
            qemu_settings: None,
        },
        Err(err) => MigrationOutcome {
            error: Some(format!("{err:#}")),
            started_us,
            agents_tls: Some(tls),
            ..MigrationOutcome::default()
        },
    }
}

/// The two agents' TLS for one run, as a small deployment would have it.
struct LabTls {
    source: TlsContext,
    destination: TlsContext,
}

impl LabTls {
    fn generate() -> Result<LabTls> {
        let validity = Validity::days_from_now(1);
        let ca = CertificateAuthority::generate("mllm lab CA", validity)?;
        let context = |name: &str, peer: &str| -> Result<TlsContext> {
            Ok(TlsContext::from_host(
                &ca.issue(name, validity)?,
                &[peer.to_owned()],
            )?)
        };
        Ok(LabTls {
            source: context(SOURCE_NAME, DESTINATION_NAME)?,
            destination: context(DESTINATION_NAME, SOURCE_NAME)?,
        })
    }
}

/// Returns when the source began to connect, and both agents' reports.
fn run(
    settings: &SourceSettings,
    tls: bool,
    source: &QemuProcess,
    destination: &QemuProcess,
    files: &GuestFiles,
    link: &Link,
) -> Result<(u64, SourceReport, DestinationReport)> {
    let tls = tls.then(LabTls::generate).transpose()?;
    let listener = TcpListener::bind("127.0.0.1:0").context("destination agent cannot listen")?;
    let via_link = link.forward(listener.local_addr()?)?;
    std::thread::scope(|scope| {
        let destination_side = scope.spawn(|| -> Result<DestinationReport> {
            let (tcp, _) = listener.accept()?;
            let stream = match &tls {
                Some(tls) => tls.destination.accept(tcp)?,
                None => PeerStream::from(tcp),
            };
            let report = receive_migration(
                destination,
                files.destination_ram,
                files.destination_disks,
                stream,
                &DestinationSettings::default(),
            )?;
            Ok(report)
        });
        let connecting_us = wall_clock_us();
        let tcp = TcpStream::connect(via_link).context("cannot reach the destination agent")?;
        let stream = match &tls {
            Some(tls) => tls.source.connect(tcp, Some(DESTINATION_NAME))?,
            None => PeerStream::from(tcp),
        };
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
        Ok((connecting_us, report, received))
    })
}
