//! An optional Debian root disk carrying real applications, so a scenario can
//! migrate a guest running redis, fio, sqlite or stress-ng instead of the
//! project's synthetic workloads. Built once with debootstrap, cached by its
//! inputs, and copied (sparse) into each VM's disk.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
const PACKAGES: &[&str] = &["redis-server", "redis-tools", "fio", "sqlite3", "stress-ng"];

/// A raw ext4 image holding a minimal Debian with the applications above.
#[derive(Debug, Clone)]
pub struct RootDisk {
    pub image: PathBuf,
    pub bytes: u64,
}

pub fn build_root_disk(cache: &Path) -> Result<RootDisk> {
    let dir = cached_dir(cache);
    let image = dir.join("rootfs.img");
    if !image.exists() {
        build(&dir, &image)?;
    }
    RootDisk::at(image)
}

/// The root disk `mllm lab setup --rootfs` built, without building it:
/// for measurements that would rather stop than spend minutes on it.
pub fn built_root_disk(cache: &Path) -> Result<RootDisk> {
    let image = cached_dir(cache).join("rootfs.img");
    if !image.exists() {
        bail!(
            "the Debian root disk is not built ({} is missing): run `mllm lab setup --rootfs` \
             (debootstrap, about a minute), or set MLLM_LAB_CACHE to a cache that holds it",
            image.display()
        );
    }
    RootDisk::at(image)
}

/// Where the root disk of the current inputs is cached.
fn cached_dir(cache: &Path) -> PathBuf {
    let inputs = format!("{SUITE} {MIRROR} {}", PACKAGES.join(","));
    let key = blake3::hash(inputs.as_bytes()).to_hex();
    cache.join("rootfs").join(&key[..16])
}

impl RootDisk {
    fn at(image: PathBuf) -> Result<RootDisk> {
        let bytes = std::fs::metadata(&image)
            .with_context(|| format!("cannot read the root disk {}", image.display()))?
            .len();
        Ok(RootDisk { image, bytes })
    }
}

fn build(dir: &Path, image: &Path) -> Result<()> {
    let staging = dir.with_extension("staging");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    let tree = staging.join("tree");
    eprintln!("mllm lab: building the Debian root disk with debootstrap (about a minute) ...");
    let status = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={}", PACKAGES.join(",")),
        ])
        .arg(SUITE)
        .arg(&tree)
        .arg(MIRROR)
        .status()
        .context("cannot run debootstrap: install it with scripts/install-deps.sh")?;
    if !status.success() {
        bail!(
            "debootstrap failed ({status}); see its log in {}/debootstrap/",
            tree.display()
        );
    }
    let used = directory_bytes(&tree)?;
    // Room for the applications' data (redis dumps, fio files) and ext4's own metadata.
    let size_mib = (used + used / 3) / (1 << 20) + 256;
    let staged_image = staging.join("rootfs.img");
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "mllm-root", "-d"])
        .arg(&tree)
        .arg(&staged_image)
        .arg(format!("{size_mib}M"))
        .status()
        .context("cannot run mkfs.ext4: install e2fsprogs with scripts/install-deps.sh")?;
    if !status.success() {
        bail!("mkfs.ext4 failed ({status}) while building the root disk");
    }
    std::fs::remove_dir_all(&tree)?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&staging, dir)?;
    debug_assert!(image.exists());
    Ok(())
}

fn directory_bytes(tree: &Path) -> Result<u64> {
    let output = Command::new("du").args(["-sb"]).arg(tree).output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("cannot measure {} with du", tree.display()))
}
