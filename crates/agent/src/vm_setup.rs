//! What a QEMU needs so an mllm agent can migrate it: guest RAM in a shared
//! file both see, and the hook library preloaded so writes can be tracked.

use std::path::{Path, PathBuf};

use mllm_qemu::{QemuConfig, RamBackend};

use crate::error::MigrationError;

/// The variable the hook reads the path of its unix socket from.
pub use mllm_hook_protocol::SOCKET_ENV as HOOK_SOCKET_ENV;
/// Overrides where [`find_hook_library`] looks.
pub const HOOK_LIBRARY_ENV: &str = "MLLM_HOOK_LIBRARY";
const HOOK_LIBRARY_NAME: &str = "libmllm_hook.so";

/// Puts guest RAM in `ram_file` (which QEMU creates) and preloads the hook,
/// listening on `hook_socket`. The VM must run in the foreground (the
/// hook's thread does not survive `-daemonize`).
pub fn make_migratable(
    config: &mut QemuConfig,
    ram_file: &Path,
    hook_library: &Path,
    hook_socket: &Path,
) {
    config.ram = RamBackend::SharedFile(ram_file.to_owned());
    config
        .env
        .retain(|(name, _)| name != "LD_PRELOAD" && name != HOOK_SOCKET_ENV);
    config
        .env
        .push(("LD_PRELOAD".into(), hook_library.display().to_string()));
    config
        .env
        .push((HOOK_SOCKET_ENV.into(), hook_socket.display().to_string()));
}

/// The hook socket a QEMU was started with, if any.
pub fn hook_socket_of(config: &QemuConfig) -> Option<PathBuf> {
    config
        .env
        .iter()
        .find(|(name, _)| name == HOOK_SOCKET_ENV)
        .map(|(_, value)| PathBuf::from(value))
}

/// The guest RAM file of a QEMU set up by [`make_migratable`].
pub fn ram_file_of(config: &QemuConfig) -> Option<&Path> {
    match &config.ram {
        RamBackend::SharedFile(path) => Some(path),
        RamBackend::Anonymous => None,
    }
}

/// Finds `libmllm_hook.so`: `$MLLM_HOOK_LIBRARY`, else next to the running
/// executable or one directory up (cargo puts test binaries in `deps/`).
/// Cargo cannot make a cdylib a dependency, so it is built separately:
/// `cargo build -p mllm-hook` with the same profile.
pub fn find_hook_library() -> Result<PathBuf, MigrationError> {
    if let Some(path) = std::env::var_os(HOOK_LIBRARY_ENV) {
        return Ok(PathBuf::from(path));
    }
    let executable = std::env::current_exe()
        .map_err(|e| MigrationError::io("finding this program's own path", e))?;
    let candidates: Vec<PathBuf> = executable
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(HOOK_LIBRARY_NAME))
        .collect();
    match candidates.iter().find(|path| path.is_file()) {
        Some(path) => Ok(path.clone()),
        None => Err(MigrationError::Invalid(format!(
            "{HOOK_LIBRARY_NAME} not found (looked at {}); build it with \
             `cargo build -p mllm-hook` (same profile) or set {HOOK_LIBRARY_ENV}",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mllm_qemu::{Accelerator, Boot};

    #[test]
    fn a_migratable_vm_has_shared_ram_and_the_hook() {
        let mut config = QemuConfig {
            name: "vm".into(),
            binary: "qemu-system-x86_64".into(),
            accelerator: Accelerator::Tcg,
            memory_mib: 256,
            vcpus: 1,
            ram: RamBackend::Anonymous,
            boot: Boot::Firmware,
            disk: None,
            serial_ports: vec![],
            incoming: false,
            run_dir: "/tmp".into(),
            env: vec![("LD_PRELOAD".into(), "/old.so".into())],
        };
        make_migratable(
            &mut config,
            Path::new("/dev/shm/vm.ram"),
            Path::new("/lib/libmllm_hook.so"),
            Path::new("/run/vm.hook"),
        );
        assert_eq!(ram_file_of(&config), Some(Path::new("/dev/shm/vm.ram")));
        assert_eq!(hook_socket_of(&config), Some(PathBuf::from("/run/vm.hook")));
        let preloads: Vec<_> = config
            .env
            .iter()
            .filter(|(n, _)| n == "LD_PRELOAD")
            .collect();
        assert_eq!(preloads.len(), 1);
        assert_eq!(preloads[0].1, "/lib/libmllm_hook.so");
    }
}
