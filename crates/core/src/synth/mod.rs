//! Synthetic access patterns, deterministic in a seed: the same seed and
//! interval number always give the same set, so a simulator can replay interval
//! `i` of a workload without generating the ones before it.
//!
//! Sizes and rates are fractions of the item count, so one workload description
//! fits guests of any size.

mod disk;
mod layout;

pub use disk::{DiskWorkload, DiskWorkloadSpec};
pub use layout::{ScatteredLayout, REGION_ITEMS};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde::{Deserialize, Serialize};

use crate::convert::{saturating_u32, saturating_u64};
use crate::pageset::PageSet;
use crate::trace::{MemoryTrace, MemoryTraceHeader, WriteInterval};

/// One access pattern over items `0..n` (pages or blocks).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "class", rename_all = "snake_case", deny_unknown_fields)]
pub enum WorkloadSpec {
    /// `rate * n` draws per interval, every item equally likely.
    Uniform { rate: f64 },
    /// `rate * n` draws per interval from a Zipf law of the given exponent over
    /// popularity ranks laid out by [`ScatteredLayout`].
    Zipf { exponent: f64, rate: f64 },
    /// A contiguous hot set of `hot * n` items, each accessed with
    /// `hot_probability` per interval, that jumps elsewhere every
    /// `phase_intervals`; plus `background * n` uniform draws.
    Phases {
        hot: f64,
        hot_probability: f64,
        phase_intervals: u32,
        background: f64,
    },
    /// A cursor sweeping a ring buffer of `ring * n` items, covering `speed` of
    /// the ring per interval (a log or a copy loop); plus uniform background.
    Scan {
        ring: f64,
        speed: f64,
        background: f64,
    },
    /// A stationary hot set and a warm set (ranks laid out by
    /// [`ScatteredLayout`]), each item accessed with its set's probability per
    /// interval; plus uniform background.
    HotSet {
        hot: f64,
        hot_probability: f64,
        warm: f64,
        warm_probability: f64,
        background: f64,
    },
}

/// The synthetic classes every estimator is judged on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadClass {
    Uniform,
    Zipf,
    Phases,
    Scan,
    HotSet,
}

impl WorkloadClass {
    pub const ALL: [WorkloadClass; 5] = [
        WorkloadClass::Uniform,
        WorkloadClass::Zipf,
        WorkloadClass::Phases,
        WorkloadClass::Scan,
        WorkloadClass::HotSet,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WorkloadClass::Uniform => "uniform",
            WorkloadClass::Zipf => "zipf",
            WorkloadClass::Phases => "phases",
            WorkloadClass::Scan => "scan",
            WorkloadClass::HotSet => "hotset",
        }
    }

    pub fn from_name(name: &str) -> Option<WorkloadClass> {
        WorkloadClass::ALL
            .into_iter()
            .find(|class| class.name() == name)
    }

    /// The reference write pattern of the class, for 1-second intervals.
    pub fn default_spec(self) -> WorkloadSpec {
        match self {
            WorkloadClass::Uniform => WorkloadSpec::Uniform { rate: 0.005 },
            WorkloadClass::Zipf => WorkloadSpec::Zipf {
                exponent: 1.0,
                rate: 0.01,
            },
            WorkloadClass::Phases => WorkloadSpec::Phases {
                hot: 0.03,
                hot_probability: 0.5,
                phase_intervals: 20,
                background: 0.001,
            },
            WorkloadClass::Scan => WorkloadSpec::Scan {
                ring: 0.1,
                speed: 0.05,
                background: 0.001,
            },
            // The write-heavy hot set of the reference comparison: 6% of RAM
            // written at 60% per second, 12% at 5%.
            WorkloadClass::HotSet => WorkloadSpec::HotSet {
                hot: 0.06,
                hot_probability: 0.6,
                warm: 0.12,
                warm_probability: 0.05,
                background: 0.0005,
            },
        }
    }
}

/// A [`WorkloadSpec`] bound to a number of items and a seed.
#[derive(Debug)]
pub struct Workload {
    spec: WorkloadSpec,
    items: u32,
    seed: u64,
    layout: ScatteredLayout,
}

impl Workload {
    pub fn new(spec: WorkloadSpec, items: u32, seed: u64) -> Self {
        assert!(items > 0, "a workload needs at least one item");
        let layout = ScatteredLayout::new(items, mix(seed, u64::MAX));
        Workload {
            spec,
            items,
            seed,
            layout,
        }
    }

