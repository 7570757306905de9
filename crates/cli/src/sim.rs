//! `mllm sim`: trace-driven simulation of migration policies, the estimator
//! table, fleets, and trace files.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Context};
use clap::{Args, Subcommand, ValueEnum};
use mllm_core::convert::saturating_u64;
use mllm_core::link::Link;
use mllm_core::synth::{MemoryWorkload, WorkloadClass};
use mllm_core::trace::{self, binary, text, Encoding, MemoryTraceHeader, Trace};
use mllm_core::vm::{DiskLayout, VmLayout};
use mllm_core::PageSet;
use mllm_sim::accuracy::{self, AccuracyConfig, AccuracyRow};
use mllm_sim::fleet::{self, FleetScenario, FleetSummary};
use mllm_sim::scenario::VmSpec;
use mllm_sim::source::{zero_pages_outside_writes, IntervalSource, TraceSource};
use mllm_sim::{compare, Policy, SimConfig, SimResult};

#[derive(Subcommand)]
pub enum SimCommand {
    /// Migrate one VM with every policy and compare.
    Run(RunArgs),
    /// Migrate a fleet of VMs over shared links (a fleet TOML file).
    Fleet(FleetArgs),
    /// Precision, recall, F1 and cost of every estimator on every synthetic class.
    Estimators(EstimatorArgs),
    /// Write a synthetic memory write trace.
    TraceGenerate(GenerateArgs),
    /// Convert a trace between its binary and text forms.
    TraceConvert(ConvertArgs),
}

pub fn run(cmd: SimCommand) -> anyhow::Result<()> {
    match cmd {
        SimCommand::Run(args) => run_one(args),
        SimCommand::Fleet(args) => run_fleet(args),
        SimCommand::Estimators(args) => run_estimators(args),
        SimCommand::TraceGenerate(args) => generate(args),
        SimCommand::TraceConvert(args) => convert(args),
    }
}

#[derive(Args)]
pub struct RunArgs {
    /// Synthetic memory write pattern (uniform, zipf, phases, scan, hotset).
    #[arg(long, default_value = "hotset", conflicts_with_all = ["vm", "trace"])]
    workload: String,
    /// Guest RAM for --workload.
    #[arg(long, default_value_t = 1024)]
    memory_mib: u64,
    /// A VM description (TOML, as a fleet file's [group.vm]) instead of --workload.
    #[arg(long, conflicts_with = "trace")]
    vm: Option<PathBuf>,
    /// A recorded memory write trace (binary or text), replayed in a loop.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// A recorded disk access trace to replay with --trace; without file-system
    /// information every block counts as used.
    #[arg(long, requires = "trace")]
    disk_trace: Option<PathBuf>,
    /// Disk block size for --disk-trace.
    #[arg(long, default_value_t = 64)]
    block_kib: u32,
    /// Link bytes of a page holding data, header included, for --trace
    /// (default: the page size plus a 4-byte header, uncompressed). From an
    /// agent's report: (memory_bytes - 4 * zero pages) / (pages_sent - zero
    /// pages), zero pages summed over its rounds.
    #[arg(long, requires = "trace")]
    bytes_per_page: Option<u32>,
    /// Share of the pages that hold zeros at the start, for --trace: each is
    /// sent as a 4-byte marker until written. Placed evenly among the pages
    /// the trace never writes. From an agent's report: round 1's zero_pages
    /// over its pages.
    #[arg(long, requires = "trace", default_value_t = 0.0)]
    zero_fraction: f64,
    #[command(flatten)]
    link: LinkArgs,
    /// Tracker interval for synthetic workloads.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Intervals observed before the migration starts.
    #[arg(long, default_value_t = 30)]
    warmup: u64,
    /// Policies to compare, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    policies: Vec<String>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct LinkArgs {
    #[arg(long, default_value_t = 100.0)]
    bandwidth_mbit: f64,
    #[arg(long, default_value_t = 50.0)]
    rtt_ms: f64,
    /// Downtime target.
    #[arg(long, default_value_t = 300.0)]
    downtime_ms: f64,
}

