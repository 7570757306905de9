//! Reading throughput out of other programs' output.
//!
//! Recognised, first match in a line wins:
//! - `name=N` or `name = N` with name `rps`, `iops`, `tps` or `qps` (any case):
//!   redis-benchmark's progress `SET: rps=81234.0 (overall: …)`, fio's summary
//!   `write: IOPS=10.2k, BW=…`, pgbench's `tps = 456.7`;
//! - `N` followed by `IOPS`, `rps`, `tps`, `qps`, `ops/s`, `op/s` or `ops/sec`:
//!   fio's status line `[w=10.2k IOPS]`;
//! - `N per second`, `N per sec.`, or `N <word> per second`: redis-benchmark's
//!   `72992.70 requests per second`, sysbench's `(123.45 per sec.)`;
//! - `per second: N`: sysbench's `events per second: 1234.56`;
//! - `N/s` as one token.
//!
//! N may carry a `k`, `M` or `G` suffix (powers of ten, as fio prints them).
//! Byte rates (`BW=40MiB/s`) are deliberately not matched.

/// Operations per second reported in `line`, if it reports any.
pub fn parse_rate(line: &str) -> Option<f64> {
    let tokens: Vec<&str> = line
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | '[' | ']' | '(' | ')' | ';'))
        .filter(|t| !t.is_empty())
        .collect();
    (0..tokens.len()).find_map(|i| rate_at(&tokens, i))
}

fn rate_at(tokens: &[&str], i: usize) -> Option<f64> {
    let token = tokens[i];
    let next = |k: usize| tokens.get(i + k).map(|t| t.to_ascii_lowercase());
    let is_per_second = |k: usize| {
        next(k).as_deref() == Some("per") && next(k + 1).is_some_and(|t| t.starts_with("sec"))
    };

    // `name=N` names a rate itself; any other `x=N` offers N for the unit rules below.
    let number_text = match token.split_once('=') {
        Some((name, value)) if is_rate_name(name) => return parse_number(value),
        Some((_, value)) => value,
        None => token,
    };
    if is_rate_name(token) && tokens.get(i + 1) == Some(&"=") {
        return tokens.get(i + 2).and_then(|t| parse_number(t));
    }
    if token.eq_ignore_ascii_case("per") && next(1).is_some_and(|t| t.starts_with("sec")) {
        return tokens.get(i + 2).and_then(|t| parse_number(t));
    }
    if let Some(count) = token.strip_suffix("/s").and_then(parse_number) {
        return Some(count);
    }
    let number = parse_number(number_text)?;
    let unit_follows = next(1).is_some_and(|unit| {
        is_rate_name(&unit) || matches!(unit.as_str(), "ops/s" | "op/s" | "ops/sec")
    });
    let word_between = tokens
        .get(i + 1)
        .is_some_and(|w| w.chars().all(|c| c.is_ascii_alphabetic()));
    (unit_follows || is_per_second(1) || (word_between && is_per_second(2))).then_some(number)
}

fn is_rate_name(name: &str) -> bool {
    ["rps", "iops", "tps", "qps"]
        .iter()
        .any(|known| name.eq_ignore_ascii_case(known))
}

