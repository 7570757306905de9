//! What a caller can tune about a migration, with defaults that match QEMU's
//! own pre-copy where QEMU has an equivalent.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use mllm_core::memory::PageIndex;
use mllm_core::planner::PlannerConfig;
pub use mllm_core::strategy::{BoundAction, DiskMove};
use mllm_core::strategy::{Hybrid, Mllm, Precopy, PrecopyLimits, Strategy};
pub use mllm_core::workingset::EstimatorKind;
pub use mllm_wire::MigrationPolicy;
use mllm_wire::{CompressionSetting, MAX_BATCH_PAGES};

use crate::error::MigrationError;

/// How the source decides what to send, in which order, and when to switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStrategy {
    /// Rounds until what is dirty fits the downtime target (QEMU's rule).
    Precopy,
    /// One round, then the guest runs on the destination while the pages
    /// written meanwhile follow (QEMU's post-copy after a first pass).
    Postcopy,
    /// MLLM: the write workingset, predicted by `estimator` from the writes
    /// the tracker sees, is left out of the pre-copy rounds; at the switch
    /// the hottest pending pages move while the guest is paused, as many as
    /// fit the downtime target, and the rest after it by post-copy, hottest
    /// first.
    Mllm { estimator: EstimatorKind },
}

impl SourceStrategy {
    /// The policy the destination is asked to receive.
    pub fn policy(self) -> MigrationPolicy {
        match self {
            SourceStrategy::Precopy => MigrationPolicy::Precopy,
            SourceStrategy::Postcopy | SourceStrategy::Mllm { .. } => MigrationPolicy::Postcopy,
        }
    }
}

/// Settings of the source agent's migration.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub strategy: SourceStrategy,
    /// Switch over once the predicted final transfer fits in this time
    /// (QEMU's `downtime-limit`, also 300 ms by default).
    pub downtime_target: Duration,
    /// How page batches are compressed; falls back to none when the peer
    /// cannot decode the choice. With `adaptive_compression`, only the
    /// first batches' codec.
    pub compression: CompressionSetting,
    /// Re-choose the codec as the migration goes, from the link rate and
    /// the codecs' speed and ratio measured on the data sent (docs/dedup.md,
    /// "Compression"); off, `compression` stays.
    pub adaptive_compression: bool,
    /// Pages per batch (at most [`MAX_BATCH_PAGES`]); each batch is
    /// acknowledged, which is what the link rate is measured from.
    pub batch_pages: usize,
    /// Pre-copy rounds after which `on_bound` applies (the final round,
    /// sent with the VM stopped, is not counted); under the MLLM policy,
    /// the planner's bound on passes, after which it switches.
    pub max_rounds: u32,
    /// Time after which `on_bound` applies; `None` for no bound.
    pub max_duration: Option<Duration>,
    pub on_bound: BoundAction,
    /// Test mode: the destination compares a digest of every page with the
    /// source's at the switch and refuses to start the VM on a mismatch.
    pub verify: bool,
    /// Silence from the peer for this long means the link is dead.
    pub link_timeout: Duration,
    /// Post-copy, after the link failed: how long the source keeps trying
    /// to reach the destination again (when it was given a way to
    /// reconnect). The destination waits as long, set alike.
    pub recovery_timeout: Duration,
    /// Record the guest's memory writes, from when tracking starts until
    /// the VM stops, into this file (mllm-core's binary memory trace): one
    /// interval per tracker scan. If writing it fails, the migration goes on
    /// and the report says why the trace ended early.
    pub trace_file: Option<PathBuf>,
    /// While a trace is recorded, or the strategy learns from the guest's
    /// writes, the tracker is scanned at least this often, in the middle of
    /// rounds too, so intervals stay short.
    pub trace_interval: Duration,
    /// With the MLLM strategy, how the disk's blocks besides the predicted
    /// read workingset move. Pre-copy by default: after the switch each
    /// block the guest needs first costs it two round trips, which lost on
    /// a disk with random reads (docs/disk.md).
    pub mllm_disk: DiskMove,
    /// De-duplication of content the destination already holds.
    pub dedup: DedupSettings,
    /// Names the migration to the destination, so that a post-copy can be
    /// resumed on a new connection, by this agent or by one that restarts
    /// and finds the id in its records ([`crate::resume_postcopy_after_restart`]).
    /// Random when `None`.
    pub migration_id: Option<u128>,
}

/// The source's hot-data cache (`mllm_core::dedup`, docs/dedup.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupSettings {
    /// Pages and blocks of recently sent content the index remembers; 0
    /// turns de-duplication off. An entry costs the source about 90 bytes.
    pub entries: usize,
    /// Test hook: every so many references name a location the source
    /// knows to hold other content, as if the two sides' views of it
    /// disagreed. The destination must refuse each and get the content.
    pub misdirect_every: Option<NonZeroU32>,
}

impl DedupSettings {
    /// No de-duplication: every page and block travels as content.
    pub const OFF: DedupSettings = DedupSettings {
        entries: 0,
        misdirect_every: None,
    };
}

impl Default for DedupSettings {
    /// 256 Ki entries: the last GiB of distinct content sent, for about
    /// 23 MiB of source memory.
    fn default() -> Self {
        DedupSettings {
            entries: 256 << 10,
            misdirect_every: None,
        }
    }
}

