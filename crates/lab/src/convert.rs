//! Float-to-integer conversions for measured rates and durations.

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
