//! A guest running the memory workload moves and keeps running.

use mllm_agent::{Phase, PrecopySettings};

use crate::support::{link_config, migrate, one_vm_pair_at_a_time, Vm, GUEST_MIB};

#[test]
fn a_memload_guest_moves_with_equal_digests_and_keeps_its_heartbeat() {
    let _one_at_a_time = one_vm_pair_at_a_time();
    let source = Vm::boot_memload("source");
    let destination = Vm::incoming("destination", GUEST_MIB);
    let settings = PrecopySettings {
        verify: true,
        ..PrecopySettings::default()
    };
    let outcome = migrate(
        &source,
        &destination,
        link_config(200, 20),
        &settings,
        |_| false,
    );
    let report = outcome.source.expect("source side of the migration");
    let received = outcome
        .destination
        .expect("destination side of the migration");
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    println!("{}", serde_json::to_string_pretty(&received).unwrap());

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
    let phases: Vec<Phase> = outcome.progress.iter().map(|p| p.phase).collect();
    assert_eq!(phases.first(), Some(&Phase::Connecting));
    assert_eq!(phases.last(), Some(&Phase::Completed));
    assert!(outcome
        .progress
        .iter()
        .any(|p| p.rate_bytes_per_s.is_some()));

    // The source is left paused for its owner to quit; the guest lives on
    // at the destination, its heartbeat continuing where it stopped.
    assert!(!source.is_running(), "the source must stay stopped");
    assert!(destination.is_running());
    destination.assert_alive_and_intact("after the migration");
    let last_on_source = *source.heartbeats().last().unwrap();
    let first_on_destination = destination.heartbeats()[0];
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
