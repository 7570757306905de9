//! The VMs a daemon owns: launched from their specs with shared RAM and the
//! hook, so any of them can be migrated away, and removed (QEMU quit, RAM
//! file deleted) once it runs elsewhere. Each has a record in the state
//! directory while it lives, so that the agent's successor adopts it
//! ([`VmHost::adopt_recorded`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{bail, Context, Result};
use mllm_agent::{make_migratable, DiskMove, DiskServer, TrackedDisk};
use mllm_control::{Progress, VmInfo};
use mllm_qemu::{DiskAttachment, QemuConfig, QemuProcess};
use serde_json::json;

use crate::inflight::InFlight;
use crate::spec::VmSpec;
use crate::state::{start_ticks, HandOverRecord, StateDir, VmPhase, VmRecord};

/// The NBD export name of a VM's disk, on its own socket.
const DISK_EXPORT: &str = "disk0";

/// One VM's QEMU and what the daemon knows about it.
pub struct OwnedVm {
    // Fields drop in this order: QEMU goes before the server of its disk.
    pub qemu: QemuProcess,
    pub ram_file: PathBuf,
    /// Serves the VM's disk to its QEMU, if it has one.
    disk: Option<DiskServer>,
    /// Who uses the VM's write tracker now, if anyone.
    pub tracker: TrackerSlot,
    /// The latest progress of the outgoing migration.
    pub migration: Mutex<Option<Progress>>,
    /// How its spec asks the MLLM policy to move its disk.
    pub disk_move: Option<DiskMove>,
    record: Mutex<VmRecord>,
    records: StateDir,
    /// The agent shuts down and leaves the VM to its successor: nothing of
    /// it is removed.
    left_running: AtomicBool,
}

/// What tracks a VM's memory writes. The hook in QEMU arms one tracker at
/// a time, so an outgoing migration and a trace recording exclude each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackerUser {
    Migration,
    TraceRecording,
}

#[derive(Default)]
pub struct TrackerSlot(Mutex<Option<TrackerUser>>);

impl TrackerSlot {
    /// Holds VM `vm`'s tracker for `user` until the claim is dropped; fails
    /// while someone else holds it.
    pub fn claim(&self, vm: &str, user: TrackerUser) -> Result<TrackerClaim<'_>> {
        let mut holder = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(current) = *holder {
            let what = match current {
                TrackerUser::Migration => "it is being migrated",
                TrackerUser::TraceRecording => "a memory trace of it is being recorded",
            };
            bail!("VM {vm} is busy: {what}");
        }
        *holder = Some(user);
        Ok(TrackerClaim { slot: self })
    }
}

/// The VM's write tracker is in use while this lives.
pub struct TrackerClaim<'a> {
    slot: &'a TrackerSlot,
}

