//! `mllm-guest`: the programs the test guest runs, as one static binary.
//! Each subcommand writes protocol lines (see the library's `protocol`
//! module) to the file or serial port given with `--out`.

use std::convert::Infallible;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use mllm_guest::access::Skew;
use mllm_guest::disk_store::{DiskRange, DiskStore, IoMode};
use mllm_guest::store::{MemStore, PAGE_SIZE};
use mllm_guest::units::{parse_fraction, parse_positive_fraction, parse_seconds, parse_size};
use mllm_guest::workload::{Workload, WorkloadConfig};
use mllm_guest::{heartbeat, wrapped, EventWriter};

#[derive(Parser)]
#[command(name = "mllm-guest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write `HB <seq>` every interval.
    Heartbeat {
        #[command(flatten)]
        out: Output,
        /// Milliseconds between heartbeats.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        interval_ms: u64,
    },
    /// Read, write and verify self-checking pages in memory.
    Memload {
        #[command(flatten)]
        out: Output,
        /// Memory to allocate and touch (a multiple of 4K).
        #[arg(long, default_value = "128M", value_parser = parse_size)]
        size: u64,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Read, write and verify self-checking blocks on a block device, with O_DIRECT.
    Diskload {
        #[command(flatten)]
        out: Output,
        /// Block device (or file) to use; the range is overwritten.
        #[arg(long, default_value = "/dev/vdb")]
        device: PathBuf,
        /// First byte of the range (a multiple of 512).
        #[arg(long, default_value = "0", value_parser = parse_size)]
        offset: u64,
        /// Bytes in the range (a multiple of the block size).
        #[arg(long, default_value = "64M", value_parser = parse_size)]
        length: u64,
        /// Bytes per block and per I/O (a multiple of 512).
        #[arg(long, default_value = "4096", value_parser = parse_size)]
        block_size: u64,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Run a command as the workload and report its throughput.
    Run {
        #[command(flatten)]
        out: Output,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Args)]
struct Output {
    /// File, pipe or serial port to write protocol lines to.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct LoadArgs {
    /// Share of the pages or blocks that forms the hot set.
    #[arg(long, default_value_t = 0.1, value_parser = parse_positive_fraction)]
    hot_fraction: f64,
    /// Percent of accesses that go to the hot set; the rest go uniformly to the others.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u8).range(0..=100))]
    hot_access_pct: u8,
    /// Spread of accesses within the hot set: `uniform` or `zipf:<exponent>`.
    #[arg(long, default_value = "uniform")]
    skew: Skew,
    /// Writes per second (one page or block each); 0 runs as fast as possible.
    /// Reads come on top, as --read-pct says; with --read-pct 100 this paces the reads.
    #[arg(long, default_value_t = 1000)]
    write_rate: u64,
    /// Percent of operations that are reads (which verify what they read).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    read_pct: u8,
    /// Share of each page's or block's payload that is random, incompressible
    /// bytes; the rest is zeros. 0 compresses to nothing, 1 not at all.
    #[arg(long, default_value_t = 0.5, value_parser = parse_fraction)]
    random_fraction: f64,
    /// Seconds per full verification pass (fractions allowed); 0 turns it off.
    #[arg(long, default_value_t = 2.0, value_parser = parse_seconds)]
    verify_every_s: f64,
    /// Seed of the access pattern and the contents.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl LoadArgs {
    fn config(&self, name: &'static str) -> WorkloadConfig {
        let verify_every =
            (self.verify_every_s > 0.0).then(|| Duration::from_secs_f64(self.verify_every_s));
        WorkloadConfig {
            name,
            hot_fraction: self.hot_fraction,
            hot_access_pct: self.hot_access_pct,
            skew: self.skew,
            write_rate: self.write_rate,
            read_pct: self.read_pct,
            random_fraction: self.random_fraction,
            verify_every,
            seed: self.seed,
        }
    }
}

/// Opens the protocol sink for appending. `O_NOCTTY`: a serial port must not
/// become the controlling terminal of a process started from the init script.
fn open_output(path: &Path) -> Result<EventWriter<File>> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("cannot open {} for writing", path.display()))?;
    Ok(EventWriter::new(file))
}

fn memload(out: &mut EventWriter<File>, size: u64, load: &LoadArgs) -> Result<Infallible> {
    let page = PAGE_SIZE as u64;
    if size == 0 || !size.is_multiple_of(page) {
        anyhow::bail!("--size {size} must be a positive multiple of {page}");
    }
    let config = load.config("memload");
    let store = MemStore::new(size / page, config.seed, config.random_fraction);
    Ok(Workload::new(store, config).run(out)?)
}

fn diskload(
    out: &mut EventWriter<File>,
    device: &Path,
    range: DiskRange,
    load: &LoadArgs,
) -> Result<Infallible> {
    let config = load.config("diskload");
    let (store, mode) = DiskStore::open(device, range, config.seed, config.random_fraction)
        .with_context(|| format!("cannot use {} for the disk workload", device.display()))?;
    if mode == IoMode::Buffered {
        out.info(format!(
            "diskload: {} refuses O_DIRECT, using buffered I/O",
            device.display()
        ))?;
    }
    Ok(Workload::new(store, config).run(out)?)
}

/// Runs a workload and, when it fails, also says why on its own output: the
/// host parses that port, while stderr goes to a console nobody parses.
fn report_failure(
    out: &mut EventWriter<File>,
    workload: impl FnOnce(&mut EventWriter<File>) -> Result<Infallible>,
) -> Result<Infallible> {
    let result = workload(out);
    if let Err(e) = &result {
        // Best effort: the port itself may be what failed.
        let _ = out.info(format!("failed: {e:#}"));
    }
    result
}

fn execute(command: Command) -> Result<ExitCode> {
    match command {
        Command::Heartbeat { out, interval_ms } => {
            let mut sink = open_output(&out.out)?;
            match heartbeat::run(&mut sink, Duration::from_millis(interval_ms))? {}
        }
        Command::Memload { out, size, load } => {
            let mut sink = open_output(&out.out)?;
            match report_failure(&mut sink, |sink| memload(sink, size, &load))? {}
        }
        Command::Diskload {
            out,
            device,
            offset,
            length,
            block_size,
            load,
        } => {
            let mut sink = open_output(&out.out)?;
            let range = DiskRange {
                offset,
                length,
                block_size,
            };
            match report_failure(&mut sink, |sink| diskload(sink, &device, range, &load))? {}
        }
        Command::Run { out, command } => {
            let mut sink = open_output(&out.out)?;
            let code = wrapped::run(&command, &mut sink)?;
            // Exit codes and 128 + signal fit a byte; -1 (no status at all) becomes 255.
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX)))
        }
    }
}

fn main() -> ExitCode {
    match execute(Cli::parse().command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mllm-guest: {e:#}");
            ExitCode::FAILURE
        }
    }
}
