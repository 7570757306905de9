//! The simulator against the live engine (issues 4 and 9): real lab runs
//! record the guest's memory writes while they migrate, and the simulator,
//! fed each trace, the same link and the same downtime target, must land
//! near what was measured. An `mllm-precopy` run, replayed with the costs it
//! measured, within 15 % on total time and link bytes; an `mllm` run,
//! predicted with the costs measured in the pre-copy run (not its own),
//! within 15 % on total time and 30 % on downtime. Boots real guests under
//! TCG: about two minutes.
//!
//! The live engine sends a zero page as a 4-byte marker and compresses the
//! others with zstd; the simulator is given the run's costs: as many zero
//! pages as the agent's first round found, the link bytes of a data page,
//! and the device state (docs/sim-validation.md). The switch's fixed costs
//! (QEMU's stop, device state save and load, the lab's digests) are not
//! modelled: for `mllm` they are taken as what the pre-copy run's downtime
//! exceeded its replay's.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};

use mllm_core::convert::saturating_u32;
use mllm_core::link::Link as ModelLink;
use mllm_core::strategy::PrecopyLimits;
use mllm_core::trace::binary::read_memory;
use mllm_core::trace::MemoryTrace;
use mllm_core::vm::{PageCost, VmLayout, PAGE_HEADER_BYTES};
use mllm_core::workingset::EstimatorKind;
use mllm_lab::image::{GuestImage, ImageBuilder};
use mllm_lab::method::Method;
use mllm_lab::mllm_migration::TRACE_FILE;
use mllm_lab::paths;
use mllm_lab::result::RunResult;
use mllm_lab::run::run_method;
use mllm_lab::scenario::Scenario;
use mllm_sim::source::{zero_pages_outside_writes, TraceSource};
use mllm_sim::{simulate, Policy, SimConfig, SimResult};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata};

/// Issues 4 and 9's bound on the simulator's error against a measured run.
const TOLERANCE: f64 = 0.15;
/// Issue 9's bound on the predicted downtime of `mllm`.
const DOWNTIME_TOLERANCE: f64 = 0.3;
/// Resent pages hang on where each scan falls among the guest's writes,
/// which differs by tens of milliseconds between the run and the replay:
/// a looser bound (runs so far: within 10 %).
const RESENT_TOLERANCE: f64 = 0.3;
/// The source scans the tracker this often while it records (the agent's default).
const TRACE_INTERVAL_MS: f64 = 100.0;

/// A write-heavy hot set over a compressible working area, so pre-copy
/// needs several rounds and compression matters.
fn scenario() -> Scenario {
    Scenario::parse(
        r#"
name = "sim-validation"
methods = ["mllm-precopy"]
[vm]
memory = "256MiB"
[workload]
kind = "memload"
size = "64MiB"
hot_fraction = 0.1
hot_access_pct = 90
skew = "zipf:0.9"
write_rate = 2000
random_fraction = 0.5
[link]
bandwidth = "100Mbit"
rtt = "50ms"
[timing]
warmup = "4s"
baseline_window = "2s"
after = "5s"
migration_timeout = "120s"
downtime_target = "300ms"
[agents]
# One codec for both runs: the agents' own choice follows the CPU they
# measure, and a run that chose another would price its pages differently
# from the run whose costs predict it.
compression = "zstd:3"
"#,
    )
    .expect("validation scenario")
}

/// One lab run and what it recorded.
struct Recorded {
    result: RunResult,
    trace: MemoryTrace,
    rounds: Vec<QueuedRound>,
}

fn record(scenario: &Scenario, method: Method, image: &GuestImage, out: &Path) -> Recorded {
    ROUNDS.lock().unwrap().clear();
    std::fs::create_dir_all(out).expect("a directory for the run");
    let result = run_method(scenario, method, image, out).expect("lab run");
    println!("{}", mllm_lab::report::summary(&result));
    assert!(result.success, "{method} failed: {:?}", result.error);
    let trace = read_memory(File::open(out.join(TRACE_FILE)).expect("the run wrote its trace"))
        .expect("a readable memory trace");
    assert_covers_precopy_finely(&trace, &result);
    let rounds = ROUNDS.lock().unwrap().clone();
    println!("rounds queued by the agent: {rounds:?}");
    assert_eq!(rounds.len() as u64, result.rounds, "a round the log missed");
    Recorded {
        result,
        trace,
        rounds,
    }
}

