//! The hook and the trackers against `page_writer`, whose writes are known.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

use mllm_tracker::{
    arm_hook, detect, PageIndex, PageRange, PagemapScanTracker, RamMapping, SoftDirtyTracker,
    TrackingMethod, WriteTracker, PAGE_SIZE,
};

use crate::support::PageWriter;

const RAM_BYTES: u64 = 64 << 20;
const RAM_PAGES: PageIndex = (RAM_BYTES / PAGE_SIZE as u64) as PageIndex;
/// The write-protect features the hook must obtain on Linux 6.7+:
/// WP_HUGETLBFS_SHMEM, WP_UNPOPULATED, WP_ASYNC.
const WRITE_PROTECT_FEATURES: u64 = (1 << 12) | (1 << 13) | (1 << 15);

fn armed_tracker(writer: &PageWriter) -> PagemapScanTracker {
    let ram = writer.ram();
    let armed = arm_hook(writer.socket(), ram).expect("arming the hook");
    assert!(
        armed.features.contains(WRITE_PROTECT_FEATURES),
        "granted {}",
        armed.features
    );
    PagemapScanTracker::new(writer.pid(), ram, armed).expect("tracker")
}

fn write(writer: &mut PageWriter, pages: &[PageIndex]) {
    let list: Vec<String> = pages.iter().map(PageIndex::to_string).collect();
    assert_eq!(
        writer.command(&format!("pages {}", list.join(" "))),
        pages.len() as u64
    );
}

fn scan(tracker: &mut dyn WriteTracker) -> Vec<PageRange> {
    let mut written = Vec::new();
    let stats = tracker.scan(&mut written).expect("scan");
    assert_eq!(stats.ranges, written.len());
    assert_eq!(
        stats.pages_written,
        written.iter().map(PageRange::len).sum::<u64>()
    );
    written
}

/// The ranges covering `pages` (sorted, distinct).
fn ranges(pages: &[PageIndex]) -> Vec<PageRange> {
    let mut ranges: Vec<PageRange> = Vec::new();
    for &page in pages {
        match ranges.last_mut() {
            Some(last) if last.end == page => last.end += 1,
            _ => ranges.push(PageRange::new(page, page + 1)),
        }
    }
    ranges
}

#[test]
fn the_writer_mapping_is_found_by_its_file() {
    let writer = PageWriter::spawn(RAM_BYTES, true);
    let ram = writer.ram();
    assert_eq!(ram.len, RAM_BYTES);
    assert_eq!(ram.start % PAGE_SIZE as u64, 0);
}

#[test]
fn scans_report_exactly_the_pages_written_since_the_previous_scan() {
    let mut writer = PageWriter::spawn(RAM_BYTES, true);
    let mut tracker = armed_tracker(&writer);
    assert_eq!(scan(&mut tracker), [], "nothing written since arming");

    let pages = [0, 1, 2, 7, 4095, 8000, RAM_PAGES - 1];
    write(&mut writer, &pages);
    assert_eq!(scan(&mut tracker), ranges(&pages));
    assert_eq!(scan(&mut tracker), [], "a scan without writes in between");

    // Pages reported before are protected again; new ones are tracked too.
    write(&mut writer, &[9, 1, 9]);
    assert_eq!(scan(&mut tracker), ranges(&[1, 9]));
}

#[test]
fn populated_and_unpopulated_pages_are_tracked_alike() {
    let mut writer = PageWriter::spawn(RAM_BYTES, true);
    // Map the first half into the page tables before arming; the second half
    // stays unpopulated.
    let half = RAM_PAGES / 2;
    assert_eq!(
        writer.command(&format!("stride 0 1 {half}")),
        u64::from(half)
    );
    let mut tracker = armed_tracker(&writer);
    assert_eq!(scan(&mut tracker), []);

    let pages = [3, half - 1, half, half + 5, RAM_PAGES - 2];
    write(&mut writer, &pages);
    assert_eq!(scan(&mut tracker), ranges(&pages));
}

