//! Human-friendly quantities: rates ("100Mbit", "12.5MB/s"), durations
//! ("50ms") and sizes ("640KiB"), parsed and formatted so that formatting
//! then parsing gives back the exact value.

use std::time::Duration;

use crate::LinkError;

const RATE_UNITS: &str = "use bits (bit, kbit, Mbit, Gbit, or b/kb/Mb/Gb, optionally with /s or ps) \
                          or bytes (B, kB, MB, GB, KiB, MiB, GiB, optionally with /s), e.g. \"100Mbit\" or \"12.5MB/s\"";
const DURATION_UNITS: &str = "use ns, us, ms, s, min or h, e.g. \"50ms\"";
const SIZE_UNITS: &str =
    "use B, kB, MB, GB, KiB, MiB or GiB, e.g. \"640KiB\", or a plain number of bytes";

/// Bits per second from text such as "100Mbit", "100Mbit/s", "1Gbit",
/// "100Mbps" or "12.5MB/s".
///
/// A lowercase `b` (or `bit`) means bits and an uppercase `B` means bytes.
/// Prefixes of bit units are decimal and case-insensitive (`mbit` is a
/// megabit, as in `tc`); byte units are decimal (`kB`, `MB`, `GB`) or binary
/// (`KiB`, `MiB`, `GiB`). Unlike `tc`, `Mbps` means megabits per second.
pub fn parse_rate(text: &str) -> Result<u64, LinkError> {
    let error = |hint: String| LinkError::Parse {
        what: "rate",
        input: text.to_string(),
        hint,
    };
    let (number, unit) = split_number(text).map_err(error)?;
    let per_unit = unit
        .strip_suffix("/s")
        .or_else(|| unit.strip_suffix("ps"))
        .unwrap_or(unit);
    let bits_per_unit = if let Some(prefix) = per_unit.strip_suffix("iB") {
        binary_prefix(prefix).map(|bytes| bytes * 8)
    } else if let Some(prefix) = per_unit.strip_suffix('B') {
        decimal_prefix(prefix).map(|bytes| bytes * 8)
    } else if let Some(prefix) = per_unit
        .strip_suffix("bit")
        .or_else(|| per_unit.strip_suffix('b'))
    {
        decimal_prefix(prefix)
    } else {
        None
    };
    let bits_per_unit = bits_per_unit.ok_or_else(|| error(unit_hint(unit, RATE_UNITS)))?;
    scale(number, bits_per_unit).map_err(error)
}

/// A duration from text such as "50ms", "1.5s", "250us" or "2min"; a bare
/// number is accepted only for zero.
pub fn parse_duration(text: &str) -> Result<Duration, LinkError> {
    let error = |hint: String| LinkError::Parse {
        what: "duration",
        input: text.to_string(),
        hint,
    };
    let (number, unit) = split_number(text).map_err(error)?;
    let nanos_per_unit = match unit {
        "" if number == 0.0 => 0,
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(error(unit_hint(unit, DURATION_UNITS))),
    };
    scale(number, nanos_per_unit)
        .map(Duration::from_nanos)
        .map_err(error)
}

/// A number of bytes from text such as "640KiB", "1MB" or "65536".
pub fn parse_size(text: &str) -> Result<usize, LinkError> {
    let error = |hint: String| LinkError::Parse {
        what: "size",
        input: text.to_string(),
        hint,
    };
    let (number, unit) = split_number(text).map_err(error)?;
    let bytes_per_unit = if unit.is_empty() || unit == "B" {
        Some(1)
    } else if let Some(prefix) = unit.strip_suffix("iB") {
        binary_prefix(prefix)
    } else if let Some(prefix) = unit.strip_suffix('B') {
        decimal_prefix(prefix)
    } else {
        None
    };
    let bytes_per_unit = bytes_per_unit.ok_or_else(|| error(unit_hint(unit, SIZE_UNITS)))?;
    let bytes = scale(number, bytes_per_unit).map_err(error)?;
    usize::try_from(bytes).map_err(|_| error("too large for this machine".into()))
}

/// "100Mbit", "12.5Mbit", "8kbit": the largest unit that keeps the number at
/// least 1, which [`parse_rate`] reads back exactly.
pub fn format_rate(bits_per_s: u64) -> String {
    format_scaled(
        bits_per_s,
        &[
            (1_000_000_000, "Gbit"),
            (1_000_000, "Mbit"),
            (1_000, "kbit"),
            (1, "bit"),
        ],
    )
}

/// "50ms", "1.5s", "250us": read back exactly by [`parse_duration`].
pub fn format_duration(duration: Duration) -> String {
    let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    format_scaled(
        nanos,
        &[
            (1_000_000_000, "s"),
            (1_000_000, "ms"),
            (1_000, "us"),
            (1, "ns"),
        ],
    )
}

