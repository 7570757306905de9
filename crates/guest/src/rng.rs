//! A small, fast pseudo-random generator (SplitMix64).
//!
//! Written here rather than taken from `rand` because page contents are
//! regenerated from (seed, index, version) to verify them: the stream must
//! never change with a dependency's version, and it must be cheap under TCG.

/// SplitMix64 (Steele, Lea, Flood 2014): one add and a bijective mix per output.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The SplitMix64 output function: a bijection on u64 with good avalanche.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// A generator for one (seed, index, version) triple; distinct triples give
    /// unrelated streams, so every page version has its own content.
    pub fn for_item(seed: u64, index: u64, version: u64) -> Self {
        SplitMix64::new(mix64(mix64(seed ^ mix64(index)) ^ version))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix64(self.state)
    }

    /// Uniform in [0, 1), from the top 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, n) by multiply-shift (Lemire); the bias is below 2^-32
    /// for any n this program uses, far under what a workload can notice.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_splitmix64_outputs() {
        // First outputs for seed 1234567 from the reference C implementation.
        let mut rng = SplitMix64::new(1234567);
        assert_eq!(rng.next_u64(), 6457827717110365317);
        assert_eq!(rng.next_u64(), 3203168211198807973);
        assert_eq!(rng.next_u64(), 9817491932198370423);
    }

    #[test]
    fn item_streams_are_distinct_and_reproducible() {
        let a = SplitMix64::for_item(1, 2, 3).next_u64();
        assert_eq!(a, SplitMix64::for_item(1, 2, 3).next_u64());
        assert_ne!(a, SplitMix64::for_item(1, 2, 4).next_u64());
        assert_ne!(a, SplitMix64::for_item(1, 3, 3).next_u64());
        assert_ne!(a, SplitMix64::for_item(2, 2, 3).next_u64());
        assert_ne!(
            SplitMix64::for_item(0, 1, 0).next_u64(),
            SplitMix64::for_item(0, 0, 1).next_u64()
        );
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = SplitMix64::new(9);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            let v = usize::try_from(rng.below(10)).unwrap();
            seen[v] += 1;
        }
        for count in seen {
            assert!((850..1150).contains(&count), "count {count}");
        }
    }

    #[test]
    fn next_f64_is_in_unit_interval_with_mean_one_half() {
        let mut rng = SplitMix64::new(5);
        let mut sum = 0.0;
        for _ in 0..10_000 {
            let x = rng.next_f64();
            assert!((0.0..1.0).contains(&x));
            sum += x;
        }
        assert!((sum / 10_000.0 - 0.5).abs() < 0.02);
    }
}
