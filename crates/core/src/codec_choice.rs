//! Compression matched to the link and the CPU: which codec (and level) and
//! how many compression threads, from what was measured on the data
//! actually sent.
//!
//! With `t` threads a codec turns raw data into link bytes at
//! `t × speed`, and the link carries `link / ratio` raw bytes a second
//! (`ratio`: compressed over raw size). The migration moves raw data at
//! the smaller of the two, so the choice is the codec whose
//! `min(threads × speed, link / ratio)` is largest with the threads
//! available:
//!
//! - a slow link favours the best ratio whose speed still keeps up (a
//!   higher zstd level: the link is the bottleneck, cores are free);
//! - a fast link favours a fast codec, or none, when no codec compresses
//!   faster than the link drains (compression would become the bottleneck);
//! - data that does not compress (a ratio of `INCOMPRESSIBLE` or more) is
//!   sent raw: such a codec is not a candidate, whatever it would gain.
//!
//! Close calls (within `TIE`) go to the fewer threads, then the smaller
//! ratio: the same migration speed with fewer busy cores, then with fewer
//! bytes on a shared link. The threads are as few as keep
//! `threads × speed` above the link's demand with `HEADROOM`, so a dip in
//! compression speed does not idle the link.

/// What compressing samples of the migration's data with one candidate
/// measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodecMeasure {
    /// Raw bytes one thread compresses per second (`f64::INFINITY` for no
    /// compression).
    pub raw_bytes_per_s: f64,
    /// Compressed size over raw size (1 for no compression).
    pub ratio: f64,
}

/// The chosen candidate (its index in the measures) and threads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodecChoice {
    pub candidate: usize,
    pub threads: usize,
    /// Raw bytes per second the migration can move with this choice.
    pub raw_bytes_per_s: f64,
}

/// Compression must outpace the link's demand by this factor.
pub const HEADROOM: f64 = 1.25;
/// Choices whose raw throughput is within this fraction of the best count
/// as equal.
pub const TIE: f64 = 0.05;
/// A codec that leaves this much of the data or more does not pay: its
/// savings are below what a measurement can tell from noise, its cost is a
/// core.
pub const INCOMPRESSIBLE: f64 = 0.95;

/// The best candidate for a link carrying `link_bytes_per_s` with up to
/// `max_threads` threads for compression; `None` without candidates (a
/// codec that does not compress is none, no compression always is).
pub fn choose_codec(
    measures: &[CodecMeasure],
    link_bytes_per_s: f64,
    max_threads: usize,
) -> Option<CodecChoice> {
    let max_threads = max_threads.max(1);
    let options: Vec<CodecChoice> = measures
        .iter()
        .enumerate()
        .filter(|(_, measure)| {
            measure.ratio < INCOMPRESSIBLE || measure.raw_bytes_per_s == f64::INFINITY
        })
        .map(|(candidate, measure)| {
            let ratio = measure.ratio.clamp(f64::MIN_POSITIVE, 1.0);
            let demand = link_bytes_per_s / ratio;
            let speed = measure.raw_bytes_per_s.max(f64::MIN_POSITIVE);
            let threads = (1..=max_threads)
                .find(|&threads| threads as f64 * speed >= demand * HEADROOM)
                .unwrap_or(max_threads);
            CodecChoice {
                candidate,
                threads,
                raw_bytes_per_s: (threads as f64 * speed).min(demand),
            }
        })
        .collect();
    let best = options
        .iter()
        .map(|option| option.raw_bytes_per_s)
        .fold(0.0, f64::max);
    options
        .into_iter()
        .filter(|option| option.raw_bytes_per_s >= best * (1.0 - TIE))
        .min_by(|a, b| {
            let ratio = |option: &CodecChoice| measures[option.candidate].ratio;
            a.threads
                .cmp(&b.threads)
                .then(ratio(a).total_cmp(&ratio(b)))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: f64 = 1e6;
    /// No compression, lz4, a fast and a slow zstd level, as measured on
    /// compressible guest memory.
    fn measures() -> [CodecMeasure; 4] {
        [
            CodecMeasure {
                raw_bytes_per_s: f64::INFINITY,
                ratio: 1.0,
            },
            CodecMeasure {
                raw_bytes_per_s: 700.0 * MB,
                ratio: 0.45,
            },
            CodecMeasure {
                raw_bytes_per_s: 350.0 * MB,
                ratio: 0.33,
            },
            CodecMeasure {
                raw_bytes_per_s: 40.0 * MB,
                ratio: 0.25,
            },
        ]
    }

    #[test]
    fn a_slow_link_gets_the_best_ratio_that_keeps_up() {
        // 100 Mbit/s: the slow level must compress 12.5 / 0.25 × 1.25 =
        // 62.5 MB/s, two threads of 40; the link is then the bottleneck.
        let choice = choose_codec(&measures(), 12.5 * MB, 2).unwrap();
        assert_eq!((choice.candidate, choice.threads), (3, 2));
        assert!((choice.raw_bytes_per_s - 50.0 * MB).abs() < 1.0);
        // 200 Mbit/s on one core: the slow level would fall behind (40 MB/s
        // of raw data), the fast one keeps up with the link (75.8).
        let choice = choose_codec(&measures(), 25.0 * MB, 1).unwrap();
        assert_eq!((choice.candidate, choice.threads), (2, 1));
    }

    #[test]
    fn a_fast_link_gets_threads_until_compression_outpaces_it() {
        // 10 Gbit/s, 1250 MB/s: lz4 on five threads fills the link (2778
        // MB/s of raw data); the fast zstd level on all eight moves about
        // as much (2800) with three more cores busy.
        let choice = choose_codec(&measures(), 1250.0 * MB, 8).unwrap();
        assert_eq!((choice.candidate, choice.threads), (1, 5), "{choice:?}");
        // Two cores of lz4 still move more than the raw link (1400 MB/s
        // against 1250); one does not, and the data goes uncompressed.
        let choice = choose_codec(&measures(), 1250.0 * MB, 2).unwrap();
        assert_eq!((choice.candidate, choice.threads), (1, 2), "{choice:?}");
        let choice = choose_codec(&measures(), 1250.0 * MB, 1).unwrap();
        assert_eq!(choice.candidate, 0, "{choice:?}");
    }

    #[test]
    fn incompressible_data_is_sent_raw() {
        let incompressible = [
            CodecMeasure {
                raw_bytes_per_s: f64::INFINITY,
                ratio: 1.0,
            },
            CodecMeasure {
                raw_bytes_per_s: 2000.0 * MB,
                ratio: 0.97,
            },
            CodecMeasure {
                raw_bytes_per_s: 300.0 * MB,
                ratio: 1.0,
            },
        ];
        let choice = choose_codec(&incompressible, 12.5 * MB, 2).unwrap();
        assert_eq!((choice.candidate, choice.threads), (0, 1));
        assert_eq!(choose_codec(&incompressible[1..], 12.5 * MB, 2), None);
    }

    #[test]
    fn no_candidates_no_choice() {
        assert_eq!(choose_codec(&[], 12.5 * MB, 2), None);
    }
}
