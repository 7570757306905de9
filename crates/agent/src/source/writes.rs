//! What the source knows of the guest's writes: the pages written since the
//! last round was planned, from tracker scans. When a trace is recorded, or
//! the strategy learns from the guest's writes, each scan is also one
//! interval of the trace and of what the strategy observes, and the source
//! scans every `trace_interval` while a round is sent or drains, so the
//! intervals keep a fine grain however long the rounds are; the pages found
//! accumulate until the next round takes them, so the rounds are what they
//! would be without.

use std::time::{Duration, Instant};

use mllm_control::TraceSummary;
use mllm_core::memory::{self, PageRange};
use mllm_core::strategy::GuestInterval;
use mllm_tracker::WriteTracker;

use crate::error::{Context, MigrationError};
use crate::memory_trace::{ScanSchedule, TraceFile};

type Result<T, E = MigrationError> = std::result::Result<T, E>;

enum Recording {
    Off,
    On(TraceFile),
    /// Writing the trace failed; the file holds the intervals before.
    Failed(TraceSummary),
}

pub(crate) struct WriteLog {
    tracker: Box<dyn WriteTracker>,
    recording: Recording,
    /// When the next scan is due, if scans are periodic (a trace, or a
    /// strategy that learns).
    schedule: Option<ScanSchedule>,
    /// For a strategy that learns: the intervals not yet handed to it.
    learned: Option<Vec<GuestInterval>>,
    last_scan: Instant,
    /// Written since the last [`WriteLog::take`]: sorted, disjoint, merged.
    pending: Vec<PageRange>,
    scanned: Vec<PageRange>,
}

impl WriteLog {
    /// `tracker` was started just now; `trace`, if any, gets an interval
    /// per scan, and so does the strategy if it `learns`; either makes scans
    /// due every `interval`.
    pub fn new(
        tracker: Box<dyn WriteTracker>,
        trace: Option<TraceFile>,
        learns: bool,
        interval: Duration,
    ) -> WriteLog {
        let started = Instant::now();
        let periodic = learns || trace.is_some();
        WriteLog {
            tracker,
            recording: trace.map_or(Recording::Off, Recording::On),
            schedule: periodic.then(|| ScanSchedule::new(started, interval)),
            learned: learns.then(Vec::new),
            last_scan: started,
            pending: Vec::new(),
            scanned: Vec::new(),
        }
    }

    /// Time left until the next periodic scan; `None` when scans are not
    /// periodic.
    pub fn until_scan_due(&self) -> Option<Duration> {
        self.schedule
            .as_ref()
            .map(|schedule| schedule.until_due(Instant::now()))
    }

