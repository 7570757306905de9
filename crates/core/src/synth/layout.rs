//! Where the hot items of a synthetic workload live.
//!
//! Real guests keep hot data in a few heap regions scattered over RAM (or a few
//! extents scattered over a disk), not at the start of the address space. A
//! [`ScatteredLayout`] maps popularity ranks to items: rank `r` lands in region
//! `perm[r / REGION]`, at a scrambled offset inside it, so hot ranks cluster in
//! few regions (which the hierarchical estimator can exploit) and those regions
//! are spread out.

use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Items per region: 2 MiB of 4 KiB pages.
pub const REGION_ITEMS: u32 = 512;
/// Odd, hence a bijection on offsets modulo the (power of two) region size.
const OFFSET_SCRAMBLE: u32 = 167;

#[derive(Debug)]
pub struct ScatteredLayout {
    universe: u32,
    region_order: Vec<u32>,
}

impl ScatteredLayout {
    pub fn new(universe: u32, seed: u64) -> Self {
        let full_regions = universe / REGION_ITEMS;
        let mut region_order: Vec<u32> = (0..full_regions).collect();
        region_order.shuffle(&mut rand::rngs::SmallRng::seed_from_u64(seed));
        ScatteredLayout {
            universe,
            region_order,
        }
    }

    /// The item holding popularity rank `rank` (0 = hottest); a bijection on
    /// `0..universe`. Ranks past the last full region map to themselves.
    pub fn item(&self, rank: u32) -> u32 {
        debug_assert!(rank < self.universe);
        let region = (rank / REGION_ITEMS) as usize;
        match self.region_order.get(region) {
            Some(&target) => {
                target * REGION_ITEMS + (rank % REGION_ITEMS * OFFSET_SCRAMBLE) % REGION_ITEMS
            }
            None => rank,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_a_bijection() {
        for universe in [100, 512, 5000] {
            let layout = ScatteredLayout::new(universe, 9);
            let mut items: Vec<u32> = (0..universe).map(|r| layout.item(r)).collect();
            items.sort_unstable();
            assert_eq!(items, (0..universe).collect::<Vec<_>>());
        }
    }

    #[test]
    fn hot_ranks_share_a_region() {
        let layout = ScatteredLayout::new(1 << 16, 3);
        let region = layout.item(0) / REGION_ITEMS;
        assert!((0..REGION_ITEMS).all(|r| layout.item(r) / REGION_ITEMS == region));
    }
}