    pub fn items(&self) -> u32 {
        self.items
    }

    /// The items accessed in interval `index`: increasing, without duplicates.
    pub fn accesses(&self, index: u64) -> Vec<u32> {
        let mut rng = SmallRng::seed_from_u64(mix(self.seed, index));
        let n = self.items;
        let mut items = Vec::new();
        match self.spec {
            WorkloadSpec::Uniform { rate } => self.uniform(&mut rng, rate, &mut items),
            WorkloadSpec::Zipf { exponent, rate } => {
                let zipf = Zipf::new(u64::from(n), exponent).expect("Zipf exponent must be > 0");
                let draws = fraction_of(rate, n);
                items.extend((0..draws).map(|_| {
                    let rank = saturating_u32(zipf.sample(&mut rng)).clamp(1, n) - 1;
                    self.layout.item(rank)
                }));
            }
            WorkloadSpec::Phases {
                hot,
                hot_probability,
                phase_intervals,
                background,
            } => {
                let hot_len = fraction_of(hot, n).max(1);
                let phase = index / u64::from(phase_intervals.max(1));
                let start = remainder(mix(self.seed ^ 0x9e37, phase), n - hot_len + 1);
                bernoulli_run(&mut rng, hot_probability, hot_len, |i| {
                    items.push(start + i)
                });
                self.uniform(&mut rng, background, &mut items);
            }
            WorkloadSpec::Scan {
                ring,
                speed,
                background,
            } => {
                let ring_len = fraction_of(ring, n).max(1);
                let ring_start = remainder(mix(self.seed ^ 0x5ca7, 0), n - ring_len + 1);
                let step = fraction_of(speed, ring_len).max(1);
                let cursor = remainder(index * u64::from(step), ring_len);
                items.extend((0..step).map(|i| ring_start + (cursor + i) % ring_len));
                self.uniform(&mut rng, background, &mut items);
            }
            WorkloadSpec::HotSet {
                hot,
                hot_probability,
                warm,
                warm_probability,
                background,
            } => {
                let hot_len = fraction_of(hot, n);
                let warm_len = fraction_of(warm, n).min(n - hot_len);
                bernoulli_run(&mut rng, hot_probability, hot_len, |rank| {
                    items.push(self.layout.item(rank))
                });
                bernoulli_run(&mut rng, warm_probability, warm_len, |rank| {
                    items.push(self.layout.item(hot_len + rank))
                });
                self.uniform(&mut rng, background, &mut items);
            }
        }
        sorted_unique(items, n)
    }

    fn uniform(&self, rng: &mut SmallRng, rate: f64, out: &mut Vec<u32>) {
        let draws = fraction_of(rate, self.items);
        out.extend((0..draws).map(|_| rng.gen_range(0..self.items)));
    }
}

/// A synthetic memory write trace generator.
#[derive(Debug)]
pub struct MemoryWorkload {
    pub header: MemoryTraceHeader,
    pub interval_us: u64,
    workload: Workload,
}

impl MemoryWorkload {
    pub fn new(spec: WorkloadSpec, header: MemoryTraceHeader, interval_us: u64, seed: u64) -> Self {
        MemoryWorkload {
            header,
            interval_us,
            workload: Workload::new(spec, header.page_count, seed),
        }
    }

    pub fn interval(&self, index: u64) -> WriteInterval {
        WriteInterval::new(self.interval_us, self.workload.accesses(index))
    }

    /// The first `count` intervals as a trace.
    pub fn trace(&self, count: u64) -> MemoryTrace {
        MemoryTrace {
            header: self.header,
            intervals: (0..count).map(|i| self.interval(i)).collect(),
        }
    }
}

/// `fraction * n`, rounded, as an item count.
fn fraction_of(fraction: f64, n: u32) -> u32 {
    saturating_u32((fraction.clamp(0.0, 1.0) * f64::from(n)).round())
}

/// `x % m`, which is below `m` and so a `u32`.
fn remainder(x: u64, m: u32) -> u32 {
    u32::try_from(x % u64::from(m)).expect("a remainder is below its u32 divisor")
}

/// `items` sorted and de-duplicated; through a bitset when they are many
/// compared with the universe (a hot set rewritten every interval), which is
/// linear where sorting is not.
fn sorted_unique(mut items: Vec<u32>, universe: u32) -> Vec<u32> {
    if items.len() as u64 * 64 > u64::from(universe) {
        let set = PageSet::from_items(universe, &items);
        items.clear();
        items.extend(set.iter());
    } else {
        items.sort_unstable();
        items.dedup();
    }
    items
}