    /// The intervals scanned since the last call, for a strategy that learns.
    pub fn take_intervals(&mut self) -> Vec<GuestInterval> {
        self.learned
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Scans if the next periodic scan is due.
    pub fn scan_if_due(&mut self) -> Result<()> {
        if self.until_scan_due() == Some(Duration::ZERO) {
            self.scan()?;
        }
        Ok(())
    }

    /// Scans now and hands over every page written since the last take.
    pub fn take(&mut self) -> Result<Vec<PageRange>> {
        self.scan()?;
        Ok(std::mem::take(&mut self.pending))
    }

    fn scan(&mut self) -> Result<()> {
        self.tracker
            .scan(&mut self.scanned)
            .during("scanning for pages the guest wrote")?;
        let now = Instant::now();
        if let Some(schedule) = &mut self.schedule {
            schedule.scanned(now);
        }
        if let Some(learned) = &mut self.learned {
            learned.push(GuestInterval {
                duration_s: now.duration_since(self.last_scan).as_secs_f64(),
                memory_writes: self.scanned.iter().flat_map(PageRange::pages).collect(),
                ..GuestInterval::default()
            });
        }
        self.record(now);
        self.last_scan = now;
        self.pending = memory::union(&self.pending, &self.scanned);
        Ok(())
    }

    /// Adds the scan that ended at `now` to the trace. A trace that cannot
    /// be written is given up, not the migration.
    fn record(&mut self, now: Instant) {
        let Recording::On(trace) = &mut self.recording else {
            return;
        };
        if let Err(error) = trace.push(now.duration_since(self.last_scan), &self.scanned) {
            tracing::warn!("memory trace abandoned, the migration goes on: {error:#}");
            let summary = TraceSummary {
                error: Some(format!("{error:#}")),
                ..trace.summary().clone()
            };
            self.recording = Recording::Failed(summary);
        }
    }

    /// Closes the trace, if one was recorded, and says what it holds.
    pub fn finish_trace(self) -> Option<TraceSummary> {
        match self.recording {
            Recording::Off => None,
            Recording::On(trace) => {
                let so_far = trace.summary().clone();
                Some(trace.finish().unwrap_or_else(|error| TraceSummary {
                    error: Some(format!("{error:#}")),
                    ..so_far
                }))
            }
            Recording::Failed(summary) => Some(summary),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::path::Path;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use mllm_core::trace::binary::read_memory;
    use mllm_tracker::{ScanStats, TrackerError, TrackingMethod};

    use super::*;

    /// Reports the scripted pages, one list per scan, then nothing.
    struct ScriptedTracker {
        scans: VecDeque<Vec<PageRange>>,
        calls: Arc<AtomicU32>,
    }

    impl WriteTracker for ScriptedTracker {
        fn method(&self) -> TrackingMethod {
            TrackingMethod::PagemapScan
        }

        fn scan(&mut self, written: &mut Vec<PageRange>) -> Result<ScanStats, TrackerError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            *written = self.scans.pop_front().unwrap_or_default();
            Ok(ScanStats::default())
        }
    }

    fn tracker(scans: &[&[(u32, u32)]]) -> (Box<dyn WriteTracker>, Arc<AtomicU32>) {
        let calls = Arc::new(AtomicU32::new(0));
        let scans = scans
            .iter()
            .map(|ranges| ranges.iter().map(|&(s, e)| PageRange::new(s, e)).collect())
            .collect();
        let tracker = ScriptedTracker {
            scans,
            calls: Arc::clone(&calls),
        };
        (Box::new(tracker), calls)
    }

    #[test]
    fn periodic_scans_accumulate_into_the_next_round_and_each_is_an_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.trace");
        let (tracker, _) = tracker(&[&[(0, 2)], &[(1, 4), (8, 9)], &[(20, 21)], &[(3, 5)]]);
        let trace = TraceFile::create(&path, 32).unwrap();
        // A zero interval: every check finds a scan due.
        let mut writes = WriteLog::new(tracker, Some(trace), false, Duration::ZERO);
        writes.scan_if_due().unwrap();
        writes.scan_if_due().unwrap();
        let round = writes.take().unwrap();
        let expected = [(0, 4), (8, 9), (20, 21)].map(|(s, e)| PageRange::new(s, e));
        assert_eq!(round, expected);
        assert_eq!(writes.take().unwrap(), [PageRange::new(3, 5)]);

        let summary = writes.finish_trace().unwrap();
        assert_eq!((summary.intervals, summary.page_writes), (4, 9));
        assert_eq!(summary.error, None);
        let recorded = read_memory(std::fs::File::open(&path).unwrap()).unwrap();
        let pages: Vec<&[u32]> = recorded.intervals.iter().map(|i| i.pages()).collect();
        assert_eq!(pages, [&[0, 1][..], &[1, 2, 3, 8], &[20], &[3, 4]]);
    }

    #[test]
    fn without_a_trace_only_rounds_scan() {
        let (tracker, calls) = tracker(&[&[(5, 6)]]);
        let mut writes = WriteLog::new(tracker, None, false, Duration::ZERO);
        assert_eq!(writes.until_scan_due(), None);
        writes.scan_if_due().unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 0);
        assert_eq!(writes.take().unwrap(), [PageRange::new(5, 6)]);
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert!(writes.finish_trace().is_none());
    }

    #[test]
    fn a_trace_that_cannot_be_written_is_given_up_and_scanning_goes_on() {
        // Every other page written: one run per page, enough to overflow the
        // file's buffer at the first interval.
        let scattered: Vec<(u32, u32)> = (0..10_000).map(|i| (2 * i, 2 * i + 1)).collect();
        let (tracker, _) = tracker(&[&scattered, &[(1, 2)]]);
        let full_disk = TraceFile::create(Path::new("/dev/full"), 20_000).unwrap();
        let mut writes = WriteLog::new(tracker, Some(full_disk), false, Duration::from_secs(3600));
        assert_eq!(writes.take().unwrap().len(), 10_000);
        assert_eq!(writes.take().unwrap(), [PageRange::new(1, 2)]);
        let summary = writes.finish_trace().unwrap();
        assert_eq!(summary.intervals, 0);
        let error = summary.error.expect("the write error is reported");
        assert!(error.contains("/dev/full"), "{error}");
    }
}
