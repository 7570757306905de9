//! Real QEMU migrations through the emulated link, by QEMU's methods and by
//! mllm's agents. These boot actual guests under TCG, so they run one at a time.

use std::sync::Mutex;

use mllm_lab::image::{GuestImage, ImageBuilder};
use mllm_lab::method::Method;
use mllm_lab::paths;
use mllm_lab::result::RunResult;
use mllm_lab::run::run_method;
use mllm_lab::scenario::Scenario;

static ONE_VM_PAIR_AT_A_TIME: Mutex<()> = Mutex::new(());

fn image() -> GuestImage {
    ImageBuilder::new(&paths::cache_dir(), &paths::workspace_root())
        .build()
        .expect("guest image")
}

fn scenario(method: &str, timeout: &str) -> Scenario {
    Scenario::parse(&format!(
        r#"
name = "ci-{method}"
methods = ["{method}"]
[vm]
memory = "256MiB"
[workload]
kind = "memload"
size = "64MiB"
hot_fraction = 0.05
skew = "zipf:0.9"
write_rate = 500
[link]
bandwidth = "100Mbit"
rtt = "50ms"
[timing]
warmup = "4s"
baseline_window = "2s"
after = "5s"
migration_timeout = "{timeout}"
"#
    ))
    .expect("test scenario")
}

/// A guest that reads and writes its disk (16 of 64 MiB used).
fn disk_scenario(method: &str) -> Scenario {
    Scenario::parse(&format!(
        r#"
name = "ci-disk-{method}"
methods = ["{method}"]
[vm]
memory = "256MiB"
disk = {{ size = "64MiB", used = "16MiB" }}
[workload]
kind = "diskload"
length = "16MiB"
hot_fraction = 0.1
hot_access_pct = 90
skew = "zipf:0.9"
write_rate = 50
read_pct = 70
random_fraction = 0.5
[link]
bandwidth = "200Mbit"
rtt = "20ms"
[timing]
warmup = "4s"
baseline_window = "2s"
after = "5s"
migration_timeout = "120s"
"#
    ))
    .expect("test scenario")
}

fn migrate(method: Method, timeout: &str) -> RunResult {
    run(method, &scenario(method.name(), timeout))
}

fn run(method: Method, scenario: &Scenario) -> RunResult {
    let _serial = ONE_VM_PAIR_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let out = tempfile::tempdir().unwrap();
    let result = run_method(scenario, method, &image(), out.path()).expect("lab run");
    println!("{}", mllm_lab::report::summary(&result));
    result
}

fn assert_guest_moved(result: &RunResult) {
    assert!(result.success, "migration failed: {:?}", result.error);
    let check = &result.destination;
    assert!(check.healthy, "destination unhealthy: {:?}", check.problems);
    let last = check.last_source_heartbeat.unwrap();
    let first = check.first_destination_heartbeat.unwrap();
    assert!(
        first <= last + 1,
        "heartbeat did not continue: source {last}, destination {first}"
    );
    assert!(
        check.destination_heartbeats > 100,
        "destination heartbeats: {}",
        check.destination_heartbeats
    );
    assert!(
        check.verified_after_switch,
        "workload never verified its data on the destination"
    );
    let gap = result.guest_gap_ms.expect("heartbeat gap");
    assert!(gap < 5_000.0, "guest stalled for {gap} ms");
    assert!(result.downtime_ms.is_some_and(|d| d > 0.0));
    assert!(result.workload.after_ops_per_s.is_some_and(|r| r > 0.0));
}

#[test]
fn qemu_precopy_through_the_link_keeps_the_guest_running() {
    let result = migrate(Method::QemuPrecopy, "120s");
    assert_guest_moved(&result);
    // The relay sees QEMU's stream plus framing: its count must agree with
    // QEMU's own within a few percent.
    let ratio = result.link_bytes_to_destination as f64 / result.memory_bytes as f64;
    assert!(
        (0.97..1.10).contains(&ratio),
        "relay counted {} bytes, QEMU {} (ratio {ratio:.3})",
        result.link_bytes_to_destination,
        result.memory_bytes
    );
    // Pre-copy sends at least the workload's 64 MiB, at most the link's rate.
    let min_ms = (64u64 << 20) as f64 * 8.0 / 100e6 * 1000.0;
    assert!(
        result.total_time_ms.unwrap() > min_ms * 0.9,
        "{:?}",
        result.total_time_ms
    );
}

#[test]
fn qemu_postcopy_through_the_link_keeps_the_guest_running() {
    let result = migrate(Method::QemuPostcopy, "120s");
    assert_guest_moved(&result);
}

#[test]
fn a_migration_that_times_out_leaves_the_source_running() {
    let result = migrate(Method::QemuPrecopy, "2s");
    assert!(!result.success);
    let error = result.error.as_deref().unwrap();
    assert!(error.contains("did not complete within 2 s"), "{error}");
    assert_eq!(result.source_running_after, Some(true));
}

#[test]
fn mllm_precopy_moves_the_guest_with_equal_memory() {
    let result = migrate(Method::MllmPrecopy, "120s");
    // The run is in test mode: the destination compared a digest of every
    // page with the source's at the switch, so success means equal memory.
    assert_guest_moved(&result);
    assert!(result.rounds >= 2, "rounds: {}", result.rounds);
    let tracking = result.tracking_method.as_deref().unwrap_or("");
    assert!(!tracking.is_empty(), "no tracking method reported");
    assert!(result.retransmitted_pages.is_some());
    // Everything, pages and device state, crossed the one link.
    assert!(result.link_bytes_to_destination > result.memory_bytes);
}

#[test]
fn mllm_postcopy_moves_the_guest_after_one_round() {
    let result = migrate(Method::MllmPostcopy, "120s");
    // Test mode: every page was compared with the source's, those present at
    // the switch there, the others as they were installed after it.
    assert_guest_moved(&result);
    // One pre-copy round and the (empty) final round at the switch.
    assert_eq!(result.rounds, 2, "rounds: {}", result.rounds);
}

#[test]
fn mllm_moves_the_guest_with_the_planner_in_the_loop() {
    let result = migrate(Method::Mllm, "120s");
    // Test mode, as for the other mllm methods: memory checked page by page.
    assert_guest_moved(&result);
    assert!(result.rounds >= 2, "rounds: {}", result.rounds);
}

#[test]
fn mllm_precopy_moves_a_guest_with_its_disk() {
    let result = run(Method::MllmPrecopy, &disk_scenario("mllm-precopy"));
    // Test mode: the destination compared its disk's digest with the
    // source's at the switch, and its memory page by page.
    assert_guest_moved(&result);
    // The 16 used MiB and the blocks written meanwhile crossed; the 48 MiB
    // never written did not (zstd shrinks the workload's data too).
    assert!(
        result.disk_bytes > 1 << 20 && result.disk_bytes < 24 << 20,
        "disk bytes: {}",
        result.disk_bytes
    );
}
