//! What is being migrated: the guest's RAM and disk, in transfer units.

use serde::{Deserialize, Serialize};

use crate::pageset::PageSet;
use crate::synth::mix;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmLayout {
    pub page_size: u32,
    pub memory_pages: u32,
    pub disk: Option<DiskLayout>,
    /// QEMU's device state and ROMs, sent while the guest is paused.
    pub device_state_bytes: u64,
}

impl VmLayout {
    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.page_size) * u64::from(self.memory_pages)
    }
}

/// The disk image seen in blocks. `allocated` blocks are stored in the image
/// (what a block-level mirror copies); `used` blocks hold live file-system data
/// (a subset: deleted, never-trimmed files are allocated but unused). Blocks
/// outside `allocated` are holes and read as zeros on both sides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiskLayout {
    pub block_size: u32,
    pub allocated: PageSet,
    pub used: PageSet,
}

impl DiskLayout {
    pub fn blocks(&self) -> u32 {
        self.used.universe()
    }

    /// A disk whose allocated and used blocks come in 1 MiB-aligned extents of
    /// 16 blocks, chosen by seed: `used_fraction <= allocated_fraction` of the
    /// extents.
    pub fn synthetic(
        blocks: u32,
        block_size: u32,
        allocated_fraction: f64,
        used_fraction: f64,
        seed: u64,
    ) -> DiskLayout {
        assert!(
            used_fraction <= allocated_fraction,
            "used blocks must be allocated"
        );
        const EXTENT: u32 = 16;
        let mut allocated = PageSet::new(blocks);
        let mut used = PageSet::new(blocks);
        for extent in 0..blocks.div_ceil(EXTENT) {
            let draw = (mix(seed, u64::from(extent)) >> 11) as f64 / (1u64 << 53) as f64;
            let range = extent * EXTENT..((extent + 1) * EXTENT).min(blocks);
            for block in range {
                if draw < allocated_fraction {
                    allocated.insert(block);
                }
                if draw < used_fraction {
                    used.insert(block);
                }
            }
        }
        DiskLayout {
            block_size,
            allocated,
            used,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_disk_has_used_inside_allocated() {
        let disk = DiskLayout::synthetic(16_000, 65536, 0.7, 0.4, 3);
        let (allocated, used) = (disk.allocated.count() as f64, disk.used.count() as f64);
        assert!((allocated / 16_000.0 - 0.7).abs() < 0.05, "{allocated}");
        assert!((used / 16_000.0 - 0.4).abs() < 0.05, "{used}");
        assert_eq!(
            disk.used.intersection_count(&disk.allocated),
            disk.used.count()
        );
    }
}
