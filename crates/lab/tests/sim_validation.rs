//! The simulator against the live engine (issue 4): a real mllm-precopy run
//! in the lab records the guest's memory writes while it migrates; the
//! simulator's pre-copy, fed that trace, the same link and the same
//! downtime target, must land within 15 % of the measured total time and
//! link bytes. Boots real guests under TCG: about a minute.
//!
//! The live engine sends a zero page as a 4-byte marker and compresses the
//! others with zstd; the simulator is given the run's costs: as many zero
//! pages as the agent's first round found, and the link bytes of a data page
//! the run measured (docs/sim-validation.md).

use std::fs::File;
use std::sync::{Arc, Mutex};

use mllm_core::convert::saturating_u32;
use mllm_core::link::Link as ModelLink;
use mllm_core::strategy::PrecopyLimits;
use mllm_core::trace::binary::read_memory;
use mllm_core::trace::MemoryTrace;
use mllm_core::vm::{PageCost, VmLayout, PAGE_HEADER_BYTES};
use mllm_lab::image::ImageBuilder;
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

/// Issue 4's bound on the simulator's error against a measured run.
const TOLERANCE: f64 = 0.15;
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
"#,
    )
    .expect("validation scenario")
}

#[test]
fn simulated_precopy_of_the_recorded_trace_matches_the_measured_run() {
    tracing::subscriber::set_global_default(RoundLog).expect("the only subscriber");
    let scenario = scenario();
    let image = ImageBuilder::new(&paths::cache_dir(), &paths::workspace_root())
        .build()
        .expect("guest image");
    let out = tempfile::tempdir().unwrap();
    let measured = run_method(&scenario, Method::MllmPrecopy, &image, out.path()).expect("lab run");
    println!("{}", mllm_lab::report::summary(&measured));
    assert!(measured.success, "migration failed: {:?}", measured.error);
    let trace_path = out.path().join(TRACE_FILE);
    let trace = read_memory(File::open(&trace_path).expect("the run wrote its trace"))
        .expect("a readable memory trace");
    assert_covers_precopy_finely(&trace, &measured);
    let rounds = ROUNDS.lock().unwrap().clone();
    println!("rounds queued by the agent: {rounds:?}");
    assert_eq!(
        rounds.len() as u64,
        measured.rounds,
        "a round the log missed"
    );
    assert_eq!(
        rounds.iter().map(|r| r.pages).sum::<u64>(),
        u64::from(trace.header.page_count) + measured.retransmitted_pages.unwrap(),
        "pages sent, by the rounds and by the result"
    );

    let simulated = simulate_precopy(&scenario, &measured, &rounds, trace);
    let measured_total_ms = measured.total_time_ms.expect("total time");
    // Each quantity with the relative error allowed, if one is asserted:
    // downtime is not (the switch's fixed costs are not modelled).
    let rows = [
        (
            "total time (ms)",
            measured_total_ms,
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
    println!("| quantity | measured | simulated | error |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, live, model, _) in rows {
        let error = relative_error(model, live) * 100.0;
        println!("| {name} | {live:.0} | {model:.0} | {error:+.1} % |");
    }
    assert!(simulated.completed, "the simulation hit its time cap");
    for (name, live, model, bound) in rows {
        let error = relative_error(model, live);
        assert!(
            bound.is_none_or(|bound| error.abs() <= bound),
            "simulated {name} {model:.0} is {:+.1} % off the measured {live:.0}",
            error * 100.0
        );
    }
    // Both count the stopped round.
    let rounds = (measured.rounds, simulated.rounds + 1);
    assert!(
        rounds.0.abs_diff(rounds.1) <= 1,
        "rounds measured and simulated: {rounds:?}"
    );
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

/// The simulator's pre-copy on the recorded trace, with the run's link,
/// downtime target and bounds, and the page costs the run measured.
fn simulate_precopy(
    scenario: &Scenario,
    measured: &RunResult,
    rounds: &[QueuedRound],
    trace: MemoryTrace,
) -> SimResult {
    let pages = trace.header.page_count;
    let pages_sent: u64 = rounds.iter().map(|r| r.pages).sum();
    let zero_sent: u64 = rounds.iter().map(|r| r.zero_pages).sum();
    // Zero pages cost their marker; the rest of the memory bytes (batch
    // framing included) is the data pages'.
    let zero_bytes = zero_sent * u64::from(PAGE_HEADER_BYTES);
    let data_bytes = (measured.memory_bytes - zero_bytes) as f64 / (pages_sent - zero_sent) as f64;
    let mut layout = VmLayout::uncompressed(
        trace.header.page_size,
        pages,
        None,
        // QEMU's device state and the agents' own messages: what crossed
        // the link besides page batches.
        measured.link_bytes_to_destination - measured.memory_bytes,
    );
    layout.page_cost = PageCost {
        data_bytes: saturating_u32(data_bytes.round()),
        zero_bytes: PAGE_HEADER_BYTES,
    };
    // Round 1 reads every page once: its zero pages are those zero at the start.
    layout.zero_pages =
        zero_pages_outside_writes(&trace, rounds[0].zero_pages).expect("room for the zero pages");
    let bandwidth_bits = scenario.link.bandwidth_bits_per_s as f64;
    let link = ModelLink::from_mbit(bandwidth_bits / 1e6, scenario.link.rtt.as_secs_f64() * 1e3);
    let mut config = SimConfig::new(link);
    config.planner.downtime_target_s = scenario.timing.downtime_target.as_secs_f64();
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
        "simulated: {pages} pages, {} zero, a data page {} bytes on the link, {} bytes of device state, {link:?}",
        layout.zero_pages.count(),
        layout.page_cost.data_bytes,
        layout.device_state_bytes
    );
    let source = TraceSource::new(trace, Vec::new()).expect("a replayable trace");
    simulate(Arc::new(layout), Arc::new(source), Policy::Precopy, &config)
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