#[test]
fn simulated_migrations_of_recorded_traces_match_the_measured_runs() {
    tracing::subscriber::set_global_default(RoundLog).expect("the only subscriber");
    let scenario = scenario();
    let image = ImageBuilder::new(&paths::cache_dir(), &paths::workspace_root())
        .build()
        .expect("guest image");
    let out = tempfile::tempdir().unwrap();

    let precopy = record(
        &scenario,
        Method::MllmPrecopy,
        &image,
        &out.path().join("precopy"),
    );
    let measured = &precopy.result;
    assert_eq!(
        precopy.rounds.iter().map(|r| r.pages).sum::<u64>(),
        u64::from(precopy.trace.header.page_count) + measured.retransmitted_pages.unwrap(),
        "pages sent, by the rounds and by the result"
    );
    let costs = Costs::measured(&precopy);
    let simulated = simulate_run(&scenario, &costs, precopy.trace.clone(), Policy::Precopy);
    // Each quantity with the relative error allowed, if one is asserted:
    // downtime is not (the switch's fixed costs are not modelled).
    let rows = [
        (
            "total time (ms)",
            measured.total_time_ms.expect("total time"),
            simulated.total_time_ms,
            Some(TOLERANCE),
        ),
        (
            "link bytes to destination",
            measured.link_bytes_to_destination as f64,
            simulated.link_bytes as f64,
            Some(TOLERANCE),
        ),
        (
            "rounds (incl. the stopped one)",
            measured.rounds as f64,
            (simulated.rounds + 1) as f64,
            None,
        ),
        (
            "retransmitted pages",
            measured.retransmitted_pages.unwrap() as f64,
            simulated.retransmitted_pages as f64,
            Some(RESENT_TOLERANCE),
        ),
        (
            "downtime (ms)",
            measured.downtime_ms.unwrap_or(0.0),
            simulated.downtime_ms,
            None,
        ),
    ];
    compare(
        "mllm-precopy, replayed with its own costs",
        &simulated,
        &rows,
    );
    // Both count the stopped round.
    let rounds = (measured.rounds, simulated.rounds + 1);
    assert!(
        rounds.0.abs_diff(rounds.1) <= 1,
        "rounds measured and simulated: {rounds:?}"
    );
    let switch_fixed_ms = measured.downtime_ms.expect("downtime") - simulated.downtime_ms;
    println!("fixed costs of the switch, from the pre-copy run: {switch_fixed_ms:.0} ms");

    let mllm = record(&scenario, Method::Mllm, &image, &out.path().join("mllm"));
    let measured = &mllm.result;
    let predicted = simulate_run(
        &scenario,
        &costs,
        mllm.trace,
        Policy::Mllm(EstimatorKind::Improved),
    );
    let rows = [
        (
            "total time (ms)",
            measured.total_time_ms.expect("total time"),
            predicted.total_time_ms,
            Some(TOLERANCE),
        ),
        (
            "downtime (ms), with the fixed costs",
            measured.downtime_ms.expect("downtime"),
            predicted.downtime_ms + switch_fixed_ms,
            Some(DOWNTIME_TOLERANCE),
        ),
        (
            "link bytes to destination",
            measured.link_bytes_to_destination as f64,
            predicted.link_bytes as f64,
            None,
        ),
        (
            "retransmitted pages",
            measured.retransmitted_pages.unwrap() as f64,
            predicted.retransmitted_pages as f64,
            None,
        ),
    ];
    compare(
        "mllm, predicted with the pre-copy run's costs",
        &predicted,
        &rows,
    );
}

/// Prints the rows as a table, then checks each bound.
fn compare(title: &str, simulated: &SimResult, rows: &[(&str, f64, f64, Option<f64>)]) {
    println!("{title}:");
    println!("| quantity | measured | simulated | error |");
    println!("| --- | ---: | ---: | ---: |");
    for &(name, live, model, _) in rows {
        let error = relative_error(model, live) * 100.0;
        println!("| {name} | {live:.0} | {model:.0} | {error:+.1} % |");
    }
    assert!(simulated.completed, "the simulation hit its time cap");
    for &(name, live, model, bound) in rows {
        let error = relative_error(model, live);
        assert!(
            bound.is_none_or(|bound| error.abs() <= bound),
            "{title}: simulated {name} {model:.0} is {:+.1} % off the measured {live:.0}",
            error * 100.0
        );
    }
}

/// The trace spans pre-copy, from tracking armed to the VM stopped, in
/// intervals of about the scan period, also in the middle of long rounds.
fn assert_covers_precopy_finely(trace: &MemoryTrace, measured: &RunResult) {
    let lengths_ms: Vec<f64> = trace
        .intervals
        .iter()
        .map(|interval| interval.duration_us as f64 / 1000.0)
        .collect();
    let traced_ms: f64 = lengths_ms.iter().sum();
    let precopy_ms = measured.total_time_ms.unwrap() - measured.downtime_ms.unwrap();
    // Before tracking starts: connection, handshake and request, a few RTTs.
    assert!(
        traced_ms <= precopy_ms && traced_ms >= 0.9 * precopy_ms,
        "the trace covers {traced_ms:.0} ms of a {precopy_ms:.0} ms pre-copy"
    );
    let mean = traced_ms / lengths_ms.len() as f64;
    let longest = lengths_ms.iter().copied().fold(0.0, f64::max);
    println!(
        "trace: {} intervals over {traced_ms:.0} ms, mean {mean:.1} ms, longest {longest:.1} ms",
        lengths_ms.len()
    );
    assert!(
        (0.8 * TRACE_INTERVAL_MS..=1.25 * TRACE_INTERVAL_MS).contains(&mean),
        "mean interval {mean:.1} ms"
    );
    assert!(
        longest <= 3.0 * TRACE_INTERVAL_MS,
        "an interval of {longest:.1} ms: scans stalled during a round"
    );
    let writing = trace
        .intervals
        .iter()
        .filter(|interval| !interval.pages().is_empty())
        .count();
    assert!(
        writing * 10 >= trace.intervals.len() * 9,
        "only {writing} of {} intervals saw the workload write",
        trace.intervals.len()
    );
}

