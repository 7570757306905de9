//! QEMU's own migration methods, driven over QMP through the lab's link.
//!
//! Storage moves the libvirt way because QEMU 10 has no block migration: the
//! destination exports its empty disk over NBD, the source mirrors into it,
//! and memory migration pauses before switchover until the mirror is done.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mllm_link::Link;
use mllm_qemu::qmp::wall_clock_us;
use mllm_qemu::QemuProcess;
use serde_json::{json, Value};

use crate::method::Method;
use crate::outcome::MigrationOutcome;
use crate::qemu_settings::{MirrorSettings, QemuSettings, SideSettings};

/// Where the source sends each stream; every address is the link's.
struct Route {
    /// Link address forwarding to the destination's migration port.
    migration_via_link: SocketAddr,
    destination_migration_port: u16,
    /// Link address forwarding to the destination's NBD server, and its port.
    disk: Option<(SocketAddr, u16)>,
}

impl Route {
    fn through(link: &Link, with_disk: bool) -> Result<Route> {
        let destination_migration_port = free_port()?;
        let disk = if with_disk {
            let nbd_port = free_port()?;
            Some((link.forward(local(nbd_port))?, nbd_port))
        } else {
            None
        };
        Ok(Route {
            migration_via_link: link.forward(local(destination_migration_port))?,
            destination_migration_port,
            disk,
        })
    }
}

const QMP_WAIT: Duration = Duration::from_secs(30);

/// Migrates by `method` with `settings` (from [`QemuSettings::for_method`]).
pub fn migrate(
    method: Method,
    settings: &QemuSettings,
    timeout: Duration,
    source: &QemuProcess,
    destination: &QemuProcess,
    link: &Link,
) -> MigrationOutcome {
    let mut outcome = MigrationOutcome {
        started_us: wall_clock_us(),
        ..MigrationOutcome::default()
    };
    let route = Route::through(link, source.config.disk.is_some());
    if let Err(err) = route.and_then(|route| {
        run(
            method,
            settings,
            timeout,
            source,
            destination,
            &route,
            &mut outcome,
        )
    }) {
        // The source keeps running: QEMU resumes it on a failed pre-copy, and
        // a cancelled migration never stopped it.
        let _ = source.qmp.execute("migrate_cancel", json!({}));
        if source.config.disk.is_some() {
            let _ = source.qmp.execute(
                "block-job-cancel",
                json!({"device": "mirror0", "force": true}),
            );
        }
        outcome.error = Some(format!("{err:#}"));
    }
    outcome
}

