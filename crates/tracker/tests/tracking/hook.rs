//! The hook inside a `page_writer`, spoken to through `arm_hook` and raw.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

use mllm_hook_protocol::{
    Reply, Request, MAX_REQUEST_LEN, UFFD_FEATURE_WP_ASYNC, UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
    UFFD_FEATURE_WP_UNPOPULATED,
};
use mllm_tracker::{arm_hook, ArmedHook, PagemapScanTracker, RamMapping, TrackerError, PAGE_SIZE};

use crate::contract::{write_pages, RAM_BYTES};
use crate::support::PageWriter;

#[test]
fn the_hook_stays_idle_without_its_variable() {
    let mut writer = PageWriter::spawn(RAM_BYTES, false);
    write_pages(&mut writer, &[1]);
    let threads = std::fs::read_dir(format!("/proc/{}/task", writer.pid()))
        .expect("task list")
        .count();
    assert_eq!(threads, 1, "the hook started a thread");
    assert!(!writer.socket().exists());
}

#[test]
fn the_hook_obtains_every_write_protect_feature() {
    let writer = PageWriter::spawn(RAM_BYTES, true);
    let armed = arm_hook(writer.socket(), writer.ram()).expect("arming the hook");
    let wanted =
        UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
    assert!(
        armed.features.contains(wanted),
        "granted {}",
        armed.features
    );
}

/// Sends `request` as is and returns the hook's reply line.
fn raw_request(writer: &PageWriter, request: &[u8]) -> Vec<u8> {
    let mut stream = UnixStream::connect(writer.socket()).expect("connecting to the hook");
    stream.write_all(request).expect("sending");
    let mut reply = Vec::new();
    BufReader::new(stream)
        .read_until(b'\n', &mut reply)
        .expect("reply");
    reply
}

/// The reason the hook gives for refusing `request`.
fn refusal(writer: &PageWriter, request: &[u8]) -> String {
    match Reply::parse(&raw_request(writer, request)) {
        Ok(Reply::Refused { reason }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn refusal_by_arm_hook(writer: &PageWriter, ram: RamMapping) -> String {
    match arm_hook(writer.socket(), ram) {
        Err(TrackerError::HookRefused { reason, .. }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn the_hook_refuses_bad_requests_and_rearms_once_released() {
    let writer = PageWriter::spawn(RAM_BYTES, true);
    let ram = writer.ram();
    let unaligned = Request::WriteProtect {
        start: ram.start,
        len: 4000,
    };
    let reason = refusal(&writer, unaligned.encode().as_bytes());
    assert!(reason.contains("aligned"), "{reason}");
    let reason = refusal(&writer, b"MINOR 1000 4096\n");
    assert!(reason.contains("expected `WP"), "{reason}");
    let overlong = format!("WP 1000 {}\n", "0".repeat(MAX_REQUEST_LEN));
    let reason = refusal(&writer, overlong.as_bytes());
    assert!(reason.contains("longer than"), "{reason}");

    let unmapped = RamMapping {
        start: PAGE_SIZE as u64,
        len: PAGE_SIZE as u64,
    };
    let reason = refusal_by_arm_hook(&writer, unmapped);
    assert!(reason.contains("UFFDIO_REGISTER"), "{reason}");

    let first = arm_hook(writer.socket(), ram).expect("first arming");
    // The range is still registered through our copy of the first descriptor.
    let reason = refusal_by_arm_hook(&writer, ram);
    assert!(reason.contains("busy"), "{reason}");
    drop(first);
    let again = arm_after_release(&writer, ram);
    PagemapScanTracker::new(writer.pid(), ram, again).expect("tracker after re-arming");
}

/// Arms `ram` once the previous descriptor is closed. Other tests of this
/// binary spawn processes meanwhile, and a child holds a copy of every open
/// descriptor from its fork until its exec (close-on-exec only acts then):
/// for that moment the old registration is still alive and the kernel says
/// busy. Anything longer than a few retries is a real leak.
fn arm_after_release(writer: &PageWriter, ram: RamMapping) -> ArmedHook {
    let mut last = None;
    for _ in 0..20 {
        match arm_hook(writer.socket(), ram) {
            Ok(armed) => return armed,
            Err(TrackerError::HookRefused { reason, .. }) if reason.contains("busy") => {
                last = Some(reason);
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(other) => panic!("arming after release: {other}"),
        }
    }
    panic!("arming after release: still busy after 1 s: {last:?}")
}
