//! Raw, sparse guest disk images: the source's holds `used` bytes of data
//! from the start of the disk, the rest is never written (holes).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use std::process::Command;

use anyhow::{ensure, Context, Result};

use crate::scenario::{DiskContent, DiskSpec};
use crate::{paths, rootfs};

pub fn create_empty_image(path: &Path, size: u64) -> Result<PathBuf> {
    let file =
        File::create(path).with_context(|| format!("creating disk image {}", path.display()))?;
    file.set_len(size)?;
    Ok(path.to_owned())
}

/// The source's disk: generated data or a copy of the Debian root disk.
pub fn create_source_image(path: &Path, spec: &DiskSpec) -> Result<PathBuf> {
    match (spec.content, spec.used) {
        (DiskContent::Debian, _) => copy_root_disk(path, spec.size.as_u64()),
        (DiskContent::Synthetic, used) => {
            fill_synthetic(path, spec.size.as_u64(), used.map_or(0, |u| u.as_u64()))
        }
    }
}

fn copy_root_disk(path: &Path, size: u64) -> Result<PathBuf> {
    let root = rootfs::build_root_disk(&paths::cache_dir())?;
    ensure!(
        size >= root.bytes,
        "vm.disk.size = {} is smaller than the Debian root disk ({} bytes)",
        size,
        root.bytes
    );
    let status = Command::new("cp")
        .arg("--sparse=always")
        .arg(&root.image)
        .arg(path)
        .status()
        .context("cannot run cp")?;
    ensure!(
        status.success(),
        "copying the root disk to {} failed",
        path.display()
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(size)?;
    Ok(path.to_owned())
}

/// Half of every block is pseudo-random, half zero, so compression has an
/// honest, moderate effect on the disk copy.
fn fill_synthetic(path: &Path, size: u64, used: u64) -> Result<PathBuf> {
    create_empty_image(path, size)?;
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    let mut block = vec![0u8; 1 << 20];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut remaining = used;
    while remaining > 0 {
        for chunk in block.chunks_mut(4096) {
            for byte in &mut chunk[..2048] {
                // xorshift: fast and deterministic; quality is irrelevant here.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *byte = state.to_le_bytes()[0];
            }
        }
        let n = usize::try_from(remaining).map_or(block.len(), |r| r.min(block.len()));
        file.write_all(&block[..n])
            .with_context(|| format!("filling disk image {}", path.display()))?;
        remaining -= n as u64;
    }
    file.sync_all()?;
    Ok(path.to_owned())
}
