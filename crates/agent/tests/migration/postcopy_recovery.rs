//! Post-copy across a failing link. After the switch the destination runs
//! the only guest and the source holds the only copy of the pages it still
//! lacks: a link that goes away for a while must not lose the guest, and an
//! agent gone for good must be reported plainly by both sides, neither of
//! them killing or resuming anything.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use mllm_agent::{
    GuestRam, MigrationError, Phase, Progress, Recovery, SourceSettings, SourceStrategy,
};
use mllm_link::Link;

use crate::support::{
    link_config, migrate_resumably, one_vm_pair_at_a_time, Outcome, Vm, GUEST_MIB,
};

/// Both agents' link timeout: silence this long means the link failed.
const SILENCE: Duration = Duration::from_secs(3);
/// How long the partition lasts: longer than `SILENCE`, so both agents see
/// the link fail and the source reconnects, several times, until it heals.
const OUTAGE: Duration = Duration::from_secs(8);
/// The recovery timeout when the destination is gone for good.
const GIVE_UP_AFTER: Duration = Duration::from_secs(10);

/// What a test learns of a post-copy interrupted by a fault.
pub struct Interrupted {
    pub outcome: Outcome,
    /// When the fault was made.
    pub fault_at: Instant,
    /// The source's RAM file digest when the fault was made: it must not
    /// change, the source VM being paused for good.
    pub source_digest_at_fault: mllm_wire::RamDigest,
}

/// Post-copy after one round leaves every page the guest wrote during it
/// (most of memload's 32 MiB) for after the switch: at 30 Mbit/s their push
/// takes seconds, so the destination runs with pages missing while the
/// fault comes. (The MLLM planner now moves almost all of them before the
/// switch on a link this long.)
fn settings(recovery_timeout: Duration) -> SourceSettings {
    SourceSettings {
        strategy: SourceStrategy::Postcopy,
        verify: true,
        link_timeout: SILENCE,
        recovery_timeout,
        ..SourceSettings::default()
    }
}

/// Migrates `source` to `destination` with post-copy through `link`, and
/// calls `fault` once, as soon as the destination runs the VM while the
/// source still pushes pages.
fn migrate_with_fault_in_post_copy(
    source: &Vm,
    destination: &Vm,
    link: &Link,
    settings: &SourceSettings,
    fault: impl Fn(),
) -> Interrupted {
    let fault_at = Mutex::new(None);
    let on_progress = |progress: &Progress| {
        let mut fault_at = fault_at.lock().unwrap();
        if fault_at.is_none() && progress.phase == Phase::Postcopy && destination.is_running() {
            let digest = GuestRam::open(&source.ram_file).unwrap().digest();
            fault();
            println!(
                "fault after {:.1} s, {} bytes still to send",
                progress.elapsed_s, progress.bytes_remaining
            );
            *fault_at = Some((Instant::now(), digest));
        }
    };
    let outcome = migrate_resumably(source, destination, link, settings, on_progress);
    let (fault_at, source_digest_at_fault) = fault_at
        .into_inner()
        .unwrap()
        .expect("the destination never ran while pages were pushed");
    Interrupted {
        outcome,
        fault_at,
        source_digest_at_fault,
    }
}

