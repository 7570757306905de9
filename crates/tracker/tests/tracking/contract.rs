//! What every [`WriteTracker`] backend must do, written once: a backend's
//! module instantiates [`contract_tests!`] with its [`Backend`] and gets one
//! test per clause below.
//!
//! A backend this machine cannot run (soft-dirty bits on a kernel without
//! `CONFIG_MEM_SOFT_DIRTY`) skips each clause with a line on stderr, printed
//! past the test harness's capture, and
//! [`the_contract_runs_on_at_least_one_backend`] fails when every backend
//! skips: the suite cannot pass having checked nothing.

use std::io::Write;

use mllm_tracker::{PageIndex, PageRange, TrackerError, WriteTracker, PAGE_SIZE};

use crate::support::PageWriter;

pub const RAM_PAGES: PageIndex = 16 * 1024;
pub const RAM_BYTES: u64 = RAM_PAGES as u64 * PAGE_SIZE as u64;

/// A tracker backend under the contract.
pub struct Backend<T> {
    pub name: &'static str,
    /// Whether this machine can run the backend; the error says why not.
    pub supported: fn() -> Result<(), TrackerError>,
    /// Starts tracking the writer's RAM.
    pub start: fn(&PageWriter) -> T,
}

impl<T: WriteTracker> Backend<T> {
    /// Runs `clause` with this backend's `start`, or says why it cannot run.
    pub fn run(&self, clause: &str, check: impl FnOnce(fn(&PageWriter) -> T)) {
        match (self.supported)() {
            Ok(()) => check(self.start),
            Err(why) => {
                // Straight to stderr: the harness captures only print!/eprint!.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED {clause} on {}: this machine cannot run it: {:#}",
                    self.name,
                    anyhow::Error::from(why)
                );
            }
        }
    }
}

/// One `#[test]` per clause of the contract, run on the [`Backend`] given.
macro_rules! contract_tests {
    ($backend:expr) => {
        crate::contract::contract_tests!(@clauses $backend;
            the_first_scan_reports_the_writes_since_the_tracker_started,
            a_scan_with_nothing_written_is_empty,
            a_page_written_once_is_reported_once,
            pages_written_again_after_a_scan_are_reported_again,
            populated_and_unpopulated_pages_are_tracked_alike,
            adjacent_pages_come_back_as_one_range,
            many_separate_runs_come_back_exact,
            scan_stats_count_the_pages_and_ranges_reported,
        );
    };
    (@clauses $backend:expr; $($clause:ident),+ $(,)?) => {
        $(
            #[test]
            fn $clause() {
                $backend.run(stringify!($clause), |start| crate::contract::$clause(start));
            }
        )+
    };
}
pub(crate) use contract_tests;

#[test]
fn the_contract_runs_on_at_least_one_backend() {
    use crate::{pagemap_scan, soft_dirty};
    let backends = [
        (
            pagemap_scan::BACKEND.name,
            (pagemap_scan::BACKEND.supported)(),
        ),
        (soft_dirty::BACKEND.name, (soft_dirty::BACKEND.supported)()),
    ];
    assert!(
        backends.iter().any(|(_, supported)| supported.is_ok()),
        "no tracker backend runs on this machine: {backends:?}"
    );
}

/// Has the writer write `pages`, in the order given.
pub fn write_pages(writer: &mut PageWriter, pages: &[PageIndex]) {
    let list: Vec<String> = pages.iter().map(PageIndex::to_string).collect();
    assert_eq!(
        writer.command(&format!("pages {}", list.join(" "))),
        pages.len() as u64
    );
}

/// Scans, checking what every scan promises: ranges within guest RAM,
/// sorted, disjoint and merged, counted right in the stats.
pub fn scan(tracker: &mut dyn WriteTracker) -> Vec<PageRange> {
    // Not empty: a scan replaces what the vector held.
    let mut written = vec![PageRange::new(0, 1)];
    let stats = tracker.scan(&mut written).expect("scan");
    assert!(written.iter().all(|range| !range.is_empty()), "{written:?}");
    assert!(
        written.windows(2).all(|pair| pair[0].end < pair[1].start),
        "ranges not sorted, disjoint and merged: {written:?}"
    );
    assert!(
        written.last().is_none_or(|last| last.end <= RAM_PAGES),
        "{written:?}"
    );
    assert_eq!(stats.ranges, written.len());
    assert_eq!(
        stats.pages_written,
        written.iter().map(PageRange::len).sum::<u64>()
    );
    written
}

