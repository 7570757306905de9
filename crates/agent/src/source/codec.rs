//! Compression matched to the link and the CPU, live. Now and then the data
//! of the batch about to be compressed is also compressed with every
//! candidate codec, each timed; with the link rate the acknowledgements
//! measure, `mllm_core::codec_choice` then picks the codec and the number
//! of compression threads for the batches that follow. A trial costs a few
//! milliseconds every `TRIAL_EVERY` batches; the measures follow the data
//! as it changes (zero-heavy first round, compressed files, hot pages).

use std::collections::BTreeMap;
use std::time::Instant;

use mllm_core::codec_choice::{choose_codec, CodecChoice, CodecMeasure};
use mllm_wire::{compressed_len, CompressionSetting, Negotiated, WireError};

/// Batches between two trials.
const TRIAL_EVERY: u32 = 32;
/// A trial compresses at most this much of the batch: enough to measure
/// speed and ratio, little enough to stay cheap at zstd's slower levels.
const TRIAL_BYTES: usize = 256 << 10;
/// Less data than this measures the timer more than the codec.
const MIN_TRIAL_BYTES: usize = 32 << 10;
/// Weight of the newest trial in the measures.
const NEWEST_WEIGHT: f64 = 0.5;

/// What the source may compress with, cheapest first.
const CANDIDATES: [CompressionSetting; 6] = [
    CompressionSetting::None,
    CompressionSetting::Lz4,
    CompressionSetting::Zstd { level: 1 },
    CompressionSetting::Zstd { level: 3 },
    CompressionSetting::Zstd { level: 6 },
    CompressionSetting::Zstd { level: 9 },
];

/// Chooses the codec of each batch.
#[derive(Debug)]
pub(crate) struct CodecTuner {
    /// `None`: the codec is fixed by the settings.
    auto: Option<Auto>,
    current: CompressionSetting,
    /// Batches compressed with each codec, for the report.
    batches: BTreeMap<String, u64>,
}

#[derive(Debug)]
struct Auto {
    /// The candidates the destination decodes.
    candidates: Vec<CompressionSetting>,
    measures: Vec<Option<CodecMeasure>>,
    max_threads: usize,
    until_trial: u32,
    threads: usize,
}

impl CodecTuner {
    /// Starts with `start`; with `auto`, moves to the best candidate the
    /// peer decodes as measures come in, using up to `max_threads` threads.
    pub fn new(
        start: CompressionSetting,
        auto: bool,
        negotiated: &Negotiated,
        max_threads: usize,
    ) -> CodecTuner {
        let auto = auto.then(|| {
            let candidates: Vec<CompressionSetting> = CANDIDATES
                .into_iter()
                .filter(|setting| negotiated.supports(setting.algorithm()))
                .collect();
            Auto {
                measures: vec![None; candidates.len()],
                candidates,
                max_threads: max_threads.max(1),
                until_trial: 0,
                threads: 1,
            }
        });
        CodecTuner {
            auto,
            current: start,
            batches: BTreeMap::new(),
        }
    }

    /// The codec for the batch whose uncompressed data pages are `data`,
    /// with the link carrying `link_rate` bytes a second if known.
    pub fn for_batch(
        &mut self,
        data: &[u8],
        link_rate: Option<f64>,
    ) -> Result<CompressionSetting, WireError> {
        if let (Some(auto), Some(rate)) = (&mut self.auto, link_rate) {
            if let Some(choice) = auto.consider(data, rate)? {
                let chosen = auto.candidates[choice.candidate];
                if chosen != self.current || choice.threads != auto.threads {
                    tracing::info!(
                        from = %name(self.current),
                        to = %name(chosen),
                        threads = choice.threads,
                        link_mb_per_s = rate / 1e6,
                        raw_mb_per_s = choice.raw_bytes_per_s / 1e6,
                        "compression re-chosen"
                    );
                }
                self.current = chosen;
                auto.threads = choice.threads;
            }
        }
        *self.batches.entry(name(self.current)).or_default() += 1;
        Ok(self.current)
    }

    /// Threads the current choice wants compressing.
    pub fn threads(&self) -> usize {
        self.auto.as_ref().map_or(1, |auto| auto.threads)
    }

    /// The most threads a choice may want.
    pub fn max_threads(&self) -> usize {
        self.auto.as_ref().map_or(1, |auto| auto.max_threads)
    }

    pub fn current(&self) -> CompressionSetting {
        self.current
    }

    /// Batches compressed with each codec so far.
    pub fn batches(&self) -> BTreeMap<String, u64> {
        self.batches.clone()
    }
}