/// "640KiB", "1MiB", "625000B": binary units only when they divide exactly,
/// so that [`parse_size`] reads the text back exactly.
pub fn format_size(bytes: usize) -> String {
    let units = [(1usize << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    match units
        .iter()
        .find(|(size, _)| bytes >= *size && bytes.is_multiple_of(*size))
    {
        Some((size, unit)) => format!("{}{unit}", bytes / size),
        None => format!("{bytes}B"),
    }
}

/// Splits "12.5 MB/s" into 12.5 and "MB/s". Signs are not accepted: no
/// quantity here can be negative.
fn split_number(text: &str) -> Result<(f64, &str), String> {
    let text = text.trim();
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_end);
    if number.is_empty() {
        return Err("expected a non-negative number followed by a unit".into());
    }
    let number = number
        .parse::<f64>()
        .map_err(|_| format!("{number:?} is not a number"))?;
    Ok((number, unit.trim()))
}

fn unit_hint(unit: &str, units: &str) -> String {
    if unit.is_empty() {
        format!("missing unit; {units}")
    } else {
        format!("unknown unit {unit:?}; {units}")
    }
}

fn decimal_prefix(prefix: &str) -> Option<u64> {
    match prefix {
        "" => Some(1),
        "k" | "K" => Some(1_000),
        "m" | "M" => Some(1_000_000),
        "g" | "G" => Some(1_000_000_000),
        "t" | "T" => Some(1_000_000_000_000),
        _ => None,
    }
}

fn binary_prefix(prefix: &str) -> Option<u64> {
    match prefix {
        "K" | "k" => Some(1 << 10),
        "M" => Some(1 << 20),
        "G" => Some(1 << 30),
        "T" => Some(1 << 40),
        _ => None,
    }
}

/// `number × unit`, rounded to the nearest integer; rounding (rather than
/// truncating) is what makes formatted values read back exactly.
fn scale(number: f64, unit: u64) -> Result<u64, String> {
    let value = (number * unit as f64).round();
    // u64::MAX is not representable in f64; 2^64 is the first value past it.
    if value >= 18_446_744_073_709_551_616.0 {
        return Err("too large".into());
    }
    // `split_number` accepts digits and dots only, so `value` is a whole
    // number in 0..2^64 and the cast is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let value = value as u64;
    Ok(value)
}

fn format_scaled(value: u64, units: &[(u64, &str)]) -> String {
    let (size, unit) = units
        .iter()
        .find(|(size, _)| value >= *size)
        .unwrap_or(&units[units.len() - 1]);
    // `{}` on f64 prints the shortest text that parses back to the same f64.
    format!("{}{unit}", value as f64 / *size as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_in_bits_and_bytes() {
        let cases = [
            ("100Mbit", 100_000_000),
            ("100Mbit/s", 100_000_000),
            ("100 Mbit/s", 100_000_000),
            ("100mbit", 100_000_000),
            ("100Mbps", 100_000_000),
            ("1Gbit", 1_000_000_000),
            ("2.5Gb/s", 2_500_000_000),
            ("64kbit", 64_000),
            ("9600bit", 9_600),
            ("12.5MB/s", 100_000_000),
            ("1MiB/s", 8 * 1_048_576),
            ("1KB", 8_000),
        ];
        for (text, bits) in cases {
            assert_eq!(parse_rate(text).unwrap(), bits, "{text}");
        }
    }

    #[test]
    fn rate_errors_explain_the_unit() {
        let missing = parse_rate("100").unwrap_err().to_string();
        assert!(missing.contains("missing unit"), "{missing}");
        let unknown = parse_rate("100Mbt").unwrap_err().to_string();
        assert!(unknown.contains("unknown unit \"Mbt\""), "{unknown}");
        assert!(parse_rate("-5Mbit").is_err());
        assert!(parse_rate("1.2.3Mbit").is_err());
        assert!(parse_rate("1e30Tbit").is_err());
    }

    #[test]
    fn durations() {
        let cases = [
            ("50ms", Duration::from_millis(50)),
            ("1.5s", Duration::from_millis(1500)),
            ("250us", Duration::from_micros(250)),
            ("250µs", Duration::from_micros(250)),
            ("2min", Duration::from_secs(120)),
            ("0", Duration::ZERO),
            (" 10 ms ", Duration::from_millis(10)),
        ];
        for (text, duration) in cases {
            assert_eq!(parse_duration(text).unwrap(), duration, "{text}");
        }
        assert!(
            parse_duration("50").is_err(),
            "a bare non-zero number is ambiguous"
        );
        assert!(parse_duration("50 fortnights").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("640KiB").unwrap(), 655_360);
        assert_eq!(parse_size("1MB").unwrap(), 1_000_000);
        assert_eq!(parse_size("65536").unwrap(), 65_536);
        assert_eq!(parse_size("1.5KiB").unwrap(), 1_536);
        assert!(
            parse_size("64k").is_err(),
            "ambiguous between 1000 and 1024"
        );
    }

    #[test]
    fn formatting_reads_back_exactly() {
        for bits in [
            1,
            999,
            8_000,
            12_345_678,
            100_000_000,
            2_500_000_000,
            40_000_000_001,
        ] {
            assert_eq!(parse_rate(&format_rate(bits)).unwrap(), bits);
        }
        for nanos in [0, 1, 1_500, 50_000_000, 1_234_567_891, 3_600_000_000_000] {
            let duration = Duration::from_nanos(nanos);
            assert_eq!(
                parse_duration(&format_duration(duration)).unwrap(),
                duration
            );
        }
        for bytes in [0, 1_500, 655_360, 1 << 20, 625_000] {
            assert_eq!(parse_size(&format_size(bytes)).unwrap(), bytes);
        }
        assert_eq!(format_rate(100_000_000), "100Mbit");
        assert_eq!(format_duration(Duration::from_millis(50)), "50ms");
        assert_eq!(format_size(655_360), "640KiB");
    }
}
