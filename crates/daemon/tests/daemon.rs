//! Two `mllm agent` daemons as real processes, driven with `mllm migrate`
//! as an operator would: a lab guest started by agent A moves to agent B
//! (with RAM digests compared) and keeps its heartbeat there, after a
//! migration to an address where nothing listens failed and left it
//! running on A. A second VM has a disk, whose image moves with it to
//! another path on B (created there) and back.
//!
//! The agents talk over mutual TLS with certificates made by `mllm certs`;
//! peers of another CA, with an expired certificate or without TLS are
//! refused, and the VM runs on.
//!
//! Each daemon runs in its own process group with its QEMUs, so dropping
//! its guard kills all of them, whatever assertion failed.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mllm_control::{ControlReply, Phase, Progress, SourceReport, VmInfo};
use mllm_lab::image::{ImageBuilder, SERIAL_PORTS};
use mllm_lab::paths;
use mllm_link::{Link, LinkConfig};
use rand::{RngCore, SeedableRng};

// Shared with the agent's migration tests, which build the hook the same way.
#[path = "../../agent/tests/common/workspace_build.rs"]
mod workspace_build;

const GUEST_MIB: u64 = 256;
const DISK_MIB: u64 = 64;
/// Where the disk's data starts and how much there is: holes around it.
const DISK_DATA_OFFSET: u64 = 8 << 20;
const DISK_DATA_BYTES: usize = 16 << 20;
/// How `mllm migrate` names the phases it shows.
const PHASES: [&str; 6] = [
    "connecting",
    "precopy",
    "final-round",
    "device-state",
    "waiting-for-destination",
    "completed",
];
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

struct Artifacts {
    mllm: PathBuf,
    hook_library: PathBuf,
}

/// The `mllm` binary and the hook library, built once per process.
fn artifacts() -> &'static Artifacts {
    static ARTIFACTS: OnceLock<Artifacts> = OnceLock::new();
    ARTIFACTS.get_or_init(|| {
        let outputs = workspace_build::build_with_this_profile(&["mllm-hook", "mllm-cli"]);
        Artifacts {
            mllm: outputs.join("mllm"),
            hook_library: outputs.join("libmllm_hook.so"),
        }
    })
}

/// A `mllm agent` process and the QEMUs it started, all killed on drop.
struct Agent {
    name: &'static str,
    child: Child,
    control: PathBuf,
    state: PathBuf,
    log: PathBuf,
    /// Where it receives migrations, as it printed.
    listen: SocketAddr,
}

impl Agent {
    /// Starts an agent of the deployment under `dir` (a certificate of its
    /// CA, agents "a" and "b" allowed) with its files under `dir/name`,
    /// listening on a port of its choosing, and waits until its control
    /// socket is up.
    fn start(name: &'static str, dir: &Path, specs: &Path, start: &[&str]) -> Agent {
        let ca = deployment_ca(dir);
        let tls = tls_args(dir, &name.to_lowercase(), &ca, "1", &["a", "b"]);
        Agent::start_with(name, dir, specs, start, &tls)
    }