/// Calls `hit(i)` for each `i < len` independently with probability `p`:
/// a coin per item when hits are common, otherwise jumping over the misses
/// with geometric gaps (cost proportional to the hits).
fn bernoulli_run(rng: &mut SmallRng, p: f64, len: u32, mut hit: impl FnMut(u32)) {
    if p <= 0.0 || len == 0 {
        return;
    }
    if p >= 1.0 {
        (0..len).for_each(hit);
        return;
    }
    if p > 0.25 {
        let threshold = saturating_u64(p * u64::MAX as f64);
        (0..len)
            .filter(|_| rng.gen::<u64>() < threshold)
            .for_each(hit);
        return;
    }
    let log_miss = (1.0 - p).ln();
    let mut i: u64 = 0;
    loop {
        let u: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
        i += saturating_u64((u.ln() / log_miss).floor());
        if i >= u64::from(len) {
            return;
        }
        hit(u32::try_from(i).expect("below len, a u32 (checked above)"));
        i += 1;
    }
}

/// SplitMix64 of a seed and a stream number: independent streams per interval.
pub fn mix(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: u32 = 1 << 16;

    #[test]
    fn same_seed_same_interval_same_set() {
        for class in WorkloadClass::ALL {
            let a = Workload::new(class.default_spec(), N, 7);
            let b = Workload::new(class.default_spec(), N, 7);
            assert_eq!(a.accesses(13), b.accesses(13), "{}", class.name());
            assert_ne!(
                a.accesses(13),
                Workload::new(class.default_spec(), N, 8).accesses(13)
            );
        }
    }

    #[test]
    fn accesses_are_sorted_unique_and_in_range() {
        for class in WorkloadClass::ALL {
            let items = Workload::new(class.default_spec(), N, 1).accesses(3);
            assert!(!items.is_empty(), "{}", class.name());
            assert!(items.windows(2).all(|w| w[0] < w[1]));
            assert!(*items.last().unwrap() < N);
        }
    }

    #[test]
    fn hot_set_probabilities_show_in_the_counts() {
        let spec = WorkloadSpec::HotSet {
            hot: 0.1,
            hot_probability: 0.5,
            warm: 0.0,
            warm_probability: 0.0,
            background: 0.0,
        };
        let workload = Workload::new(spec, N, 5);
        let mean = (0..20).map(|i| workload.accesses(i).len()).sum::<usize>() as f64 / 20.0;
        let expected = 0.5 * 0.1 * f64::from(N);
        assert!(
            (mean - expected).abs() < 0.03 * expected,
            "mean {mean}, expected {expected}"
        );
    }

    #[test]
    fn phases_move_the_hot_set() {
        let spec = WorkloadSpec::Phases {
            hot: 0.05,
            hot_probability: 1.0,
            phase_intervals: 10,
            background: 0.0,
        };
        let workload = Workload::new(spec, N, 2);
        assert_eq!(workload.accesses(0), workload.accesses(9));
        assert_ne!(workload.accesses(9), workload.accesses(10));
    }

    #[test]
    fn scan_advances_through_the_ring() {
        let spec = WorkloadSpec::Scan {
            ring: 0.125,
            speed: 0.25,
            background: 0.0,
        };
        let workload = Workload::new(spec, N, 2);
        let first = workload.accesses(0);
        assert_eq!(first.len(), N as usize / 8 / 4);
        assert_eq!(workload.accesses(4), first, "period is four intervals");
        assert!(workload
            .accesses(1)
            .iter()
            .all(|item| !first.contains(item)));
    }

    #[test]
    fn zipf_concentrates_on_few_regions() {
        let workload = Workload::new(
            WorkloadSpec::Zipf {
                exponent: 1.2,
                rate: 0.02,
            },
            N,
            4,
        );
        let items = workload.accesses(0);
        let mut regions: Vec<u32> = items.iter().map(|i| i / REGION_ITEMS).collect();
        regions.dedup();
        let hottest = ScatteredLayout::new(N, mix(4, u64::MAX)).item(0) / REGION_ITEMS;
        let in_hottest = items
            .iter()
            .filter(|&&i| i / REGION_ITEMS == hottest)
            .count();
        assert!(
            in_hottest * 4 > items.len(),
            "{in_hottest} of {} in the hottest region",
            items.len()
        );
    }
}
