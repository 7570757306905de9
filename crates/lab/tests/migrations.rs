//! Real QEMU migrations through the emulated link, by QEMU's methods and by
//! mllm's agents. These boot actual guests under TCG, so they run one at a time.

use std::sync::Mutex;

use serde_json::json;

use mllm_lab::image::{GuestImage, ImageBuilder};
use mllm_lab::method::Method;
use mllm_lab::paths;
use mllm_lab::qemu_settings::QemuSettings;
use mllm_lab::result::RunResult;
use mllm_lab::run::run_method;
use mllm_lab::scenario::Scenario;

static ONE_VM_PAIR_AT_A_TIME: Mutex<()> = Mutex::new(());

fn image() -> GuestImage {
    ImageBuilder::new(&paths::cache_dir(), &paths::workspace_root())
        .build()
        .expect("guest image")
}

/// The memory workload: 64 MiB, 500 page writes/s into a 5 % hot set.
const MEMLOAD: &str = r#"
[vm]
memory = "256MiB"
[workload]
kind = "memload"
size = "64MiB"
hot_fraction = 0.05
skew = "zipf:0.9"
write_rate = 500
"#;

/// A 64 MiB disk, 16 MiB of it data, and the disk workload over its first 8 MiB.
const DISKLOAD: &str = r#"
[vm]
memory = "256MiB"
disk = { size = "64MiB", used = "16MiB" }
[workload]
kind = "diskload"
length = "8MiB"
hot_fraction = 0.1
hot_access_pct = 90
skew = "zipf:0.9"
write_rate = 50
read_pct = 70
random_fraction = 0.5
"#;

