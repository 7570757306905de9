//! Builds the test guest: Debian's kernel, busybox, and the project's guest
//! programs in an initramfs. Everything is cached by its inputs, so a second
//! `mllm lab setup` is instant and a changed input rebuilds only the image.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::build::{cargo_release, run_command};

/// Kernel modules the guest loads, in dependency order: virtio disk support
/// and ext4 for an optional root disk are modules in Debian's kernel.
const GUEST_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
    "crc16",
    "mbcache",
    "jbd2",
    "crc32c_generic",
    "ext4",
];

/// The serial ports every lab guest has, in order: ttyS0, ttyS1, ttyS2.
pub const SERIAL_PORTS: [&str; 3] = ["console", "heartbeat", "workload"];

/// A built guest: boot it with `-kernel` and `-initrd`.
#[derive(Debug, Clone)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Describes the inputs: Debian package versions and the guest binary's hash.
    pub description: String,
}

#[derive(Debug)]
pub struct ImageBuilder {
    cache: PathBuf,
    workspace: PathBuf,
}

impl ImageBuilder {
    /// `cache` holds downloaded packages and built images; `workspace` is the
    /// mllm source tree, whose `mllm-guest` crate is built into the image.
    pub fn new(cache: &Path, workspace: &Path) -> ImageBuilder {
        ImageBuilder {
            cache: cache.to_owned(),
            workspace: workspace.to_owned(),
        }
    }

    /// Builds (or finds in the cache) the guest image.
    pub fn build(&self) -> Result<GuestImage> {
        std::fs::create_dir_all(&self.cache)
            .with_context(|| format!("cannot create cache directory {}", self.cache.display()))?;
        let kernel_pkg = resolve_kernel_package()?;
        let kernel_tree = self.unpacked_package(&kernel_pkg)?;
        let busybox_tree = self.unpacked_package(&Package::resolve("busybox-static")?)?;
        let guest_binary = self.build_guest_programs()?;
        let guest_hash = blake3::hash(&std::fs::read(&guest_binary)?);

        let description = format!(
            "{} {}, busybox-static, mllm-guest {}",
            kernel_pkg.name,
            kernel_pkg.version,
            &guest_hash.to_hex()[..12]
        );
        let key = blake3::hash(format!("{description}\n{INIT_SCRIPT}").as_bytes());
        let image_dir = self.cache.join("images").join(&key.to_hex()[..16]);
        let image = GuestImage {
            kernel: image_dir.join("vmlinuz"),
            initrd: image_dir.join("initrd.img"),
            description,
        };
        if image.kernel.exists() && image.initrd.exists() {
            tracing::info!(dir = %image_dir.display(), "guest image is cached");
            return Ok(image);
        }

        let staging = image_dir.with_extension("staging");
        let _ = std::fs::remove_dir_all(&staging);
        let root = staging.join("root");
        for dir in ["bin", "dev", "proc", "sys", "tmp", "mnt", "lib/modules"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        copy(&busybox_tree.join("bin/busybox"), &root.join("bin/busybox"))?;
        copy(&guest_binary, &root.join("bin/mllm-guest"))?;
        let module_root = find_dir(&kernel_tree.join("lib/modules"))?;
        for module in GUEST_MODULES {
            let source = find_file(&module_root, &format!("{module}.ko"))?;
            copy(
                &source,
                &root.join("lib/modules").join(format!("{module}.ko")),
            )?;
        }
        std::fs::write(root.join("init"), INIT_SCRIPT)?;
        set_executable(&root.join("init"))?;
        let vmlinuz = find_file(&kernel_tree.join("boot"), "vmlinuz-")?;
        copy(&vmlinuz, &staging.join("vmlinuz"))?;
        pack_initramfs(&root, &staging.join("initrd.img"))?;
        std::fs::remove_dir_all(&root)?;
        let _ = std::fs::remove_dir_all(&image_dir);
        std::fs::rename(&staging, &image_dir)?;
        tracing::info!(dir = %image_dir.display(), %image.description, "guest image built");
        Ok(image)
    }

    fn unpacked_package(&self, package: &Package) -> Result<PathBuf> {
        let dir = self
            .cache
            .join("packages")
            .join(format!("{}_{}", package.name, package.version));
        if dir.join(".unpacked").exists() {
            return Ok(dir);
        }
        let debs = self.cache.join("debs");
        std::fs::create_dir_all(&debs)?;
        let spec = format!("{}={}", package.name, package.version);
        run_command(Command::new("apt-get").arg("download").arg(&spec).current_dir(&debs))
            .with_context(|| format!("downloading Debian package {spec} (is apt configured? run scripts/install-deps.sh)"))?;
        let deb = std::fs::read_dir(&debs)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{}_", package.name)))
            })
            .with_context(|| format!("apt-get download left no .deb for {spec}"))?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        run_command(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
        std::fs::remove_file(&deb)?;
        std::fs::write(dir.join(".unpacked"), "")?;
        Ok(dir)
    }

