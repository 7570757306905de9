//! The hook and the tracker on a real QEMU 10 guest (firmware only).

use std::time::Duration;

use mllm_qemu::qmp::QmpClient;
use mllm_tracker::{detect, find_ram_mapping, TrackingMethod, WriteTracker, PAGE_SIZE};
use serde_json::json;

use crate::qemu_process::{Qemu, QEMU_RAM_MIB as RAM_MIB};

fn pages_written(tracker: &mut dyn WriteTracker) -> u64 {
    let mut written = Vec::new();
    let stats = tracker.scan(&mut written).expect("scan");
    let ram_pages = (RAM_MIB << 20) / PAGE_SIZE as u64;
    assert!(written
        .iter()
        .all(|range| u64::from(range.end) <= ram_pages));
    stats.pages_written
}

fn run_then_wait(qmp: &QmpClient, command: &str, wait: Duration) {
    qmp.execute(command, json!({})).expect(command);
    std::thread::sleep(wait);
}

#[test]
fn qemu_writes_are_seen_while_it_runs_and_none_while_it_is_stopped() {
    let qemu = Qemu::start_paused();
    // QMP answers once the machine, and so its RAM mapping, exists.
    let qmp = QmpClient::connect(&qemu.qmp_socket, Duration::from_secs(20)).expect("QMP");
    let pid = qemu.child.id().cast_signed();
    let ram = find_ram_mapping(pid, &qemu.ram_file).expect("guest RAM mapping");
    assert_eq!(ram.len, RAM_MIB << 20);
    let mut tracker = detect(pid, ram, Some(&qemu.hook_socket)).expect("detect");
    assert_eq!(tracker.method(), TrackingMethod::PagemapScan);

    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(pages_written(tracker.as_mut()), 0, "paused at start (-S)");

    run_then_wait(&qmp, "cont", Duration::from_millis(1500));
    let booting = pages_written(tracker.as_mut());
    assert!(booting > 100, "firmware wrote only {booting} pages");

    run_then_wait(&qmp, "stop", Duration::from_millis(100));
    pages_written(tracker.as_mut());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(pages_written(tracker.as_mut()), 0, "stopped");

    run_then_wait(&qmp, "cont", Duration::from_millis(500));
    let running = pages_written(tracker.as_mut());
    assert!(running > 0, "running again, yet nothing written");
}
