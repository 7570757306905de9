//! `mllm migrate`: asks the local agent, over its control socket, to migrate
//! a VM or list its VMs, and shows what it replies. A client only: it uses
//! `mllm-control` and nothing of the migration engine.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use mllm_control::{
    send_request, ControlReply, ControlRequest, MigrateRequest, Phase, Progress, SourceReport,
    TraceSummary, DEFAULT_SOCKET,
};
use mllm_core::convert::saturating_u64;

#[derive(Args)]
pub struct MigrateArgs {
    /// The VM to migrate, owned by the local agent.
    #[arg(required_unless_present = "list")]
    vm: Option<String>,
    /// The destination agent's migration address. With TLS its certificate
    /// must be for NAME, else for HOST when HOST is a name, else for any
    /// peer the local agent allows.
    #[arg(
        long,
        value_name = "[NAME@]HOST:PORT",
        required_unless_present = "list"
    )]
    to: Option<String>,
    /// `precopy`: rounds until the rest fits the downtime target.
    /// `postcopy`: one round, then the guest runs on the destination while
    /// the pages written since follow (pushed, or fetched when touched).
    /// `mllm`: the first round leaves out the pages it sees written while
    /// it runs (they follow in the next); later rounds leave out the pages
    /// predicted to be written again before they end, which move at the
    /// switch (as much as fits the target) and after it.
    /// The default since it beat `precopy` in the lab on time, bytes and
    /// resent pages (docs/mllm-live.md).
    #[arg(long, default_value = "mllm", value_parser = ["precopy", "postcopy", "mllm"])]
    policy: String,
    /// Switch over once the final transfer is predicted to take at most this.
    #[arg(long, default_value_t = 300)]
    downtime_ms: u64,
    /// Page compression: none, lz4, zstd or zstd:LEVEL.
    #[arg(long, default_value = "zstd")]
    compression: String,
    /// Pre-copy rounds before switching over regardless.
    #[arg(long, default_value_t = 30)]
    max_rounds: u32,
    /// With `--policy mllm`, how the disk's blocks besides its read
    /// workingset (which goes first) move: `precopy` (in every round, the
    /// default), `after-switch` (pushed after the switch, fetched when the
    /// guest reads one first) or `precopy-then-after-switch` (all in the
    /// first round; those rewritten after it, after the switch). Without
    /// it, the VM spec's `[disk] move`.
    #[arg(long, value_name = "MODE", value_parser = ["precopy", "after-switch", "precopy-then-after-switch"])]
    disk_move: Option<String>,
    /// Test mode: compare digests of all guest RAM (and the disk) at the switch.
    #[arg(long)]
    verify: bool,
    /// Record the guest's memory writes during pre-copy into this binary
    /// trace file (written by the agent), one interval per 100 ms.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Print progress and the report as JSON lines.
    #[arg(long)]
    json: bool,
    /// Instead of migrating: list the agent's VMs with the progress of
    /// running migrations.
    #[arg(long, conflicts_with_all = ["vm", "to"])]
    list: bool,
    /// The local agent's control socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    control: PathBuf,
}

pub fn run(args: MigrateArgs) -> Result<()> {
    let request = match (args.list, args.vm, args.to) {
        (true, _, _) => ControlRequest::List,
        (false, Some(vm), Some(to)) => ControlRequest::Migrate(MigrateRequest {
            vm,
            to,
            policy: args.policy,
            downtime_ms: args.downtime_ms,
            compression: args.compression,
            max_rounds: args.max_rounds,
            verify: args.verify,
            trace_file: args.trace.as_deref().map(std::path::absolute).transpose()?,
            disk_move: args.disk_move,
        }),
        _ => bail!("name a VM and --to HOST:PORT, or use --list"),
    };
    let mut display = ProgressDisplay::new(args.json);
    let mut failure = None;
    let mut answered = false;
    send_request(&args.control, &request, |reply| {
        if args.json {
            println!("{}", serde_json::to_string(&reply)?);
        }
        answered |= !matches!(reply, ControlReply::Progress(_));
        match reply {
            ControlReply::Progress(progress) => display.show(&progress),
            ControlReply::Migrated(report) => display.finish(&report),
            ControlReply::Vms { vms } if !args.json => {
                for vm in vms {
                    let migration = vm.migration.map_or(String::new(), |p| describe(&p));
                    println!(
                        "{:<20} {:>6} MiB  {:<12} {migration}",
                        vm.name, vm.memory_mib, vm.status
                    );
                }
            }
            ControlReply::Vms { .. } | ControlReply::TraceRecorded(_) => {}
            ControlReply::Error { message } => failure = Some(message),
        }
        Ok(())
    })?;
    match failure {
        Some(message) => bail!("{message}"),
        None if !answered => bail!(
            "the agent closed the control connection without an answer: it stopped or \
             crashed (its log says why). Restart it with the same --state directory: it \
             adopts the VMs it left and logs where each one runs"
        ),
        None => Ok(()),
    }
}

