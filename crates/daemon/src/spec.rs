//! A VM as the daemon launches it: a small TOML file per VM, `NAME.toml` in
//! the daemon's VM directory, the same on every host that may run the VM
//! except for where its disk image lives.
//!
//! ```toml
//! memory_mib = 256
//! kernel = "/var/lib/mllm/vmlinuz"  # optional: without it the firmware
//! initrd = "/var/lib/mllm/initrd.img" # boots from the disk
//! cmdline = "console=ttyS0"         # optional, with kernel only
//! vcpus = 1                         # optional
//! serial_ports = ["console"]        # optional: captured to NAME.PORT.log
//! accelerator = "kvm"               # optional, "tcg" by default
//!
//! [disk]                            # optional
//! image = "/var/lib/mllm/web.img"   # raw, sparse
//! size = "20 GiB"                   # creates the image for an incoming VM
//! move = "precopy"                  # optional, with `--policy mllm`: how
//!                                   # blocks besides the read workingset
//!                                   # move (precopy, after-switch,
//!                                   # precopy-then-after-switch)
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bytesize::ByteSize;
use mllm_agent::DiskMove;
use mllm_qemu::{Accelerator, Boot, DiskAttachment, QemuConfig, RamBackend};
use serde::Deserialize;

/// A VM spec, checked: it boots one way and has at most one disk.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "SpecFile")]
pub struct VmSpec {
    pub memory_mib: u64,
    /// A kernel to load, or `None`: the firmware boots from the disk.
    pub kernel: Option<KernelBoot>,
    pub disk: Option<DiskSpec>,
    pub vcpus: u32,
    pub serial_ports: Vec<String>,
    pub accelerator: Accelerator,
    pub qemu: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
}

/// The VM's disk: a raw, sparse image on this host, which the daemon serves
/// to QEMU over NBD.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    pub image: PathBuf,
    /// Needed where the image does not exist yet (a destination host): an
    /// incoming VM gets an empty image of this size. Where the image exists,
    /// it must be this size.
    pub size: Option<ByteSize>,
    /// How the MLLM policy moves the blocks besides the disk's read
    /// workingset; `mllm migrate --disk-move` overrides it.
    #[serde(default, rename = "move")]
    pub moved_by: Option<DiskMove>,
}

/// The file as written; [`VmSpec`] is what it means.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    memory_mib: u64,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    cmdline: Option<String>,
    #[serde(default = "one")]
    vcpus: u32,
    #[serde(default = "console_only")]
    serial_ports: Vec<String>,
    #[serde(default)]
    accelerator: Accelerator,
    #[serde(default = "qemu_binary")]
    qemu: PathBuf,
    disk: Option<DiskSpec>,
    disks: Option<Vec<DiskSpec>>,
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

impl TryFrom<SpecFile> for VmSpec {
    type Error = String;

