//! Benchmark of the `PAGEMAP_SCAN` tracker on a `page_writer` process that
//! stands in for QEMU (shared-memory guest RAM, hook preloaded):
//! - time per scan of 512 MiB and 4 GiB of populated guest RAM with 0%, 1%
//!   and 10% of its pages written between scans (scattered, and 10% in one
//!   block);
//! - the writer's throughput (random page writes over a hot set) with
//!   tracking off and on, at several scan intervals.
//!
//! Run: `cargo run --release -p mllm-tracker --example scan_bench`
//! (prints Markdown tables).

#[path = "../tests/tracking/support.rs"]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use mllm_tracker::{arm_hook, PageRange, PagemapScanTracker, WriteTracker, PAGE_SIZE};
use support::PageWriter;

const MIB: u64 = 1 << 20;
const SCAN_SIZES: [u64; 2] = [512 * MIB, 4096 * MIB];
const SCAN_ROUNDS: u64 = 7;
const SLOWDOWN_SIZE: u64 = 512 * MIB;
const HOT_SET_PERCENTS: [u64; 3] = [1, 10, 100];
const SCAN_INTERVALS: [Duration; 3] = [
    Duration::from_millis(1000),
    Duration::from_millis(100),
    Duration::from_millis(10),
];
const SPIN_TIME: Duration = Duration::from_secs(2);
/// Throughput is the best of this many runs: other processes on the machine
/// only ever slow the writer down.
const SPIN_RUNS: usize = 3;

/// How the pages written between two scans are laid out.
struct WritePattern {
    name: &'static str,
    percent: u64,
    scattered: bool,
}

const PATTERNS: [WritePattern; 4] = [
    WritePattern {
        name: "none",
        percent: 0,
        scattered: true,
    },
    WritePattern {
        name: "1% scattered",
        percent: 1,
        scattered: true,
    },
    WritePattern {
        name: "10% scattered",
        percent: 10,
        scattered: true,
    },
    WritePattern {
        name: "10% in one block",
        percent: 10,
        scattered: false,
    },
];

fn main() -> Result<()> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    println!("Linux {}, {} CPUs\n", kernel.trim(), cpus());
    println!("| guest RAM | written between scans | pages | ranges | ioctls | scan time median (min–max) |");
    println!("|---|---|---|---|---|---|");
    for bytes in SCAN_SIZES {
        scan_times(bytes)?;
    }
    println!();
    writer_slowdown()
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Spawns a writer with all of its RAM populated, as a running guest's is.
fn populated_writer(bytes: u64) -> PageWriter {
    let mut writer = PageWriter::spawn(bytes, true);
    let pages = bytes / PAGE_SIZE as u64;
    assert_eq!(writer.command(&format!("stride 0 1 {pages}")), pages);
    writer
}

fn armed_tracker(writer: &PageWriter) -> Result<PagemapScanTracker> {
    let ram = writer.ram();
    let armed = arm_hook(writer.socket(), ram)?;
    let mut tracker = PagemapScanTracker::new(writer.pid(), ram, armed)?;
    tracker.scan(&mut Vec::new())?;
    Ok(tracker)
}

fn scan_times(bytes: u64) -> Result<()> {
    let mut writer = populated_writer(bytes);
    let mut tracker = armed_tracker(&writer)?;
    let pages = bytes / PAGE_SIZE as u64;
    let mut written = Vec::new();
    for pattern in PATTERNS {
        let count = pages * pattern.percent / 100;
        let step = if pattern.scattered {
            100 / pattern.percent.max(1)
        } else {
            1
        };
        let mut durations = Vec::new();
        let mut last = Default::default();
        for round in 0..SCAN_ROUNDS {
            if count > 0 {
                writer.command(&format!("stride {round} {step} {count}"));
            }
            last = tracker.scan(&mut written)?;
            ensure!(
                last.pages_written == count,
                "scan found {} pages, {count} were written",
                last.pages_written
            );
            durations.push(last.duration);
        }
        durations.sort();
        println!(
            "| {} MiB | {} | {} | {} | {} | {:.2} ms ({:.2}–{:.2}) |",
            bytes / MIB,
            pattern.name,
            count,
            written.len(),
            last.kernel_calls,
            millis(durations[durations.len() / 2]),
            millis(durations[0]),
            millis(durations[durations.len() - 1]),
        );
    }
    Ok(())
}

fn writer_slowdown() -> Result<()> {
    // Two writers alike but for tracking; runs alternate between them so
    // that load from other processes hits both columns the same way.
    let mut untracked = populated_writer(SLOWDOWN_SIZE);
    let mut tracked = populated_writer(SLOWDOWN_SIZE);
    let mut tracker = armed_tracker(&tracked)?;
    let pages = SLOWDOWN_SIZE / PAGE_SIZE as u64;
    let hot_sets = HOT_SET_PERCENTS.map(|percent| pages * percent / 100);
    // best[hot set][0]: tracking off; best[hot set][1 + i]: SCAN_INTERVALS[i].
    let mut best = [[0.0f64; 1 + SCAN_INTERVALS.len()]; HOT_SET_PERCENTS.len()];
    for _ in 0..SPIN_RUNS {
        for (hot, rates) in hot_sets.iter().zip(&mut best) {
            rates[0] = rates[0].max(spin(&mut untracked, *hot, None));
            for (interval, rate) in SCAN_INTERVALS.iter().zip(&mut rates[1..]) {
                let tracking = Some((&mut tracker, *interval));
                *rate = rate.max(spin(&mut tracked, *hot, tracking));
            }
        }
    }

    println!(
        "Writer: random 8-byte writes, one per page, over a hot set of {} MiB guest RAM; \
         best of {SPIN_RUNS} runs of {} s; million writes/s (change versus tracking off).\n",
        SLOWDOWN_SIZE / MIB,
        SPIN_TIME.as_secs()
    );
    print!("| hot set | tracking off |");
    for interval in SCAN_INTERVALS {
        print!(" scans every {} ms |", interval.as_millis());
    }
    println!("\n|---|---|{}", "---|".repeat(SCAN_INTERVALS.len()));
    for (hot, rates) in hot_sets.iter().zip(best) {
        let off = rates[0];
        print!(
            "| {} MiB | {:.1} |",
            hot * PAGE_SIZE as u64 / MIB,
            off / 1e6
        );
        for on in &rates[1..] {
            print!(" {:.1} ({:+.0}%) |", on / 1e6, (on / off - 1.0) * 100.0);
        }
        println!();
    }
    Ok(())
}

/// The writer's rate (writes/s) over the first `hot` pages while `tracking`,
/// if given, scans at its interval.
fn spin(
    writer: &mut PageWriter,
    hot: u64,
    tracking: Option<(&mut PagemapScanTracker, Duration)>,
) -> f64 {
    let spinning = AtomicBool::new(true);
    let writes = std::thread::scope(|scope| {
        let spinner = scope.spawn(|| {
            let writes = writer.command(&format!("spin {hot} {}", SPIN_TIME.as_millis()));
            spinning.store(false, Ordering::Relaxed);
            writes
        });
        if let Some((tracker, interval)) = tracking {
            let mut written: Vec<PageRange> = Vec::new();
            let mut next = Instant::now() + interval;
            while spinning.load(Ordering::Relaxed) {
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                tracker.scan(&mut written).expect("scan");
                next += interval;
            }
        }
        spinner.join().expect("spinner thread")
    });
    writes as f64 / SPIN_TIME.as_secs_f64()
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}
