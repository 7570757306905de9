//! The VMs a daemon owns: launched from their specs with shared RAM and the
//! hook, so any of them can be migrated away, and removed (QEMU quit, RAM
//! file deleted) once it runs elsewhere.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{bail, Context, Result};
use mllm_agent::{make_migratable, DiskServer, TrackedDisk};
use mllm_control::{Progress, VmInfo};
use mllm_qemu::{DiskAttachment, QemuProcess};
use serde_json::json;

use crate::spec::VmSpec;

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
        // QEMU (dropped after this) keeps its mapping; the name goes now.
        let _ = std::fs::remove_file(&self.ram_file);
    }
}

pub struct VmHost {
    specs: PathBuf,
    state: PathBuf,
    hook_library: PathBuf,
    vms: Mutex<HashMap<String, Arc<OwnedVm>>>,
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
            hook_library: hook_library.to_owned(),
            vms: Mutex::default(),
        })
    }

    fn vms(&self) -> MutexGuard<'_, HashMap<String, Arc<OwnedVm>>> {
        self.vms.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn spec(&self, name: &str) -> Result<VmSpec> {
        VmSpec::load(&self.specs, name)
    }

    /// Starts QEMU for VM `name` from its spec, with its disk served by this
    /// agent; `incoming` waits for a migration instead of booting (and
    /// creates a missing disk image). The VM is not registered yet.
    pub fn launch(&self, name: &str, incoming: bool) -> Result<OwnedVm> {
        if self.vms().contains_key(name) {
            bail!("VM {name} already runs on this host");
        }
        let spec = self.spec(name)?;
        let run_dir = self.state.join(name);
        std::fs::create_dir_all(&run_dir)?;
        let ram_file = PathBuf::from("/dev/shm").join(format!(
            "mllm-{name}-{}-{}.ram",
            std::process::id(),
            mllm_qemu::qmp::wall_clock_us()
        ));
        let disk = match &spec.disk {
            Some(disk) => Some(DiskServer::start(
                crate::disk::open_image(name, disk, incoming)?,
                &run_dir.join(format!("{DISK_EXPORT}.nbd")),
                DISK_EXPORT,
            )?),
            None => None,
        };
        let attachment = disk.as_ref().map(|server| DiskAttachment::Nbd {
            socket: server.socket().to_owned(),
            export: DISK_EXPORT.into(),
        });
        let mut config = spec.qemu_config(name, &run_dir, incoming, attachment);
        make_migratable(
            &mut config,
            &ram_file,
            &self.hook_library,
            &run_dir.join("hook.sock"),
        );
        let qemu = QemuProcess::start(config).with_context(|| format!("starting VM {name}"))?;
        Ok(OwnedVm {
            qemu,
            ram_file,
            disk,
            tracker: TrackerSlot::default(),
            migration: Mutex::new(None),
        })
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
                status: vm
                    .qemu
                    .qmp
                    .execute("query-status", json!({}))
                    .ok()
                    .and_then(|s| s["status"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "gone".into()),
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