    /// As [`Agent::start`], with `peer_args` (TLS or not) instead.
    fn start_with(
        name: &'static str,
        dir: &Path,
        specs: &Path,
        start: &[&str],
        peer_args: &[OsString],
    ) -> Agent {
        let home = dir.join(name);
        std::fs::create_dir_all(&home).unwrap();
        let control = home.join("agent.sock");
        let state = home.join("vms");
        let log = home.join("agent.log");
        let mut command = Command::new(&artifacts().mllm);
        command
            .args(["-v", "agent", "--listen", "127.0.0.1:0", "--control"])
            .arg(&control)
            .arg("--vms")
            .arg(specs)
            .arg("--state")
            .arg(&state)
            .arg("--hook")
            .arg(&artifacts().hook_library)
            .args(peer_args);
        for vm in start {
            command.args(["--start", vm]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(File::create(home.join("agent.out")).unwrap())
            .stderr(File::create(&log).unwrap())
            // Its own process group, which its QEMUs inherit: one kill ends
            // them all.
            .process_group(0)
            .spawn()
            .expect("starting mllm agent");
        let mut agent = Agent {
            name,
            child,
            control,
            state,
            log,
            listen: "0.0.0.0:0".parse().unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        agent.listen = loop {
            let log = std::fs::read_to_string(&agent.log).unwrap_or_default();
            let announced = log.lines().find_map(|line| {
                let rest = line.strip_prefix("mllm agent: migrations on ")?;
                rest.split(',').next()?.parse::<SocketAddr>().ok()
            });
            if let Some(address) = announced {
                if agent.control.exists() {
                    break address;
                }
            }
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("agent {name} exited ({status}):\n{log}");
            }
            assert!(Instant::now() < deadline, "agent {name} not up:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        };
        agent
    }

    /// Runs `mllm migrate ARGS --control <this agent's socket>`.
    fn client(&self, args: &[&str]) -> ClientRun {
        self.client_in_background(args).finish()
    }

    /// Starts `mllm migrate ARGS --control <this agent's socket>`.
    fn client_in_background(&self, args: &[&str]) -> BackgroundClient {
        let dir = tempfile::tempdir().unwrap();
        let stdout = dir.path().join("stdout");
        let stderr = dir.path().join("stderr");
        let child = Command::new(&artifacts().mllm)
            .arg("migrate")
            .args(args)
            .arg("--control")
            .arg(&self.control)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .expect("running mllm migrate");
        BackgroundClient {
            child,
            args: args.iter().map(ToString::to_string).collect(),
            _dir: dir,
            stdout,
            stderr,
        }
    }

    /// `mllm migrate --list --json`.
    fn list(&self) -> Vec<VmInfo> {
        let run = self.client(&["--list", "--json"]);
        assert!(run.status.success(), "--list on {}: {run:?}", self.name);
        match run.replies().as_slice() {
            [ControlReply::Vms { vms }] => vms.clone(),
            other => panic!("--list on {}: {other:?}", self.name),
        }
    }

    /// The serial log of `port` of VM `vm`, as the agent captures it.
    fn serial_log(&self, vm: &str, port: &str) -> PathBuf {
        self.state.join(vm).join(format!("{vm}.{port}.log"))
    }

    /// Heartbeat sequence numbers VM `vm` printed here, complete lines only.
    fn heartbeats(&self, vm: &str) -> Vec<u64> {
        let text = std::fs::read_to_string(self.serial_log(vm, "heartbeat")).unwrap_or_default();
        let complete = text.rsplit_once('\n').map_or("", |(lines, _)| lines);
        complete
            .lines()
            .filter_map(|line| line.trim().strip_prefix("HB ")?.trim().parse().ok())
            .collect()
    }

    /// Waits until VM `vm` printed `count` more heartbeats here.
    fn wait_for_heartbeats(&self, vm: &str, count: usize, timeout: Duration, what: &str) {
        let before = self.heartbeats(vm).len();
        let deadline = Instant::now() + timeout;
        while self.heartbeats(vm).len() < before + count {
            assert!(
                Instant::now() < deadline,
                "{what}: no {count} heartbeats of {vm} on agent {} within {timeout:?} (had {before})",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let pid = self.child.id().cast_signed();
        // SAFETY: kill(2) on the process group this guard created.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        // Killed, the agent could not remove its VMs' RAM files.
        if let Ok(entries) = std::fs::read_dir("/dev/shm") {
            let marker = format!("-{pid}-");
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("mllm-") && name.contains(&marker) && name.ends_with(".ram") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- log of agent {} ---\n{log}", self.name);
        }
    }
}

/// A `mllm migrate` still running.
struct BackgroundClient {
    child: Child,
    args: Vec<String>,
    _dir: tempfile::TempDir,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl BackgroundClient {
    /// What it printed so far.
    fn stdout_so_far(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Waits until a progress line (`--json`) satisfies `reached`.
    fn wait_for_progress(
        &self,
        what: &str,
        timeout: Duration,
        reached: impl Fn(&Progress) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !self.stdout_so_far().lines().any(|line| {
            matches!(serde_json::from_str(line), Ok(ControlReply::Progress(progress)) if reached(&progress))
        }) {
            assert!(
                Instant::now() < deadline,
                "the migration never {what}: {}",
                self.stdout_so_far()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for it to exit (at most [`CLIENT_TIMEOUT`]).
    fn finish(mut self) -> ClientRun {
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "mllm migrate {:?} took more than {CLIENT_TIMEOUT:?}",
                    self.args
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        ClientRun {
            status,
            stdout: std::fs::read_to_string(&self.stdout).unwrap(),
            stderr: std::fs::read_to_string(&self.stderr).unwrap(),
        }
    }
}

#[derive(Debug)]
struct ClientRun {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl ClientRun {
    /// Every line of `--json` output, as the reply it prints.
    fn replies(&self) -> Vec<ControlReply> {
        self.stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not a reply: {line:?}: {e}"))
            })
            .collect()
    }

    /// The progress lines and the report of a successful `--json`
    /// migration, checked for their order.
    fn migration(&self) -> (Vec<Progress>, SourceReport) {
        let mut replies = self.replies();
        let report = match replies.pop() {
            Some(ControlReply::Migrated(report)) => *report,
            other => panic!("last reply {other:?}"),
        };
        println!("{}", serde_json::to_string_pretty(&report).unwrap());
        let progress: Vec<Progress> = replies
            .into_iter()
            .map(|reply| match reply {
                ControlReply::Progress(progress) => progress,
                other => panic!("{other:?} before the report"),
            })
            .collect();
        assert_eq!(progress.first().map(|p| p.phase), Some(Phase::Connecting));
        assert_eq!(progress.last().map(|p| p.phase), Some(Phase::Completed));
        assert!(
            progress
                .iter()
                .any(|p| p.phase == Phase::Precopy && p.round >= 1 && p.bytes_sent > 0),
            "{progress:?}"
        );
        assert!(progress
            .windows(2)
            .all(|w| w[0].bytes_sent <= w[1].bytes_sent));
        (progress, report)
    }
}

/// `mllm certs ARGS`, which must succeed.
fn certs(args: &[OsString]) {
    let output = Command::new(&artifacts().mllm)
        .arg("certs")
        .args(args)
        .output()
        .expect("running mllm certs");
    assert!(output.status.success(), "mllm certs {args:?}: {output:?}");
}

/// The CA of the agents under `dir`, made on first use.
fn deployment_ca(dir: &Path) -> PathBuf {
    let ca = dir.join("ca");
    if !ca.exists() {
        certs(&["ca".into(), "--out".into(), ca.clone().into()]);
    }
    ca
}

/// `mllm agent` arguments for TLS as agent `name`, with a certificate of
/// the CA in `ca` valid for `days`, accepting `peers`.
fn tls_args(dir: &Path, name: &str, ca: &Path, days: &str, peers: &[&str]) -> Vec<OsString> {
    let tls = dir.join(format!("tls-{name}"));
    // Made on first use: an agent restarted under the same name keeps it.
    if !tls.exists() {
        certs(&[
            "host".into(),
            name.into(),
            "--ca".into(),
            ca.into(),
            "--out".into(),
            tls.clone().into(),
            "--days".into(),
            days.into(),
        ]);
    }
    let mut args: Vec<OsString> = vec!["--tls-dir".into(), tls.into()];
    for peer in peers {
        args.extend(["--allow-peer".into(), (*peer).into()]);
    }
    args
}

/// A local address where nothing listens: the kernel refuses connections.
fn dead_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Writes `specs/NAME.toml` booting the lab's guest, with `extra` (a disk
/// table) at the end.
fn write_spec(specs: &Path, name: &str, extra: &str) {
    write_spec_running(specs, name, "", extra);
}

/// [`write_spec`] with kernel parameters that start a guest workload.
fn write_spec_running(specs: &Path, name: &str, workload: &str, extra: &str) {
    let image = ImageBuilder::new(&paths::cache_dir(), &paths::workspace_root())
        .build()
        .expect("guest image (see `mllm lab setup`)");
    let ports: Vec<String> = SERIAL_PORTS.iter().map(|p| format!("{p:?}")).collect();
    std::fs::create_dir_all(specs).unwrap();
    std::fs::write(
        specs.join(format!("{name}.toml")),
        format!(
            "memory_mib = {GUEST_MIB}\n\
             kernel = {:?}\n\
             initrd = {:?}\n\
             cmdline = \"console=ttyS0 panic=-1 loglevel=4 {workload}\"\n\
             serial_ports = [{}]\n\
             accelerator = \"tcg\"\n\
             {extra}",
            image.kernel.display().to_string(),
            image.initrd.display().to_string(),
            ports.join(", ")
        ),
    )
    .unwrap();
}

/// A directory for one test's agents, in /tmp: unix socket paths are short.
fn test_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mllm-daemon-")
        .tempdir()
        .unwrap()
}

/// A sparse image of [`DISK_MIB`] at `path` holding [`disk_data`] at
/// [`DISK_DATA_OFFSET`].
fn write_image_with_data(path: &Path) {
    let image = File::create(path).unwrap();
    image.set_len(DISK_MIB << 20).unwrap();
    image.write_all_at(&disk_data(), DISK_DATA_OFFSET).unwrap();
}

/// Recognizable, different in every block, and incompressible like most
/// data on real disks (so what crosses the link shows what was sent).
fn disk_data() -> Vec<u8> {
    let mut data = vec![0u8; DISK_DATA_BYTES];
    rand::rngs::StdRng::seed_from_u64(7).fill_bytes(&mut data);
    for (block, bytes) in data.chunks_exact_mut(4096).enumerate() {
        let label = format!("mllm daemon test, disk block {block}\n");
        bytes[..label.len()].copy_from_slice(label.as_bytes());
    }
    data
}

/// The spec's disk table for a disk image at `image`.
fn disk_table(image: &Path) -> String {
    format!(
        "[disk]\nimage = {:?}\nsize = \"{DISK_MIB} MiB\"\n",
        image.display().to_string()
    )
}

fn status_of(vms: &[VmInfo], name: &str) -> Option<String> {
    vms.iter()
        .find(|vm| vm.name == name)
        .map(|vm| vm.status.clone())
}

#[test]
fn a_vm_moves_between_two_agents_through_mllm_migrate() {
    let started = Instant::now();
    artifacts();
    let dir = test_dir();
    let specs = dir.path().join("specs");
    write_spec(&specs, "vm1", "");
    // Guards drop in reverse order: A (the guest's first home) first.
    let b = Agent::start("B", dir.path(), &specs, &[]);
    let a = Agent::start("A", dir.path(), &specs, &["vm1"]);
    a.wait_for_heartbeats("vm1", 50, BOOT_TIMEOUT, "boot on A");
    println!("{:.1} s: vm1 boots on A", started.elapsed().as_secs_f64());

    let on_a = a.list();
    assert_eq!(on_a.len(), 1, "{on_a:?}");
    assert_eq!(on_a[0].name, "vm1");
    assert_eq!(on_a[0].memory_mib, GUEST_MIB);
    assert_eq!(on_a[0].status, "running");
    assert_eq!(on_a[0].migration, None);
    assert_eq!(b.list(), []);

    // Nothing listens there: a clear error naming the address, and the VM
    // runs on where it was.
    let nowhere = dead_address().to_string();
    let failed = a.client(&["vm1", "--to", &nowhere, "--verify"]);
    assert!(!failed.status.success(), "{failed:?}");
    assert!(
        failed
            .stderr
            .contains(&format!("connecting to the agent at {nowhere}"))
            && failed.stderr.contains("refused"),
        "{failed:?}"
    );
    let after_failure = a.list();
    assert_eq!(status_of(&after_failure, "vm1").as_deref(), Some("running"));
    assert_eq!(after_failure[0].migration, None, "progress left behind");
    a.wait_for_heartbeats("vm1", 50, Duration::from_secs(30), "after the failure");
    assert_eq!(b.list(), []);

    // To itself: A's own migration port refuses a VM that runs there.
    let itself = a.client(&["vm1", "--to", &a.listen.to_string()]);
    assert!(!itself.status.success(), "{itself:?}");
    assert!(
        itself.stderr.contains("VM vm1 already runs on this host"),
        "{itself:?}"
    );
    assert_eq!(status_of(&a.list(), "vm1").as_deref(), Some("running"));
    a.wait_for_heartbeats("vm1", 50, Duration::from_secs(30), "after refusing itself");

    // A VM the agent does not own.
    let unknown = a.client(&["vm2", "--to", &b.listen.to_string()]);
    assert!(!unknown.status.success(), "{unknown:?}");
    assert!(
        unknown.stderr.contains("this agent owns no VM named vm2"),
        "{unknown:?}"
    );

    // The migration, with progress and the report as JSON lines.
    let run = a.client(&["vm1", "--to", &b.listen.to_string(), "--verify", "--json"]);
    assert!(run.status.success(), "{run:?}");
    println!("{:.1} s: vm1 migrated", started.elapsed().as_secs_f64());
    let (progress, report) = run.migration();
    let last = progress.last().unwrap();
    assert!(last.bytes_sent >= report.memory_bytes, "{last:?}");
    assert_eq!(report.blocks_sent, 0);
    assert_eq!(report.vm_name, "vm1");
    assert_eq!(report.ram_bytes, GUEST_MIB << 20);
    assert!(report.verified, "digests were not compared");
    assert!(report.pages_sent >= (GUEST_MIB << 20) / 4096);
    assert!(report.device_state_bytes > 10_000);

    // vm1 runs on B now, and A forgot it.
    let on_b = b.list();
    assert_eq!(
        status_of(&on_b, "vm1").as_deref(),
        Some("running"),
        "{on_b:?}"
    );
    assert_eq!(on_b[0].memory_mib, GUEST_MIB);
    assert_eq!(a.list(), []);
    let table = b.client(&["--list"]);
    assert!(table.status.success(), "{table:?}");
    assert!(
        table.stdout.contains("vm1") && table.stdout.contains("running"),
        "{table:?}"
    );
    let gone = a.client(&["vm1", "--to", &b.listen.to_string()]);
    assert!(
        !gone.status.success() && gone.stderr.contains("owns no VM named vm1"),
        "{gone:?}"
    );

    let (last_on_a, first_on_b) = assert_heartbeat_moved(&a, &b, "vm1");
    println!(
        "{:.1} s: heartbeat {last_on_a} last on A, {first_on_b} first on B; {} rounds, downtime <= {:.0} ms",
        started.elapsed().as_secs_f64(),
        report.rounds.len(),
        report.downtime_upper_bound_ms()
    );

    // And back: a VM B received migrates out again (its QEMU was launched
    // for an incoming migration), into A's state directory of before; this
    // time as a person would run it, with a line per phase on stderr (not a
    // terminal) and a summary on stdout.
    let back = b.client(&["vm1", "--to", &a.listen.to_string()]);
    assert!(back.status.success(), "{back:?}");
    assert!(
        back.stdout.starts_with("migrated vm1 in ") && back.stdout.contains(" rounds, "),
        "{back:?}"
    );
    let phases: Vec<&str> = back
        .stderr
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|word| PHASES.contains(word))
        .collect();
    assert_eq!(phases.first(), Some(&"connecting"), "{back:?}");
    assert!(phases.contains(&"precopy"), "{back:?}");
    assert_eq!(phases.last(), Some(&"completed"), "{back:?}");
    assert_eq!(status_of(&a.list(), "vm1").as_deref(), Some("running"));
    assert_eq!(b.list(), []);
    let (last_on_b, first_on_a) = assert_heartbeat_moved(&b, &a, "vm1");
    println!(
        "{:.1} s: back on A, heartbeat {last_on_b} last on B, {first_on_a} first on A: {}",
        started.elapsed().as_secs_f64(),
        back.stdout.trim()
    );
}

/// The heartbeat of `vm` goes on at `to` where it stopped at `from`: 100
/// more, contiguous, starting after the last one `from` captured (a line
/// the switch cut in two is complete on neither side: one number may be
/// lost). Returns the last number at `from` and the first at `to`.
fn assert_heartbeat_moved(from: &Agent, to: &Agent, vm: &str) -> (u64, u64) {
    let what = format!("{vm} after moving from {} to {}", from.name, to.name);
    to.wait_for_heartbeats(vm, 100, Duration::from_secs(30), &what);
    let last = *from.heartbeats(vm).last().expect("heartbeats before");
    let after = to.heartbeats(vm);
    assert!(
        after[0] <= last + 2 && after[0] + 100 > last,
        "{what}: heartbeat jumped from {last} to {}",
        after[0]
    );
    assert!(
        after.windows(2).all(|w| w[1] == w[0] + 1),
        "{what}: heartbeats not contiguous"
    );
    (last, after[0])
}

#[test]
fn a_vm_with_a_disk_moves_with_it() {
    let started = Instant::now();
    artifacts();
    let dir = test_dir();
    // The same VM on both hosts, with its image at another path on each:
    // B has none yet and creates it.
    let image_a = dir.path().join("a-vm2.raw");
    let image_b = dir.path().join("b-vm2.raw");
    write_image_with_data(&image_a);
    let original = std::fs::read(&image_a).unwrap();
    let (specs_a, specs_b) = (dir.path().join("specs-a"), dir.path().join("specs-b"));
    write_spec(&specs_a, "vm2", &disk_table(&image_a));
    write_spec(&specs_b, "vm2", &disk_table(&image_b));
    let b = Agent::start("B", dir.path(), &specs_b, &[]);
    let a = Agent::start("A", dir.path(), &specs_a, &["vm2"]);
    a.wait_for_heartbeats("vm2", 50, BOOT_TIMEOUT, "boot on A");
    println!("{:.1} s: vm2 boots on A", started.elapsed().as_secs_f64());
    assert!(!image_b.exists());

    let run = a.client(&["vm2", "--to", &b.listen.to_string(), "--verify", "--json"]);
    assert!(run.status.success(), "{run:?}");
    println!("{:.1} s: vm2 migrated", started.elapsed().as_secs_f64());
    let (progress, report) = run.migration();
    // Before the used blocks are known, the whole disk counts as left.
    assert!(
        progress[0].bytes_remaining >= (GUEST_MIB + DISK_MIB) << 20,
        "{:?}",
        progress[0]
    );
    let data_blocks = (DISK_DATA_BYTES / 4096) as u64;
    assert!(report.blocks_sent >= data_blocks, "{report:?}");
    assert!(report.disk_bytes > 0, "{report:?}");
    assert!(report.verified, "digests were not compared");
    let last = progress.last().unwrap();
    assert!(
        last.bytes_sent >= report.memory_bytes + report.disk_bytes,
        "{last:?}"
    );
    // Compared whole, not printed: 64 MiB each.
    assert!(
        std::fs::read(&image_b).unwrap() == original,
        "B's image differs from A's"
    );
    // Unused blocks were not sent: B's image is as sparse as A's.
    let allocated = std::fs::metadata(&image_b).unwrap().blocks() * 512;
    assert!(
        allocated < 2 * DISK_DATA_BYTES as u64,
        "{allocated} bytes allocated"
    );
    assert_eq!(status_of(&b.list(), "vm2").as_deref(), Some("running"));
    assert_eq!(a.list(), []);
    assert_heartbeat_moved(&a, &b, "vm2");

    // And back into A's image, which still holds what B got: the blocks
    // go as references to it.
    let back = b.client(&["vm2", "--to", &a.listen.to_string()]);
    assert!(back.status.success(), "{back:?}");
    println!(
        "{:.1} s: back on A: {}",
        started.elapsed().as_secs_f64(),
        back.stdout.trim()
    );
    assert!(
        back.stdout.contains(" disk blocks (") && back.stdout.contains(" MiB of disk and "),
        "{back:?}"
    );
    assert!(back.stdout.contains(" went as references, "), "{back:?}");
    let back_disk_mib: f64 = back
        .stdout
        .split(" MiB of disk and ")
        .next()
        .and_then(|before| before.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no disk bytes in {back:?}"));
    assert!(
        back_disk_mib * f64::from(1u32 << 20) < report.disk_bytes as f64 / 4.0,
        "{back_disk_mib} MiB of disk back, {} bytes there",
        report.disk_bytes
    );
    assert!(
        std::fs::read(&image_a).unwrap() == original,
        "A's image changed"
    );
    assert_eq!(status_of(&a.list(), "vm2").as_deref(), Some("running"));
    assert_heartbeat_moved(&b, &a, "vm2");
}

impl Agent {
    /// Sends SIGTERM and waits for the agent to exit; returns its status.
    fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "agent {} ignored SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the agent alone (not its QEMUs) with SIGKILL.
    fn kill_agent_only(&mut self) {
        self.signal(libc::SIGKILL);
        self.child.wait().unwrap();
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.child.id().cast_signed();
        // SAFETY: kill(2) on the agent this guard started.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The pid of VM `vm`'s QEMU, from the agent's record of it.
    fn recorded_qemu_pid(&self, vm: &str) -> u32 {
        let text = std::fs::read_to_string(self.state.join(format!("{vm}.json")))
            .unwrap_or_else(|e| panic!("no record of {vm} on {}: {e}", self.name));
        let record: serde_json::Value = serde_json::from_str(&text).unwrap();
        u32::try_from(record["pid"].as_u64().unwrap()).unwrap()
    }
}

/// Processes whose command line mentions `needle` (QEMUs name their
/// sockets in the agent's state directory).
fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let is_zombie = std::fs::read_to_string(entry.path().join("stat")).is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        });
        if !is_zombie && String::from_utf8_lossy(&cmdline).contains(&needle) {
            found.push(pid);
        }
    }
    found
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Plays a source agent on the wire: handshake, then a migration request
/// for VM `vm` of the test guest's size; returns the link and the answer.
mod fake_source {
    use std::io::BufReader;
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    use mllm_wire::{
        handshake, Capabilities, FrameReader, FrameWriter, Hello, Message, MigrationPolicy,
        MigrationRequest, Role, PAGE_SIZE_U32,
    };

    pub struct Link {
        pub reader: FrameReader<BufReader<TcpStream>>,
        pub socket: TcpStream,
    }

    pub fn request(to: SocketAddr, vm: &str, ram_bytes: u64) -> (Link, Message) {
        let mut socket = TcpStream::connect(to).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let hello = Hello {
            role: Role::Source,
            capabilities: Capabilities::all(),
        };
        handshake(&mut socket, &hello).unwrap();
        let mut writer = FrameWriter::new(socket.try_clone().unwrap());
        writer
            .send(&Message::MigrationRequest(MigrationRequest {
                vm_name: vm.into(),
                ram_bytes,
                page_size: PAGE_SIZE_U32,
                disk_bytes: vec![],
                policy: MigrationPolicy::Precopy,
                migration_id: 1,
                verify: false,
            }))
            .unwrap();
        let mut reader = FrameReader::new(BufReader::new(socket.try_clone().unwrap()));
        let answer = reader.recv().unwrap();
        (Link { reader, socket }, answer)
    }
}

fn rejection(answer: &mllm_wire::Message) -> String {
    match answer {
        mllm_wire::Message::MigrationReject(reject) => reject.reason.clone(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Limits, one migration per name, and SIGTERM during an incoming
/// migration, against sources played on the wire: a silent peer is cut off
/// after the handshake timeout without blocking others for longer; over the
/// handshake limit a connection is closed; a second migration of a VM being
/// received, and one over the incoming limit, are refused with their
/// reason; SIGTERM aborts the migration in flight and leaves no QEMU and no
/// RAM file of it.
#[test]
fn limits_one_migration_per_vm_and_sigterm_while_receiving() {
    artifacts();
    let dir = test_dir();
    let specs = dir.path().join("specs");
    write_spec(&specs, "x", "");
    write_spec(&specs, "y", "");
    let mut b = Agent::start_with(
        "B",
        dir.path(),
        &specs,
        &[],
        // Its peers here are played on the wire, in plaintext.
        &[
            "--insecure-plaintext",
            "--max-handshakes",
            "1",
            "--max-incoming",
            "1",
            "--handshake-timeout",
            "1",
        ]
        .map(OsString::from),
    );
    let ram_bytes = GUEST_MIB << 20;

    // A silent peer holds the only handshake slot...
    let started = Instant::now();
    let mut silent = std::net::TcpStream::connect(b.listen).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // ... so the next connection is closed at once...
    let mut over = std::net::TcpStream::connect(b.listen).unwrap();
    over.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        matches!(std::io::Read::read(&mut over, &mut byte), Ok(0) | Err(_)),
        "a connection over the handshake limit was served"
    );
    // ... until the silent one is cut off at its timeout.
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut hello = [0u8; 4096];
    loop {
        match std::io::Read::read(&mut silent, &mut hello) {
            Ok(0) | Err(_) => break,
            // The agent's own hello, sent first.
            Ok(_) => {}
        }
    }
    let cut_after = started.elapsed();
    assert!(
        cut_after >= Duration::from_millis(900) && cut_after < Duration::from_secs(5),
        "silent peer cut after {cut_after:?}"
    );
    assert!(
        b.log_text().contains("connection closed"),
        "{}",
        b.log_text()
    );
    // Its thread gives the slot back just after the cut.
    std::thread::sleep(Duration::from_millis(200));

    // A migration of x is accepted; a second one of x is refused by name,
    // one of y by the limit of one.
    let (mut first, answer) = fake_source::request(b.listen, "x", ram_bytes);
    assert!(
        matches!(answer, mllm_wire::Message::MigrationAccept(_)),
        "{answer:?}"
    );
    let (_, answer) = fake_source::request(b.listen, "x", ram_bytes);
    let reason = rejection(&answer);
    assert!(
        reason.contains("VM x is already being received by this host"),
        "{reason}"
    );
    let (_, answer) = fake_source::request(b.listen, "y", ram_bytes);
    let reason = rejection(&answer);
    assert!(
        reason.contains("receives 1 migrations already") && reason.contains("VM y"),
        "{reason}"
    );
    let qemus = processes_mentioning(&b.state.join("x"));
    assert_eq!(qemus.len(), 1, "one destination QEMU, for x: {qemus:?}");
    assert!(
        b.state.join("x.json").exists(),
        "no record of the incoming VM"
    );

    // SIGTERM mid-migration: aborted before the hand-over.
    let status = b.terminate();
    assert!(status.success(), "{status}");
    let log = b.log_text();
    assert!(
        log.contains("migration aborted before the hand-over"),
        "{log}"
    );
    let end = first.reader.recv();
    assert!(
        matches!(end, Ok(mllm_wire::Message::Abort(_)) | Err(_)),
        "{end:?}"
    );
    drop(first.socket);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(&b.state.join("x")).is_empty() {
        assert!(Instant::now() < deadline, "destination QEMU left running");
        std::thread::sleep(Duration::from_millis(50));
    }
    let marker = format!("mllm-x-{}-", b.child.id());
    let left: Vec<_> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&marker))
        .collect();
    assert!(left.is_empty(), "RAM file left: {left:?}");
    assert!(!b.state.join("x.json").exists(), "record left");
}

/// An agent stopped by SIGTERM leaves its VM running; the next agent adopts
/// it (and does not boot it again); one killed with SIGKILL too. The guest
/// keeps its heartbeat through both.
#[test]
fn a_restarted_agent_adopts_the_vm_it_left_running() {
    let started = Instant::now();
    artifacts();
    let dir = test_dir();
    let specs = dir.path().join("specs");
    write_spec(&specs, "vm1", "");
    // Kept to the end: its guard kills the process group the VM's QEMU
    // was started in, whichever agent adopted it since.
    let mut first = Agent::start("A", dir.path(), &specs, &["vm1"]);
    first.wait_for_heartbeats("vm1", 30, BOOT_TIMEOUT, "boot");
    let qemu = first.recorded_qemu_pid("vm1");

    let status = first.terminate();
    assert!(status.success(), "{status}");
    assert!(
        first.log_text().contains("1 VMs left running"),
        "{}",
        first.log_text()
    );
    assert!(process_alive(qemu), "QEMU died with the agent");
    println!(
        "{:.1} s: agent stopped, QEMU {qemu} runs on",
        started.elapsed().as_secs_f64()
    );

    let mut second = Agent::start("A", dir.path(), &specs, &["vm1"]);
    assert!(
        second.log_text().contains("not started again"),
        "{}",
        second.log_text()
    );
    assert_eq!(second.recorded_qemu_pid("vm1"), qemu);
    assert_eq!(status_of(&second.list(), "vm1").as_deref(), Some("running"));
    second.wait_for_heartbeats("vm1", 20, Duration::from_secs(30), "after SIGTERM");

    second.kill_agent_only();
    assert!(process_alive(qemu), "QEMU died with the killed agent");
    let third = Agent::start("A", dir.path(), &specs, &[]);
    let vms = third.list();
    assert_eq!(
        status_of(&vms, "vm1").as_deref(),
        Some("running"),
        "{vms:?}"
    );
    third.wait_for_heartbeats("vm1", 20, Duration::from_secs(30), "after SIGKILL");
    println!(
        "{:.1} s: adopted after SIGTERM and after SIGKILL",
        started.elapsed().as_secs_f64()
    );
    drop(third);
    drop(second);
    drop(first);
}

/// A disk workload: 4 MiB at the start of `/dev/vda` (before the test
/// data) written 50 times a second with direct I/O and read back by the
/// guest itself every two seconds.
const DISK_WORKLOAD: &str =
    "mllm.workload=diskload mllm.args=--device=/dev/vda,--length=4194304,--write-rate=50";

/// The source agent killed (SIGKILL) in the middle of sending a VM with a
/// disk, then restarted: QEMU runs on untouched (the kernel tracks writes
/// without the agent), the guest's disk requests wait while the agent's NBD
/// server is gone and go on once QEMU's NBD client reconnects to the
/// restarted agent, which adopts the VM; the destination discards what it
/// had received. Then the VM moves, digests compared. A row of the fault
/// matrix (`MLLM_FAULT_MATRIX_ROWS` appends it: scripts/fault-matrix.sh).
#[test]
fn a_source_agent_killed_mid_migration_restarts_and_its_vm_runs_on_with_its_disk() {
    let started = Instant::now();
    artifacts();
    let dir = test_dir();
    let image_a = dir.path().join("a-vm3.raw");
    write_image_with_data(&image_a);
    let (specs_a, specs_b) = (dir.path().join("specs-a"), dir.path().join("specs-b"));
    write_spec_running(&specs_a, "vm3", DISK_WORKLOAD, &disk_table(&image_a));
    let image_b = dir.path().join("b-vm3.raw");
    write_spec_running(&specs_b, "vm3", DISK_WORKLOAD, &disk_table(&image_b));
    let b = Agent::start("B", dir.path(), &specs_b, &[]);
    // Kept to the end: its guard kills the process group of the VM's QEMU.
    let mut first = Agent::start("A", dir.path(), &specs_a, &["vm3"]);
    first.wait_for_heartbeats("vm3", 50, BOOT_TIMEOUT, "boot on A");
    first.assert_workload_intact("vm3", "boot on A");
    let qemu = first.recorded_qemu_pid("vm3");

    // A thin link keeps the migration in its first round until the kill.
    let (link, through_link) = thin_link_to(&b, 8_000_000);
    let client = first.client_in_background(&["vm3", "--to", &through_link, "--json"]);
    client.wait_for_progress("started sending", Duration::from_secs(60), |progress| {
        progress.phase == Phase::Precopy && progress.bytes_sent > 0
    });
    let killed = Instant::now();
    first.kill_agent_only();
    let run = client.finish();
    assert!(!run.status.success(), "{run:?}");
    assert!(process_alive(qemu), "QEMU died with the killed agent");
    println!(
        "{:.1} s: agent A killed in pre-copy; mllm migrate said: {}",
        started.elapsed().as_secs_f64(),
        run.stderr.trim()
    );

    // The destination lets go of what it received.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !b.list().is_empty() || !processes_mentioning(&b.state.join("vm3")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "B still holds vm3: {:?}",
            b.list()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!b.state.join("vm3.json").exists(), "B kept a record of vm3");
    let discarded_in = killed.elapsed();

    let a = Agent::start("A", dir.path(), &specs_a, &[]);
    assert!(
        a.log_text()
            .contains("an outgoing migration was cut short before the hand-over: the VM runs here"),
        "{}",
        a.log_text()
    );
    assert_eq!(a.recorded_qemu_pid("vm3"), qemu);
    assert_eq!(status_of(&a.list(), "vm3").as_deref(), Some("running"));
    a.wait_for_heartbeats("vm3", 20, Duration::from_secs(30), "after the restart");
    // Its disk requests went through QEMU's reconnected NBD client.
    a.assert_workload_intact("vm3", "after the restart");
    let resolved_in = killed.elapsed();
    println!(
        "{:.1} s: B discarded vm3 in {:.1} s; A adopted it, guest disk check passes {:.1} s after the kill",
        started.elapsed().as_secs_f64(),
        discarded_in.as_secs_f64(),
        resolved_in.as_secs_f64()
    );

    let run = a.client(&["vm3", "--to", &b.listen.to_string(), "--verify", "--json"]);
    assert!(run.status.success(), "{run:?}");
    let (_, report) = run.migration();
    assert!(report.verified, "digests were not compared");
    assert!(report.disk_bytes > 0, "{report:?}");
    assert_heartbeat_moved(&a, &b, "vm3");
    b.assert_workload_intact("vm3", "moved after the restart");
    println!(
        "{:.1} s: vm3 moved to B after the restart",
        started.elapsed().as_secs_f64()
    );

    add_fault_matrix_row(
        "source agent killed (SIGKILL) and restarted; QEMU's NBD client loses the disk server with it and reconnects",
        "pre-copy, round 1, VM with a disk",
        "source (adopted by the restarted agent; the destination discarded its copy)",
        "guest's disk self-check passes after the restart; then migrated with RAM and disk digests equal",
        resolved_in,
    );
    drop(b);
    drop(a);
    drop(first);
    link.shutdown();
}

/// An emulated link of `bandwidth_bits_per_s` and 20 ms RTT to agent `to`,
/// and the `--to` target that goes through it.
fn thin_link_to(to: &Agent, bandwidth_bits_per_s: u64) -> (Link, String) {
    let rtt = Duration::from_millis(20);
    let link = Link::new(LinkConfig {
        bandwidth_bits_per_s,
        rtt,
        queue_bytes: LinkConfig::default_queue_bytes(bandwidth_bits_per_s, rtt),
        ..LinkConfig::default()
    })
    .unwrap();
    let target = format!(
        "{}@{}",
        to.name.to_lowercase(),
        link.forward(to.listen).unwrap()
    );
    (link, target)
}

/// Adds a row to the fault matrix's table when `scripts/fault-matrix.sh`
/// runs this test (it names the file in `MLLM_FAULT_MATRIX_ROWS`).
fn add_fault_matrix_row(fault: &str, when: &str, guest_after: &str, data: &str, took: Duration) {
    let Ok(path) = std::env::var("MLLM_FAULT_MATRIX_ROWS") else {
        return;
    };
    let row = format!(
        "| {fault} | {when} | {guest_after} | {data} | {:.1} s |\n",
        took.as_secs_f64()
    );
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {path}: {e}"));
    std::io::Write::write_all(&mut file, row.as_bytes()).unwrap();
}

/// Memory written fast enough that one pre-copy round leaves thousands of
/// pages for after the switch, checked by the guest itself.
const POSTCOPY_WORKLOAD: &str = "mllm.workload=memload mllm.args=--size=33554432,--write-rate=4000";

#[test]
fn a_source_agent_killed_in_post_copy_restarts_and_finishes_the_move() {
    let started = Instant::now();
    artifacts();
    let dir = test_dir();
    let (specs_a, specs_b) = (dir.path().join("specs-a"), dir.path().join("specs-b"));
    write_spec_running(&specs_a, "vm4", POSTCOPY_WORKLOAD, "");
    write_spec_running(&specs_b, "vm4", POSTCOPY_WORKLOAD, "");
    let b = Agent::start("B", dir.path(), &specs_b, &[]);
    // Kept to the end: its guard kills the process group of the VM's QEMU.
    let mut first = Agent::start("A", dir.path(), &specs_a, &["vm4"]);
    first.wait_for_heartbeats("vm4", 50, BOOT_TIMEOUT, "boot on A");
    first.assert_workload_intact("vm4", "boot on A");
    let qemu = first.recorded_qemu_pid("vm4");

    // Slow enough that the pages left for after the switch take seconds.
    let (link, through_link) = thin_link_to(&b, 20_000_000);
    let client = first.client_in_background(&[
        "vm4",
        "--to",
        &through_link,
        "--policy",
        "postcopy",
        "--verify",
        "--json",
    ]);
    client.wait_for_progress("reached post-copy", Duration::from_secs(120), |progress| {
        progress.phase == Phase::Postcopy
    });
    let killed = Instant::now();
    first.kill_agent_only();
    let run = client.finish();
    assert!(!run.status.success(), "{run:?}");
    assert!(process_alive(qemu), "QEMU died with the killed agent");
    // The destination runs the VM, and waits for the pages it lacks.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !b
        .log_text()
        .contains("failed in post-copy; waiting for it to resume")
    {
        assert!(
            Instant::now() < deadline,
            "B did not wait for the source:\n{}",
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "{:.1} s: agent A killed in post-copy; mllm migrate said: {}",
        started.elapsed().as_secs_f64(),
        run.stderr.trim()
    );

    let a = Agent::start("A", dir.path(), &specs_a, &[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !a
        .log_text()
        .contains("the post-copy the previous agent left is finished")
    {
        assert!(
            Instant::now() < deadline && !a.log_text().contains("the VM stays paused here"),
            "the restarted agent did not finish the post-copy:\n{}\n--- B:\n{}",
            a.log_text(),
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let finished_in = killed.elapsed();
    assert!(
        a.list().is_empty(),
        "A still holds the VM it released: {:?}",
        a.list()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while process_alive(qemu) {
        assert!(Instant::now() < deadline, "the source QEMU was not quit");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every page installed after the switch was checked against the
    // source's digest of it, taken before the kill.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !b
        .log_text()
        .contains("migration received; the VM runs here")
    {
        assert!(
            Instant::now() < deadline && !b.log_text().contains("incoming migration failed"),
            "B did not complete the migration:\n{}",
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    b.wait_for_heartbeats("vm4", 20, Duration::from_secs(30), "after the post-copy");
    b.assert_workload_intact("vm4", "after the post-copy");
    println!(
        "{:.1} s: the restarted agent finished the post-copy {:.1} s after the kill",
        started.elapsed().as_secs_f64(),
        finished_in.as_secs_f64()
    );
    add_fault_matrix_row(
        "source agent killed (SIGKILL) in post-copy and restarted",
        "post-copy (destination runs, pages missing)",
        "destination (stalled on missing pages until the restarted agent resumed the post-copy from its record)",
        "every page installed after the switch equals the source's digest of it at the switch; guest memory check passes",
        finished_in,
    );
    drop(b);
    drop(a);
    drop(first);
    link.shutdown();
}

/// The memory workload the soak runs: 32 MiB written at 500 pages per
/// second, verified by the guest itself every two seconds.
const SOAK_WORKLOAD: &str = "mllm.workload=memload mllm.args=--size=33554432,--write-rate=500";

/// What an agent process holds, to see it grow over many migrations.
#[derive(Debug, Clone, Copy)]
struct Footprint {
    rss_kib: u64,
    fds: usize,
}

impl Agent {
    fn footprint(&self) -> Footprint {
        let proc_dir = PathBuf::from(format!("/proc/{}", self.child.id()));
        let status = std::fs::read_to_string(proc_dir.join("status")).unwrap();
        let rss_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.split_whitespace().next()?.parse().ok())
            .expect("VmRSS in /proc/PID/status");
        let fds = std::fs::read_dir(proc_dir.join("fd")).unwrap().count();
        Footprint { rss_kib, fds }
    }

    /// Lines VM `vm`'s workload printed here that start with `prefix`.
    fn workload_lines(&self, vm: &str, prefix: &str) -> usize {
        std::fs::read_to_string(self.serial_log(vm, "workload"))
            .unwrap_or_default()
            .lines()
            .filter(|line| line.trim_start().starts_with(prefix))
            .count()
    }

    /// Waits for one more passing self-check of the guest's workload here
    /// (of its memory, or of what it wrote on its disk), and fails on any
    /// report of corrupted data.
    fn assert_workload_intact(&self, vm: &str, what: &str) {
        let verified = self.workload_lines(vm, "VERIFY OK");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.workload_lines(vm, "VERIFY OK") <= verified {
            assert!(Instant::now() < deadline, "{what}: no workload self-check");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            self.workload_lines(vm, "CORRUPT"),
            0,
            "{what}: the guest found its data corrupted"
        );
    }
}

/// Back and forth between two agents `MLLM_SOAK_MOVES` times (4 in the test
/// suite; `scripts/soak.sh` runs 24), a guest writing its memory all along:
/// after every move the heartbeat goes on where it stopped, the guest's own
/// memory check passes, and the RAM digests were compared at the switch.
/// Time and bytes per move and both agents' memory and open files are
/// reported (`MLLM_SOAK_OUT` writes the table); a leak of descriptors or of
/// memory per move fails the test.
#[test]
fn a_guest_moves_back_and_forth_without_the_agents_growing() {
    let moves: usize = std::env::var("MLLM_SOAK_MOVES")
        .ok()
        .map_or(4, |value| value.parse().expect("MLLM_SOAK_MOVES: a number"));
    artifacts();
    let dir = tempfile::Builder::new()
        .prefix("mllm-soak-")
        .tempdir()
        .unwrap();
    let specs = dir.path().join("specs");
    write_spec_running(&specs, "vm1", SOAK_WORKLOAD, "");
    let b = Agent::start("B", dir.path(), &specs, &[]);
    let a = Agent::start("A", dir.path(), &specs, &["vm1"]);
    a.wait_for_heartbeats("vm1", 50, BOOT_TIMEOUT, "boot on A");
    a.assert_workload_intact("vm1", "boot on A");

    let agents = [&a, &b];
    let mut table = String::from(
        "| move | from → to | seconds | rounds | MiB sent | downtime ≤ ms | A RSS MiB | A fds | B RSS MiB | B fds |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut footprints = Vec::new();
    for index in 0..moves {
        let (from, to) = (agents[index % 2], agents[(index + 1) % 2]);
        let what = format!("move {} ({} to {})", index + 1, from.name, to.name);
        let run = from.client(&["vm1", "--to", &to.listen.to_string(), "--verify", "--json"]);
        assert!(run.status.success(), "{what}: {run:?}");
        let (_, report) = run.migration();
        assert!(report.verified, "{what}: digests not compared");
        assert_heartbeat_moved(from, to, "vm1");
        to.assert_workload_intact("vm1", &what);
        assert_eq!(status_of(&to.list(), "vm1").as_deref(), Some("running"));
        assert_eq!(from.list(), [], "{what}: the source still lists the VM");
        let now = [a.footprint(), b.footprint()];
        let _ = writeln!(
            table,
            "| {} | {} → {} | {:.1} | {} | {:.1} | {:.0} | {:.1} | {} | {:.1} | {} |",
            index + 1,
            from.name,
            to.name,
            report.total_time_ms() / 1000.0,
            report.rounds.len(),
            report.memory_bytes as f64 / f64::from(1u32 << 20),
            report.downtime_upper_bound_ms(),
            now[0].rss_kib as f64 / 1024.0,
            now[0].fds,
            now[1].rss_kib as f64 / 1024.0,
            now[1].fds,
        );
        footprints.push(now);
    }
    println!("{table}");
    if let Ok(path) = std::env::var("MLLM_SOAK_OUT") {
        std::fs::write(&path, &table).unwrap_or_else(|e| panic!("writing {path}: {e}"));
    }
    // Each agent is compared with itself holding the guest or not as at the
    // end (a guest's RAM it maps counts in its RSS), from the second move on,
    // when everything it caches is warm.
    let last_index = footprints.len().saturating_sub(1);
    let warm_index = if last_index % 2 == 1 { 1 } else { 2 };
    if let (Some(warm), Some(last)) = (footprints.get(warm_index), footprints.get(last_index)) {
        for (agent, (warm, last)) in ["A", "B"].iter().zip(warm.iter().zip(last)) {
            assert!(
                last.fds <= warm.fds + 4,
                "agent {agent} holds {} descriptors after {moves} moves, {} after 2",
                last.fds,
                warm.fds
            );
            assert!(
                last.rss_kib <= warm.rss_kib + 64 * 1024,
                "agent {agent} grew from {} to {} KiB over {moves} moves",
                warm.rss_kib,
                last.rss_kib
            );
        }
    }
}

#[test]
fn peers_of_another_ca_with_an_expired_certificate_or_without_tls_are_refused() {
    artifacts();
    let dir = tempfile::Builder::new()
        .prefix("mllm-daemon-tls-")
        .tempdir()
        .unwrap();
    let home = dir.path();
    let specs = home.join("specs");
    write_spec(&specs, "vm1", "");
    let ca = deployment_ca(home);
    let other_ca = home.join("other-ca");
    certs(&[
        "ca".into(),
        "--out".into(),
        other_ca.clone().into(),
        "--name".into(),
        "another deployment's CA".into(),
    ]);
    // Each refused peer is one A allows by name: what refuses it is its
    // certificate (or the lack of one).
    let intruder = Agent::start_with(
        "C",
        home,
        &specs,
        &[],
        &tls_args(home, "c", &other_ca, "1", &["a"]),
    );
    // Of our CA, but valid for no day: expired by the time A calls.
    let stale = Agent::start_with(
        "D",
        home,
        &specs,
        &[],
        &tls_args(home, "d", &ca, "0", &["a"]),
    );
    let plaintext = Agent::start_with("E", home, &specs, &[], &["--insecure-plaintext".into()]);
    let a = Agent::start_with(
        "A",
        home,
        &specs,
        &["vm1"],
        &tls_args(home, "a", &ca, "1", &["c", "d", "e"]),
    );
    a.wait_for_heartbeats("vm1", 50, BOOT_TIMEOUT, "boot on A");

    for (peer, refusal) in [
        (&intruder, "peer certificate is signed by an unknown CA"),
        (&stale, "peer certificate expired at "),
        (
            &plaintext,
            "peer does not speak TLS (plaintext connection?)",
        ),
    ] {
        let run = a.client(&["vm1", "--to", &peer.listen.to_string()]);
        assert!(!run.status.success(), "{run:?}");
        assert!(
            run.stderr.contains(refusal) && run.stderr.contains("TLS handshake with"),
            "migrating to {}: {run:?}",
            peer.name
        );
        let vms = a.list();
        assert_eq!(status_of(&vms, "vm1").as_deref(), Some("running"));
        assert_eq!(vms[0].migration, None, "progress left behind");
        a.wait_for_heartbeats("vm1", 20, Duration::from_secs(30), "after a refusal");
        assert_eq!(peer.list(), []);
    }
    // The other sides say why too: the intruder was refused for its CA
    // (A checks the server's certificate first), and the plaintext agent
    // was spoken TLS to.
    let logged = |agent: &Agent, text: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = std::fs::read_to_string(&agent.log).unwrap_or_default();
            if log.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never logged {text:?}:\n{log}",
                agent.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    logged(
        &intruder,
        "peer refused our certificate: it is signed by a CA the peer does not trust",
    );
    logged(&plaintext, "peer speaks TLS and this agent does not");
}