fn run_one(args: RunArgs) -> anyhow::Result<()> {
    let interval_s = args.interval_ms as f64 / 1e3;
    let (layout, source, description) = if let Some(path) = &args.trace {
        let (layout, source) = trace_vm(path, &args)?;
        (layout, source, format!("trace {}", path.display()))
    } else {
        let spec = match &args.vm {
            Some(path) => VmSpec::parse(&read_text(path)?)
                .with_context(|| format!("{} is not a VM description", path.display()))?,
            None => VmSpec {
                memory_mib: args.memory_mib,
                page_size: 4096,
                workload: workload_class(&args.workload)?.default_spec(),
                disk: None,
                device_state_kib: 330,
            },
        };
        let description = match &args.vm {
            Some(path) => format!("VM {}", path.display()),
            None => format!("{} MiB guest, {} workload", args.memory_mib, args.workload),
        };
        let (layout, source) = spec.build(interval_s, args.seed);
        (layout, source, description)
    };
    let mut config = SimConfig::new(Link::from_mbit(args.link.bandwidth_mbit, args.link.rtt_ms));
    config.planner.downtime_target_s = args.link.downtime_ms / 1e3;
    config.planner.interval_s = interval_s;
    config.warmup_intervals = args.warmup;
    let policies = policies(&args.policies)?;
    let results = compare(layout, source, &policies, &config);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    println!(
        "{description}; link {} Mbit/s, RTT {} ms, downtime target {} ms\n",
        args.link.bandwidth_mbit, args.link.rtt_ms, args.link.downtime_ms
    );
    print_results(&results);
    Ok(())
}

/// A VM replaying recorded traces: the memory trace's guest, priced as
/// `--bytes-per-page` and `--zero-fraction` say, and a disk of the disk
/// trace's size whose blocks all count as used.
fn trace_vm(
    memory: &Path,
    args: &RunArgs,
) -> anyhow::Result<(Arc<VmLayout>, Arc<dyn IntervalSource>)> {
    ensure!(
        (0.0..=1.0).contains(&args.zero_fraction),
        "--zero-fraction must be between 0 and 1"
    );
    let Trace::Memory(memory_trace) = read_trace(memory)? else {
        bail!(
            "{} is a disk trace; --trace takes a memory trace",
            memory.display()
        );
    };
    memory_trace.validate()?;
    let header = memory_trace.header;
    let interval_us = memory_trace
        .intervals
        .first()
        .map_or(1, |i| i.duration_us.max(1));
    let block_size = args.block_kib * 1024;
    let (disk_layout, disk_intervals) = match &args.disk_trace {
        Some(path) => {
            let Trace::Disk(disk_trace) = read_trace(path)? else {
                bail!(
                    "{} is a memory trace; --disk-trace takes a disk trace",
                    path.display()
                );
            };
            let blocks = disk_trace.block_count(block_size);
            let all = PageSet::full(blocks);
            let layout = DiskLayout {
                block_size,
                allocated: all.clone(),
                used: all,
            };
            (
                Some(layout),
                disk_trace.block_intervals(block_size, interval_us),
            )
        }
        None => (None, Vec::new()),
    };
    let mut layout =
        VmLayout::uncompressed(header.page_size, header.page_count, disk_layout, 330 * 1024);
    if let Some(bytes) = args.bytes_per_page {
        ensure!(bytes > 0, "--bytes-per-page must be above zero");
        layout.page_cost.data_bytes = bytes;
    }
    let zero_pages = saturating_u64((args.zero_fraction * f64::from(header.page_count)).round());
    layout.zero_pages = zero_pages_outside_writes(&memory_trace, zero_pages)
        .with_context(|| format!("--zero-fraction {}", args.zero_fraction))?;
    let source = TraceSource::new(memory_trace, disk_intervals)?;
    Ok((Arc::new(layout), Arc::new(source)))
}