impl Default for SourceSettings {
    fn default() -> Self {
        SourceSettings {
            strategy: SourceStrategy::Precopy,
            downtime_target: Duration::from_millis(300),
            compression: CompressionSetting::Zstd { level: 1 },
            adaptive_compression: true,
            batch_pages: 256,
            max_rounds: 30,
            max_duration: None,
            on_bound: BoundAction::Switch,
            verify: false,
            link_timeout: Duration::from_secs(30),
            recovery_timeout: DEFAULT_RECOVERY_TIMEOUT,
            trace_file: None,
            trace_interval: Duration::from_millis(100),
            mllm_disk: DiskMove::Precopy,
            dedup: DedupSettings::default(),
            migration_id: None,
        }
    }
}

impl SourceSettings {
    /// The strategy these settings describe, for a guest of `pages` pages.
    /// `disk_blocks`: the VM's disk, if it has one: MLLM then predicts its
    /// read workingset too.
    pub(crate) fn build_strategy(
        &self,
        pages: PageIndex,
        disk_blocks: Option<u32>,
    ) -> Box<dyn Strategy> {
        let config = PlannerConfig {
            downtime_target_s: self.downtime_target.as_secs_f64(),
            // The strategy observes one interval per tracker scan.
            interval_s: self.trace_interval.as_secs_f64(),
            ..PlannerConfig::default()
        };
        match self.strategy {
            SourceStrategy::Precopy => {}
            SourceStrategy::Postcopy => return Box::new(Hybrid::new(config)),
            SourceStrategy::Mllm { estimator } => {
                // The planner fills its downtime budget with the hottest
                // pages. Half of the target is kept for what that budget
                // does not see live: batches still in flight at the stop
                // (up to half the target, see `wait_for_drain`), the device
                // state, and QEMU's stop, load and resume.
                let config = PlannerConfig {
                    downtime_target_s: config.downtime_target_s / 2.0,
                    max_passes: self.max_rounds,
                    ..config
                };
                return Box::new(
                    Mllm::new(
                        config,
                        estimator.build(pages, ESTIMATOR_HORIZON),
                        disk_blocks.map(|blocks| estimator.build(blocks, ESTIMATOR_HORIZON)),
                    )
                    .moving_disk(self.mllm_disk),
                );
            }
        }
        let limits = PrecopyLimits {
            max_rounds: u64::from(self.max_rounds),
            max_duration_s: self.max_duration.map(|limit| limit.as_secs_f64()),
            max_sent_ratio: None,
            on_bound: self.on_bound,
        };
        Box::new(Precopy::new(config, limits))
    }

    pub(crate) fn validate(&self) -> Result<(), MigrationError> {
        let invalid = |what: String| Err(MigrationError::Invalid(what));
        if !(1..=MAX_BATCH_PAGES).contains(&self.batch_pages) {
            return invalid(format!(
                "batch_pages is {}, must be within 1..={MAX_BATCH_PAGES}",
                self.batch_pages
            ));
        }
        if self.downtime_target.is_zero() {
            return invalid("the downtime target must be positive".into());
        }
        let periodic =
            self.trace_file.is_some() || matches!(self.strategy, SourceStrategy::Mllm { .. });
        if periodic && self.trace_interval.is_zero() {
            return invalid("the trace interval must be positive".into());
        }
        Ok(())
    }
}

/// How long either agent waits for the other after the link failed in
/// post-copy: long enough to ride out a routing change or an agent
/// restart, short enough that an operator hears of a lost peer the same
/// day the guest starts to hang on its missing pages.
pub const DEFAULT_RECOVERY_TIMEOUT: Duration = Duration::from_secs(120);

/// How far ahead, in scan intervals, the learning estimators (improved,
/// hierarchical) train their prediction to look: the simulator's default.
const ESTIMATOR_HORIZON: u32 = 10;

/// A compression name that [`parse_compression`] does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown compression {0:?}: use none, lz4, zstd or zstd:LEVEL (LEVEL a number)")]
pub struct UnknownCompression(String);

/// Reads `none`, `lz4`, `zstd` or `zstd:LEVEL`.
pub fn parse_compression(text: &str) -> Result<CompressionSetting, UnknownCompression> {
    match text.split_once(':') {
        None if text == "none" => Ok(CompressionSetting::None),
        None if text == "lz4" => Ok(CompressionSetting::Lz4),
        None if text == "zstd" => Ok(CompressionSetting::Zstd { level: 1 }),
        Some(("zstd", level)) => level
            .parse()
            .map(|level| CompressionSetting::Zstd { level })
            .map_err(|_| UnknownCompression(text.to_owned())),
        _ => Err(UnknownCompression(text.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_names_parse() {
        assert_eq!(parse_compression("none").unwrap(), CompressionSetting::None);
        assert_eq!(parse_compression("lz4").unwrap(), CompressionSetting::Lz4);
        assert_eq!(
            parse_compression("zstd:7").unwrap(),
            CompressionSetting::Zstd { level: 7 }
        );
        assert!(parse_compression("gzip").is_err());
        assert!(parse_compression("zstd:x").is_err());
    }

    #[test]
    fn oversized_batches_are_refused() {
        let settings = SourceSettings {
            batch_pages: MAX_BATCH_PAGES + 1,
            ..SourceSettings::default()
        };
        assert!(settings.validate().is_err());
        assert!(SourceSettings::default().validate().is_ok());
    }
}
