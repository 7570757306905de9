//! `mllm lab disk-io`: what serving the guest's disk through the agent costs
//! the guest's I/O. The lab's Debian guest boots in rounds, each boot from a
//! fresh copy of the root disk: once with the image attached to QEMU
//! directly, once with the agent's own [`mllm_agent::TrackedDisk`] serving
//! it over NBD on a unix socket ([`mllm_agent::DiskServer`]), as in every
//! migration. Inside, fio runs the same jobs one after another with direct
//! I/O on a file of the root disk, and their throughputs are compared.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use base64::prelude::{Engine, BASE64_STANDARD};
use bytesize::ByteSize;
use mllm_agent::{RequestTotals, BLOCK_SIZE};
use mllm_guest::GuestEvent;
use mllm_qemu::{Accelerator, DiskAttachment, QemuProcess, SerialLine};
use serde::Deserialize;

use crate::disk;
use crate::image::GuestImage;
use crate::paths;
use crate::rootfs;
use crate::run;
use crate::scenario::{CommandLoad, DiskContent, DiskSpec, VmSpec, Workload};
use crate::scoreboard::Provenance;

/// The target: through the agent, each job keeps at least 85 % of its
/// throughput on the directly attached image.
pub const MAX_LOSS: f64 = 0.15;

/// The guest: the lab's Debian root disk guest of the `mixed` and `redis`
/// scenarios, with the lab's default accelerator and vCPUs.
const MEMORY: ByteSize = ByteSize::mib(512);
const DISK_SIZE: ByteSize = ByteSize::gib(1);
const VCPUS: u32 = 1;

fn guest_vm() -> VmSpec {
    VmSpec {
        memory: MEMORY,
        vcpus: VCPUS,
        accelerator: Accelerator::default(),
        disk: Some(DiskSpec {
            size: DISK_SIZE,
            content: DiskContent::Debian,
            used: None,
        }),
        // Booted alone, one attachment at a time: no migration beside it.
        pin_vcpus: false,
    }
}

/// The guest's CPUs and how they run, for the report's machine note.
pub fn guest_cpus() -> String {
    let accelerator = match Accelerator::default() {
        Accelerator::Tcg => "TCG",
        Accelerator::Kvm => "KVM",
    };
    format!("{VCPUS} vCPU under {accelerator}")
}

/// fio's file on the root disk, and the prefix of the guest's output lines
/// that carry each job's JSON report: base64, so that no line of it can be
/// taken for a rate by the guest's output parser, in lines of base64's own
/// width, below the length at which the guest cuts lines.
const FIO_FILE: &str = "/var/tmp/disk-io.data";
const REPORT_MARK: &str = "fio-json";

/// Time the guest needs besides the measured jobs, however short they are:
/// writing the file whole, starting fio, printing its reports.
const GUEST_SLACK: Duration = Duration::from_secs(300);

/// How much of the guest's output an error shows.
const OUTPUT_TAIL_LINES: usize = 20;
const OUTPUT_LINE_CHARS: usize = 160;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// How long each measured job runs.
    pub runtime: Duration,
    /// Bytes of the file the jobs read and write, written whole before them.
    pub file_size: u64,
    /// Requests fio keeps in flight (libaio).
    pub io_depth: u32,
    /// Boots per disk path, alternating between the two so that whatever
    /// else the machine does weighs on both alike.
    pub rounds: u32,
}

/// Which way a job's bytes go, and so which half of fio's report counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Read,
    Write,
}

/// One measured fio job.
#[derive(Debug)]
pub struct FioJob {
    /// fio's job name; it also names the job's report in the guest's output.
    pub name: &'static str,
    /// How the report names it.
    pub title: &'static str,
    /// fio's `--rw`.
    pattern: &'static str,
    /// Bytes per request.
    pub block_size: u64,
    pub direction: Direction,
}

