//! A binary memory trace file, filled one tracker scan at a time.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::time::Duration;

use mllm_control::TraceSummary;
use mllm_core::memory::{PageIndex, PageRange, PAGE_SIZE_U32};
use mllm_core::trace::binary::MemoryTraceWriter;
use mllm_core::trace::{MemoryTraceHeader, TraceError, WriteInterval};

use crate::error::MigrationError;

type Result<T, E = MigrationError> = std::result::Result<T, E>;

pub(crate) struct TraceFile {
    writer: MemoryTraceWriter<BufWriter<File>>,
    summary: TraceSummary,
}

impl TraceFile {
    /// Creates (or truncates) `path` for a guest of `pages` pages.
    pub fn create(path: &Path, pages: PageIndex) -> Result<TraceFile> {
        let failed = |error: std::io::Error| MigrationError::Trace {
            what: format!("creating memory trace {}", path.display()),
            source: TraceError::from(error),
        };
        let header = MemoryTraceHeader {
            page_size: PAGE_SIZE_U32,
            page_count: pages,
        };
        let file = File::create(path).map_err(failed)?;
        let writer = MemoryTraceWriter::new(BufWriter::new(file), header).map_err(failed)?;
        Ok(TraceFile {
            writer,
            summary: TraceSummary {
                path: path.to_owned(),
                intervals: 0,
                duration_ms: 0.0,
                page_writes: 0,
                error: None,
            },
        })
    }

    /// Appends one scan: the pages `written` in the `duration` since the
    /// previous scan.
    pub fn push(&mut self, duration: Duration, written: &[PageRange]) -> Result<()> {
        let pages: Vec<PageIndex> = written.iter().flat_map(PageRange::pages).collect();
        let page_writes = pages.len() as u64;
        // Readers reject intervals of zero length; two scans within one
        // microsecond are the only way to get one.
        let duration_us = u64::try_from(duration.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.writer
            .push(&WriteInterval::new(duration_us, pages))
            .map_err(|source| MigrationError::Trace {
                what: format!("writing memory trace {}", self.summary.path.display()),
                source,
            })?;
        self.summary.intervals += 1;
        self.summary.duration_ms += duration_us as f64 / 1000.0;
        self.summary.page_writes += page_writes;
        Ok(())
    }

    /// What was recorded so far.
    pub fn summary(&self) -> &TraceSummary {
        &self.summary
    }

    /// Flushes the file.
    pub fn finish(self) -> Result<TraceSummary> {
        let summary = self.summary;
        self.writer
            .finish()
            .map_err(|error| MigrationError::Trace {
                what: format!("writing memory trace {}", summary.path.display()),
                source: TraceError::from(error),
            })?;
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mllm_core::trace::binary::read_memory;

    #[test]
    fn scans_read_back_as_intervals_of_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.trace");
        let mut trace = TraceFile::create(&path, 100).unwrap();
        let first = [PageRange::new(0, 3), PageRange::new(10, 11)];
        trace.push(Duration::from_millis(100), &first).unwrap();
        trace.push(Duration::from_micros(250), &[]).unwrap();
        trace
            .push(Duration::ZERO, &[PageRange::new(99, 100)])
            .unwrap();
        let summary = trace.finish().unwrap();
        assert_eq!(summary.intervals, 3);
        assert_eq!(summary.page_writes, 5);
        assert!((summary.duration_ms - 100.251).abs() < 1e-9, "{summary:?}");

        let recorded = read_memory(File::open(&path).unwrap()).unwrap();
        assert_eq!(recorded.header.page_size, 4096);
        assert_eq!(recorded.header.page_count, 100);
        let intervals: Vec<(u64, &[u32])> = recorded
            .intervals
            .iter()
            .map(|interval| (interval.duration_us, interval.pages()))
            .collect();
        assert_eq!(
            intervals,
            [
                (100_000, &[0, 1, 2, 10][..]),
                (250, &[][..]),
                (1, &[99][..])
            ]
        );
    }

    #[test]
    fn pages_beyond_the_guest_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut trace = TraceFile::create(&dir.path().join("t"), 10).unwrap();
        let error = trace
            .push(Duration::from_millis(1), &[PageRange::new(9, 11)])
            .unwrap_err();
        assert!(error.chain().contains("beyond"), "{}", error.chain());
    }
}
