//! What is being migrated: the guest's RAM and disk, in transfer units, and
//! what each unit costs on the link.

use serde::{Deserialize, Serialize};

use crate::pageset::PageSet;
use crate::synth::mix;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmLayout {
    pub page_size: u32,
    pub memory_pages: u32,
    /// Link bytes of one page, by its content.
    pub page_cost: PageCost,
    /// Pages holding only zeros when the migration starts: each costs a
    /// marker until the guest writes it (a written page is taken to hold data).
    pub zero_pages: PageSet,
    pub disk: Option<DiskLayout>,
    /// QEMU's device state and ROMs, sent while the guest is paused.
    pub device_state_bytes: u64,
}

impl VmLayout {
    /// A guest whose pages are sent uncompressed and none of which is known
    /// to be zero: what can be assumed without measuring.
    pub fn uncompressed(
        page_size: u32,
        memory_pages: u32,
        disk: Option<DiskLayout>,
        device_state_bytes: u64,
    ) -> VmLayout {
        VmLayout {
            page_size,
            memory_pages,
            page_cost: PageCost::uncompressed(page_size),
            zero_pages: PageSet::new(memory_pages),
            disk,
            device_state_bytes,
        }
    }

    /// The guest's RAM size.
    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.page_size) * u64::from(self.memory_pages)
    }

    /// Link bytes to send each of `pages` once, as they are at the start.
    pub fn copy_bytes(&self, pages: &PageSet) -> u64 {
        self.page_cost.of(pages, &self.zero_pages)
    }
}

/// A page's header on the link: mllm's wire sends a page's index and kind in
/// about 4 bytes (QEMU's stream takes 8). A zero page is this header alone.
pub const PAGE_HEADER_BYTES: u32 = 4;

/// What a page costs on the link. Engines that elide zero pages and compress
/// the others make the two differ several hundredfold, so one average size
/// misprices every pass whose mix differs from the migration's (resends are
/// nearly all data pages).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageCost {
    /// A page holding data: its payload, compressed or not, and its header.
    pub data_bytes: u32,
    /// A page of zeros: a marker in place of the payload.
    pub zero_bytes: u32,
}

impl PageCost {
    /// Pages of `page_size` sent as they are, each behind its header.
    pub fn uncompressed(page_size: u32) -> PageCost {
        PageCost {
            data_bytes: page_size + PAGE_HEADER_BYTES,
            zero_bytes: PAGE_HEADER_BYTES,
        }
    }

    /// One page, holding zeros or not.
    pub fn bytes(&self, zero: bool) -> u64 {
        u64::from(if zero {
            self.zero_bytes
        } else {
            self.data_bytes
        })
    }

    /// Each of `pages` once, those in `zero_pages` as markers.
    pub fn of(&self, pages: &PageSet, zero_pages: &PageSet) -> u64 {
        let zero = pages.intersection_count(zero_pages);
        zero * u64::from(self.zero_bytes) + (pages.count() - zero) * u64::from(self.data_bytes)
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
    fn zero_pages_cost_their_marker_until_written() {
        let mut layout = VmLayout::uncompressed(4096, 100, None, 0);
        layout.zero_pages = PageSet::from_items(100, &[1, 2, 3]);
        assert_eq!(layout.copy_bytes(&PageSet::full(100)), 97 * 4100 + 3 * 4);
        assert_eq!(layout.copy_bytes(&PageSet::from_items(100, &[0, 3])), 4104);
        assert_eq!(layout.memory_bytes(), 409_600, "the RAM size, not its cost");
    }

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