impl Auto {
    /// A new choice when a trial is due and `data` is enough to measure.
    fn consider(&mut self, data: &[u8], rate: f64) -> Result<Option<CodecChoice>, WireError> {
        if self.until_trial > 0 || data.len() < MIN_TRIAL_BYTES {
            self.until_trial = self.until_trial.saturating_sub(1);
            return Ok(None);
        }
        self.until_trial = TRIAL_EVERY;
        let sample = &data[..data.len().min(TRIAL_BYTES)];
        for (setting, measure) in self.candidates.iter().zip(&mut self.measures) {
            let newest = trial(*setting, sample)?;
            *measure = Some(match *measure {
                None => newest,
                Some(old) => CodecMeasure {
                    raw_bytes_per_s: blend(old.raw_bytes_per_s, newest.raw_bytes_per_s),
                    ratio: blend(old.ratio, newest.ratio),
                },
            });
        }
        let measures: Vec<CodecMeasure> = self.measures.iter().flatten().copied().collect();
        Ok(choose_codec(&measures, rate, self.max_threads))
    }
}

/// Compresses `sample` with `setting` once, timed.
fn trial(setting: CompressionSetting, sample: &[u8]) -> Result<CodecMeasure, WireError> {
    if setting == CompressionSetting::None {
        return Ok(CodecMeasure {
            raw_bytes_per_s: f64::INFINITY,
            ratio: 1.0,
        });
    }
    let started = Instant::now();
    let len = compressed_len(setting, sample)?;
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    Ok(CodecMeasure {
        raw_bytes_per_s: sample.len() as f64 / seconds,
        ratio: len as f64 / sample.len() as f64,
    })
}

fn blend(old: f64, newest: f64) -> f64 {
    if old.is_infinite() || newest.is_infinite() {
        return newest;
    }
    old * (1.0 - NEWEST_WEIGHT) + newest * NEWEST_WEIGHT
}

/// `none`, `lz4` or `zstd:LEVEL`, as `settings::parse_compression` reads.
pub(crate) fn name(setting: CompressionSetting) -> String {
    match setting {
        CompressionSetting::Zstd { level } => format!("zstd:{level}"),
        other => other.algorithm().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mllm_wire::{Compression, Role, PAGE_SIZE_U32};

    fn negotiated(algorithms: &[Compression]) -> Negotiated {
        Negotiated {
            peer_role: Role::Destination,
            compressions: algorithms.to_vec(),
            page_size: PAGE_SIZE_U32,
        }
    }

    /// Text-like data: compresses well with every codec.
    fn compressible() -> Vec<u8> {
        (0..512 << 10)
            .map(|i: usize| b"guest memory holds text and tables "[i % 35])
            .collect()
    }

    /// xorshift output: no codec shrinks it.
    fn random() -> Vec<u8> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        (0..512 << 10)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect()
    }

    #[test]
    fn a_slow_link_moves_compressible_data_to_a_compressing_codec() {
        let all = negotiated(&Compression::ALL);
        let mut tuner = CodecTuner::new(CompressionSetting::None, true, &all, 1);
        // 10 Mbit/s: any codec keeps up, the best ratio wins.
        let chosen = tuner.for_batch(&compressible(), Some(1.25e6)).unwrap();
        assert!(
            matches!(chosen, CompressionSetting::Zstd { .. }),
            "{chosen:?}"
        );
    }

    #[test]
    fn incompressible_data_goes_raw_and_a_fixed_codec_stays() {
        let all = negotiated(&Compression::ALL);
        let mut tuner = CodecTuner::new(CompressionSetting::Zstd { level: 1 }, true, &all, 2);
        let chosen = tuner.for_batch(&random(), Some(1.25e6)).unwrap();
        assert_eq!(chosen, CompressionSetting::None);
        let mut fixed = CodecTuner::new(CompressionSetting::Lz4, false, &all, 2);
        assert_eq!(
            fixed.for_batch(&random(), Some(1.25e6)).unwrap(),
            CompressionSetting::Lz4
        );
        assert_eq!(fixed.batches().get("lz4"), Some(&1));
    }

    #[test]
    fn only_codecs_the_destination_decodes_are_tried() {
        let lz4_only = negotiated(&[Compression::None, Compression::Lz4]);
        let mut tuner = CodecTuner::new(CompressionSetting::None, true, &lz4_only, 1);
        let chosen = tuner.for_batch(&compressible(), Some(1.25e6)).unwrap();
        assert_eq!(chosen, CompressionSetting::Lz4);
    }

    #[test]
    fn no_trial_before_the_link_rate_is_known_or_between_trials() {
        let all = negotiated(&Compression::ALL);
        let mut tuner = CodecTuner::new(CompressionSetting::Lz4, true, &all, 1);
        assert_eq!(
            tuner.for_batch(&compressible(), None).unwrap(),
            CompressionSetting::Lz4
        );
        let first = tuner.for_batch(&compressible(), Some(1.25e6)).unwrap();
        // The data turns incompressible, but the next trial is not due.
        assert_eq!(tuner.for_batch(&random(), Some(1.25e6)).unwrap(), first);
    }
}
