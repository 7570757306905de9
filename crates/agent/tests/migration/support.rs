//! Real guests for the tests: the lab's guest image booted under QEMU with
//! shared RAM and the hook, an emulated link between the agents, and a
//! destination agent on a thread.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use mllm_agent::{
    accept_incoming, make_migratable, migrate_source, migrate_source_with_reconnect,
    receive_migration, DestinationReport, DestinationSettings, DiskServer, Incoming,
    MigrationError, PostcopyResumes, Progress, SourceError, SourceReport, SourceSettings,
    TrackedDisk,
};
use mllm_lab::image::{GuestImage, ImageBuilder, SERIAL_PORTS};
use mllm_lab::paths;
use mllm_link::{Link, LinkConfig};
use mllm_qemu::{Accelerator, Boot, DiskAttachment, QemuConfig, QemuProcess, RamBackend};
use mllm_tls::PeerStream;
use serde_json::json;

pub const GUEST_MIB: u64 = 256;
/// The NBD export name of a test VM's disk.
const DISK_EXPORT: &str = "disk0";
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// The memory workload of the brief: 32 MiB written at 500 pages per second,
/// verified by the guest itself every two seconds.
const MEMLOAD: &str = "mllm.workload=memload mllm.args=--size=33554432,--write-rate=500";

/// TCG guests are slow enough on two cores without running two pairs at once.
pub fn one_vm_pair_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn image() -> &'static GuestImage {
    static IMAGE: OnceLock<GuestImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        ImageBuilder::new(&paths::cache_dir(), &paths::workspace_root())
            .build()
            .expect("guest image (see `mllm lab setup`)")
    })
}

/// The hook library, built once per process (a cdylib cannot be a dependency).
fn hook_library() -> &'static Path {
    static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
    LIBRARY.get_or_init(|| {
        crate::workspace_build::build_with_this_profile(&["mllm-hook"]).join("libmllm_hook.so")
    })
}

fn unique(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("mllm-agent-test-{}-{n}-{what}", std::process::id())
}

/// A QEMU whose RAM is a file in /dev/shm (or `ram_dir`), removed with it,
/// and, if it has one, its disk served by an agent's NBD server.
pub struct Vm {
    pub qemu: QemuProcess,
    pub ram_file: PathBuf,
    /// Behind a lock: a test may restart the server under a running VM.
    disk: Mutex<Option<DiskServer>>,
    _run_dir: tempfile::TempDir,
}

/// Where a test VM keeps its RAM and disk.
#[derive(Default)]
pub struct Storage<'a> {
    /// Directory of the RAM file; /dev/shm if not given.
    pub ram_dir: Option<PathBuf>,
    /// A raw image to attach as the guest's disk, served over NBD.
    pub disk_image: Option<PathBuf>,
    /// A disk created in the VM's run directory instead.
    pub new_disk: Option<TestDisk<'a>>,
}

impl Storage<'_> {
    /// RAM in /dev/shm, the disk `image` served over NBD.
    pub fn with_disk(image: PathBuf) -> Self {
        Storage {
            disk_image: Some(image),
            ..Storage::default()
        }
    }
}

/// A disk for a test VM: its size, and what the image holds before QEMU
/// starts.
pub struct TestDisk<'a> {
    pub bytes: u64,
    pub fill: &'a dyn Fn(&TrackedDisk),
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ram_file);
    }
}

