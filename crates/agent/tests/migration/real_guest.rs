//! A guest running the memory workload moves and keeps running.

use std::fs::File;

use mllm_agent::{
    DestinationReport, Phase, Progress, SourceReport, SourceSettings, SourceStrategy,
};
use mllm_core::trace::binary::read_memory;
use mllm_link::LinkConfig;

use crate::support::{link_config, migrate, one_vm_pair_at_a_time, Vm, GUEST_MIB};
use crate::trace::assert_sees_the_workload;

/// A memload guest moved to a fresh destination, with both sides' reports.
struct Moved {
    source: Vm,
    destination: Vm,
    report: SourceReport,
    received: DestinationReport,
    progress: Vec<Progress>,
}

/// Boots a memload guest and moves it with `settings` through `link`; the
/// migration must succeed. Prints both reports.
fn move_memload_guest(settings: &SourceSettings, link: LinkConfig) -> Moved {
    let source = Vm::boot_memload("source");
    let destination = Vm::incoming("destination", GUEST_MIB);
    let outcome = migrate(&source, &destination, link, settings, |_| false);
    let report = outcome.source.expect("source side of the migration");
    let received = outcome
        .destination
        .expect("destination side of the migration");
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    println!("{}", serde_json::to_string_pretty(&received).unwrap());
    Moved {
        source,
        destination,
        report,
        received,
        progress: outcome.progress,
    }
}

#[test]
fn a_memload_guest_moves_with_equal_digests_and_keeps_its_heartbeat() {
    let _one_at_a_time = one_vm_pair_at_a_time();
    let trace_dir = tempfile::tempdir().unwrap();
    let trace_path = trace_dir.path().join("memory.trace");
    let settings = SourceSettings {
        verify: true,
        trace_file: Some(trace_path.clone()),
        ..SourceSettings::default()
    };
    let Moved {
        source,
        destination,
        report,
        received,
        progress,
    } = move_memload_guest(&settings, link_config(200, 20));

    assert!(
        report.verified && received.verified,
        "digests were not compared"
    );
    assert_eq!(
        report.tracking_method,
        "PAGEMAP_SCAN with userfaultfd async write-protect"
    );
    let pages = (GUEST_MIB << 20) / 4096;
    assert_eq!(report.rounds[0].pages, pages, "round 1 sends every page");
    assert!(report.rounds.len() >= 2, "{:?}", report.rounds);
    assert!(report.rounds.last().unwrap().stopped);
    assert_eq!(report.pages_sent, received.pages_received);
    assert_eq!(report.retransmitted_pages, report.pages_sent - pages);
    assert!(
        report.device_state_bytes > 10_000,
        "{}",
        report.device_state_bytes
    );
    assert_eq!(report.device_state_bytes, received.device_state_bytes);
    assert!(
        report.memory_bytes < GUEST_MIB << 20,
        "zero pages and compression should keep memory bytes below the RAM size"
    );
    // The trace covers pre-copy, from tracking armed to the VM stopped, in
    // intervals of about 100 ms, rounds long or short.
    let summary = report.memory_trace.as_ref().expect("trace summary");
    assert_eq!(summary.error, None);
    let trace = read_memory(File::open(&trace_path).unwrap()).unwrap();
    assert_eq!(summary.intervals, trace.intervals.len() as u64);
    let precopy_ms = (report.timings.stopped_us - report.timings.started_us) as f64 / 1000.0;
    assert!(
        summary.duration_ms <= precopy_ms && summary.duration_ms > precopy_ms - 1000.0,
        "trace of {:.0} ms for a pre-copy of {precopy_ms:.0} ms",
        summary.duration_ms
    );
    let longest_ms = trace.intervals.iter().map(|i| i.duration_us).max().unwrap() as f64 / 1e3;
    assert!(longest_ms <= 250.0, "an interval of {longest_ms:.1} ms");
    assert_sees_the_workload(&trace.intervals);
    let phases: Vec<Phase> = progress.iter().map(|p| p.phase).collect();
    assert_eq!(phases.first(), Some(&Phase::Connecting));
    assert_eq!(phases.last(), Some(&Phase::Completed));
    assert!(progress.iter().any(|p| p.rate_bytes_per_s.is_some()));

    // The source is left paused for its owner to quit; the guest lives on
    // at the destination, its heartbeat continuing where it stopped.
    assert!(!source.is_running(), "the source must stay stopped");
    assert!(destination.is_running());
    destination.assert_alive_and_intact("after the migration");
    let last_on_source = *source.heartbeats().last().unwrap();
    let first_on_destination = destination.heartbeats_continuing(&source)[0];
    assert!(
        first_on_destination <= last_on_source + 1 && first_on_destination + 100 > last_on_source,
        "heartbeat jumped from {last_on_source} to {first_on_destination}"
    );
    let downtime = report.downtime_upper_bound_ms();
    println!(
        "total {:.0} ms, downtime <= {downtime:.0} ms, {} rounds, {} link bytes",
        report.total_time_ms(),
        report.rounds.len(),
        report.link_bytes_sent
    );
}

#[test]
fn post_copy_moves_a_writing_guest_with_every_page_checked() {
    let _one_at_a_time = one_vm_pair_at_a_time();
    let settings = SourceSettings {
        strategy: SourceStrategy::Postcopy,
        verify: true,
        ..SourceSettings::default()
    };
    // 50 ms of round trip: faults cost what they would between data centers.
    let Moved {
        source,
        destination,
        report,
        received,
        ..
    } = move_memload_guest(&settings, link_config(100, 50));

    // One pre-copy round, then the switch: what the guest wrote meanwhile
    // moved after it, pushed or fetched on demand.
    assert_eq!(report.rounds.iter().filter(|r| !r.stopped).count(), 1);
    let sent = report.postcopy.expect("a post-copy report");
    let got = received.postcopy.expect("a post-copy report");
    assert!(sent.pages_pushed + sent.pages_on_demand > 0, "{sent:?}");
    assert_eq!(
        sent.pages_pushed + sent.pages_on_demand,
        got.pages_installed
    );
    // Test mode: every page present at the switch was compared there, every
    // pending one as it was installed; success means equal memory.
    assert!(got.verified && received.verified);
    assert_eq!(
        got.already_present, 0,
        "a pending page was filled behind us"
    );
    assert!(
        report.timings.released_us >= report.timings.destination_running_us,
        "released before the destination ran"
    );
    if let Some(p99) = got.fault_p99_ms {
        println!(
            "{} faults, p50 {:.1} ms, p99 {p99:.1} ms",
            got.faults,
            got.fault_p50_ms.unwrap_or_default()
        );
    }
    assert!(!source.is_running(), "the source must stay stopped");
    assert!(destination.is_running());
    destination.assert_alive_and_intact("after post-copy");
}
