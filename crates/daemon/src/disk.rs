//! A VM's disk image on this host, made ready for the agent to serve: a VM
//! booted here needs its image; an incoming VM gets an empty one when there
//! is none yet, which the migration fills.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use mllm_agent::TrackedDisk;

use crate::spec::DiskSpec;

/// Opens VM `vm`'s disk image, creating it (sparse, the spec's size) for an
/// `incoming` VM when it does not exist; says whether it created it.
pub fn open_image(vm: &str, spec: &DiskSpec, incoming: bool) -> Result<(Arc<TrackedDisk>, bool)> {
    let path = &spec.image;
    let exists = path
        .try_exists()
        .with_context(|| format!("looking for disk image {} of VM {vm}", path.display()))?;
    if !exists {
        let Some(size) = spec.size.filter(|_| incoming) else {
            bail!(
                "disk image {} of VM {vm} does not exist: {}",
                path.display(),
                if incoming {
                    "give the disk a size in the spec, and this host creates it empty"
                } else {
                    "a VM booted here needs its image (only an incoming VM gets a new one)"
                }
            );
        };
        create_empty(path, size.as_u64())
            .with_context(|| format!("creating disk image {} of VM {vm}", path.display()))?;
        tracing::info!(vm, image = %path.display(), bytes = size.as_u64(), "empty disk image created");
    }
    let created = !exists;
    let disk = TrackedDisk::open(path).with_context(|| format!("disk of VM {vm}"))?;
    if let Some(size) = spec.size {
        if disk.size() != size.as_u64() {
            bail!(
                "disk image {} of VM {vm} is {} bytes, but its spec says size = {} ({} bytes)",
                path.display(),
                disk.size(),
                size,
                size.as_u64()
            );
        }
    }
    Ok((disk, created))
}

/// A new file of `size` bytes, all holes. Never replaces a file: another
/// process may have created one since the check.
fn create_empty(path: &std::path::Path, size: u64) -> std::io::Result<()> {
    let file = match OpenOptions::new().write(true).create_new(true).open(path) {
        Err(error) if error.kind() == ErrorKind::AlreadyExists => return Ok(()),
        other => other?,
    };
    file.set_len(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytesize::ByteSize;

    fn spec(dir: &tempfile::TempDir, size: Option<u64>) -> DiskSpec {
        DiskSpec {
            image: dir.path().join("web.raw"),
            size: size.map(ByteSize::b),
            moved_by: None,
        }
    }

    #[test]
    fn an_incoming_vm_gets_an_empty_sparse_image_of_the_spec_size() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(&dir, Some(64 << 20));
        let (disk, created) = open_image("web", &spec, true).unwrap();
        assert!(created);
        assert_eq!(disk.size(), 64 << 20);
        assert_eq!(disk.used_blocks().unwrap().count(), 0);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(&spec.image).unwrap().blocks(),
            0,
            "not sparse"
        );
    }

    #[test]
    fn missing_or_mismatched_images_are_refused_with_their_cause() {
        let dir = tempfile::tempdir().unwrap();
        let error = format!(
            "{:#}",
            open_image("web", &spec(&dir, Some(4096)), false).unwrap_err()
        );
        assert!(
            error.contains("web.raw of VM web does not exist")
                && error.contains("a VM booted here needs its image"),
            "{error}"
        );
        let error = format!(
            "{:#}",
            open_image("web", &spec(&dir, None), true).unwrap_err()
        );
        assert!(error.contains("give the disk a size"), "{error}");

        std::fs::File::create(dir.path().join("web.raw"))
            .unwrap()
            .set_len(8192)
            .unwrap();
        let error = format!(
            "{:#}",
            open_image("web", &spec(&dir, Some(4096)), false).unwrap_err()
        );
        assert!(
            error.contains("is 8192 bytes, but its spec says size = "),
            "{error}"
        );
        assert_eq!(
            open_image("web", &spec(&dir, None), false)
                .unwrap()
                .0
                .size(),
            8192
        );
    }
}