    fn try_from(file: SpecFile) -> Result<VmSpec, String> {
        let disk = match (file.disk, file.disks) {
            (Some(_), Some(_)) => {
                return Err("give the disk as a [disk] table or as disks = [...], not both".into())
            }
            (Some(disk), None) => Some(disk),
            (None, Some(mut disks)) => match disks.len() {
                0 | 1 => disks.pop(),
                n => {
                    return Err(format!(
                        "{n} disks: the migration engine moves at most one disk per VM today"
                    ))
                }
            },
            (None, None) => None,
        };
        if let Some(DiskSpec {
            image,
            size: Some(size),
            ..
        }) = &disk
        {
            let bytes = size.as_u64();
            if bytes == 0 || bytes % mllm_agent::BLOCK_SIZE as u64 != 0 {
                return Err(format!(
                    "disk {}: size {bytes} bytes is not a positive multiple of the {}-byte block",
                    image.display(),
                    mllm_agent::BLOCK_SIZE
                ));
            }
        }
        let kernel = match (file.kernel, file.initrd, file.cmdline) {
            (Some(kernel), initrd, cmdline) => Some(KernelBoot {
                kernel,
                initrd,
                cmdline: cmdline.unwrap_or_default(),
            }),
            (None, None, None) => None,
            (None, _, _) => {
                return Err(
                    "initrd and cmdline need a kernel (without one, the firmware boots \
                            the VM from its disk)"
                        .into(),
                )
            }
        };
        if kernel.is_none() && disk.is_none() {
            return Err(
                "nothing to boot: name a kernel, or a [disk] for the firmware to \
                        boot from"
                    .into(),
            );
        }
        Ok(VmSpec {
            memory_mib: file.memory_mib,
            kernel,
            disk,
            vcpus: file.vcpus,
            serial_ports: file.serial_ports,
            accelerator: file.accelerator,
            qemu: file.qemu,
        })
    }
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
        Ok(VmSpec::load_with_text(dir, name)?.0)
    }

    /// The spec of VM `name` and its text, which a VM's record keeps.
    pub fn load_with_text(dir: &Path, name: &str) -> Result<(VmSpec, String)> {
        check_name(name)?;
        let path = dir.join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("no spec for VM {name}: cannot read {}", path.display()))?;
        let spec =
            toml::from_str(&text).with_context(|| format!("invalid VM spec {}", path.display()))?;
        Ok((spec, text))
    }

    /// The QEMU configuration of VM `name`, without shared RAM or hook yet.
    /// `disk` is where the daemon serves the spec's disk, if it has one.
    pub fn qemu_config(
        &self,
        name: &str,
        run_dir: &Path,
        incoming: bool,
        disk: Option<DiskAttachment>,
    ) -> QemuConfig {
        QemuConfig {
            name: name.to_owned(),
            binary: self.qemu.clone(),
            accelerator: self.accelerator,
            memory_mib: self.memory_mib,
            vcpus: self.vcpus,
            ram: RamBackend::Anonymous,
            boot: match &self.kernel {
                Some(boot) => Boot::Kernel {
                    kernel: boot.kernel.clone(),
                    initrd: boot.initrd.clone(),
                    cmdline: boot.cmdline.clone(),
                },
                None => Boot::Firmware,
            },
            disk,
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

    fn parse(text: &str) -> Result<VmSpec> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("web.toml"), text).unwrap();
        VmSpec::load(dir.path(), "web")
    }

    fn refusal(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn a_minimal_spec_gets_defaults() {
        let spec = parse("memory_mib = 512\nkernel = \"/k\"\ninitrd = \"/i\"\n").unwrap();
        assert_eq!(spec.memory_mib, 512);
        assert_eq!(spec.vcpus, 1);
        assert_eq!(spec.serial_ports, ["console"]);
        assert_eq!(spec.accelerator, Accelerator::Tcg);
        assert_eq!(spec.disk, None);
        let config = spec.qemu_config("web", Path::new("/run/mllm/web"), true, None);
        assert!(config.incoming);
        assert_eq!(config.memory_mib, 512);
        let args = config.args();
        assert!(args.windows(2).any(|w| w == ["-kernel", "/k"]), "{args:?}");
        assert!(args.windows(2).any(|w| w == ["-initrd", "/i"]), "{args:?}");
    }

    #[test]
    fn without_a_kernel_the_firmware_boots_from_the_disk() {
        let spec = parse("memory_mib = 512\n[disk]\nimage = \"/img/web.raw\"\nsize = \"64 MiB\"\n")
            .unwrap();
        assert_eq!(
            spec.disk,
            Some(DiskSpec {
                image: "/img/web.raw".into(),
                size: Some(ByteSize::mib(64)),
                moved_by: None,
            })
        );
        let served = DiskAttachment::Nbd {
            socket: "/run/mllm/web/disk0.nbd".into(),
            export: "disk0".into(),
        };
        let config = spec.qemu_config("web", Path::new("/run/mllm/web"), false, Some(served));
        let args = config.args();
        assert!(!args.iter().any(|a| a == "-kernel"), "{args:?}");
        assert!(
            args.iter()
                .any(|a| a.starts_with("virtio-blk-pci,") && a.ends_with(",bootindex=0")),
            "{args:?}"
        );
        assert!(
            args.iter().any(|a| a.contains(
                "driver=nbd,server.type=unix,server.path=/run/mllm/web/disk0.nbd,export=disk0"
            )),
            "{args:?}"
        );
    }

    #[test]
    fn a_disk_names_how_the_mllm_policy_moves_it() {
        let disk = |line: &str| {
            parse(&format!(
                "memory_mib = 512\nkernel = \"/k\"\n[disk]\nimage = \"/a.raw\"\n{line}\n"
            ))
        };
        let spec = disk("move = \"precopy-then-after-switch\"").unwrap();
        assert_eq!(
            spec.disk.and_then(|d| d.moved_by),
            Some(DiskMove::PrecopyThenAfterSwitch)
        );
        let refused = format!("{:#}", disk("move = \"later\"").unwrap_err());
        assert!(refused.contains("after-switch"), "{refused}");
    }

    #[test]
    fn one_disk_as_a_list_is_the_disk() {
        let spec =
            parse("memory_mib = 512\nkernel = \"/k\"\ndisks = [{ image = \"/a.raw\" }]\n").unwrap();
        assert_eq!(spec.disk.map(|d| d.image), Some(PathBuf::from("/a.raw")));
    }

    #[test]
    fn bad_specs_are_refused_with_their_cause() {
        let two = refusal(
            "memory_mib = 512\nkernel = \"/k\"\n\
             disks = [{ image = \"/a.raw\" }, { image = \"/b.raw\" }]\n",
        );
        assert!(
            two.contains("2 disks") && two.contains("at most one disk per VM"),
            "{two}"
        );
        let both = refusal(
            "memory_mib = 512\nkernel = \"/k\"\ndisks = [{ image = \"/a.raw\" }]\n\
             [disk]\nimage = \"/b.raw\"\n",
        );
        assert!(both.contains("not both"), "{both}");
        let unknown = refusal("memory_mib = 512\nkernel = \"/k\"\nkernal = \"/k\"\n");
        assert!(unknown.contains("unknown field `kernal`"), "{unknown}");
        let unknown_in_disk =
            refusal("memory_mib = 512\n[disk]\nimage = \"/a.raw\"\npolicy = \"mllm\"\n");
        assert!(
            unknown_in_disk.contains("unknown field `policy`"),
            "{unknown_in_disk}"
        );
        let nothing = refusal("memory_mib = 512\n");
        assert!(nothing.contains("nothing to boot"), "{nothing}");
        let initrd_alone = refusal("memory_mib = 512\ninitrd = \"/i\"\n");
        assert!(initrd_alone.contains("need a kernel"), "{initrd_alone}");
        let odd_size = refusal("memory_mib = 512\n[disk]\nimage = \"/a.raw\"\nsize = 1000\n");
        assert!(
            odd_size.contains("1000 bytes is not a positive multiple"),
            "{odd_size}"
        );
        for error in [two, both, unknown, nothing, odd_size] {
            assert!(error.contains("invalid VM spec"), "{error}");
        }
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