fn scenario(method: &str, guest: &str, timeout: &str) -> Scenario {
    Scenario::parse(&format!(
        r#"
name = "ci-{method}"
methods = ["{method}"]
{guest}
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

fn migrate(method: Method, timeout: &str) -> RunResult {
    migrate_guest(method, MEMLOAD, timeout)
}

fn migrate_guest(method: Method, guest: &str, timeout: &str) -> RunResult {
    let _serial = ONE_VM_PAIR_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let out = tempfile::tempdir().unwrap();
    let result = run_method(
        &scenario(method.name(), guest, timeout),
        method,
        &image(),
        out.path(),
    )
    .expect("lab run");
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
    assert_sane_physical_limit(result);
}

/// The test guest's RAM, as the scenario sets it.
const RAM_BYTES: u64 = 256 << 20;

fn assert_sane_physical_limit(result: &RunResult) {
    let limit = result.physical_limit.as_ref().expect("physical limit");
    assert_eq!(limit.ram_bytes, RAM_BYTES);
    // The guest's kernel and its workload's data are there; at most all of
    // RAM and disk, as if nothing compressed.
    assert!(
        limit.bytes > 0 && limit.bytes <= limit.ram_bytes + limit.disk_bytes,
        "{} bytes",
        limit.bytes
    );
    assert!(limit.unique_pages <= limit.nonzero_pages);
    let rtt = 0.05;
    let at_link_rate = limit.bytes as f64 * 8.0 / 100e6;
    assert!(
        (limit.seconds - at_link_rate - rtt).abs() < 1e-6,
        "{limit:?}"
    );
    // No method beats it.
    let times = result.times_limit().expect("total time and limit");
    assert!(
        times > 1.0,
        "total time is {times} times the physical limit"
    );
}

/// The QEMU settings in result.json: what both QEMUs reported back after
/// they were set (`query-migrate-capabilities`, `query-migrate-parameters`).
fn qemu_settings(result: &RunResult) -> &QemuSettings {
    result.qemu.as_ref().expect("QEMU settings in result.json")
}

fn assert_expert_switchover(result: &RunResult) {
    let source = &qemu_settings(result).source;
    assert_eq!(source.parameters["downtime-limit"], json!(300));
    // 100 Mbit/s in bytes per second.
    assert_eq!(
        source.parameters["avail-switchover-bandwidth"],
        json!(12_500_000)
    );
}

#[test]
fn qemu_precopy_through_the_link_keeps_the_guest_running() {
    let result = migrate(Method::QemuPrecopy, "120s");
    assert_guest_moved(&result);
    assert_expert_switchover(&result);
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
fn qemu_postcopy_preempt_sends_its_second_channel_through_the_link() {
    let result = migrate(Method::QemuPostcopyPreempt, "120s");
    assert_guest_moved(&result);
    assert_expert_switchover(&result);
    // The destination must have preemption on too, or it never accepts the channel.
    let qemu = qemu_settings(&result);
    for side in [&qemu.source, &qemu.destination] {
        for wanted in ["postcopy-ram", "postcopy-preempt"] {
            assert!(
                side.capabilities.iter().any(|c| c == wanted),
                "{:?}",
                side.capabilities
            );
        }
    }
    // The main stream and the preempt channel both crossed the link.
    assert!(
        result.link_connections >= 2,
        "{} connections",
        result.link_connections
    );
}

#[test]
fn qemu_multifd_zstd_runs_two_zstd_channels_through_the_link() {
    let result = migrate(Method::QemuMultifdZstd, "120s");
    assert_guest_moved(&result);
    assert_expert_switchover(&result);
    let qemu = qemu_settings(&result);
    for parameters in [&qemu.source.parameters, &qemu.destination.parameters] {
        assert_eq!(parameters["multifd-channels"], json!(2));
        assert_eq!(parameters["multifd-compression"], json!("zstd"));
        assert_eq!(parameters["multifd-zstd-level"], json!(1));
    }
    // The main stream and both channels.
    assert!(
        result.link_connections >= 3,
        "{} connections",
        result.link_connections
    );
}

/// QEMU's mirror in the background mode does not converge on this guest
/// and link (docs/baselines.md): the mode that does is write-blocking.
#[test]
fn qemu_precopy_mirrors_the_disk_write_blocking_at_4_kib() {
    let result = migrate_guest(Method::QemuPrecopyWriteBlocking, DISKLOAD, "180s");
    assert_guest_moved(&result);
    assert_expert_switchover(&result);
    let mirror = qemu_settings(&result)
        .mirror
        .as_ref()
        .expect("mirror settings");
    assert_eq!(mirror.granularity, 4096);
    assert_eq!(mirror.copy_mode, "write-blocking");
    assert!(result.disk_bytes > 0);
    let limit = result.physical_limit.as_ref().unwrap();
    assert_eq!(limit.disk_bytes, 64 << 20);
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
    // Everything, pages and device state, crossed the one link, over TLS
    // as in production.
    assert!(result.link_bytes_to_destination > result.memory_bytes);
    assert_eq!(result.agents_tls, Some(true));
    // De-duplication is on by default and reported.
    let dedup = result.dedup.as_ref().expect("a de-duplication report");
    assert!(dedup.references > 0, "{dedup:?}");
    assert_eq!(dedup.fallbacks, 0, "{dedup:?}");
}

#[test]
fn mllm_precopy_nodedup_sends_every_page_as_content() {
    let result = migrate(Method::MllmPrecopyNodedup, "120s");
    assert_guest_moved(&result);
    assert!(result.dedup.is_none(), "{:?}", result.dedup);
}

#[test]
fn mllm_plaintext_moves_the_guest_without_tls() {
    let result = migrate(Method::MllmPlaintext, "120s");
    assert_guest_moved(&result);
    assert_eq!(result.agents_tls, Some(false));
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
    let result = migrate_guest(Method::MllmPrecopy, DISKLOAD, "120s");
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

#[test]
fn mllm_moves_the_disk_read_workingset_first_and_the_rest_after_the_switch() {
    let result = migrate_guest(Method::MllmDiskPostcopy, DISKLOAD, "120s");
    // Test mode: the blocks present at the switch were compared by digest
    // then, the others one by one as they arrived after it; memory likewise.
    assert_guest_moved(&result);
    assert!(
        result.disk_bytes > 1 << 20 && result.disk_bytes < 24 << 20,
        "disk bytes: {}",
        result.disk_bytes
    );
    let postcopy = result.postcopy.as_ref().expect("post-copy report");
    assert!(postcopy.blocks > 0, "no block moved after the switch");
}
