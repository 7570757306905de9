//! A VM as the daemon launches it: a small TOML file per VM, `NAME.toml` in
//! the daemon's VM directory, the same on every host that may run the VM.
//!
//! ```toml
//! memory_mib = 256
//! kernel = "/var/lib/mllm/vmlinuz"
//! initrd = "/var/lib/mllm/initrd.img"
//! cmdline = "console=ttyS0"         # optional
//! vcpus = 1                         # optional
//! serial_ports = ["console"]        # optional: captured to NAME.PORT.log
//! accelerator = "kvm"               # optional, "tcg" by default
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use mllm_qemu::{Accelerator, QemuConfig, RamBackend};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    #[serde(default)]
    pub cmdline: String,
    #[serde(default = "one")]
    pub vcpus: u32,
    #[serde(default = "console_only")]
    pub serial_ports: Vec<String>,
    #[serde(default)]
    pub accelerator: Accelerator,
    #[serde(default = "qemu_binary")]
    pub qemu: PathBuf,
}

fn one() -> u32 {
    1
}

fn console_only() -> Vec<String> {
    vec!["console".into()]
}

fn qemu_binary() -> PathBuf {
    "qemu-system-x86_64".into()
}

/// VM names become file names: letters, digits, `-` and `_` only.
pub fn check_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        bail!("invalid VM name {name:?}: use up to 64 letters, digits, '-' and '_'");
    }
    Ok(())
}

impl VmSpec {
    /// Reads `dir/NAME.toml`.
    pub fn load(dir: &Path, name: &str) -> Result<VmSpec> {
        check_name(name)?;
        let path = dir.join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("no spec for VM {name}: cannot read {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid VM spec {}", path.display()))
    }

    /// The QEMU configuration of VM `name`, without shared RAM or hook yet.
    pub fn qemu_config(&self, name: &str, run_dir: &Path, incoming: bool) -> QemuConfig {
        QemuConfig {
            name: name.to_owned(),
            binary: self.qemu.clone(),
            accelerator: self.accelerator,
            memory_mib: self.memory_mib,
            vcpus: self.vcpus,
            ram: RamBackend::Anonymous,
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            kernel_cmdline: self.cmdline.clone(),
            disk: None,
            serial_ports: self.serial_ports.clone(),
            incoming,
            run_dir: run_dir.to_owned(),
            env: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_spec_gets_defaults() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("web.toml"),
            "memory_mib = 512\nkernel = \"/k\"\ninitrd = \"/i\"\n",
        )
        .unwrap();
        let spec = VmSpec::load(dir.path(), "web").unwrap();
        assert_eq!(spec.memory_mib, 512);
        assert_eq!(spec.vcpus, 1);
        assert_eq!(spec.serial_ports, ["console"]);
        assert_eq!(spec.accelerator, Accelerator::Tcg);
        let config = spec.qemu_config("web", Path::new("/run/mllm/web"), true);
        assert!(config.incoming);
        assert_eq!(config.memory_mib, 512);
    }

    #[test]
    fn names_that_could_escape_the_directory_are_refused() {
        assert!(check_name("../etc/passwd").is_err());
        assert!(check_name("").is_err());
        assert!(check_name("vm-1_a").is_ok());
        let dir = tempfile::tempdir().unwrap();
        let err = VmSpec::load(dir.path(), "missing").unwrap_err();
        assert!(
            format!("{err:#}").contains("no spec for VM missing"),
            "{err:#}"
        );
    }
}