/// The ranges covering `pages` (sorted, distinct).
pub fn ranges(pages: &[PageIndex]) -> Vec<PageRange> {
    let mut ranges: Vec<PageRange> = Vec::new();
    for &page in pages {
        match ranges.last_mut() {
            Some(last) if last.end == page => last.end += 1,
            _ => ranges.push(PageRange::new(page, page + 1)),
        }
    }
    ranges
}

fn spawn_writer() -> PageWriter {
    PageWriter::spawn(RAM_BYTES, true)
}

pub fn the_first_scan_reports_the_writes_since_the_tracker_started<T: WriteTracker>(
    start: impl Fn(&PageWriter) -> T,
) {
    let mut writer = spawn_writer();
    write_pages(&mut writer, &[1, 2, 50]);
    let mut tracker = start(&writer);
    write_pages(&mut writer, &[2, 3, 60]);
    assert_eq!(scan(&mut tracker), ranges(&[2, 3, 60]));
}

pub fn a_scan_with_nothing_written_is_empty<T: WriteTracker>(start: impl Fn(&PageWriter) -> T) {
    let writer = spawn_writer();
    let mut tracker = start(&writer);
    assert_eq!(scan(&mut tracker), []);
    assert_eq!(scan(&mut tracker), []);
}

pub fn a_page_written_once_is_reported_once<T: WriteTracker>(start: impl Fn(&PageWriter) -> T) {
    let mut writer = spawn_writer();
    let mut tracker = start(&writer);
    // The first and last pages of guest RAM too.
    let pages = [0, 1, 2, 7, 4095, 8000, RAM_PAGES - 1];
    write_pages(&mut writer, &pages);
    assert_eq!(scan(&mut tracker), ranges(&pages));
    assert_eq!(scan(&mut tracker), [], "reported again without a write");
}

pub fn pages_written_again_after_a_scan_are_reported_again<T: WriteTracker>(
    start: impl Fn(&PageWriter) -> T,
) {
    let mut writer = spawn_writer();
    let mut tracker = start(&writer);
    write_pages(&mut writer, &[1, 9, 30]);
    assert_eq!(scan(&mut tracker), ranges(&[1, 9, 30]));
    // Page 30, not written again, stays out.
    write_pages(&mut writer, &[9, 1, 9, 20]);
    assert_eq!(scan(&mut tracker), ranges(&[1, 9, 20]));
}

pub fn populated_and_unpopulated_pages_are_tracked_alike<T: WriteTracker>(
    start: impl Fn(&PageWriter) -> T,
) {
    let mut writer = spawn_writer();
    // Map the first half into the page tables before tracking starts; the
    // second half stays unpopulated.
    let half = RAM_PAGES / 2;
    assert_eq!(
        writer.command(&format!("stride 0 1 {half}")),
        u64::from(half)
    );
    let mut tracker = start(&writer);
    assert_eq!(scan(&mut tracker), []);
    let pages = [3, half - 1, half, half + 5, RAM_PAGES - 2];
    write_pages(&mut writer, &pages);
    assert_eq!(scan(&mut tracker), ranges(&pages));
}

pub fn adjacent_pages_come_back_as_one_range<T: WriteTracker>(start: impl Fn(&PageWriter) -> T) {
    let mut writer = spawn_writer();
    let mut tracker = start(&writer);
    write_pages(&mut writer, &[302, 12, 300, 10, 11, 301]);
    assert_eq!(
        scan(&mut tracker),
        [PageRange::new(10, 13), PageRange::new(300, 303)]
    );
}

pub fn many_separate_runs_come_back_exact<T: WriteTracker>(start: impl Fn(&PageWriter) -> T) {
    let mut writer = spawn_writer();
    let mut tracker = start(&writer);
    let pages = hundred_runs_of_one_or_two_pages();
    write_pages(&mut writer, &pages);
    assert_eq!(scan(&mut tracker), ranges(&pages));
    assert_eq!(scan(&mut tracker), []);
}

/// Pages forming 100 separate runs, one page or two, sorted.
pub fn hundred_runs_of_one_or_two_pages() -> Vec<PageIndex> {
    (0..100)
        .flat_map(|i| {
            let page = i * 97;
            if i % 3 == 0 {
                vec![page, page + 1]
            } else {
                vec![page]
            }
        })
        .collect()
}

pub fn scan_stats_count_the_pages_and_ranges_reported<T: WriteTracker>(
    start: impl Fn(&PageWriter) -> T,
) {
    let mut writer = spawn_writer();
    let mut tracker = start(&writer);
    write_pages(&mut writer, &[1, 2, 3, 10]);
    let mut written = Vec::new();
    let stats = tracker.scan(&mut written).expect("scan");
    assert_eq!((stats.pages_written, stats.ranges), (4, 2));
    assert!(stats.kernel_calls >= 1, "{stats:?}");
}
