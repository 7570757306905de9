//! Real QEMU 10 (firmware only) running on pages it faults in.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mllm_faults::{
    arm_missing, punch_holes, Installed, MissingPages, PageIndex, PageRange, PAGE_SIZE,
};
use mllm_qemu::qmp::QmpClient;
use mllm_tracker::find_ram_mapping;
use serde_json::json;

use crate::qemu_process::Qemu;
use crate::support::unique_name;

const QMP_TIMEOUT: Duration = Duration::from_secs(20);
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(30);

/// What serving every fault came to.
#[derive(Debug, Default)]
struct Served {
    faults: u64,
    already_present: u64,
    pages: HashSet<PageIndex>,
    longest_install: Duration,
}

/// Serves every fault with `content(page)` until `stop` is set, counting
/// faults in `count` as it goes.
fn serve(
    missing: &MissingPages,
    content: &(dyn Fn(PageIndex) -> [u8; PAGE_SIZE] + Sync),
    count: &AtomicU64,
    stop: &AtomicBool,
) -> Served {
    let mut served = Served::default();
    let mut faults = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        faults.clear();
        missing
            .wait_faults(Duration::from_millis(20), &mut faults)
            .expect("waiting for faults");
        for &page in &faults {
            let content = content(page);
            let started = Instant::now();
            let installed = missing.install(page, &content).expect("installing a page");
            served.longest_install = served.longest_install.max(started.elapsed());
            served.faults += 1;
            served.already_present += u64::from(installed == Installed::AlreadyPresent);
            served.pages.insert(page);
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
    served
}

/// Runs `body` while another thread serves every fault with `content`;
/// `body` sees the count of faults served so far.
fn while_serving<T>(
    missing: &MissingPages,
    content: impl Fn(PageIndex) -> [u8; PAGE_SIZE] + Sync,
    body: impl FnOnce(&AtomicU64) -> T,
) -> (T, Served) {
    /// Stops the server however `body` ends, so that the scope can end.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let server = scope.spawn(|| serve(missing, &content, &count, &stop));
        let stop_server = StopOnDrop(&stop);
        let result = body(&count);
        drop(stop_server);
        (result, server.join().expect("the fault server"))
    })
}

fn execute(qmp: &QmpClient, command: &str, arguments: serde_json::Value) {
    qmp.execute(command, arguments).expect(command);
}

fn status(qmp: &QmpClient) -> String {
    let status = qmp
        .execute("query-status", json!({}))
        .expect("query-status");
    status["status"].as_str().expect("a status").to_owned()
}

/// Punches all of `qemu`'s guest RAM out of its file and arms missing-page
/// faults over it.
fn all_missing(qemu: &Qemu) -> MissingPages {
    let pid = qemu.child.id().cast_signed();
    let ram = find_ram_mapping(pid, &qemu.ram_file).expect("guest RAM mapping");
    let ram_file = OpenOptions::new()
        .write(true)
        .open(&qemu.ram_file)
        .expect("opening the RAM file");
    punch_holes(&ram_file, &[PageRange::new(0, ram.pages())]).expect("punching all of RAM");
    arm_missing(&qemu.hook_socket, ram).expect("arming")
}

fn qemu_is_alive(qemu: &Qemu) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(qemu.child.id().cast_signed(), 0) == 0 }
}

#[test]
fn qemu_boots_its_firmware_on_zero_pages_served_as_faults() {
    let qemu = Qemu::start_paused();
    // QMP answers once the machine, and so its RAM mapping, exists.
    let qmp = QmpClient::connect(&qemu.qmp_socket, QMP_TIMEOUT).expect("QMP");
    let missing = all_missing(&qemu);
    assert_eq!(
        missing
            .wait_fault(Duration::from_millis(300))
            .expect("wait"),
        None,
        "paused at start (-S): nothing touches guest RAM"
    );

    let ((), served) = while_serving(
        &missing,
        |_| [0; PAGE_SIZE],
        |_| {
            execute(&qmp, "cont", json!({}));
            std::thread::sleep(Duration::from_secs(1));
            assert_eq!(status(&qmp), "running");
        },
    );
    eprintln!(
        "1 s of SeaBIOS: {} faults on {} distinct pages, {} already present, \
         longest install {:?}",
        served.faults,
        served.pages.len(),
        served.already_present,
        served.longest_install
    );
    assert!(served.faults > 0, "the firmware touched no page");
    assert!(qemu_is_alive(&qemu), "QEMU died");
    assert_eq!(status(&qmp), "running");
}

/// A post-copy in miniature: the destination's RAM is all missing when it
/// loads the source's device state (`x-ignore-shared`) and runs, and every
/// page it touches is served from the source's RAM file.
#[test]
fn qemu_loads_device_state_and_runs_on_pages_faulted_in_from_its_source() {
    let source = Qemu::start_paused();
    let source_qmp = QmpClient::connect(&source.qmp_socket, QMP_TIMEOUT).expect("source QMP");
    execute(&source_qmp, "cont", json!({}));
    std::thread::sleep(Duration::from_secs(1));
    execute(&source_qmp, "stop", json!({}));

    let destination = Qemu::start_paused_with(&["-incoming", "defer"]);
    let qmp = QmpClient::connect(&destination.qmp_socket, QMP_TIMEOUT).expect("QMP");
    let missing = all_missing(&destination);
    let source_ram = File::open(&source.ram_file).expect("the source's RAM file");
    let source_page = |page: PageIndex| {
        let mut content = [0; PAGE_SIZE];
        let offset = u64::from(page) * PAGE_SIZE as u64;
        source_ram
            .read_exact_at(&mut content, offset)
            .expect("reading the source's page");
        content
    };
    let stream = std::env::temp_dir().join(unique_name("migration.sock"));

    let ((while_loading, while_running), served) = while_serving(&missing, source_page, |count| {
        migrate_device_state(&source_qmp, &qmp, &stream);
        assert_eq!(status(&qmp), "paused", "-S: loaded, not running");
        let while_loading = count.load(Ordering::Relaxed);
        execute(&qmp, "cont", json!({}));
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(status(&qmp), "running");
        (while_loading, count.load(Ordering::Relaxed) - while_loading)
    });
    let _ = std::fs::remove_file(&stream);
    eprintln!(
        "device-state load: {while_loading} faults; then 1 s running: {while_running} faults; \
         {} distinct pages, longest install {:?}",
        served.pages.len(),
        served.longest_install
    );
    assert!(
        while_loading > 0,
        "QEMU touched no guest page while loading"
    );
    assert!(qemu_is_alive(&destination), "QEMU died");
}

/// QEMU's own migration with `x-ignore-shared` (device state only) from
/// `source` to `destination` through the unix socket `stream`; returns once
/// the destination has loaded it.
fn migrate_device_state(source: &QmpClient, destination: &QmpClient, stream: &Path) {
    let capabilities = json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]});
    execute(source, "migrate-set-capabilities", capabilities.clone());
    execute(destination, "migrate-set-capabilities", capabilities);
    let uri = json!({"uri": format!("unix:{}", stream.display())});
    execute(destination, "migrate-incoming", uri.clone());
    execute(source, "migrate", uri);
    let deadline = Instant::now() + MIGRATION_TIMEOUT;
    loop {
        let migration = destination
            .execute("query-migrate", json!({}))
            .expect("query-migrate");
        match migration["status"].as_str() {
            Some("completed") => return,
            Some("failed") => panic!("migration failed: {migration}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "migration stuck: {migration}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
