//! Starting the write tracker on a VM the agent runs: find its guest RAM in
//! QEMU's address space and arm the hook preloaded into QEMU.

use std::path::Path;

use mllm_qemu::QemuProcess;
use mllm_tracker::{detect, find_ram_mapping, WriteTracker};

use crate::error::MigrationError;
use crate::vm_setup::hook_socket_of;

/// Tracks the guest's writes from now on. One tracker per VM at a time: the
/// hook cannot arm guest RAM again while an earlier tracker still holds it.
pub(crate) fn start_tracking(
    vm: &QemuProcess,
    ram_file: &Path,
) -> Result<Box<dyn WriteTracker>, MigrationError> {
    let pid = vm.pid().cast_signed();
    let mapping = find_ram_mapping(pid, ram_file)?;
    let hook_socket = hook_socket_of(&vm.config);
    Ok(detect(pid, mapping, hook_socket.as_deref())?)
}
