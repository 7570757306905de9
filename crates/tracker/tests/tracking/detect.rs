//! Finding guest RAM in a process and picking the tracking method.

use mllm_tracker::{detect, SoftDirtyTracker, TrackerError, TrackingMethod, PAGE_SIZE};

use crate::contract::{ranges, scan, write_pages, RAM_BYTES};
use crate::support::PageWriter;

#[test]
fn the_writer_mapping_is_found_by_its_file() {
    let writer = PageWriter::spawn(RAM_BYTES, true);
    let ram = writer.ram();
    assert_eq!(ram.len, RAM_BYTES);
    assert_eq!(ram.start % PAGE_SIZE as u64, 0);
}

#[test]
fn detect_prefers_pagemap_scan_and_explains_why_nothing_works() {
    let mut writer = PageWriter::spawn(RAM_BYTES, true);
    let mut tracker = detect(writer.pid(), writer.ram(), Some(writer.socket())).expect("detect");
    assert_eq!(tracker.method(), TrackingMethod::PagemapScan);
    write_pages(&mut writer, &[5, 6]);
    assert_eq!(scan(tracker.as_mut()), ranges(&[5, 6]));

    // Without the hook only soft-dirty remains, which this kernel may lack.
    let mut unhooked = PageWriter::spawn(RAM_BYTES, false);
    let outcome = detect(unhooked.pid(), unhooked.ram(), None);
    match SoftDirtyTracker::check_kernel_support() {
        Ok(()) => {
            let mut tracker = outcome.expect("soft-dirty tracker");
            assert_eq!(tracker.method(), TrackingMethod::SoftDirty);
            write_pages(&mut unhooked, &[10, 11, 40]);
            assert_eq!(scan(tracker.as_mut()), ranges(&[10, 11, 40]));
            assert_eq!(scan(tracker.as_mut()), []);
        }
        Err(soft_dirty_missing) => {
            let error = match outcome {
                Err(error) => error,
                Ok(tracker) => panic!("{} should not work", tracker.method()),
            };
            let message = error.to_string();
            let TrackerError::NoMethodWorks { pid, failures } = error else {
                panic!("expected every method to fail, got {message}");
            };
            assert_eq!(pid, unhooked.pid());
            let tried: Vec<TrackingMethod> = failures.iter().map(|f| f.method).collect();
            assert_eq!(
                tried,
                [TrackingMethod::PagemapScan, TrackingMethod::SoftDirty]
            );
            assert!(
                matches!(failures[0].error, TrackerError::NoHookSocket),
                "{message}"
            );
            assert_eq!(
                failures[1].error.to_string(),
                soft_dirty_missing.to_string()
            );
            assert!(message.contains("no hook socket"), "{message}");
            assert!(
                message.contains(&soft_dirty_missing.to_string()),
                "{message}"
            );
        }
    }
}