impl Vm {
    fn start(
        name: &str,
        memory_mib: u64,
        incoming: bool,
        workload: &str,
        storage: Storage<'_>,
    ) -> Vm {
        // Unix socket paths are short: QMP and serial sockets go to /tmp.
        let run_dir = tempfile::Builder::new()
            .prefix("mllm-agent-")
            .tempdir()
            .unwrap();
        let ram_file = storage
            .ram_dir
            .unwrap_or_else(|| PathBuf::from("/dev/shm"))
            .join(unique(name));
        let new_disk = storage.new_disk.map(|disk| {
            let image = run_dir.path().join(format!("{name}.raw"));
            std::fs::File::create(&image)
                .unwrap()
                .set_len(disk.bytes)
                .unwrap();
            let tracked = TrackedDisk::open(&image).unwrap();
            (disk.fill)(&tracked);
            tracked
        });
        let disk = storage
            .disk_image
            .map(|image| TrackedDisk::open(&image).expect("test disk image"));
        let disk = disk.or(new_disk).map(|tracked| {
            DiskServer::start(
                tracked,
                &run_dir.path().join(format!("{name}.nbd")),
                DISK_EXPORT,
            )
            .expect("serving the test disk")
        });
        let mut config = QemuConfig {
            name: name.to_owned(),
            binary: "qemu-system-x86_64".into(),
            accelerator: Accelerator::Tcg,
            memory_mib,
            vcpus: 1,
            ram: RamBackend::Anonymous,
            boot: Boot::Kernel {
                kernel: image().kernel.clone(),
                initrd: Some(image().initrd.clone()),
                cmdline: format!("console=ttyS0 panic=-1 loglevel=4 {workload}"),
            },
            disk: disk.as_ref().map(|server| DiskAttachment::Nbd {
                socket: server.socket().to_owned(),
                export: DISK_EXPORT.into(),
            }),
            serial_ports: SERIAL_PORTS.iter().map(|p| p.to_string()).collect(),
            incoming,
            run_dir: run_dir.path().to_owned(),
            env: vec![],
        };
        let hook_socket = run_dir.path().join(format!("{name}.hook"));
        make_migratable(&mut config, &ram_file, hook_library(), &hook_socket);
        let qemu = QemuProcess::start(config).expect("starting QEMU 10");
        Vm {
            qemu,
            ram_file,
            disk: Mutex::new(disk),
            _run_dir: run_dir,
        }
    }

    /// Boots a guest running the memory workload and waits until it works.
    pub fn boot_memload(name: &str) -> Vm {
        Vm::boot_memload_on(name, Storage::default())
    }

    /// The same with a disk (the guest's kernel scans it when it boots).
    pub fn boot_memload_with(name: &str, disk: Option<TestDisk<'_>>) -> Vm {
        Vm::boot_memload_on(
            name,
            Storage {
                new_disk: disk,
                ..Storage::default()
            },
        )
    }

    /// [`Vm::boot_memload`] with its RAM and disk where `storage` says.
    pub fn boot_memload_on(name: &str, storage: Storage<'_>) -> Vm {
        let vm = Vm::start(name, GUEST_MIB, false, MEMLOAD, storage);
        vm.wait_for("heartbeat", "first heartbeat", BOOT_TIMEOUT, "HB ");
        vm.wait_for("workload", "workload READY", BOOT_TIMEOUT, "READY");
        vm
    }

    /// A destination waiting for a migration (`-incoming defer`).
    pub fn incoming(name: &str, memory_mib: u64) -> Vm {
        Vm::incoming_on(name, memory_mib, Storage::default())
    }

    /// [`Vm::incoming`] with its RAM and disk where `storage` says.
    pub fn incoming_on(name: &str, memory_mib: u64, storage: Storage<'_>) -> Vm {
        Vm::start(name, memory_mib, true, MEMLOAD, storage)
    }

    /// The disks its agent serves (none or one).
    pub fn disks(&self) -> Vec<Arc<TrackedDisk>> {
        self.disk
            .lock()
            .unwrap()
            .iter()
            .map(|server| Arc::clone(server.disk()))
            .collect()
    }

    /// Stops its disk's NBD server, which ends QEMU's connection, and
    /// after `down` serves the same disk on the same socket again, for
    /// QEMU's client to reconnect (`reconnect-delay`).
    pub fn restart_disk_server(&self, down: Duration) {
        let mut server = self.disk.lock().unwrap();
        let stopped = server.take().expect("a VM with a disk");
        let (disk, socket) = (Arc::clone(stopped.disk()), stopped.socket().to_owned());
        drop(stopped);
        std::thread::sleep(down);
        *server =
            Some(DiskServer::start(disk, &socket, DISK_EXPORT).expect("serving the disk again"));
    }

    pub fn wait_for(&self, port: &str, what: &str, timeout: Duration, prefix: &str) {
        self.qemu
            .serial(port)
            .wait_for(what, timeout, |line| line.starts_with(prefix))
            .unwrap_or_else(|e| panic!("{}: {e}", self.qemu.config.name));
    }