fn print_results(results: &[SimResult]) {
    let mib = |bytes: u64| format!("{:.1}", bytes as f64 / (1u64 << 20) as f64);
    let mut rows = vec![[
        "method",
        "total s",
        "downtime ms",
        "pre-copy s",
        "link MiB",
        "memory MiB",
        "disk MiB",
        "rounds",
        "resent pages",
        "resent blocks",
        "faults",
        "fault wait s",
    ]
    .map(String::from)
    .to_vec()];
    for r in results {
        rows.push(vec![
            format!(
                "{}{}",
                r.method,
                if r.completed { "" } else { " (cut off)" }
            ),
            format!("{:.1}", r.total_time_ms / 1e3),
            format!("{:.0}", r.downtime_ms),
            format!("{:.1}", r.precopy_ms / 1e3),
            mib(r.link_bytes),
            mib(r.memory_bytes),
            mib(r.disk_bytes),
            r.rounds.to_string(),
            r.retransmitted_pages.to_string(),
            r.retransmitted_blocks.to_string(),
            r.postcopy_faults.to_string(),
            format!("{:.0}", r.fault_wait_ms / 1e3),
        ]);
    }
    print_table(&rows);
    let forecasts: Vec<_> = results
        .iter()
        .filter_map(|r| r.forecast.map(|f| (r, f)))
        .collect();
    if !forecasts.is_empty() {
        println!("\nplanner forecast before the start (MLLM):\n");
        let mut rows = vec![[
            "method",
            "total s",
            "downtime ms",
            "pre-copy s",
            "link MiB",
            "passes",
            "faults",
        ]
        .map(String::from)
        .to_vec()];
        for (r, f) in forecasts {
            rows.push(vec![
                r.method.clone(),
                format!("{:.1}", f.total_s),
                format!("{:.0}", f.downtime_s * 1e3),
                format!("{:.1}", f.precopy_s),
                mib(f.link_bytes),
                f.passes.to_string(),
                format!("{:.0}", f.postcopy_faults),
            ]);
        }
        print_table(&rows);
    }
}

#[derive(Args)]
pub struct FleetArgs {
    /// Fleet file (TOML).
    file: PathBuf,
    /// Policies to compare, comma-separated (default: the file's).
    #[arg(long, value_delimiter = ',')]
    policies: Vec<String>,
    /// Print JSON (summaries and every VM's result) instead of a table.
    #[arg(long)]
    json: bool,
}

fn run_fleet(args: FleetArgs) -> anyhow::Result<()> {
    let scenario = FleetScenario::parse(&read_text(&args.file)?)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let policies = if args.policies.is_empty() {
        scenario.policies.clone()
    } else {
        policies(&args.policies)?
    };
    let mut summaries = Vec::new();
    let mut vms = Vec::new();
    for policy in policies {
        let (summary, results) = fleet::simulate(&scenario, policy);
        summaries.push(summary);
        vms.push(results);
    }
    if args.json {
        let report =
            serde_json::json!({ "scenario": scenario.name, "summaries": summaries, "vms": vms });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "fleet {}: {} VMs over {} links\n",
        scenario.name,
        scenario.vm_count(),
        scenario.links.len()
    );
    print_fleet(&summaries);
    Ok(())
}

fn print_fleet(summaries: &[FleetSummary]) {
    let mut rows = vec![[
        "method",
        "VMs done",
        "makespan s",
        "mean total s",
        "p95 total s",
        "mean downtime ms",
        "p99 downtime ms",
        "max downtime ms",
        "link GiB",
        "resent pages",
        "faults",
        "simulated in s",
    ]
    .map(String::from)
    .to_vec()];
    for s in summaries {
        rows.push(vec![
            s.policy.clone(),
            format!("{}/{}", s.completed, s.vms),
            format!("{:.0}", s.makespan_s),
            format!("{:.1}", s.mean_total_s),
            format!("{:.1}", s.p95_total_s),
            format!("{:.0}", s.mean_downtime_ms),
            format!("{:.0}", s.p99_downtime_ms),
            format!("{:.0}", s.max_downtime_ms),
            format!("{:.1}", s.link_bytes as f64 / (1u64 << 30) as f64),
            s.retransmitted_pages.to_string(),
            s.postcopy_faults.to_string(),
            format!("{:.1}", s.simulated_in_s),
        ]);
    }
    print_table(&rows);
}

#[derive(Args)]
pub struct EstimatorArgs {
    /// Pages of the synthetic guest (262144 = 1 GiB).
    #[arg(long, default_value_t = 262_144)]
    pages: u32,
    #[arg(long, default_value_t = 200)]
    intervals: u64,
    #[arg(long, default_value_t = 30)]
    warmup: u64,
    /// Intervals ahead a prediction is judged on.
    #[arg(long, default_value_t = 10)]
    horizon: u32,
    #[arg(long, default_value_t = 5)]
    every: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long)]
    json: bool,
}

