//! Zipf sampler by rejection-inversion (Hörmann and Derflinger, 1996).
//!
//! Constant time and constant memory per sample for any number of elements,
//! so a million hot pages cost no table; the same method Apache Commons RNG
//! and `rand_distr` use. Rank 1 is the most frequent: P(k) ∝ k^-exponent.

use crate::convert::saturating_u64;
use crate::rng::SplitMix64;

#[derive(Debug, Clone)]
pub struct Zipf {
    elements: u64,
    exponent: f64,
    h_integral_x1: f64,
    h_integral_elements: f64,
    /// Below this distance from an integer, x is accepted without the costly test.
    squeeze: f64,
}

impl Zipf {
    /// `elements` ≥ 1 and `exponent` > 0 (finite); anything else is a caller bug.
    pub fn new(elements: u64, exponent: f64) -> Self {
        assert!(elements >= 1, "Zipf needs at least one element");
        assert!(
            exponent > 0.0 && exponent.is_finite(),
            "Zipf exponent must be positive"
        );
        let mut zipf = Zipf {
            elements,
            exponent,
            h_integral_x1: 0.0,
            h_integral_elements: 0.0,
            squeeze: 0.0,
        };
        zipf.h_integral_x1 = zipf.h_integral(1.5) - 1.0;
        zipf.h_integral_elements = zipf.h_integral(elements as f64 + 0.5);
        zipf.squeeze = 2.0 - zipf.h_integral_inverse(zipf.h_integral(2.5) - zipf.h(2.0));
        zipf
    }

    /// A rank in 1..=elements.
    pub fn sample(&self, rng: &mut SplitMix64) -> u64 {
        loop {
            let u = self.h_integral_elements
                + rng.next_f64() * (self.h_integral_x1 - self.h_integral_elements);
            let x = self.h_integral_inverse(u);
            let k = saturating_u64(x + 0.5).clamp(1, self.elements);
            let kf = k as f64;
            if kf - x <= self.squeeze || u >= self.h_integral(kf + 0.5) - self.h(kf) {
                return k;
            }
        }
    }

    /// h(x) = x^-exponent, the unnormalised density.
    fn h(&self, x: f64) -> f64 {
        (-self.exponent * x.ln()).exp()
    }

    /// H(x) = (x^(1-exponent) - 1) / (1 - exponent), an antiderivative of h
    /// that stays finite through exponent = 1 (where it becomes ln x).
    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        exp_m1_over_x((1.0 - self.exponent) * log_x) * log_x
    }

    fn h_integral_inverse(&self, x: f64) -> f64 {
        // Rounding can push t just below -1, where ln(1 + t) is undefined.
        let t = (x * (1.0 - self.exponent)).max(-1.0);
        (ln_1p_over_x(t) * x).exp()
    }
}

/// ln(1 + x) / x, with its Taylor series near 0 where the quotient loses precision.
fn ln_1p_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// (e^x - 1) / x, with its Taylor series near 0.
fn exp_m1_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frequencies(elements: u64, exponent: f64, samples: u32) -> Vec<f64> {
        let zipf = Zipf::new(elements, exponent);
        let mut rng = SplitMix64::new(42);
        let mut counts = vec![0u32; usize::try_from(elements).unwrap()];
        for _ in 0..samples {
            let k = zipf.sample(&mut rng);
            assert!((1..=elements).contains(&k), "rank {k} out of range");
            counts[usize::try_from(k).unwrap() - 1] += 1;
        }
        counts
            .into_iter()
            .map(|c| f64::from(c) / f64::from(samples))
            .collect()
    }

    fn expected(elements: u64, exponent: f64) -> Vec<f64> {
        let weights: Vec<f64> = (1..=elements).map(|k| (k as f64).powf(-exponent)).collect();
        let total: f64 = weights.iter().sum();
        weights.into_iter().map(|w| w / total).collect()
    }

    fn assert_matches_distribution(elements: u64, exponent: f64) {
        let seen = frequencies(elements, exponent, 200_000);
        let want = expected(elements, exponent);
        for (rank, (s, w)) in seen.iter().zip(&want).enumerate().take(10) {
            assert!(
                (s - w).abs() < 0.01 + 0.05 * w,
                "exponent {exponent} rank {}: saw {s:.4}, want {w:.4}",
                rank + 1
            );
        }
    }

    #[test]
    fn frequencies_follow_the_power_law() {
        assert_matches_distribution(100, 0.99);
        assert_matches_distribution(1000, 1.2);
        assert_matches_distribution(50, 0.5);
    }

    #[test]
    fn exponent_one_is_handled() {
        assert_matches_distribution(100, 1.0);
    }

    #[test]
    fn a_single_element_is_always_chosen() {
        let zipf = Zipf::new(1, 0.99);
        let mut rng = SplitMix64::new(1);
        assert!((0..1000).all(|_| zipf.sample(&mut rng) == 1));
    }

    #[test]
    fn large_sets_stay_in_range_and_favour_low_ranks() {
        let zipf = Zipf::new(1 << 20, 0.99);
        let mut rng = SplitMix64::new(3);
        let samples: Vec<u64> = (0..20_000).map(|_| zipf.sample(&mut rng)).collect();
        assert!(samples.iter().all(|&k| (1..=1 << 20).contains(&k)));
        let top_thousand = samples.iter().filter(|&&k| k <= 1000).count();
        // For exponent 0.99 the first 1000 of 2^20 ranks carry about half the mass.
        assert!(top_thousand > 8_000, "{top_thousand}");
    }
}