/// What a run measured that the simulator prices pages and the switch by.
struct Costs {
    data_page_bytes: u32,
    /// Pages zero at the start, as the first round found them.
    zero_pages: u64,
    /// QEMU's device state and the agents' own messages: what crossed the
    /// link besides page batches.
    device_state_bytes: u64,
}

impl Costs {
    fn measured(run: &Recorded) -> Costs {
        let pages_sent: u64 = run.rounds.iter().map(|r| r.pages).sum();
        let zero_sent: u64 = run.rounds.iter().map(|r| r.zero_pages).sum();
        // Zero pages cost their marker; the rest of the memory bytes (batch
        // framing included) is the data pages'.
        let zero_bytes = zero_sent * u64::from(PAGE_HEADER_BYTES);
        let data_bytes =
            (run.result.memory_bytes - zero_bytes) as f64 / (pages_sent - zero_sent) as f64;
        Costs {
            data_page_bytes: saturating_u32(data_bytes.round()),
            zero_pages: run.rounds[0].zero_pages,
            device_state_bytes: run.result.link_bytes_to_destination - run.result.memory_bytes,
        }
    }
}

/// The simulator's `policy` on a recorded trace, with the scenario's link,
/// downtime target and bounds, and `costs`; the planner as the agent
/// configures it for `mllm`.
fn simulate_run(
    scenario: &Scenario,
    costs: &Costs,
    trace: MemoryTrace,
    policy: Policy,
) -> SimResult {
    let pages = trace.header.page_count;
    let mut layout = VmLayout::uncompressed(
        trace.header.page_size,
        pages,
        None,
        costs.device_state_bytes,
    );
    layout.page_cost = PageCost {
        data_bytes: costs.data_page_bytes,
        zero_bytes: PAGE_HEADER_BYTES,
    };
    // Round 1 reads every page once: its zero pages are those zero at the start.
    layout.zero_pages =
        zero_pages_outside_writes(&trace, costs.zero_pages).expect("room for the zero pages");
    let bandwidth_bits = scenario.link.bandwidth_bits_per_s as f64;
    let link = ModelLink::from_mbit(bandwidth_bits / 1e6, scenario.link.rtt.as_secs_f64() * 1e3);
    let mut config = SimConfig::new(link);
    config.planner.downtime_target_s = scenario.timing.downtime_target.as_secs_f64();
    if matches!(policy, Policy::Mllm(_)) {
        // The agent keeps half of the target for what its budget does not
        // see (mllm_agent's settings).
        config.planner.downtime_target_s /= 2.0;
    }
    config.planner.interval_s = TRACE_INTERVAL_MS / 1e3;
    // The migration starts with the trace: tracking began with it.
    config.warmup_intervals = 0;
    // The lab's mllm-precopy has no round bound, only its timeout.
    config.precopy_limits = PrecopyLimits {
        max_rounds: u64::MAX,
        max_sent_ratio: None,
        ..PrecopyLimits::default()
    };
    config.max_duration_s = scenario.timing.migration_timeout.as_secs_f64();
    println!(
        "simulated {policy}: {pages} pages, {} zero, a data page {} bytes on the link, {} bytes of device state, {link:?}",
        layout.zero_pages.count(),
        layout.page_cost.data_bytes,
        layout.device_state_bytes
    );
    let source = TraceSource::new(trace, Vec::new()).expect("a replayable trace");
    simulate(Arc::new(layout), Arc::new(source), policy, &config)
}

fn relative_error(model: f64, measured: f64) -> f64 {
    (model - measured) / measured
}

/// One round as the agent queued it.
#[derive(Clone, Copy, Debug, Default)]
struct QueuedRound {
    pages: u64,
    zero_pages: u64,
}

/// The rounds of the run, from the agent's `round queued` log events: the
/// lab's result keeps only totals, and the simulator needs zero pages apart.
static ROUNDS: Mutex<Vec<QueuedRound>> = Mutex::new(Vec::new());

/// A subscriber that keeps the agent's `round queued` events in [`ROUNDS`].
struct RoundLog;

impl tracing::Subscriber for RoundLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.is_event()
            && metadata.target().starts_with("mllm_agent")
            && *metadata.level() <= Level::INFO
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Never called: no span is enabled.
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = RoundFields::default();
        event.record(&mut fields);
        if fields.message == "round queued" {
            ROUNDS.lock().unwrap().push(fields.round);
        }
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

#[derive(Default)]
struct RoundFields {
    message: String,
    round: QueuedRound,
}

impl Visit for RoundFields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "pages" => self.round.pages = value,
            "zero_pages" => self.round.zero_pages = value,
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}