/// A link that fails for `OUTAGE` in post-copy, then comes back.
pub fn partition_in_post_copy_then_recovery() -> (Interrupted, Duration) {
    let source = Vm::boot_memload("source");
    let destination = Vm::incoming("destination", GUEST_MIB);
    let link = Link::new(link_config(30, 40)).unwrap();
    let healed_at = Mutex::new(None);
    let partitioned = AtomicBool::new(false);
    let finished = AtomicBool::new(false);
    let interrupted = thread::scope(|scope| {
        scope.spawn(|| {
            while !finished.load(Ordering::Relaxed) {
                if partitioned.load(Ordering::Relaxed) {
                    thread::sleep(OUTAGE);
                    link.heal();
                    *healed_at.lock().unwrap() = Some(Instant::now());
                    return;
                }
                thread::sleep(Duration::from_millis(10));
            }
        });
        let interrupted = migrate_with_fault_in_post_copy(
            &source,
            &destination,
            &link,
            &settings(Duration::from_secs(60)),
            || {
                link.partition();
                partitioned.store(true, Ordering::Relaxed);
            },
        );
        finished.store(true, Ordering::Relaxed);
        interrupted
    });
    let healed_at = healed_at
        .into_inner()
        .unwrap()
        .expect("the link was healed before the migration ended");
    let outcome = &interrupted.outcome;
    let report = match &outcome.source {
        Ok(report) => report,
        Err(error) => panic!("the source gave up: {error}: {}", error.cause.chain()),
    };
    let received = match &outcome.destination {
        Ok(received) => received,
        Err(error) => panic!("the destination gave up: {}", error.chain()),
    };
    println!("{}", serde_json::to_string_pretty(report).unwrap());
    println!("{}", serde_json::to_string_pretty(received).unwrap());
    let sent = report.postcopy.as_ref().expect("a post-copy report");
    let got = received.postcopy.as_ref().expect("a post-copy report");
    assert!(sent.resumes >= 1, "the post-copy never resumed: {sent:?}");
    assert!(
        sent.pages_missing_at_resume > 0,
        "the destination lacked nothing at the resume: the fault came too late"
    );
    // Test mode: every page present at the switch was compared there, and
    // every pending page as it was installed, across both connections.
    assert!(got.verified && received.verified);
    assert_eq!(got.already_present, 0, "a pending page was filled twice");
    assert!(!source.is_running(), "the source VM resumed");
    assert!(destination.is_running(), "the destination VM stopped");
    destination.assert_alive_and_intact("after a post-copy that survived a partition");
    // What the guest waited: from the heal to the source's release.
    let after_heal = outcome
        .source_answered_at
        .saturating_duration_since(healed_at);
    println!(
        "partition of {OUTAGE:?}; resumed {} time(s), the longest recovery {} ms (the source's \
         count, from seeing the link fail); {} pages were missing at the resume; post-copy \
         finished {after_heal:.1?} after the heal",
        sent.resumes, sent.longest_recovery_ms, sent.pages_missing_at_resume
    );
    (interrupted, after_heal)
}

/// The destination agent gone for good in post-copy: its connections
/// reset, new ones refused, for longer than the recovery timeout.
pub fn destination_agent_gone_in_post_copy() -> Interrupted {
    let source = Vm::boot_memload("source");
    let destination = Vm::incoming("destination", GUEST_MIB);
    let link = Link::new(link_config(30, 40)).unwrap();
    let interrupted = migrate_with_fault_in_post_copy(
        &source,
        &destination,
        &link,
        &settings(GIVE_UP_AFTER),
        || link.cut(),
    );
    let outcome = &interrupted.outcome;
    let error = outcome
        .source
        .as_ref()
        .expect_err("the source cannot finish the post-copy");
    let text = format!("{error}: {}", error.cause.chain());
    println!("source: {text}");
    assert!(
        matches!(
            error.cause.root(),
            MigrationError::DestinationUnreachable { .. }
        ),
        "{text}"
    );
    assert!(
        text.contains("the guest there cannot continue")
            && text.contains("still holds every such page"),
        "{text}"
    );
    // The guest is the destination's since the hand-over: the source never
    // resumes it.
    assert_eq!(error.recovery, Recovery::DestinationRuns, "{text}");
    assert!(!source.is_running(), "the source VM resumed");
    assert_eq!(
        GuestRam::open(&source.ram_file).unwrap().digest(),
        interrupted.source_digest_at_fault,
        "the source's RAM file changed: it must hold every page the destination lacks"
    );
    let waited = outcome
        .source_answered_at
        .saturating_duration_since(interrupted.fault_at);
    assert!(
        waited >= GIVE_UP_AFTER,
        "the source gave up after {waited:?}"
    );
    // The destination, whose agent here is alive, says what its guest lacks.
    let destination_error = outcome
        .destination
        .as_ref()
        .expect_err("the destination cannot finish the post-copy")
        .chain();
    println!("destination: {destination_error}");
    assert!(
        destination_error.contains("the guest cannot continue")
            && destination_error.contains("only on the source host"),
        "{destination_error}"
    );
    assert!(
        !destination_error.contains(": 0 memory pages and 0 disk blocks"),
        "{destination_error}"
    );
    interrupted
}

#[test]
fn post_copy_survives_a_partition_and_resumes_where_the_destination_stands() {
    let _one_at_a_time = one_vm_pair_at_a_time();
    partition_in_post_copy_then_recovery();
}

#[test]
fn a_destination_gone_in_post_copy_is_reported_and_the_source_keeps_every_page() {
    let _one_at_a_time = one_vm_pair_at_a_time();
    destination_agent_gone_in_post_copy();
}