/// A non-negative decimal with an optional k/M/G suffix; a trailing colon or
/// period (end of a sentence) is ignored.
fn parse_number(text: &str) -> Option<f64> {
    let text = text.trim_end_matches([':', '.']);
    let (digits, scale) = match text.as_bytes().last()? {
        b'k' | b'K' => (&text[..text.len() - 1], 1e3),
        b'M' => (&text[..text.len() - 1], 1e6),
        b'G' => (&text[..text.len() - 1], 1e9),
        _ => (text, 1.0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let value: f64 = digits.parse().ok()?;
    Some(value * scale)
}

/// Splits a byte stream into lines at `\n` or `\r`: progress displays such as
/// redis-benchmark's redraw one line with `\r`, and each redraw is a report.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

/// A line longer than this is passed on in pieces rather than buffered without bound.
const MAX_LINE: usize = 4096;

impl LineSplitter {
    /// Passes every line completed by `bytes` to `on_line`; blank lines are dropped.
    pub fn feed(&mut self, bytes: &[u8], mut on_line: impl FnMut(String)) {
        for &byte in bytes {
            if byte == b'\n' || byte == b'\r' {
                self.flush(&mut on_line);
            } else {
                self.partial.push(byte);
                if self.partial.len() >= MAX_LINE {
                    self.flush(&mut on_line);
                }
            }
        }
    }

    /// Passes on the last line if the stream ended without a line break.
    pub fn finish(&mut self, mut on_line: impl FnMut(String)) {
        self.flush(&mut on_line);
    }

    fn flush(&mut self, on_line: &mut impl FnMut(String)) {
        let line = String::from_utf8_lossy(&self.partial);
        if !line.trim().is_empty() {
            on_line(line.trim_end().to_owned());
        }
        self.partial.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_benchmark_lines() {
        assert_eq!(
            parse_rate("SET: rps=81234.0 (overall: 80000.5) avg_msec=0.563 (overall: 0.570)"),
            Some(81234.0)
        );
        assert_eq!(
            parse_rate("SET: 72992.70 requests per second, p50=0.359 msec"),
            Some(72992.70)
        );
        assert_eq!(
            parse_rate("  throughput summary: 97087.38 requests per second"),
            Some(97087.38)
        );
        assert_eq!(
            parse_rate("  100000 requests completed in 1.03 seconds"),
            None
        );
    }

    #[test]
    fn fio_lines() {
        assert_eq!(
            parse_rate("  write: IOPS=10.2k, BW=40.0MiB/s (41.9MB/s)(400MiB/10001msec)"),
            Some(10_200.0)
        );
        assert_eq!(
            parse_rate("  read: IOPS=1234, BW=4936KiB/s (5054kB/s)(48.2MiB/10001msec)"),
            Some(1234.0)
        );
        assert_eq!(
            parse_rate("Jobs: 1 (f=1): [w(1)][20.0%][w=40.0MiB/s][w=10.2k IOPS][eta 00m:04s]"),
            Some(10_200.0)
        );
        assert_eq!(
            parse_rate("  bw (  KiB/s): min=30000, max=45000, per=100.00%"),
            None
        );
        assert_eq!(parse_rate("BW=40MiB/s"), None);
    }

    #[test]
    fn generic_rate_lines() {
        assert_eq!(parse_rate("done: 1500 ops/s"), Some(1500.0));
        assert_eq!(parse_rate("rate 2.5M ops/sec"), Some(2.5e6));
        assert_eq!(parse_rate("inserted 300 rows per second"), Some(300.0));
        assert_eq!(parse_rate("    events per second:  1234.56"), Some(1234.56));
        assert_eq!(
            parse_rate("    transactions: 1234 (123.45 per sec.)"),
            Some(123.45)
        );
        assert_eq!(parse_rate("progress 812/s"), Some(812.0));
        assert_eq!(
            parse_rate("tps = 456.7 (without initial connection time)"),
            Some(456.7)
        );
    }

    #[test]
    fn lines_without_a_rate() {
        for line in [
            "",
            "Starting 1 process",
            "latency 12 ms",
            "copied 100 MB/s",
            "per second",
            "version 1.2.3 per",
        ] {
            assert_eq!(parse_rate(line), None, "{line:?}");
        }
    }

    #[test]
    fn numbers_and_suffixes() {
        assert_eq!(parse_number("10.2k"), Some(10_200.0));
        assert_eq!(parse_number("3M"), Some(3e6));
        assert_eq!(parse_number("1G"), Some(1e9));
        assert_eq!(parse_number("42."), Some(42.0));
        assert_eq!(parse_number("-5"), None);
        assert_eq!(parse_number("1e5"), None);
        assert_eq!(parse_number("k"), None);
    }

    #[test]
    fn splitter_breaks_at_newline_and_carriage_return() {
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        splitter.feed(b"SET: rps=1.0\rSET: rps=2.0\r", |l| lines.push(l));
        splitter.feed(b"one\r\ntw", |l| lines.push(l));
        splitter.feed(b"o\n\n", |l| lines.push(l));
        splitter.feed(b"tail", |l| lines.push(l));
        splitter.finish(|l| lines.push(l));
        assert_eq!(
            lines,
            ["SET: rps=1.0", "SET: rps=2.0", "one", "two", "tail"]
        );
    }

    #[test]
    fn splitter_bounds_line_length() {
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        splitter.feed(&vec![b'x'; MAX_LINE + 10], |l| lines.push(l));
        splitter.finish(|l| lines.push(l));
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(lines[1].len(), 10);
    }
}