    pub fn is_running(&self) -> bool {
        self.qemu
            .qmp
            .execute("query-status", json!({}))
            .is_ok_and(|status| status["running"].as_bool() == Some(true))
    }

    /// Heartbeat sequence numbers printed so far, in order.
    pub fn heartbeats(&self) -> Vec<u64> {
        heartbeat_numbers(&self.qemu.serial("heartbeat").lines())
    }

    /// [`Vm::heartbeats`] of a destination, with the line the switch cut in
    /// two completed by its beginning on `source`.
    pub fn heartbeats_continuing(&self, source: &Vm) -> Vec<u64> {
        heartbeat_numbers(&mllm_qemu::continue_across_switch(
            &source.qemu.serial("heartbeat").lines(),
            &self.qemu.serial("heartbeat").lines(),
        ))
    }

    /// Complete lines printed so far on `port`.
    pub fn lines(&self, port: &str) -> Vec<String> {
        self.qemu
            .serial(port)
            .lines()
            .into_iter()
            .filter(|line| line.complete)
            .map(|line| line.text)
            .collect()
    }

    /// Waits until the guest printed `count` more heartbeats and one more
    /// passing self-check of its memory, and found nothing corrupted.
    pub fn assert_alive_and_intact(&self, what: &str) {
        let heartbeats = self.heartbeats().len();
        let verified = self.count_lines("workload", "VERIFY OK");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.heartbeats().len() < heartbeats + 100
            || self.count_lines("workload", "VERIFY OK") <= verified
        {
            assert!(
                Instant::now() < deadline,
                "{what}: the guest on {} stopped making progress",
                self.qemu.config.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let corrupt: Vec<String> = self
            .lines("workload")
            .into_iter()
            .filter(|line| line.starts_with("CORRUPT"))
            .collect();
        assert!(
            corrupt.is_empty(),
            "{what}: guest memory corrupted: {corrupt:?}"
        );
    }

    fn count_lines(&self, port: &str, prefix: &str) -> usize {
        self.lines(port)
            .iter()
            .filter(|line| line.starts_with(prefix))
            .count()
    }
}

fn heartbeat_numbers(lines: &[mllm_qemu::SerialLine]) -> Vec<u64> {
    lines
        .iter()
        .filter(|line| line.complete)
        .filter_map(|line| line.text.strip_prefix("HB ")?.trim().parse().ok())
        .collect()
}

pub fn link_config(megabits: u64, rtt_ms: u64) -> LinkConfig {
    let bandwidth_bits_per_s = megabits * 1_000_000;
    let rtt = Duration::from_millis(rtt_ms);
    LinkConfig {
        bandwidth_bits_per_s,
        rtt,
        queue_bytes: LinkConfig::default_queue_bytes(bandwidth_bits_per_s, rtt),
        ..LinkConfig::default()
    }
}

pub struct Outcome {
    pub source: Result<SourceReport, SourceError>,
    /// When the source agent had its answer.
    pub source_answered_at: Instant,
    pub destination: Result<DestinationReport, MigrationError>,
    pub progress: Vec<Progress>,
}

/// Migrates `source` to `destination` through an emulated link, the
/// destination agent on its own thread. `cut_when` is asked at every
/// progress report; the first time it says yes the link is cut.
pub fn migrate(
    source: &Vm,
    destination: &Vm,
    link: LinkConfig,
    settings: &SourceSettings,
    cut_when: impl Fn(&Progress) -> bool,
) -> Outcome {
    migrate_through(
        source,
        destination,
        &Link::new(link).unwrap(),
        settings,
        cut_when,
    )
}

/// Like [`migrate`], through a link the caller may also cut.
pub fn migrate_through(
    source: &Vm,
    destination: &Vm,
    link: &Link,
    settings: &SourceSettings,
    cut_when: impl Fn(&Progress) -> bool,
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let via_link = link.forward(listener.local_addr().unwrap()).unwrap();
    let cut = AtomicBool::new(false);
    let progress = Mutex::new(Vec::new());
    let on_progress = |update: &Progress| {
        progress.lock().unwrap().push(update.clone());
        if !cut.load(Ordering::Relaxed) && cut_when(update) {
            cut.store(true, Ordering::Relaxed);
            link.cut();
        }
    };
    let (source_result, destination_result) = std::thread::scope(|scope| {
        let receiver = scope.spawn(|| {
            let stream = accept_within(&listener, Duration::from_secs(20))
                .map_err(|e| MigrationError::Invalid(format!("{e:#}")))?;
            receive_migration(
                &destination.qemu,
                &destination.ram_file,
                &destination.disks(),
                stream,
                &destination_settings(settings),
            )
        });
        let stream = TcpStream::connect(via_link).unwrap();
        let source_result = migrate_source(
            &source.qemu,
            &source.ram_file,
            &source.disks(),
            stream,
            settings,
            &on_progress,
        );
        let answered_at = Instant::now();
        (
            (source_result, answered_at),
            receiver.join().expect("destination agent panicked"),
        )
    });
    let (source_result, source_answered_at) = source_result;
    Outcome {
        source: source_result,
        source_answered_at,
        destination: destination_result,
        progress: progress.into_inner().unwrap(),
    }
}

/// Both agents configured alike.
fn destination_settings(settings: &SourceSettings) -> DestinationSettings {
    DestinationSettings {
        link_timeout: settings.link_timeout,
        recovery_timeout: settings.recovery_timeout,
        resumes: PostcopyResumes::default(),
    }
}

/// Like [`migrate_through`], with agents that survive a link failure in
/// post-copy: the source reconnects through the same `link` (which must
/// let it: a partition heals, a cut link refuses for good), and the
/// destination agent accepts every connection, as the daemon does, routing
/// a resumed one to the migration it belongs to. `on_progress` sees every
/// report, as it comes.
pub fn migrate_resumably(
    source: &Vm,
    destination: &Vm,
    link: &Link,
    settings: &SourceSettings,
    on_progress: impl Fn(&Progress),
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let via_link = link.forward(listener.local_addr().unwrap()).unwrap();
    let destination_settings = destination_settings(settings);
    let progress = Mutex::new(Vec::new());
    let report = |update: &Progress| {
        progress.lock().unwrap().push(update.clone());
        on_progress(update);
    };
    let done = AtomicBool::new(false);
    let (source_result, destination_result) = std::thread::scope(|scope| {
        let receiver = scope.spawn(|| {
            let stream = accept_within(&listener, Duration::from_secs(20))
                .map_err(|e| MigrationError::Invalid(format!("{e:#}")))?;
            // Every later connection, once the first is taken.
            scope.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    let Ok(stream) = accept_within(&listener, Duration::from_millis(200)) else {
                        continue;
                    };
                    match accept_incoming(stream, &destination_settings) {
                        Ok(Incoming::Resumed { vm_name }) => println!("resumed: {vm_name:?}"),
                        Ok(Incoming::Migration(_)) => println!("a second migration: dropped"),
                        Err(error) => println!("a connection failed: {}", error.chain()),
                    }
                }
            });
            let Incoming::Migration(incoming) = accept_incoming(stream, &destination_settings)?
            else {
                return Err(MigrationError::Invalid("a resume came first".into()));
            };
            incoming.receive(
                &destination.qemu,
                &destination.ram_file,
                &destination.disks(),
            )
        });
        let stream = TcpStream::connect(via_link).unwrap();
        let source_result = migrate_source_with_reconnect(
            &source.qemu,
            &source.ram_file,
            &source.disks(),
            stream,
            &|| TcpStream::connect(via_link).map(PeerStream::from),
            settings,
            &report,
        );
        let answered_at = Instant::now();
        let destination_result = receiver.join().expect("destination agent panicked");
        done.store(true, Ordering::Relaxed);
        ((source_result, answered_at), destination_result)
    });
    let (source_result, source_answered_at) = source_result;
    Outcome {
        source: source_result,
        source_answered_at,
        destination: destination_result,
        progress: progress.into_inner().unwrap(),
    }
}

pub fn accept_within(listener: &TcpListener, timeout: Duration) -> Result<TcpStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
        if Instant::now() > deadline {
            bail!("no connection within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
