//! The `PAGEMAP_SCAN` backend: the contract, with the default output buffer
//! and with one so small that every scan resumes across many ioctls, and
//! what is specific to it.

use mllm_tracker::{
    arm_hook, PagemapScanTracker, RamMapping, TrackerError, WriteTracker, PAGE_SIZE,
};

use crate::contract::{
    contract_tests, hundred_runs_of_one_or_two_pages, ranges, scan, write_pages, Backend, RAM_BYTES,
};
use crate::support::PageWriter;

pub const BACKEND: Backend<PagemapScanTracker> = Backend {
    name: "PAGEMAP_SCAN",
    supported: kernel_has_pagemap_scan,
    start: armed_tracker,
};

const TINY_OUTPUT_BUFFER: Backend<PagemapScanTracker> = Backend {
    name: "PAGEMAP_SCAN with a 3-region output buffer",
    supported: kernel_has_pagemap_scan,
    start: armed_tracker_with_a_tiny_output_buffer,
};

mod contract {
    super::contract_tests!(super::BACKEND);
}

mod contract_with_a_tiny_output_buffer {
    super::contract_tests!(super::TINY_OUTPUT_BUFFER);
}

/// Probes a page of this test process: the kernel, not the process, decides.
fn kernel_has_pagemap_scan() -> Result<(), TrackerError> {
    let buffer = vec![0u8; 2 * PAGE_SIZE];
    let page = buffer.as_ptr() as u64 + buffer.as_ptr().align_offset(PAGE_SIZE) as u64;
    let ram = RamMapping {
        start: page,
        len: PAGE_SIZE as u64,
    };
    PagemapScanTracker::check_kernel_support(std::process::id().cast_signed(), ram)
}

fn armed_tracker(writer: &PageWriter) -> PagemapScanTracker {
    let ram = writer.ram();
    let armed = arm_hook(writer.socket(), ram).expect("arming the hook");
    PagemapScanTracker::new(writer.pid(), ram, armed).expect("tracker")
}

fn armed_tracker_with_a_tiny_output_buffer(writer: &PageWriter) -> PagemapScanTracker {
    armed_tracker(writer).with_output_regions(3)
}

#[test]
fn a_full_output_buffer_resumes_where_the_walk_stopped() {
    let mut writer = PageWriter::spawn(RAM_BYTES, true);
    let mut tracker = armed_tracker_with_a_tiny_output_buffer(&writer);
    let pages = hundred_runs_of_one_or_two_pages();
    write_pages(&mut writer, &pages);
    let mut written = Vec::new();
    let stats = tracker.scan(&mut written).expect("scan");
    assert_eq!(written, ranges(&pages));
    // 100 runs, 3 per ioctl.
    assert!(stats.kernel_calls >= 34, "{} calls", stats.kernel_calls);
    assert_eq!(scan(&mut tracker), []);
}

#[test]
fn a_tracker_refuses_ram_the_hook_did_not_arm() {
    let writer = PageWriter::spawn(RAM_BYTES, true);
    let ram = writer.ram();
    let first_half = RamMapping {
        len: ram.len / 2,
        ..ram
    };
    let armed = arm_hook(writer.socket(), first_half).expect("arming half of guest RAM");
    let error = PagemapScanTracker::new(writer.pid(), ram, armed)
        .expect_err("a tracker over RAM half armed");
    assert!(
        matches!(error, TrackerError::NotWriteProtected { .. }),
        "{error:?}"
    );
}