/// The measured jobs, in the order they run.
pub const JOBS: [FioJob; 3] = [
    FioJob {
        name: "randread",
        title: "random 4 KiB read",
        pattern: "randread",
        block_size: 4 << 10,
        direction: Direction::Read,
    },
    FioJob {
        name: "randwrite",
        title: "random 4 KiB write",
        pattern: "randwrite",
        block_size: 4 << 10,
        direction: Direction::Write,
    },
    FioJob {
        name: "seqread",
        title: "sequential 1 MiB read",
        pattern: "read",
        block_size: 1 << 20,
        direction: Direction::Read,
    },
];

/// The job that writes fio's file whole before the measured jobs, so that
/// none of them measures the file system allocating it; it runs to the
/// file's end instead of for a time.
const LAYOUT_NAME: &str = "layout";
const LAYOUT_ARGS: &str = "--rw=write --bs=1048576";

impl Settings {
    fn check(&self) -> Result<()> {
        ensure!(
            self.runtime >= Duration::from_secs(1),
            "the runtime of each job ({:?}) must be at least 1 s",
            self.runtime
        );
        ensure!(
            self.file_size >= 1 << 20 && self.file_size.is_multiple_of(1 << 20),
            "the fio file size ({} bytes) must be a whole number of MiB, at least 1 MiB",
            self.file_size
        );
        ensure!(
            (1..=1024).contains(&self.io_depth),
            "the I/O depth ({}) must be 1..=1024",
            self.io_depth
        );
        ensure!(
            (1..=20).contains(&self.rounds),
            "the rounds ({}) must be 1..=20",
            self.rounds
        );
        Ok(())
    }

    /// The options every job shares.
    fn common_args(&self) -> String {
        format!(
            "--filename={FIO_FILE} --size={} --direct=1 --ioengine=libaio --iodepth={}",
            self.file_size, self.io_depth
        )
    }

    /// The options of a measured job besides the common ones.
    fn timed_args(&self, job: &FioJob) -> String {
        format!(
            "--rw={} --bs={} --time_based --runtime={}ms",
            job.pattern,
            job.block_size,
            self.runtime.as_millis()
        )
    }

    /// How the guest runs the job `name` by hand (the report's reproduction).
    fn fio_command(&self, name: &str, args: &str) -> String {
        format!("fio --name={name} {} {args}", self.common_args())
    }

    /// The guest's shell command: the layout, then every job, each followed
    /// by its JSON report, every line of it marked with the job's name; the
    /// first failure ends it.
    fn guest_command(&self) -> String {
        let mut command = format!(
            "f() {{ n=$1; shift; fio --name=$n {} --output-format=json --output=/tmp/$n.json \"$@\" \
             && base64 /tmp/$n.json | sed \"s/^/{REPORT_MARK} $n /\"; }}; f {LAYOUT_NAME} {LAYOUT_ARGS}",
            self.common_args()
        );
        for job in &JOBS {
            let _ = write!(command, " && f {} {}", job.name, self.timed_args(job));
        }
        command
    }

    /// Time for the guest to finish every job once booted.
    fn guest_timeout(&self) -> Duration {
        JOBS.iter().map(|_| self.runtime).sum::<Duration>() + GUEST_SLACK
    }
}

/// The way the guest's disk reaches QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskPath {
    /// QEMU opens the image itself (`DiskAttachment::Image`).
    Direct,
    /// The agent serves it over NBD (`DiskAttachment::Nbd`).
    Agent,
}

impl DiskPath {
    pub fn name(self) -> &'static str {
        match self {
            DiskPath::Direct => "direct",
            DiskPath::Agent => "agent",
        }
    }
}

/// What fio reported for one job in the job's direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    pub iops: f64,
    pub bytes_per_s: f64,
    /// Bytes moved in the job's direction.
    pub bytes: u64,
}

/// One boot of the guest and its jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct PathRun {
    /// One per [`JOBS`] entry, in order.
    pub jobs: Vec<Throughput>,
    /// Bytes fio read and wrote over all its jobs, the layout included:
    /// with direct I/O every one of them reached the disk.
    pub guest_bytes_read: u64,
    pub guest_bytes_written: u64,
    /// Through the agent: what its `TrackedDisk` saw.
    pub served: Option<Served>,
}

/// What the agent's `TrackedDisk` recorded while the guest ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    pub requests: RequestTotals,
    /// Blocks marked written, as a migration would take them.
    pub dirty_blocks: u64,
    /// Distinct blocks read.
    pub blocks_read: u64,
}