/// One status line, rewritten in place on a terminal; on anything else a
/// line per phase, so logs stay short.
struct ProgressDisplay {
    quiet: bool,
    terminal: bool,
    last_phase: Option<Phase>,
}

impl ProgressDisplay {
    fn new(json: bool) -> ProgressDisplay {
        ProgressDisplay {
            quiet: json,
            terminal: std::io::stderr().is_terminal(),
            last_phase: None,
        }
    }

    fn show(&mut self, progress: &Progress) {
        if self.quiet {
            return;
        }
        let line = describe(progress);
        if self.terminal {
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
        } else if self.last_phase != Some(progress.phase) {
            eprintln!("{line}");
        }
        self.last_phase = Some(progress.phase);
    }

    fn finish(&mut self, report: &SourceReport) {
        if self.quiet {
            return;
        }
        if self.terminal {
            eprintln!();
        }
        // A VM without a disk (or with an empty one) sends no blocks.
        let (blocks, disk_bytes) = if report.blocks_sent > 0 {
            (
                format!(
                    ", {} disk blocks ({} resent)",
                    report.blocks_sent, report.retransmitted_blocks
                ),
                format!(", {} of disk", mebibytes(report.disk_bytes)),
            )
        } else {
            (String::new(), String::new())
        };
        println!(
            "migrated {} in {:.1} s: {} rounds, {} pages ({} resent){blocks}, {} of memory{disk_bytes} and {} of device state over the link, source paused at most {:.0} ms, tracking by {}",
            report.vm_name,
            report.total_time_ms() / 1000.0,
            report.rounds.len(),
            report.pages_sent,
            report.retransmitted_pages,
            mebibytes(report.memory_bytes),
            mebibytes(report.device_state_bytes),
            report.downtime_upper_bound_ms(),
            report.tracking_method
        );
        if let Some(dedup) = report.dedup.as_ref().filter(|dedup| dedup.references > 0) {
            println!(
                "{} pages and blocks the destination already held went as references, {} saved ({} refused and sent again)",
                dedup.references,
                mebibytes(dedup.bytes_saved),
                dedup.fallbacks
            );
        }
        if let Some(trace) = &report.memory_trace {
            println!("{}", describe_trace(trace));
        }
    }
}

fn describe(progress: &Progress) -> String {
    let phase = serde_json::to_value(progress.phase)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let rate = progress.rate_bytes_per_s.map_or("rate ?".into(), |r| {
        format!("{}/s", mebibytes(saturating_u64(r)))
    });
    let eta = progress
        .eta_s
        .map_or("ETA ?".into(), |s| format!("ETA {s:.1} s"));
    format!(
        "{phase:<24} round {:<3} sent {:>11}  remaining {:>11}  {rate:>13}  {eta}",
        progress.round,
        mebibytes(progress.bytes_sent),
        mebibytes(progress.bytes_remaining),
    )
}

fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// One line about a recorded trace.
pub(crate) fn describe_trace(trace: &TraceSummary) -> String {
    let mut line = format!(
        "memory trace {}: {} intervals over {:.1} s, {} page writes",
        trace.path.display(),
        trace.intervals,
        trace.duration_ms / 1000.0,
        trace.page_writes
    );
    if let Some(error) = &trace.error {
        line.push_str(&format!(" (ended early: {error})"));
    }
    line
}