#[test]
fn a_full_output_buffer_resumes_where_the_walk_stopped() {
    let mut writer = PageWriter::spawn(RAM_BYTES, true);
    let mut tracker = armed_tracker(&writer).with_output_regions(3);
    // 100 separate runs of one or two pages.
    let pages: Vec<PageIndex> = (0..100)
        .flat_map(|i| {
            let page = i * 97;
            if i % 3 == 0 {
                vec![page, page + 1]
            } else {
                vec![page]
            }
        })
        .collect();
    write(&mut writer, &pages);
    let mut written = Vec::new();
    let stats = tracker.scan(&mut written).expect("scan");
    assert_eq!(written, ranges(&pages));
    assert!(stats.kernel_calls >= 34, "{} calls", stats.kernel_calls);
    assert_eq!(scan(&mut tracker), []);
}

#[test]
fn detect_prefers_pagemap_scan_and_explains_why_nothing_works() {
    let mut writer = PageWriter::spawn(RAM_BYTES, true);
    let mut tracker = detect(writer.pid(), writer.ram(), Some(writer.socket())).expect("detect");
    assert_eq!(tracker.method(), TrackingMethod::PagemapScan);
    write(&mut writer, &[5, 6]);
    assert_eq!(scan(tracker.as_mut()), ranges(&[5, 6]));

    // Without the hook only soft-dirty remains, which this kernel may lack.
    let mut unhooked = PageWriter::spawn(RAM_BYTES, false);
    let outcome = detect(unhooked.pid(), unhooked.ram(), None);
    match SoftDirtyTracker::check_kernel_support() {
        Ok(()) => {
            let mut tracker = outcome.expect("soft-dirty tracker");
            assert_eq!(tracker.method(), TrackingMethod::SoftDirty);
            write(&mut unhooked, &[10, 11, 40]);
            assert_eq!(scan(tracker.as_mut()), ranges(&[10, 11, 40]));
            assert_eq!(scan(tracker.as_mut()), []);
        }
        Err(soft_dirty_missing) => {
            let error = format!("{:#}", outcome.err().expect("no method should work"));
            assert!(error.contains("no hook socket"), "{error}");
            assert!(error.contains(&soft_dirty_missing.to_string()), "{error}");
        }
    }
}

#[test]
fn the_hook_stays_idle_without_its_variable() {
    let mut writer = PageWriter::spawn(RAM_BYTES, false);
    write(&mut writer, &[1]);
    let threads = std::fs::read_dir(format!("/proc/{}/task", writer.pid()))
        .expect("task list")
        .count();
    assert_eq!(threads, 1, "the hook started a thread");
    assert!(!writer.socket().exists());
}

fn raw_request(writer: &PageWriter, request: &str) -> String {
    let mut stream = UnixStream::connect(writer.socket()).expect("connecting to the hook");
    writeln!(stream, "{request}").expect("sending");
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).expect("reply");
    reply
}

#[test]
fn the_hook_refuses_bad_requests_and_rearms_once_released() {
    let writer = PageWriter::spawn(RAM_BYTES, true);
    let ram = writer.ram();
    let reply = raw_request(&writer, &format!("WP {:x} 4000", ram.start));
    assert!(
        reply.starts_with("ERR ") && reply.contains("aligned"),
        "{reply}"
    );
    assert!(raw_request(&writer, "MISSING 1000 4096").starts_with("ERR "));

    let unmapped = RamMapping {
        start: PAGE_SIZE as u64,
        len: PAGE_SIZE as u64,
    };
    let error = arm_hook(writer.socket(), unmapped).unwrap_err();
    assert!(
        format!("{error:#}").contains("UFFDIO_REGISTER"),
        "{error:#}"
    );

    let first = arm_hook(writer.socket(), ram).expect("first arming");
    // The range is still registered through our copy of the first descriptor.
    let busy = arm_hook(writer.socket(), ram).unwrap_err();
    assert!(format!("{busy:#}").contains("busy"), "{busy:#}");
    drop(first);
    let again = arm_hook(writer.socket(), ram).expect("arming after release");
    PagemapScanTracker::new(writer.pid(), ram, again).expect("tracker after re-arming");
}
