//! Float-to-integer conversions for rates, shares and ranks computed in `f64`.
//!
//! `mllm_core::convert` has the same helpers; the guest binary keeps its
//! dependencies to libc and xxh3 (it is linked static into the initramfs).
//!
//! The values are non-negative and in range by construction; where that fails
//! (overflow, or NaN from 0/0), clamping is the right answer for a count of
//! operations or records, not an error.

/// `x` rounded toward zero and clamped to `0..=u64::MAX`; NaN gives 0.
pub(crate) fn saturating_u64(x: f64) -> u64 {
    // `as` from a float saturates (and maps NaN to 0) since Rust 1.45.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let value = x as u64;
    value
}

/// `x` rounded toward zero and clamped to `0..=usize::MAX`; NaN gives 0.
pub(crate) fn saturating_usize(x: f64) -> usize {
    // `as` from a float saturates (and maps NaN to 0) since Rust 1.45.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let value = x as usize;
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_and_truncates() {
        assert_eq!(saturating_u64(-1.0), 0);
        assert_eq!(saturating_u64(f64::NAN), 0);
        assert_eq!(saturating_u64(2.9), 2);
        assert_eq!(saturating_u64(1e30), u64::MAX);
        assert_eq!(saturating_usize(3.5), 3);
    }
}
