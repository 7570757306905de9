//! Parsers for command-line values: sizes, fractions and seconds.

/// A byte count such as `4096`, `64K`, `128M`, `2G` or `1TiB`. Suffixes are
/// binary (K = 1024) in any case, optionally followed by `B` or `iB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not a size (examples: 4096, 64K, 128M, 2G)");
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let suffix = suffix.to_ascii_lowercase();
    let unit = suffix
        .strip_suffix("ib")
        .or_else(|| suffix.strip_suffix('b'))
        .unwrap_or(&suffix);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(bad()),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// A number in [0, 1].
pub fn parse_fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("`{text}` is not a number from 0 to 1")),
    }
}

/// A number in (0, 1]: a share that must not be empty.
pub fn parse_positive_fraction(text: &str) -> Result<f64, String> {
    match parse_fraction(text) {
        Ok(value) if value > 0.0 => Ok(value),
        _ => Err(format!("`{text}` is not a number above 0 and at most 1")),
    }
}

/// A non-negative, finite number of seconds, fractions allowed.
pub fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value >= 0.0 && value.is_finite() => Ok(value),
        _ => Err(format!("`{text}` is not a number of seconds (0 or more)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size("128m"), Ok(128 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1TB"), Ok(1 << 40));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in ["", "M", "12X", "1.5G", "-1", "12 M", "99999999999999999999"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert!(parse_size("99999999T").unwrap_err().contains("too large"));
    }

    #[test]
    fn fractions() {
        assert_eq!(parse_fraction("0"), Ok(0.0));
        assert_eq!(parse_fraction("0.25"), Ok(0.25));
        assert_eq!(parse_fraction("1"), Ok(1.0));
        for bad in ["-0.1", "1.01", "nan", "half", ""] {
            assert!(parse_fraction(bad).is_err(), "{bad:?}");
        }
        assert!(parse_positive_fraction("0").is_err());
        assert_eq!(parse_positive_fraction("0.1"), Ok(0.1));
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("0"), Ok(0.0));
        assert_eq!(parse_seconds("0.25"), Ok(0.25));
        assert_eq!(parse_seconds("10"), Ok(10.0));
        for bad in ["-1", "inf", "nan", "2s", ""] {
            assert!(parse_seconds(bad).is_err(), "{bad:?}");
        }
    }
}