fn run_estimators(args: EstimatorArgs) -> anyhow::Result<()> {
    let config = AccuracyConfig {
        items: args.pages,
        intervals: args.intervals,
        warmup: args.warmup,
        horizon: args.horizon,
        every: args.every,
        seed: args.seed,
    };
    let rows = accuracy::table(&config);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{} pages, {} intervals; predictions every {} intervals after {}, judged on the next {}\n",
        args.pages, args.intervals, args.every, args.warmup, args.horizon
    );
    print_accuracy(&rows);
    Ok(())
}

fn print_accuracy(rows: &[AccuracyRow]) {
    let mut table = vec![[
        "class",
        "estimator",
        "precision",
        "recall",
        "F1",
        "predicted pages",
        "predict us",
        "observe us",
    ]
    .map(String::from)
    .to_vec()];
    for r in rows {
        table.push(vec![
            r.class.clone(),
            r.estimator.clone(),
            format!("{:.3}", r.precision),
            format!("{:.3}", r.recall),
            format!("{:.3}", r.f1),
            format!("{:.0}", r.predicted_items),
            format!("{:.0}", r.predict_us),
            format!("{:.0}", r.observe_us),
        ]);
    }
    print_table(&table);
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Synthetic memory write pattern (uniform, zipf, phases, scan, hotset).
    #[arg(long)]
    workload: String,
    #[arg(long, default_value_t = 1024)]
    memory_mib: u64,
    #[arg(long, default_value_t = 100)]
    intervals: u64,
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = Format::Binary)]
    format: Format,
    /// Output file.
    output: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Binary,
    Text,
}

fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let header = MemoryTraceHeader {
        page_size: 4096,
        page_count: u32::try_from(args.memory_mib * 256).context("guest too large")?,
    };
    let workload = MemoryWorkload::new(
        workload_class(&args.workload)?.default_spec(),
        header,
        args.interval_ms * 1000,
        args.seed,
    );
    let trace = Trace::Memory(workload.trace(args.intervals));
    write_trace(&trace, &args.output, args.format)
}

#[derive(Args)]
pub struct ConvertArgs {
    /// Input trace, binary or text, memory or disk.
    input: PathBuf,
    output: PathBuf,
    /// Output encoding (default: the other one).
    #[arg(long, value_enum)]
    to: Option<Format>,
}

fn convert(args: ConvertArgs) -> anyhow::Result<()> {
    let file =
        File::open(&args.input).with_context(|| format!("opening {}", args.input.display()))?;
    let (trace, encoding) =
        trace::read_trace(file).with_context(|| format!("reading {}", args.input.display()))?;
    let format = args.to.unwrap_or(match encoding {
        Encoding::Binary => Format::Text,
        Encoding::Text => Format::Binary,
    });
    write_trace(&trace, &args.output, format)
}

fn write_trace(trace: &Trace, path: &Path, format: Format) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    match (trace, format) {
        (Trace::Memory(t), Format::Binary) => binary::write_memory(t, &mut out)?,
        (Trace::Memory(t), Format::Text) => text::write_memory(t, &mut out)?,
        (Trace::Disk(t), Format::Binary) => binary::write_disk(t, &mut out)?,
        (Trace::Disk(t), Format::Text) => text::write_disk(t, &mut out)?,
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))
}

fn read_trace(path: &Path) -> anyhow::Result<Trace> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (trace, _) =
        trace::read_trace(file).with_context(|| format!("reading {}", path.display()))?;
    Ok(trace)
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn workload_class(name: &str) -> anyhow::Result<WorkloadClass> {
    WorkloadClass::from_name(name).with_context(|| {
        let known: Vec<&str> = WorkloadClass::ALL.iter().map(|c| c.name()).collect();
        format!("unknown workload {name:?}; known: {}", known.join(", "))
    })
}

fn policies(names: &[String]) -> anyhow::Result<Vec<Policy>> {
    if names.is_empty() {
        return Ok(Policy::all());
    }
    names
        .iter()
        .map(|name| Policy::try_from(name.clone()).map_err(anyhow::Error::msg))
        .collect()
}

/// Left-aligned first column, right-aligned numbers.
fn print_table(rows: &[Vec<String>]) {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, &w))| {
                if c == 0 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
}