fn run(
    method: Method,
    settings: &QemuSettings,
    timeout: Duration,
    source: &QemuProcess,
    destination: &QemuProcess,
    route: &Route,
    outcome: &mut MigrationOutcome,
) -> Result<()> {
    let with_disk = route.disk.is_some();
    outcome.qemu_settings = Some(configure(settings, source, destination)?);
    destination.qmp.execute(
        "migrate-incoming",
        json!({"uri": format!("tcp:127.0.0.1:{}", route.destination_migration_port)}),
    )?;
    let deadline = Instant::now() + timeout;
    if let Some((nbd_via_link, nbd_port)) = route.disk {
        let mirror = settings
            .mirror
            .as_ref()
            .context("a VM with a disk needs mirror settings")?;
        start_mirror(source, destination, mirror, nbd_via_link, nbd_port, timeout)?;
    }
    source.qmp.execute(
        "migrate",
        json!({"uri": format!("tcp:{}", route.migration_via_link)}),
    )?;
    let mut postcopy_started = false;
    let mut mirror_completed = false;
    loop {
        let info = source.qmp.execute("query-migrate", json!({}))?;
        record_counters(&info, outcome);
        let status = info["status"].as_str().unwrap_or("unknown");
        match status {
            "completed" => break,
            "failed" | "cancelled" => bail!(
                "QEMU migration {status}: {}",
                info["error-desc"].as_str().unwrap_or("QEMU gave no reason")
            ),
            "pre-switchover" if !mirror_completed => {
                complete_mirror(source, outcome)?;
                mirror_completed = true;
                source
                    .qmp
                    .execute("migrate-continue", json!({"state": "pre-switchover"}))?;
            }
            // Switch once the first full pass has gone out: from then on
            // every page that is still missing is fetched on demand.
            "active" if method.uses_postcopy() && !postcopy_started && outcome.rounds >= 2 => {
                source.qmp.execute("migrate-start-postcopy", json!({}))?;
                postcopy_started = true;
            }
            _ => {}
        }
        if Instant::now() > deadline {
            bail!(
                "migration did not complete within {} s (status {status}, {} rounds): the guest dirties memory faster than the link sends it",
                timeout.as_secs(),
                outcome.rounds
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let completed = source
        .qmp
        .wait_event("MIGRATION completed event", QMP_WAIT, |e| {
            e.name == "MIGRATION" && e.data["status"] == "completed"
        })?;
    outcome.completed_us = Some(completed.timestamp_us);
    let started = outcome.started_us;
    outcome.stopped_us = source
        .qmp
        .events()
        .iter()
        .find(|e| e.name == "STOP" && e.timestamp_us >= started)
        .map(|e| e.timestamp_us);
    let resumed = destination
        .qmp
        .wait_event("RESUME on the destination", QMP_WAIT, |e| {
            e.name == "RESUME"
        })
        .context("the destination never resumed the guest")?;
    outcome.resumed_us = Some(resumed.timestamp_us);
    let info = source.qmp.execute("query-migrate", json!({}))?;
    record_counters(&info, outcome);
    outcome.reported_downtime_ms = info["downtime"].as_u64();
    if with_disk {
        destination.qmp.execute("nbd-server-stop", json!({}))?;
    }
    Ok(())
}

/// Sets both QEMUs up and returns the settings as QEMU reports them back
/// (`query-migrate-capabilities`, `query-migrate-parameters`): a value QEMU
/// did not take is an error, not a silently weaker baseline.
fn configure(
    settings: &QemuSettings,
    source: &QemuProcess,
    destination: &QemuProcess,
) -> Result<QemuSettings> {
    Ok(QemuSettings {
        source: configure_side("source", source, &settings.source)?,
        destination: configure_side("destination", destination, &settings.destination)?,
        mirror: settings.mirror.clone(),
    })
}

fn configure_side(side: &str, qemu: &QemuProcess, wanted: &SideSettings) -> Result<SideSettings> {
    let capabilities: Vec<Value> = wanted
        .capabilities
        .iter()
        .map(|c| json!({"capability": c, "state": true}))
        .collect();
    qemu.qmp
        .execute(
            "migrate-set-capabilities",
            json!({"capabilities": capabilities}),
        )
        .with_context(|| format!("enabling {:?} on the {side}", wanted.capabilities))?;
    if !wanted.parameters.is_empty() {
        qemu.qmp
            .execute(
                "migrate-set-parameters",
                Value::Object(wanted.parameters.clone()),
            )
            .with_context(|| format!("setting migration parameters on the {side}"))?;
    }
    let enabled: Vec<String> = qemu
        .qmp
        .execute("query-migrate-capabilities", json!({}))?
        .as_array()
        .context("query-migrate-capabilities returned no list")?
        .iter()
        .filter(|c| c["state"] == true)
        .filter_map(|c| c["capability"].as_str().map(str::to_owned))
        .collect();
    if let Some(missing) = wanted.capabilities.iter().find(|c| !enabled.contains(c)) {
        bail!("the {side} QEMU did not enable capability {missing}");
    }
    let current = qemu.qmp.execute("query-migrate-parameters", json!({}))?;
    let mut parameters = serde_json::Map::new();
    for (name, value) in &wanted.parameters {
        let reported = &current[name];
        if reported != value {
            bail!("the {side} QEMU reports {name} = {reported}, not the {value} it was set to");
        }
        parameters.insert(name.clone(), reported.clone());
    }
    Ok(SideSettings {
        capabilities: enabled,
        parameters,
    })
}

fn start_mirror(
    source: &QemuProcess,
    destination: &QemuProcess,
    mirror: &MirrorSettings,
    nbd_via_link: SocketAddr,
    nbd_port: u16,
    timeout: Duration,
) -> Result<()> {
    destination.qmp.execute(
        "nbd-server-start",
        json!({"addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": nbd_port.to_string()}}}),
    )?;
    destination.qmp.execute(
        "block-export-add",
        json!({"type": "nbd", "id": "export0", "node-name": "disk0", "name": "disk0", "writable": true}),
    )?;
    source.qmp.execute(
        "blockdev-add",
        json!({
            "driver": "nbd",
            "node-name": "mirror-target",
            "server": {"type": "inet", "host": nbd_via_link.ip().to_string(), "port": nbd_via_link.port().to_string()},
            "export": "disk0",
        }),
    )?;
    source.qmp.execute(
        "blockdev-mirror",
        json!({
            "job-id": "mirror0",
            "device": "disk0",
            "target": "mirror-target",
            "sync": "full",
            "granularity": mirror.granularity,
            "copy-mode": mirror.copy_mode,
        }),
    )?;
    // Memory migration starts only once the disk copy has caught up, as libvirt does.
    source.qmp.wait_event(
        "BLOCK_JOB_READY for the disk mirror (the guest rewrites its disk faster than the link copies it?)",
        timeout,
        |e| {
            e.name == "BLOCK_JOB_READY"
                || (e.name == "BLOCK_JOB_COMPLETED" && e.data["error"].is_string())
        },
    )?;
    if let Some(error) = source
        .qmp
        .events()
        .iter()
        .find(|e| e.name == "BLOCK_JOB_COMPLETED")
        .and_then(|e| e.data["error"].as_str().map(str::to_owned))
    {
        bail!("disk mirror failed: {error}");
    }
    if mirror.copy_mode_when_ready != mirror.copy_mode {
        source.qmp.execute(
            "block-job-change",
            json!({"id": "mirror0", "type": "mirror", "copy-mode": mirror.copy_mode_when_ready}),
        )?;
    }
    Ok(())
}

/// Ends the mirror without pivoting: the source keeps its disk, the
/// destination's copy is now complete.
fn complete_mirror(source: &QemuProcess, outcome: &mut MigrationOutcome) -> Result<()> {
    let jobs = source.qmp.execute("query-block-jobs", json!({}))?;
    if let Some(offset) = jobs.get(0).and_then(|j| j["offset"].as_u64()) {
        outcome.disk_bytes = offset;
    }
    source
        .qmp
        .execute("block-job-cancel", json!({"device": "mirror0"}))?;
    let done = source
        .qmp
        .wait_event("BLOCK_JOB_COMPLETED for the disk mirror", QMP_WAIT, |e| {
            e.name == "BLOCK_JOB_COMPLETED" || e.name == "BLOCK_JOB_CANCELLED"
        })?;
    if let Some(error) = done.data["error"].as_str() {
        bail!("disk mirror failed at the switch: {error}");
    }
    if let Some(offset) = done.data["offset"].as_u64() {
        outcome.disk_bytes = offset;
    }
    Ok(())
}

fn record_counters(info: &Value, outcome: &mut MigrationOutcome) {
    let ram = &info["ram"];
    if let Some(transferred) = ram["transferred"].as_u64() {
        outcome.memory_bytes = transferred;
    }
    if let Some(pages) = ram["normal"].as_u64() {
        outcome.pages_sent = Some(pages);
    }
    if let Some(rounds) = ram["dirty-sync-count"].as_u64() {
        outcome.rounds = rounds;
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A port nobody listens on now; QEMU binds it a moment later.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free local TCP port")?;
    Ok(listener.local_addr()?.port())
}