/// One boot through each path.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    pub direct: PathRun,
    pub agent: PathRun,
}

impl Round {
    pub fn through(&self, path: DiskPath) -> &PathRun {
        match path {
            DiskPath::Direct => &self.direct,
            DiskPath::Agent => &self.agent,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub settings: Settings,
    pub rounds: Vec<Round>,
}

impl Comparison {
    /// Every round's throughput of the job `JOBS[job]` through `path`,
    /// slowest first.
    pub fn sorted(&self, path: DiskPath, job: usize) -> Vec<Throughput> {
        let mut all: Vec<Throughput> = self
            .rounds
            .iter()
            .map(|round| round.through(path).jobs[job])
            .collect();
        all.sort_by(|a, b| a.bytes_per_s.total_cmp(&b.bytes_per_s));
        all
    }

    /// The median round's throughput of the job `JOBS[job]` through `path`
    /// (of two middle rounds, the faster).
    pub fn median(&self, path: DiskPath, job: usize) -> Throughput {
        let sorted = self.sorted(path, job);
        sorted[sorted.len() / 2]
    }

    /// Median throughput through the agent as a fraction of the median
    /// direct, job by job.
    pub fn ratios(&self) -> Vec<f64> {
        (0..JOBS.len())
            .map(|job| {
                self.median(DiskPath::Agent, job).bytes_per_s
                    / self.median(DiskPath::Direct, job).bytes_per_s
            })
            .collect()
    }
}

/// Boots the guest with the image attached directly, then through the
/// agent, as many rounds as `settings` says, and runs the jobs in every
/// boot. Needs the Debian root disk built.
pub fn compare(image: &GuestImage, settings: &Settings) -> Result<Comparison> {
    settings.check()?;
    rootfs::built_root_disk(&paths::cache_dir())?;
    // Unix socket paths are limited to 108 bytes: a short temporary directory.
    let run_dir = tempfile::Builder::new()
        .prefix("mllm-disk-io-")
        .tempdir()
        .context("cannot create a directory for the VM's sockets and logs")?;
    let measured = (|| -> Result<Comparison> {
        let mut rounds = Vec::new();
        for round in 1..=settings.rounds {
            let run = |path: DiskPath| {
                eprintln!(
                    "mllm lab disk-io: round {round}/{}, fio with the disk {} ...",
                    settings.rounds,
                    path.name()
                );
                measure(path, image, settings, run_dir.path())
            };
            rounds.push(Round {
                direct: run(DiskPath::Direct)?,
                agent: run(DiskPath::Agent)?,
            });
        }
        Ok(Comparison {
            settings: settings.clone(),
            rounds,
        })
    })();
    measured.map_err(|error| {
        // The logs explain a failure; the disk copies are only large.
        for path in [DiskPath::Direct, DiskPath::Agent] {
            let _ = std::fs::remove_file(disk_copy(run_dir.path(), path));
        }
        let kept = run_dir.keep();
        error.context(format!("the VM's logs are in {}", kept.display()))
    })
}

fn disk_copy(run_dir: &Path, path: DiskPath) -> PathBuf {
    run_dir.join(format!("{}.img", path.name()))
}

fn measure(
    path: DiskPath,
    image: &GuestImage,
    settings: &Settings,
    run_dir: &Path,
) -> Result<PathRun> {
    let vm_spec = guest_vm();
    let disk_spec = vm_spec.disk.as_ref().context("the guest has a disk")?;
    let disk_image = disk::create_source_image(&disk_copy(run_dir, path), disk_spec)?;
    let server = match path {
        DiskPath::Direct => None,
        DiskPath::Agent => Some(run::serve_disk(&disk_image, &run_dir.join("agent.nbd"))?),
    };
    let attachment = server.as_ref().map_or_else(
        || DiskAttachment::Image(disk_image.clone()),
        run::nbd_attachment,
    );
    let workload = Workload::Command(CommandLoad {
        command: settings.guest_command(),
    });
    let vm = QemuProcess::start(run::guest_config(
        &vm_spec,
        &workload,
        image,
        path.name(),
        Some(attachment),
        run_dir,
    ))?;
    let finished = run::wait_until_booted(&vm, &workload).and_then(|()| {
        vm.serial("workload")
            .wait_for(
                "the end of the fio jobs",
                settings.guest_timeout(),
                |line| matches!(mllm_guest::parse_line(line), Some(GuestEvent::Exit { .. })),
            )
            .context("the fio jobs did not end")
    });
    let output = vm.serial("workload").lines();
    let console = vm.serial("console").lines();
    vm.shutdown();
    finished.with_context(|| {
        format!(
            "with the disk {}; the guest's output ends with:\n{}and its console with:\n{}",
            path.name(),
            tail(&output),
            tail(&console)
        )
    })?;
    let mut run = parse_run(&output).with_context(|| {
        format!(
            "with the disk {}; the guest's output ends with:\n{}",
            path.name(),
            tail(&output)
        )
    })?;
    // QEMU has quit: every request the guest made has been answered.
    run.served = server.map(|server| {
        let disk = server.disk();
        Served {
            requests: disk.request_totals(),
            dirty_blocks: disk.take_dirty().len() as u64,
            blocks_read: disk.take_activity().reads.len() as u64,
        }
    });
    std::fs::remove_file(&disk_image)
        .with_context(|| format!("cannot remove {}", disk_image.display()))?;
    Ok(run)
}

/// The jobs' reports in the guest's workload output, which must end with
/// the command's success.
fn parse_run(output: &[SerialLine]) -> Result<PathRun> {
    let events: Vec<GuestEvent> = output
        .iter()
        .filter(|line| line.complete)
        .filter_map(|line| mllm_guest::parse_line(&line.text))
        .collect();
    match events.iter().rev().find_map(|event| match event {
        GuestEvent::Exit { code } => Some(*code),
        _ => None,
    }) {
        Some(0) => {}
        Some(code) => bail!("the fio jobs failed in the guest (exit code {code})"),
        None => bail!("the guest's command has not ended"),
    }
    let report_of = |name: &str| -> Result<FioJobReport> {
        let prefix = format!("{REPORT_MARK} {name} ");
        let encoded: String = events
            .iter()
            .filter_map(|event| match event {
                GuestEvent::Info { text } => text.strip_prefix(&prefix),
                _ => None,
            })
            .collect();
        ensure!(
            !encoded.is_empty(),
            "fio's report of the job {name} is missing"
        );
        parse_report(&encoded)
            .with_context(|| format!("cannot read fio's report of the job {name}"))
    };
    let layout = report_of(LAYOUT_NAME)?;
    let mut run = PathRun {
        jobs: Vec::with_capacity(JOBS.len()),
        guest_bytes_read: layout.read.io_bytes,
        guest_bytes_written: layout.write.io_bytes,
        served: None,
    };
    for job in &JOBS {
        let report = report_of(job.name)?;
        run.guest_bytes_read += report.read.io_bytes;
        run.guest_bytes_written += report.write.io_bytes;
        let measured = match job.direction {
            Direction::Read => &report.read,
            Direction::Write => &report.write,
        };
        ensure!(
            measured.io_bytes > 0 && measured.bw_bytes > 0.0,
            "fio's job {} moved no bytes",
            job.name
        );
        run.jobs.push(Throughput {
            iops: measured.iops,
            bytes_per_s: measured.bw_bytes,
            bytes: measured.io_bytes,
        });
    }
    Ok(run)
}

/// The fields of fio's JSON report (`--output-format=json`) used here.
#[derive(Debug, Deserialize)]
struct FioReport {
    jobs: Vec<FioJobReport>,
}

#[derive(Debug, Deserialize)]
struct FioJobReport {
    error: i64,
    read: FioDirection,
    write: FioDirection,
}

#[derive(Debug, Deserialize)]
struct FioDirection {
    io_bytes: u64,
    bw_bytes: f64,
    iops: f64,
}

/// One job's report, base64 of fio's JSON.
fn parse_report(encoded: &str) -> Result<FioJobReport> {
    let bytes = BASE64_STANDARD
        .decode(encoded.trim())
        .context("the report is not base64")?;
    let text = String::from_utf8_lossy(&bytes);
    // fio may put a notice before the JSON in its output file.
    let json = text
        .find('{')
        .map(|start| &text[start..])
        .with_context(|| format!("no JSON object in {text:?}"))?;
    let report: FioReport = serde_json::from_str(json).context("not fio's JSON report")?;
    let [job] = <[FioJobReport; 1]>::try_from(report.jobs)
        .map_err(|jobs| anyhow::anyhow!("{} jobs in the report instead of one", jobs.len()))?;
    ensure!(job.error == 0, "fio reports error {}", job.error);
    Ok(job)
}

/// The last lines of a serial port, long ones cut, and each fio report
/// (lines of base64) shown as one line that names its job.
fn tail(lines: &[SerialLine]) -> String {
    let mut shown: Vec<String> = Vec::new();
    let mut report_lines = 0;
    for (index, line) in lines.iter().enumerate() {
        let Some(job) = report_job(&line.text) else {
            let text: String = line.text.chars().take(OUTPUT_LINE_CHARS).collect();
            let cut = if text.len() < line.text.len() {
                " ..."
            } else {
                ""
            };
            shown.push(format!("{text}{cut}"));
            continue;
        };
        report_lines += 1;
        let report_goes_on = lines
            .get(index + 1)
            .is_some_and(|next| report_job(&next.text) == Some(job));
        if !report_goes_on {
            shown.push(format!("(fio's report of {job}, {report_lines} lines)"));
            report_lines = 0;
        }
    }
    let start = shown.len().saturating_sub(OUTPUT_TAIL_LINES);
    let mut out = String::new();
    for line in &shown[start..] {
        let _ = writeln!(out, "  {line}");
    }
    if out.is_empty() {
        out.push_str("  (nothing)\n");
    }
    out
}

/// The job whose report `line` of the guest's output carries, if it does.
fn report_job(line: &str) -> Option<&str> {
    line.strip_prefix("INFO ")?
        .strip_prefix(REPORT_MARK)?
        .split_whitespace()
        .next()
}

fn mib_per_s(bytes_per_s: f64) -> String {
    format!("{:.1} MiB/s", bytes_per_s / f64::from(1 << 20))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn throughput(t: &Throughput) -> String {
    format!("{} ({:.0} IOPS)", mib_per_s(t.bytes_per_s), t.iops)
}

/// A path's median throughput of `JOBS[job]`, and the range of its rounds
/// when there are several.
fn median_and_range(comparison: &Comparison, path: DiskPath, job: usize) -> String {
    let median = throughput(&comparison.median(path, job));
    let sorted = comparison.sorted(path, job);
    match (sorted.first(), sorted.last()) {
        (Some(slowest), Some(fastest)) if sorted.len() > 1 => format!(
            "{median}; {:.1}–{:.1}",
            slowest.bytes_per_s / f64::from(1 << 20),
            fastest.bytes_per_s / f64::from(1 << 20)
        ),
        _ => median,
    }
}

/// The comparison as markdown: how it was made, the table, and what the
/// agent saw.
pub fn render(comparison: &Comparison, provenance: &Provenance) -> String {
    let settings = &comparison.settings;
    let rounds = comparison.rounds.len();
    let mut out = String::new();
    let _ = writeln!(out, "# Guest I/O through the agent's NBD server\n");
    let _ = writeln!(
        out,
        "Produced by `{}` on {}{}; {}.\n",
        provenance.command,
        provenance.when,
        provenance
            .commit
            .as_ref()
            .map_or_else(String::new, |c| format!(" at commit {c}")),
        provenance.machine
    );
    let boots = if rounds == 1 {
        "once each way".to_owned()
    } else {
        format!("{rounds} times each way, alternating")
    };
    let _ = writeln!(
        out,
        "The lab's Debian guest ({} RAM, {}, a {} root disk) booted {boots}, each time \
         from a fresh copy of the root disk: **direct**, the image attached to QEMU \
         (`DiskAttachment::Image`, QEMU's `file` driver), and **through the agent**, the \
         image served by the agent's `TrackedDisk` behind its `DiskServer` over NBD on a \
         unix socket (`DiskAttachment::Nbd`), as in every mllm migration. Through the agent, \
         QEMU's NBD client runs on an I/O thread of its own (`iothread`); the image \
         file does not (there QEMU 10.0 under TCG hung the guest's disk in 2 of 4 boots, \
         and ran no faster). In each boot, \
         fio wrote a {} file on the root disk whole, then ran the jobs below one after \
         another for {} s each with direct I/O (libaio, {} requests in flight). \
         The target: through the agent, every job loses at most {:.0} %.\n",
        MEMORY,
        guest_cpus(),
        DISK_SIZE,
        mib(settings.file_size),
        settings.runtime.as_secs_f64(),
        settings.io_depth,
        MAX_LOSS * 100.0
    );
    if rounds > 1 {
        let _ = writeln!(
            out,
            "Each cell is the median boot's throughput (of two middle ones, the faster), \
             then the slowest and the fastest boot's in MiB/s; the ratio is of the medians.\n"
        );
    }
    let _ = writeln!(
        out,
        "| job | direct | through the agent | agent / direct | loss ≤ {:.0} % |",
        MAX_LOSS * 100.0
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for ((index, job), ratio) in JOBS.iter().enumerate().zip(comparison.ratios()) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.2} | {} |",
            job.title,
            median_and_range(comparison, DiskPath::Direct, index),
            median_and_range(comparison, DiskPath::Agent, index),
            ratio,
            if ratio >= 1.0 - MAX_LOSS {
                "yes"
            } else {
                "**no**"
            }
        );
    }
    let _ = writeln!(out, "\nThe jobs, in the guest:\n");
    let _ = writeln!(out, "```sh");
    let _ = writeln!(out, "{}", settings.fio_command(LAYOUT_NAME, LAYOUT_ARGS));
    for job in &JOBS {
        let _ = writeln!(
            out,
            "{}",
            settings.fio_command(job.name, &settings.timed_args(job))
        );
    }
    let _ = writeln!(out, "```\n");
    let last_agent_run = comparison.rounds.last().map(|round| &round.agent);
    if let Some((run, served)) = last_agent_run.and_then(|run| Some((run, run.served?))) {
        let requests = &served.requests;
        let _ = writeln!(
            out,
            "In the last boot through the agent, its `TrackedDisk` served {} reads ({}, {} \
             distinct blocks of {} KiB) and {} writes ({}, {} blocks marked written); fio \
             itself read {} and wrote {} (the rest is the file system's and the guest's own I/O).",
            requests.reads,
            mib(requests.bytes_read),
            served.blocks_read,
            BLOCK_SIZE / 1024,
            requests.writes,
            mib(requests.bytes_written),
            served.dirty_blocks,
            mib(run.guest_bytes_read),
            mib(run.guest_bytes_written),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            runtime: Duration::from_secs(20),
            file_size: 256 << 20,
            io_depth: 16,
            rounds: 3,
        }
    }

    /// The parts of a report of fio 3.33 (Debian bookworm) this module reads,
    /// among some of those it ignores.
    fn fio_json(read_bytes: u64, write_bytes: u64) -> String {
        format!(
            r#"{{
  "fio version" : "fio-3.33",
  "jobs" : [
    {{
      "jobname" : "randread",
      "groupid" : 0,
      "error" : 0,
      "job options" : {{ "rw" : "randread", "bs" : "4k" }},
      "read" : {{ "io_bytes" : {read_bytes}, "io_kbytes" : {}, "bw_bytes" : {}, "bw" : 1, "iops" : 1234.5, "runtime" : 20000 }},
      "write" : {{ "io_bytes" : {write_bytes}, "io_kbytes" : 0, "bw_bytes" : {}, "bw" : 0, "iops" : 0.0, "runtime" : 0 }}
    }}
  ]
}}
"#,
            read_bytes / 1024,
            read_bytes / 20,
            write_bytes / 20,
        )
    }

    /// The report as the guest prints it: base64 in lines of 76.
    fn report_lines(job: &str, json: &str) -> Vec<SerialLine> {
        let encoded = BASE64_STANDARD.encode(json);
        encoded
            .as_bytes()
            .chunks(76)
            .map(|chunk| {
                let chunk = String::from_utf8_lossy(chunk);
                SerialLine::complete(1, format!("INFO {REPORT_MARK} {job} {chunk}"))
            })
            .collect()
    }

    fn output(exit: i32) -> Vec<SerialLine> {
        let mut lines = vec![SerialLine::complete(0, "READY sh")];
        lines.extend(report_lines("layout", &fio_json(0, 1 << 28)));
        for job in &JOBS {
            let (read, write) = match job.direction {
                Direction::Read => (40 << 20, 0),
                Direction::Write => (0, 20 << 20),
            };
            lines.extend(report_lines(job.name, &fio_json(read, write)));
            // fio's own words on its standard error, between two reports.
            lines.push(SerialLine::complete(1, format!("INFO {} done", job.name)));
        }
        lines.push(SerialLine::complete(2, format!("EXIT {exit}")));
        lines
    }

    #[test]
    fn each_job_is_read_in_its_direction_and_the_guest_totals_add_up() {
        let run = parse_run(&output(0)).unwrap();
        assert_eq!(run.jobs.len(), 3);
        assert_eq!(run.jobs[0].bytes, 40 << 20);
        assert_eq!(run.jobs[1].bytes, 20 << 20);
        assert_eq!(run.jobs[1].bytes_per_s, f64::from(1 << 20));
        assert_eq!(run.jobs[2].iops, 1234.5);
        assert_eq!(run.guest_bytes_read, 80 << 20);
        assert_eq!(run.guest_bytes_written, (1 << 28) + (20 << 20));
    }

    #[test]
    fn a_failed_command_and_a_missing_or_broken_report_are_named() {
        let error = format!("{:#}", parse_run(&output(1)).unwrap_err());
        assert!(error.contains("exit code 1"), "{error}");

        let mut lines = output(0);
        lines.retain(|line| !line.text.contains(" seqread "));
        let error = format!("{:#}", parse_run(&lines).unwrap_err());
        assert!(
            error.contains("report of the job seqread is missing"),
            "{error}"
        );

        let mut lines = output(0);
        lines.retain(|line| !line.text.contains(" randread "));
        lines.extend(report_lines(
            "randread",
            "fio: io_u error on file: No space left on device",
        ));
        let error = format!("{:#}", parse_run(&lines).unwrap_err());
        assert!(error.contains("job randread"), "{error}");
        assert!(error.contains("No space left"), "{error}");
    }

    #[test]
    fn the_output_tail_shows_each_report_as_one_line() {
        let text = tail(&output(0));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "  READY sh", "{text}");
        assert_eq!(lines[1], "  (fio's report of layout, 8 lines)", "{text}");
        assert_eq!(lines[2], "  (fio's report of randread, 8 lines)", "{text}");
        assert_eq!(lines[3], "  INFO randread done", "{text}");
        assert_eq!(lines.last(), Some(&"  EXIT 0"), "{text}");
        assert_eq!(tail(&[]), "  (nothing)\n");
    }

    #[test]
    fn a_job_that_moved_nothing_is_an_error() {
        let mut lines = output(0);
        lines.retain(|line| !line.text.contains(" randwrite "));
        lines.extend(report_lines("randwrite", &fio_json(0, 0)));
        let error = format!("{:#}", parse_run(&lines).unwrap_err());
        assert!(error.contains("randwrite moved no bytes"), "{error}");
    }

    #[test]
    fn the_guest_command_fits_the_kernel_command_line_and_runs_every_job() {
        let settings = settings();
        let command = settings.guest_command();
        for name in std::iter::once(LAYOUT_NAME).chain(JOBS.iter().map(|job| job.name)) {
            assert!(command.contains(&format!(" f {name} ")), "{command}");
        }
        assert!(command.contains("--runtime=20000ms"), "{command}");
        assert!(command.contains("--direct=1"), "{command}");
        let workload = Workload::Command(CommandLoad { command });
        // Under x86's COMMAND_LINE_SIZE (2048), with room for the lab's own
        // parameters.
        let params = guest_vm().kernel_params(&workload);
        assert!(params.len() < 1900, "{} bytes: {params}", params.len());
    }

    /// A boot whose jobs ran at `rates` bytes per second, in 4 KiB requests.
    fn boot(rates: [f64; 3]) -> PathRun {
        PathRun {
            jobs: rates
                .iter()
                .map(|&rate| Throughput {
                    iops: rate / 4096.0,
                    bytes_per_s: rate,
                    bytes: 1,
                })
                .collect(),
            guest_bytes_read: 3 << 20,
            guest_bytes_written: 1 << 20,
            served: None,
        }
    }

    #[test]
    fn the_report_shows_each_job_its_medians_ratio_and_whether_it_met_the_target() {
        let mut last_agent = boot([90e6, 81e6, 100e6]);
        last_agent.served = Some(Served {
            requests: RequestTotals {
                reads: 7,
                bytes_read: 4 << 20,
                writes: 3,
                bytes_written: 2 << 20,
            },
            dirty_blocks: 512,
            blocks_read: 1024,
        });
        let round = |direct, agent| Round { direct, agent };
        let comparison = Comparison {
            settings: settings(),
            rounds: vec![
                round(boot([100e6; 3]), boot([85e6, 80e6, 100e6])),
                round(boot([90e6; 3]), boot([95e6, 70e6, 100e6])),
                round(boot([110e6; 3]), last_agent),
            ],
        };
        assert_eq!(comparison.ratios(), [0.9, 0.8, 1.0]);
        let provenance = Provenance {
            command: "mllm lab disk-io".into(),
            when: "2026-12-01T00:00:00Z".into(),
            commit: Some("abc1234".into()),
            machine: "2 CPUs".into(),
        };
        let text = render(&comparison, &provenance);
        assert!(text.contains("at commit abc1234; 2 CPUs."), "{text}");
        assert!(
            text.contains("booted 3 times each way, alternating"),
            "{text}"
        );
        assert!(
            text.contains("| random 4 KiB read | 95.4 MiB/s (24414 IOPS); 85.8–104.9 | 85.8 MiB/s"),
            "{text}"
        );
        assert!(text.contains("| 0.90 | yes |"), "{text}");
        assert!(text.contains("| 0.80 | **no** |"), "{text}");
        assert!(text.contains("| 1.00 | yes |"), "{text}");
        assert!(text.contains("fio --name=seqread"), "{text}");
        assert!(
            text.contains(
                "served 7 reads (4.0 MiB, 1024 distinct blocks of 4 KiB) and 3 writes (2.0 MiB, 512 blocks"
            ),
            "{text}"
        );
    }

    #[test]
    fn of_two_rounds_the_median_is_the_faster_and_one_round_shows_no_range() {
        let round = |direct, agent| Round { direct, agent };
        let two = Comparison {
            settings: settings(),
            rounds: vec![
                round(boot([100e6; 3]), boot([50e6; 3])),
                round(boot([200e6; 3]), boot([60e6; 3])),
            ],
        };
        assert_eq!(two.median(DiskPath::Direct, 0).bytes_per_s, 200e6);
        assert_eq!(two.ratios(), [0.3; 3]);
        let one = Comparison {
            settings: settings(),
            rounds: vec![round(boot([100e6; 3]), boot([50e6; 3]))],
        };
        let text = render(
            &one,
            &Provenance {
                command: "mllm lab disk-io".into(),
                when: "now".into(),
                commit: None,
                machine: "here".into(),
            },
        );
        assert!(text.contains("booted once each way"), "{text}");
        assert!(
            text.contains("| 95.4 MiB/s (24414 IOPS) | 47.7 MiB/s (12207 IOPS) | 0.50 |"),
            "{text}"
        );
    }

    #[test]
    fn impossible_settings_are_refused() {
        let zero = Settings {
            runtime: Duration::ZERO,
            ..settings()
        };
        assert!(format!("{:#}", zero.check().unwrap_err()).contains("runtime"));
        let odd = Settings {
            file_size: 1500 << 10,
            ..settings()
        };
        assert!(format!("{:#}", odd.check().unwrap_err()).contains("MiB"));
    }
}
