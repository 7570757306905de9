//! One scenario, one method: boot the source, warm up, start the
//! destination, migrate through the emulated link, watch the destination,
//! and measure.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use mllm_link::Link;
use mllm_qemu::qmp::wall_clock_us;
use mllm_qemu::{Boot, DiskAttachment, QemuConfig, QemuProcess, RamBackend};

use crate::analysis::{self, GuestOutput};
use crate::build;
use crate::disk;
use crate::fsck;
use crate::image::{GuestImage, SERIAL_PORTS};
use crate::method::Method;
use crate::mllm_migration::{self, GuestFiles};
use crate::paths;
use crate::physical_limit::ContentSnapshot;
use crate::placement::Placement;
use crate::plot;
use crate::qemu_migration;
use crate::qemu_settings::QemuSettings;
use crate::result::{Environment, RunResult};
use crate::scenario::{DiskContent, Scenario, VmSpec, Workload};
use mllm_agent::{make_migratable, write_disk_trace, DiskServer, TrackedDisk};
use mllm_core::trace::Encoding;

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// The NBD export name of the guest's disk when an agent serves it.
const DISK_EXPORT: &str = "disk0";

/// Runs every method the scenario names, each on a fresh VM from the same
/// image through the same link settings. One method writes `out/result.json`,
/// several write `out/<method>/result.json`.
pub fn run_scenario(scenario: &Scenario, image: &GuestImage, out: &Path) -> Result<Vec<RunResult>> {
    let mut results = Vec::new();
    for &method in &scenario.methods {
        let dir = if scenario.methods.len() == 1 {
            out.to_owned()
        } else {
            out.join(method.name())
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        eprintln!("mllm lab: {} with {method} ...", scenario.name);
        let result = run_method(scenario, method, image, &dir)?;
        result.write(&dir.join("result.json"))?;
        eprintln!("{}", crate::report::summary(&result));
        results.push(result);
    }
    Ok(results)
}

/// Runs one method. Errors are lab failures (QEMU would not start, the guest
/// would not boot); a migration that fails is a result with `success: false`.
pub fn run_method(
    scenario: &Scenario,
    method: Method,
    image: &GuestImage,
    dir: &Path,
) -> Result<RunResult> {
    // Unix socket paths are limited to 108 bytes, so sockets live in a short
    // temporary directory; logs are copied next to result.json at the end.
    let sockets = tempfile::Builder::new().prefix("mllm-lab-").tempdir()?;
    let outcome = run_in(scenario, method, image, dir, sockets.path());
    for entry in std::fs::read_dir(sockets.path())?.flatten() {
        let name = entry.file_name();
        let keep = name
            .to_str()
            .is_some_and(|n| n.ends_with(".log") || n.ends_with(".stderr"));
        if keep {
            let _ = std::fs::copy(entry.path(), dir.join(name));
        }
    }
    outcome
}

fn run_in(
    scenario: &Scenario,
    method: Method,
    image: &GuestImage,
    dir: &Path,
    sockets: &Path,
) -> Result<RunResult> {
    // First: the threads started from here (disk servers, QEMU, agents,
    // link) inherit the host's cores.
    let placement = match scenario.vm.pin_vcpus {
        true => Placement::for_vcpus(scenario.vm.vcpus)?,
        false => None,
    };
    let _on_host_cores = placement.as_ref().map(Placement::enter_host).transpose()?;
    let source_disk = match &scenario.vm.disk {
        Some(spec) => Some(disk::create_source_image(
            &sockets.join("source.img"),
            spec,
        )?),
        None => None,
    };
    let destination_disk = match &scenario.vm.disk {
        Some(spec) => Some(disk::create_empty_image(
            &sockets.join("destination.img"),
            spec.size.as_u64(),
        )?),
        None => None,
    };
    // mllm's agents serve the disk to QEMU over NBD: they see every request.
    let served = |side: &str, image: &Option<PathBuf>| -> Result<Option<DiskServer>> {
        match image {
            Some(image) if method.is_mllm() => Ok(Some(serve_disk(
                image,
                &sockets.join(format!("{side}.nbd")),
            )?)),
            _ => Ok(None),
        }
    };
    let source_server = served("source", &source_disk)?;
    let destination_server = served("destination", &destination_disk)?;
    let attachment = |image: &Option<PathBuf>, server: &Option<DiskServer>| match server {
        Some(server) => Some(nbd_attachment(server)),
        None => image.clone().map(DiskAttachment::Image),
    };
    let source_attachment = attachment(&source_disk, &source_server);
    let destination_attachment = attachment(&destination_disk, &destination_server);
    let vm = |name: &str, disk: &Option<DiskAttachment>, incoming: bool| QemuConfig {
        incoming,
        ..guest_config(
            &scenario.vm,
            &scenario.workload,
            image,
            name,
            disk.clone(),
            sockets,
        )
    };

    let mut source_config = vm("source", &source_attachment, false);
    let mut destination_config = vm("destination", &destination_attachment, true);
    // mllm's agents map guest RAM themselves: it lives in tmpfs files, and
    // the hook inside QEMU hands them the write tracking.
    let ram_dir = tempfile::Builder::new()
        .prefix("mllm-lab-ram-")
        .tempdir_in("/dev/shm")
        .context("cannot create guest RAM files in /dev/shm")?;
    let source_ram = ram_dir.path().join("source.ram");
    let destination_ram = ram_dir.path().join("destination.ram");
    // Every source keeps its RAM in a file, so the physical limit can read
    // it at the start of the migration whichever method runs; without
    // `x-ignore-shared` QEMU migrates shared RAM like any other.
    source_config.ram = RamBackend::SharedFile(source_ram.clone());
    if method.is_mllm() {
        let hook = build::hook_library()?;
        make_migratable(
            &mut source_config,
            &source_ram,
            &hook,
            &sockets.join("source.hook"),
        );
        make_migratable(
            &mut destination_config,
            &destination_ram,
            &hook,
            &sockets.join("destination.hook"),
        );
    }

    let source = QemuProcess::start(source_config)?;
    if let Some(placement) = &placement {
        placement.pin_vcpus(&source)?;
    }
    wait_until_booted(&source, &scenario.workload)?;
    let warmup_started = wall_clock_us();
    std::thread::sleep(scenario.timing.warmup);

    let destination = QemuProcess::start(destination_config)?;
    if let Some(placement) = &placement {
        placement.pin_vcpus(&destination)?;
    }
    let link = Link::new(scenario.link.clone())?;
    let link_started_us = wall_clock_us();
    let timing = &scenario.timing;
    let qemu_settings = QemuSettings::for_method(
        method,
        &scenario.link,
        timing.downtime_target,
        source_disk.is_some(),
    )?;
    // Read before the migration's clock starts, so that it costs the
    // measured migration nothing; the guest runs on meanwhile.
    let content = ContentSnapshot::take(&source_ram, source_disk.as_deref())?;
    let outcome = if let Some(strategy) = method.mllm_strategy() {
        let disks_of = |server: &Option<DiskServer>| -> Vec<Arc<TrackedDisk>> {
            server.iter().map(|s| Arc::clone(s.disk())).collect()
        };
        let (source_disks, destination_disks) =
            (disks_of(&source_server), disks_of(&destination_server));
        let files = GuestFiles {
            source_ram: &source_ram,
            destination_ram: &destination_ram,
            source_disks: &source_disks,
            destination_disks: &destination_disks,
        };
        let outcome = mllm_migration::migrate(
            strategy,
            method.mllm_disk(),
            method.dedup(),
            method.agents_use_tls(),
            scenario.agents.compression()?,
            timing.downtime_target,
            timing.migration_timeout,
            &source,
            &destination,
            &files,
            &link,
            &dir.join(mllm_migration::TRACE_FILE),
        );
        if let Some(disk) = source_disks.first() {
            // The source's disk requests up to the switch, for `mllm sim`.
            let path = dir.join(mllm_migration::DISK_TRACE_FILE);
            let written = write_disk_trace(
                &path,
                disk.size(),
                &disk.recent_accesses(),
                Encoding::Binary,
            );
            if let Err(error) = written {
                tracing::warn!("the disk trace {} was not written: {error}", path.display());
            }
        }
        outcome
    } else {
        let settings = qemu_settings
            .as_ref()
            .context("every method that is not mllm's is QEMU's")?;
        qemu_migration::migrate(
            method,
            settings,
            timing.migration_timeout,
            &source,
            &destination,
            &link,
        )
    };
    let success_so_far = outcome.error.is_none();
    if success_so_far {
        std::thread::sleep(scenario.timing.after);
    }
    let finished_us = wall_clock_us();
    let link_stats = link.stats();
    let timeline = link.timeline();
    link.shutdown();

    let source_output = output_of(&source, None);
    let destination_output = output_of(&destination, Some(&source));
    let start = outcome.started_us;
    let end = outcome
        .completed_us
        .unwrap_or(finished_us)
        .max(outcome.resumed_us.unwrap_or(0));
    let switch = outcome.resumed_us.unwrap_or(end);
    let expect_verification = matches!(
        scenario.workload,
        Workload::Memload(_) | Workload::Diskload(_)
    );
    let destination_check = analysis::check_destination(
        &source_output,
        &destination_output,
        switch,
        expect_verification,
    );
    let source_running_after = (!success_so_far).then(|| is_running(&source));
    source.shutdown();
    destination.shutdown();
    let fsck = match (&scenario.vm.disk, &destination_disk) {
        (Some(spec), Some(image)) if success_so_far && spec.content == DiskContent::Debian => {
            Some(fsck::check_ext4(image, sockets)?)
        }
        _ => None,
    };
    // Once the VMs are gone: the compression takes a core for a while.
    let physical_limit = content.limit(scenario.link.bandwidth_bits_per_s, scenario.link.rtt)?;

    let mut error = outcome.error.clone();
    if success_so_far && !destination_check.healthy {
        error = Some(format!(
            "destination guest is broken: {}",
            destination_check.problems.join("; ")
        ));
    }
    if let Some(check) = fsck.as_ref().filter(|check| !check.clean) {
        error = Some(format!(
            "the destination's file system has errors (e2fsck exit {}): {}",
            check.exit_code, check.report
        ));
    }
    let baseline_from = start
        .saturating_sub(
            u64::try_from(scenario.timing.baseline_window.as_micros()).unwrap_or(u64::MAX),
        )
        .max(warmup_started);
    let result = RunResult {
        method: method.name().to_owned(),
        scenario: scenario.name.clone(),
        success: error.is_none(),
        error,
        // The source may report completion while its last bytes still sit
        // in the link: the migration is over once the destination runs too.
        total_time_ms: outcome
            .completed_us
            .map(|c| (c.max(outcome.resumed_us.unwrap_or(0)) - start) as f64 / 1000.0),
        downtime_ms: match (outcome.stopped_us, outcome.resumed_us) {
            (Some(stop), Some(resume)) => Some(resume.saturating_sub(stop) as f64 / 1000.0),
            _ => None,
        },
        verify_ms: outcome.verify_ms,
        guest_gap_ms: analysis::largest_heartbeat_gap_ms(
            &source_output,
            &destination_output,
            start,
            finished_us,
        ),
        link_bytes: link_stats.bytes_forward + link_stats.bytes_backward,
        link_bytes_to_destination: link_stats.bytes_forward,
        link_bytes_to_source: link_stats.bytes_backward,
        link_connections: link_stats.connections,
        memory_bytes: outcome.memory_bytes,
        disk_bytes: outcome.disk_bytes,
        rounds: outcome.rounds,
        reported_downtime_ms: outcome.reported_downtime_ms,
        retransmitted_pages: outcome.retransmitted_pages,
        retransmitted_blocks: outcome.retransmitted_blocks,
        pages_sent: outcome.pages_sent,
        tracking_method: outcome.tracking_method.clone(),
        postcopy: outcome.postcopy.clone(),
        dedup: outcome.dedup.clone(),
        compression: outcome.compression.clone(),
        agents_tls: outcome.agents_tls,
        qemu: outcome.qemu_settings.clone(),
        physical_limit: Some(physical_limit),
        workload: analysis::workload_rates(
            &source_output,
            &destination_output,
            baseline_from,
            start,
            end,
            finished_us,
        ),
        destination: destination_check,
        fsck,
        source_running_after,
        environment: Environment {
            guest_image: image.description.clone(),
            accelerator: format!("{:?}", scenario.vm.accelerator).to_lowercase(),
            link_bandwidth: mllm_link::format_rate(scenario.link.bandwidth_bits_per_s),
            link_rtt_ms: scenario.link.rtt.as_secs_f64() * 1000.0,
            memory_mib: scenario.vm.memory.as_u64() >> 20,
            disk_mib: scenario.vm.disk.as_ref().map(|d| d.size.as_u64() >> 20),
            commit: paths::source_commit(),
            placement: placement.as_ref().map(Placement::describe),
        },
    };
    let phases = plot::Phases {
        started_us: start,
        stopped_us: outcome.stopped_us,
        resumed_us: outcome.resumed_us,
        completed_us: outcome.completed_us,
    };
    let mut all_ops = source_output.ops.clone();
    all_ops.extend(&destination_output.ops);
    if let Err(err) = plot::draw(
        &dir.join("timeline.svg"),
        &result,
        &all_ops,
        &timeline,
        link_started_us,
        baseline_from,
        finished_us,
        &phases,
    ) {
        tracing::warn!("could not draw the timeline plot: {err:#}");
    }
    Ok(result)
}

/// A lab guest booting `image` with the shape of `vm`, running `workload`,
/// its sockets and logs in `run_dir`; not waiting for a migration.
pub(crate) fn guest_config(
    vm: &VmSpec,
    workload: &Workload,
    image: &GuestImage,
    name: &str,
    disk: Option<DiskAttachment>,
    run_dir: &Path,
) -> QemuConfig {
    QemuConfig {
        name: name.to_owned(),
        binary: "qemu-system-x86_64".into(),
        accelerator: vm.accelerator,
        memory_mib: vm.memory.as_u64() >> 20,
        vcpus: vm.vcpus,
        ram: RamBackend::Anonymous,
        boot: Boot::Kernel {
            kernel: image.kernel.clone(),
            initrd: Some(image.initrd.clone()),
            cmdline: format!(
                "console=ttyS0 panic=-1 loglevel=4 {}",
                vm.kernel_params(workload)
            ),
        },
        disk,
        serial_ports: SERIAL_PORTS.iter().map(|p| p.to_string()).collect(),
        incoming: false,
        run_dir: run_dir.to_owned(),
        env: vec![],
    }
}

/// Serves the raw image at `image` as an agent does: through a
/// [`TrackedDisk`], over NBD on a new unix socket at `socket`.
pub(crate) fn serve_disk(image: &Path, socket: &Path) -> Result<DiskServer> {
    Ok(DiskServer::start(
        TrackedDisk::open(image)?,
        socket,
        DISK_EXPORT,
    )?)
}

/// QEMU's side of a disk that `server` serves.
pub(crate) fn nbd_attachment(server: &DiskServer) -> DiskAttachment {
    DiskAttachment::Nbd {
        socket: server.socket().to_owned(),
        export: DISK_EXPORT.into(),
    }
}

/// Waits for the guest's first heartbeat and, unless it is idle, for its
/// workload to start.
pub(crate) fn wait_until_booted(vm: &QemuProcess, workload: &Workload) -> Result<()> {
    // The run's logs are kept under these names.
    let log = |port: &str| {
        let path = vm.config.serial_log(port);
        path.file_name().map_or_else(
            || path.display().to_string(),
            |name| name.to_string_lossy().into_owned(),
        )
    };
    vm.serial("heartbeat")
        .wait_for("first heartbeat", BOOT_TIMEOUT, |l| l.starts_with("HB "))
        .with_context(|| format!("the guest did not boot (see {})", log("console")))?;
    if !matches!(workload, Workload::Idle) {
        vm.serial("workload")
            .wait_for("workload READY", BOOT_TIMEOUT, |l| l.starts_with("READY"))
            .with_context(|| {
                format!("the guest workload did not start (see {})", log("workload"))
            })?;
    }
    Ok(())
}

/// What `vm` printed; for a destination, the lines the switch cut in two
/// are completed with their beginnings on the `source`.
fn output_of(vm: &QemuProcess, source: Option<&QemuProcess>) -> GuestOutput {
    let port = |name: &str| match source {
        Some(source) => mllm_qemu::continue_across_switch(
            &source.serial(name).lines(),
            &vm.serial(name).lines(),
        ),
        None => vm.serial(name).lines(),
    };
    GuestOutput::parse(&port("heartbeat"), &port("workload"), &port("console"))
}

fn is_running(vm: &QemuProcess) -> bool {
    vm.qmp
        .execute("query-status", serde_json::json!({}))
        .is_ok_and(|s| s["running"].as_bool() == Some(true))
}
