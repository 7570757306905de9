//! Which record each operation touches, and whether it reads or writes.

use std::fmt;
use std::str::FromStr;

use crate::convert::saturating_u64;
use crate::rng::SplitMix64;
use crate::zipf::Zipf;

/// How accesses spread over the hot set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Skew {
    Uniform,
    /// Zipf with this exponent: rank 1 (the set's first record) is hottest.
    Zipf(f64),
}

impl FromStr for Skew {
    type Err = String;

    /// `uniform` or `zipf:<exponent>` with a positive exponent, e.g. `zipf:0.99`.
    fn from_str(text: &str) -> Result<Self, String> {
        if text == "uniform" {
            return Ok(Skew::Uniform);
        }
        let exponent = text
            .strip_prefix("zipf:")
            .and_then(|e| e.parse::<f64>().ok())
            .ok_or_else(|| format!("skew must be `uniform` or `zipf:<exponent>`, not `{text}`"))?;
        if exponent > 0.0 && exponent.is_finite() {
            Ok(Skew::Zipf(exponent))
        } else {
            Err(format!(
                "the Zipf exponent must be positive, not {exponent}"
            ))
        }
    }
}

impl fmt::Display for Skew {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skew::Uniform => write!(f, "uniform"),
            Skew::Zipf(exponent) => write!(f, "zipf:{exponent}"),
        }
    }
}

/// Picks record indices: `hot_access_pct` % of accesses go to the hot set (the
/// first `hot` records, spread by the skew), the rest uniformly to the others.
///
/// The hot set is contiguous on purpose: real hot data clusters, and region
/// level predictors (e.g. per 2 MiB) should have something to find.
#[derive(Debug, Clone)]
pub struct AccessPicker {
    total: u64,
    hot: u64,
    hot_access_pct: u64,
    zipf: Option<Zipf>,
    rng: SplitMix64,
}

impl AccessPicker {
    /// `total` ≥ 1 records, `hot_fraction` in (0, 1], `hot_access_pct` ≤ 100.
    pub fn new(total: u64, hot_fraction: f64, hot_access_pct: u8, skew: Skew, seed: u64) -> Self {
        assert!(total >= 1 && hot_access_pct <= 100);
        let hot = saturating_u64((total as f64 * hot_fraction).round()).clamp(1, total);
        AccessPicker {
            total,
            hot,
            hot_access_pct: u64::from(hot_access_pct),
            zipf: match skew {
                Skew::Uniform => None,
                Skew::Zipf(exponent) => Some(Zipf::new(hot, exponent)),
            },
            rng: SplitMix64::new(seed),
        }
    }

    /// Number of records in the hot set.
    pub fn hot(&self) -> u64 {
        self.hot
    }

    pub fn next_index(&mut self) -> u64 {
        let cold = self.total - self.hot;
        if cold > 0 && self.rng.below(100) >= self.hot_access_pct {
            return self.hot + self.rng.below(cold);
        }
        match &self.zipf {
            Some(zipf) => zipf.sample(&mut self.rng) - 1,
            None => self.rng.below(self.hot),
        }
    }
}

/// Interleaves reads and writes so that exactly `read_pct` % of any run of
/// 100 operations are reads; the write rate is then an exact share of the op rate.
#[derive(Debug, Clone)]
pub struct OpMix {
    read_pct: u64,
    count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

impl OpMix {
    pub fn new(read_pct: u8) -> Self {
        assert!(read_pct <= 100);
        OpMix {
            read_pct: u64::from(read_pct),
            count: 0,
        }
    }

    /// Operations per second that give `write_rate` writes per second; with
    /// only reads there are no writes to pace, so reads run at that rate.
    pub fn op_rate_for(&self, write_rate: f64) -> f64 {
        if self.read_pct == 100 {
            write_rate
        } else {
            write_rate * 100.0 / (100 - self.read_pct) as f64
        }
    }

    pub fn next_op(&mut self) -> Op {
        // Operation k is a read when floor(k·p/100) steps up: a Bresenham line
        // through the read share, so reads never bunch up.
        let k = self.count % 100;
        self.count += 1;
        if (k + 1) * self.read_pct / 100 > k * self.read_pct / 100 {
            Op::Read
        } else {
            Op::Write
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_parses_and_prints() {
        assert_eq!("uniform".parse::<Skew>(), Ok(Skew::Uniform));
        assert_eq!("zipf:0.99".parse::<Skew>(), Ok(Skew::Zipf(0.99)));
        assert_eq!(Skew::Zipf(0.99).to_string(), "zipf:0.99");
        for bad in [
            "zipf", "zipf:", "zipf:0", "zipf:-1", "zipf:nan", "normal", "",
        ] {
            assert!(bad.parse::<Skew>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hot_share_of_accesses_is_respected() {
        let mut picker = AccessPicker::new(1000, 0.1, 90, Skew::Uniform, 1);
        assert_eq!(picker.hot(), 100);
        let hot_hits = (0..100_000).filter(|_| picker.next_index() < 100).count();
        assert!((89_000..91_000).contains(&hot_hits), "{hot_hits}");
    }

    #[test]
    fn indices_cover_both_sets_and_stay_in_range() {
        let mut picker = AccessPicker::new(50, 0.2, 50, Skew::Zipf(0.99), 2);
        let mut seen = [false; 50];
        for _ in 0..20_000 {
            seen[usize::try_from(picker.next_index()).unwrap()] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn zipf_skew_makes_the_first_hot_record_hottest() {
        let mut picker = AccessPicker::new(1000, 1.0, 100, Skew::Zipf(1.2), 3);
        let mut counts = vec![0u32; 1000];
        for _ in 0..50_000 {
            counts[usize::try_from(picker.next_index()).unwrap()] += 1;
        }
        assert!(counts[0] > counts[1] && counts[1] > counts[10] && counts[10] > counts[500]);
    }

    #[test]
    fn whole_set_hot_sends_everything_to_it() {
        let mut picker = AccessPicker::new(10, 1.0, 0, Skew::Uniform, 4);
        assert!((0..1000).all(|_| picker.next_index() < 10));
    }

    #[test]
    fn mix_is_exact_over_every_hundred_ops() {
        for read_pct in [0, 1, 33, 50, 90, 100] {
            let mut mix = OpMix::new(read_pct);
            for _ in 0..3 {
                let reads = (0..100).filter(|_| mix.next_op() == Op::Read).count();
                assert_eq!(reads, usize::from(read_pct));
            }
        }
    }

    #[test]
    fn half_reads_alternate() {
        let mut mix = OpMix::new(50);
        let ops: Vec<Op> = (0..4).map(|_| mix.next_op()).collect();
        assert_eq!(ops, [Op::Write, Op::Read, Op::Write, Op::Read]);
    }

    #[test]
    fn op_rate_keeps_the_write_rate() {
        assert_eq!(OpMix::new(0).op_rate_for(1000.0), 1000.0);
        assert_eq!(OpMix::new(50).op_rate_for(1000.0), 2000.0);
        assert_eq!(OpMix::new(75).op_rate_for(1000.0), 4000.0);
        assert_eq!(OpMix::new(100).op_rate_for(1000.0), 1000.0);
    }
}