impl Drop for TrackerClaim<'_> {
    fn drop(&mut self) {
        *self.slot.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl OwnedVm {
    /// `running`, `paused`, `inmigrate`, ... as QEMU says, or `gone`.
    pub fn status(&self) -> String {
        self.qemu
            .qmp
            .execute("query-status", json!({}))
            .ok()
            .and_then(|s| s["status"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "gone".into())
    }

    pub fn phase(&self) -> VmPhase {
        self.record().phase
    }

    fn record(&self) -> MutexGuard<'_, VmRecord> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that the VM is now in `phase`, durably: a restarted agent
    /// decides by it whether the VM may run here.
    pub fn set_phase(&self, phase: VmPhase) -> Result<()> {
        let mut record = self.record();
        record.phase = phase;
        if phase != VmPhase::HandingOver {
            record.handed_to = None;
        }
        self.records.write(&record)
    }

    /// Records, durably, that the VM is being handed over by `migration`.
    pub fn hand_over(&self, migration: HandOverRecord) -> Result<()> {
        let mut record = self.record();
        record.phase = VmPhase::HandingOver;
        record.handed_to = Some(migration);
        self.records.write(&record)
    }

    /// Where the VM was handed over to, if it is being handed over.
    pub fn handed_to(&self) -> Option<HandOverRecord> {
        let record = self.record();
        (record.phase == VmPhase::HandingOver)
            .then(|| record.handed_to.clone())
            .flatten()
    }

    /// Leaves QEMU, its RAM file and the record for the next agent.
    fn leave_running(&self) {
        self.left_running.store(true, Ordering::SeqCst);
        self.qemu.leave_running();
    }

    /// The VM's disks, in QEMU's order, for the migration engine.
    pub fn disks(&self) -> Vec<Arc<TrackedDisk>> {
        self.disk
            .iter()
            .map(|server| Arc::clone(server.disk()))
            .collect()
    }
}

impl Drop for OwnedVm {
    fn drop(&mut self) {
        if self.left_running.load(Ordering::SeqCst) {
            return;
        }
        // QEMU (dropped after this) keeps its mapping; the name goes now.
        let _ = std::fs::remove_file(&self.ram_file);
        let record = self.record();
        if record.phase == VmPhase::Receiving && record.created_image {
            // The partial image of a migration that did not complete.
            if let Some(disk) = &self.disk {
                let _ = std::fs::remove_file(disk.disk().path());
            }
        }
        self.records.remove(&record.name);
    }
}

pub struct VmHost {
    specs: PathBuf,
    state: PathBuf,
    records: StateDir,
    hook_library: PathBuf,
    vms: Mutex<HashMap<String, Arc<OwnedVm>>>,
    /// Migrations in progress, one per VM name.
    pub inflight: InFlight,
}

impl VmHost {
    /// `specs`: where `NAME.toml` specs are; `state`: where sockets and logs
    /// go (kept short: unix socket paths are limited to 108 bytes).
    pub fn new(specs: &Path, state: &Path, hook_library: &Path) -> Result<VmHost> {
        std::fs::create_dir_all(state)
            .with_context(|| format!("creating state directory {}", state.display()))?;
        Ok(VmHost {
            specs: specs.to_owned(),
            state: state.to_owned(),
            records: StateDir::new(state),
            hook_library: hook_library.to_owned(),
            vms: Mutex::default(),
            inflight: InFlight::default(),
        })
    }

    fn vms(&self) -> MutexGuard<'_, HashMap<String, Arc<OwnedVm>>> {
        self.vms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts QEMU for VM `name` from its spec, with its disk served by this
    /// agent; `incoming` waits for a migration instead of booting (and
    /// creates a missing disk image). The VM is not registered yet.
    pub fn launch(&self, name: &str, incoming: bool) -> Result<OwnedVm> {
        if self.vms().contains_key(name) {
            bail!("VM {name} already runs on this host");
        }
        let (spec, spec_text) = VmSpec::load_with_text(&self.specs, name)?;
        let run_dir = self.state.join(name);
        std::fs::create_dir_all(&run_dir)?;
        let ram_file = PathBuf::from("/dev/shm").join(format!(
            "mllm-{name}-{}-{}.ram",
            std::process::id(),
            mllm_qemu::qmp::wall_clock_us()
        ));
        let (disk, created_image) = match &spec.disk {
            Some(disk) => {
                let (image, created) = crate::disk::open_image(name, disk, incoming)?;
                (Some(serve_disk(image, &run_dir)?), created)
            }
            None => (None, false),
        };
        let config = self.qemu_config(name, &spec, incoming, &ram_file, disk.as_ref());
        let qemu = QemuProcess::start(config).with_context(|| format!("starting VM {name}"))?;
        let record = VmRecord {
            name: name.to_owned(),
            pid: qemu.pid(),
            start_ticks: start_ticks(qemu.pid()).context("QEMU exited at once")?,
            ram_file: ram_file.clone(),
            spec: spec_text,
            incoming,
            created_image,
            phase: if incoming {
                VmPhase::Receiving
            } else {
                VmPhase::Owned
            },
            handed_to: None,
        };
        let vm = self.own(qemu, ram_file, disk, &spec, record);
        vm.records.write(&vm.record())?;
        Ok(vm)
    }

    /// VM `name`'s QEMU configuration: the same for a QEMU to start and for
    /// one to adopt, which has its sockets in the same places.
    fn qemu_config(
        &self,
        name: &str,
        spec: &VmSpec,
        incoming: bool,
        ram_file: &Path,
        disk: Option<&DiskServer>,
    ) -> QemuConfig {
        let run_dir = self.state.join(name);
        let attachment = disk.map(|server| DiskAttachment::Nbd {
            socket: server.socket().to_owned(),
            export: DISK_EXPORT.into(),
        });
        let mut config = spec.qemu_config(name, &run_dir, incoming, attachment);
        make_migratable(
            &mut config,
            ram_file,
            &self.hook_library,
            &run_dir.join("hook.sock"),
        );
        config
    }

    fn own(
        &self,
        qemu: QemuProcess,
        ram_file: PathBuf,
        disk: Option<DiskServer>,
        spec: &VmSpec,
        record: VmRecord,
    ) -> OwnedVm {
        OwnedVm {
            qemu,
            ram_file,
            disk,
            tracker: TrackerSlot::default(),
            migration: Mutex::new(None),
            disk_move: spec.disk.as_ref().and_then(|disk| disk.moved_by),
            record: Mutex::new(record),
            records: self.records.clone(),
            left_running: AtomicBool::new(false),
        }
    }

    /// Adopts the VMs a previous agent left running, by their records, and
    /// settles the migrations it left unfinished (see the README,
    /// "Shutdown and restart"); forgets the records of QEMUs that are gone.
    /// Returns the names of the VMs adopted.
    pub fn adopt_recorded(&self) -> Result<Vec<String>> {
        let mut adopted = Vec::new();
        for record in self.records.load_all()? {
            let name = record.name.clone();
            match self.adopt(record) {
                Ok(Some(vm)) => {
                    self.register(&name, vm)?;
                    adopted.push(name);
                }
                Ok(None) => {}
                Err(error) => tracing::error!(vm = %name, "cannot adopt the VM: {error:#}"),
            }
        }
        Ok(adopted)
    }

    fn adopt(&self, record: VmRecord) -> Result<Option<OwnedVm>> {
        let name = record.name.clone();
        if start_ticks(record.pid) != Some(record.start_ticks) {
            tracing::warn!(vm = %name, pid = record.pid, "the VM's QEMU is gone: record removed");
            let _ = std::fs::remove_file(&record.ram_file);
            self.records.remove(&name);
            return Ok(None);
        }
        let spec: VmSpec = toml::from_str(&record.spec).context("the recorded spec")?;
        let disk = match &spec.disk {
            Some(disk) => Some(serve_disk(
                crate::disk::open_image(&name, disk, false)?.0,
                &self.state.join(&name),
            )?),
            None => None,
        };
        let config = self.qemu_config(
            &name,
            &spec,
            record.incoming,
            &record.ram_file,
            disk.as_ref(),
        );
        let qemu = QemuProcess::adopt(config, record.pid)
            .with_context(|| format!("reconnecting to the QEMU of VM {name}"))?;
        let vm = self.own(qemu, record.ram_file.clone(), disk, &spec, record);
        let status = vm.status();
        match vm.phase() {
            VmPhase::Owned => tracing::info!(vm = %name, status, "VM adopted"),
            VmPhase::Receiving if status != "running" => {
                tracing::warn!(
                    vm = %name,
                    status,
                    "an incoming migration was cut short by the agent's stop before the VM ran here: its QEMU is discarded, the source keeps the VM"
                );
                // Dropped: QEMU killed; RAM file, partial image, record removed.
                return Ok(None);
            }
            VmPhase::Receiving => {
                vm.set_phase(VmPhase::Owned)?;
                tracing::warn!(vm = %name, "VM received before the agent stopped: adopted");
            }
            VmPhase::Sending => {
                // Before the hand-over the VM is this host's: the migration
                // paused it at most for its final round.
                if status == "paused" {
                    vm.qemu
                        .qmp
                        .execute("cont", json!({}))
                        .with_context(|| format!("resuming VM {name}"))?;
                }
                vm.set_phase(VmPhase::Owned)?;
                tracing::warn!(
                    vm = %name,
                    status,
                    "an outgoing migration was cut short before the hand-over: the VM runs here"
                );
            }
            VmPhase::HandingOver => tracing::warn!(
                vm = %name,
                status,
                "an outgoing migration stopped at its hand-over: the VM may run at the destination, so it stays paused here; this agent asks the destination to finish its post-copy"
            ),
        }
        Ok(Some(vm))
    }

    /// Leaves every VM running for the next agent, which adopts them.
    /// Returns how many there are.
    pub fn leave_running(&self) -> usize {
        let vms = self.vms();
        for vm in vms.values() {
            vm.leave_running();
        }
        vms.len()
    }

    pub fn owns(&self, name: &str) -> bool {
        self.vms().contains_key(name)
    }

    pub fn register(&self, name: &str, vm: OwnedVm) -> Result<()> {
        let mut vms = self.vms();
        if vms.contains_key(name) {
            bail!("VM {name} already runs on this host");
        }
        vms.insert(name.to_owned(), Arc::new(vm));
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<Arc<OwnedVm>> {
        self.vms()
            .get(name)
            .cloned()
            .with_context(|| format!("this agent owns no VM named {name}"))
    }

    /// Quits VM `name`'s QEMU and forgets it: it runs elsewhere now.
    pub fn release(&self, name: &str) {
        if let Some(vm) = self.vms().remove(name) {
            let _ = vm.qemu.qmp.execute("quit", json!({}));
        }
    }

    pub fn list(&self) -> Vec<VmInfo> {
        let mut infos: Vec<VmInfo> = self
            .vms()
            .iter()
            .map(|(name, vm)| VmInfo {
                name: name.clone(),
                memory_mib: vm.qemu.config.memory_mib,
                status: vm.status(),
                migration: vm
                    .migration
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            })
            .collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        infos
    }
}

/// Serves a VM's disk image to its QEMU on the VM's NBD socket in `run_dir`.
fn serve_disk(image: Arc<TrackedDisk>, run_dir: &Path) -> Result<DiskServer> {
    Ok(DiskServer::start(
        image,
        &run_dir.join(format!("{DISK_EXPORT}.nbd")),
        DISK_EXPORT,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_tracker_user_at_a_time() {
        let slot = TrackerSlot::default();
        let migration = slot.claim("web", TrackerUser::Migration).unwrap();
        let refused = slot
            .claim("web", TrackerUser::TraceRecording)
            .err()
            .unwrap();
        assert_eq!(refused.to_string(), "VM web is busy: it is being migrated");
        drop(migration);
        let recording = slot.claim("web", TrackerUser::TraceRecording).unwrap();
        let refused = slot.claim("web", TrackerUser::Migration).err().unwrap();
        assert!(refused.to_string().contains("trace"), "{refused}");
        drop(recording);
        assert!(slot.claim("web", TrackerUser::Migration).is_ok());
    }
}