    /// Builds `mllm-guest` as a static binary: the initramfs has no libc.
    fn build_guest_programs(&self) -> Result<PathBuf> {
        let target_dir = self.workspace.join("target/guest");
        run_command(
            cargo_release(&self.workspace, "mllm-guest", "guest")
                .args(["--target", "x86_64-unknown-linux-gnu"])
                .env("RUSTFLAGS", "-C target-feature=+crt-static")
                // Debug info would quintuple the initramfs.
                .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
                .env("CARGO_PROFILE_RELEASE_STRIP", "true"),
        )
        .context("building the guest programs (mllm-guest) as a static binary")?;
        Ok(target_dir.join("x86_64-unknown-linux-gnu/release/mllm-guest"))
    }
}

/// A Debian binary package at one version.
struct Package {
    name: String,
    version: String,
}

impl Package {
    fn resolve(name: &str) -> Result<Package> {
        let output = run_command(Command::new("apt-cache").args(["policy", name]))?;
        let version = output
            .lines()
            .find_map(|l| l.trim().strip_prefix("Candidate:"))
            .map(str::trim)
            .filter(|v| *v != "(none)")
            .with_context(|| {
                format!("Debian package {name} is unknown to apt; run `apt-get update` (scripts/install-deps.sh does)")
            })?;
        Ok(Package {
            name: name.to_owned(),
            version: version.to_owned(),
        })
    }
}

/// Bookworm's default kernel: the package `linux-image-amd64` depends on.
fn resolve_kernel_package() -> Result<Package> {
    let output = run_command(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    let name = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .filter(|n| n.starts_with("linux-image-"))
        .context("cannot resolve linux-image-amd64 to a kernel package; run `apt-get update`")?;
    Package::resolve(name.trim())
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The single directory inside `parent` (the kernel's `lib/modules/<version>`).
fn find_dir(parent: &Path) -> Result<PathBuf> {
    std::fs::read_dir(parent)
        .with_context(|| format!("reading {}", parent.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.is_dir())
        .with_context(|| format!("no directory in {}", parent.display()))
}

/// Depth-first search for a file whose name equals `name`, or starts with it when it ends in '-'.
fn find_file(dir: &Path, name: &str) -> Result<PathBuf> {
    fn search(dir: &Path, name: &str) -> Option<PathBuf> {
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if let Some(found) = search(&path, name) {
                    return Some(found);
                }
            } else if let Some(file) = path.file_name().and_then(|f| f.to_str()) {
                let prefix_match = name.ends_with('-') && file.starts_with(name);
                if file == name || prefix_match {
                    return Some(path);
                }
            }
        }
        None
    }
    search(dir, name).with_context(|| format!("{name} not found under {}", dir.display()))
}

fn pack_initramfs(root: &Path, out: &Path) -> Result<()> {
    let status = Command::new("sh")
        .arg("-c")
        .arg("find . -print0 | sort -z | cpio --null --quiet -o -H newc | gzip -1 > \"$0\"")
        .arg(out)
        .current_dir(root)
        .status()
        .context("running cpio (install it with scripts/install-deps.sh)")?;
    if !status.success() {
        bail!("packing the initramfs with cpio failed ({status})");
    }
    Ok(())
}

/// PID 1 of the guest. The workload is chosen on the kernel command line:
/// `mllm.workload=memload mllm.args=--size=128M,--write-rate=2000` (commas
/// stand for spaces, which the kernel would split), or
/// `mllm.workload=command mllm.command=<base64>` with `mllm.root=vda` to run
/// a shell command inside the Debian root disk.
const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk crc16 mbcache jbd2 crc32c_generic ext4; do
  insmod /lib/modules/$m.ko 2>/dev/null
done
param() { tr ' ' '\n' </proc/cmdline | sed -n "s/^$1=//p" | tail -n 1; }
workload=$(param mllm.workload)
args=$(param mllm.args | tr ',' ' ')
stty -F /dev/ttyS1 raw -echo 2>/dev/null
stty -F /dev/ttyS2 raw -echo 2>/dev/null
ip link set lo up
if [ "$(param mllm.root)" = vda ]; then
  mount -t ext4 /dev/vda /mnt || echo "mllm-guest: cannot mount the root disk /dev/vda"
  for d in proc sys dev; do mount --bind /$d /mnt/$d; done
  mount -t tmpfs tmp /mnt/tmp
fi
echo "mllm-guest: init up, workload=${workload:-none}"
/bin/mllm-guest heartbeat --out /dev/ttyS1 &
if [ "$workload" = command ]; then
  command=$(param mllm.command | base64 -d)
  /bin/mllm-guest run --out /dev/ttyS2 -- chroot /mnt /bin/sh -c "$command" &
elif [ -n "$workload" ]; then
  /bin/mllm-guest $workload --out /dev/ttyS2 $args &
fi
# PID 1 must never exit: reap children forever.
while true; do wait; sleep 1; done
"#;
