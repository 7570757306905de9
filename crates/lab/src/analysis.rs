//! Turns what the guest printed (host-timestamped serial lines) into the
//! run's measurements: heartbeat gaps, workload throughput, and the checks
//! that the destination guest is alive and its data intact.

use std::collections::BTreeMap;

use mllm_guest::GuestEvent;
use mllm_qemu::SerialLine;

use crate::result::{DestinationCheck, WorkloadResult};

/// Serial lines of one VM, parsed.
#[derive(Debug)]
pub struct GuestOutput {
    pub heartbeats: Vec<(u64, u64)>,
    pub ops: Vec<(u64, u64)>,
    pub verified_at: Vec<u64>,
    pub corruption: Vec<String>,
    pub console_problems: Vec<String>,
}

/// Console lines that mean the guest kernel is broken.
const PANIC_MARKERS: &[&str] = &[
    "Kernel panic",
    "BUG:",
    "Oops",
    "general protection fault",
    "watchdog: BUG",
];

impl GuestOutput {
    /// `heartbeat`, `workload` and `console` are the three serial ports'
    /// lines; a line the guest has not ended yet is left out.
    pub fn parse(
        heartbeat: &[SerialLine],
        workload: &[SerialLine],
        console: &[SerialLine],
    ) -> GuestOutput {
        let mut out = GuestOutput {
            heartbeats: Vec::new(),
            ops: Vec::new(),
            verified_at: Vec::new(),
            corruption: Vec::new(),
            console_problems: Vec::new(),
        };
        for line in heartbeat.iter().chain(workload).filter(|l| l.complete) {
            match mllm_guest::parse_line(&line.text) {
                Some(GuestEvent::Heartbeat { seq }) => out.heartbeats.push((seq, line.at_us)),
                Some(GuestEvent::Ops { ops, .. }) => out.ops.push((line.at_us, ops)),
                Some(GuestEvent::VerifyOk { .. }) => out.verified_at.push(line.at_us),
                Some(GuestEvent::Corrupt { detail }) => out.corruption.push(detail),
                _ => {}
            }
        }
        out.console_problems = console
            .iter()
            .filter(|l| PANIC_MARKERS.iter().any(|m| l.text.contains(m)))
            .map(|l| l.text.clone())
            .collect();
        out
    }

    /// Operations reported in `[from_us, to_us)`, per second.
    pub fn ops_rate(&self, from_us: u64, to_us: u64) -> Option<f64> {
        ops_rate(self.ops.iter(), from_us, to_us)
    }
}

fn ops_rate<'a>(
    ops: impl Iterator<Item = &'a (u64, u64)>,
    from_us: u64,
    to_us: u64,
) -> Option<f64> {
    if to_us <= from_us {
        return None;
    }
    let mut any = false;
    let total: u64 = ops
        .filter(|(at, _)| (from_us..to_us).contains(at))
        .map(|(_, n)| {
            any = true;
            *n
        })
        .sum();
    any.then(|| total as f64 / ((to_us - from_us) as f64 / 1e6))
}

/// The largest gap between consecutive heartbeat numbers, from whichever VM
/// printed each number first, between `from_us` and `to_us`.
pub fn largest_heartbeat_gap_ms(
    source: &GuestOutput,
    destination: &GuestOutput,
    from_us: u64,
    to_us: u64,
) -> Option<f64> {
    let mut first_seen: BTreeMap<u64, u64> = BTreeMap::new();
    for &(seq, at) in source.heartbeats.iter().chain(&destination.heartbeats) {
        first_seen
            .entry(seq)
            .and_modify(|t| *t = (*t).min(at))
            .or_insert(at);
    }
    let times: Vec<u64> = first_seen
        .values()
        .copied()
        .filter(|t| (from_us..=to_us).contains(t))
        .collect();
    times
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]) as f64 / 1000.0)
        .reduce(f64::max)
}

/// Throughput before, during and after a migration that ran from `start_us` to `end_us`.
pub fn workload_rates(
    source: &GuestOutput,
    destination: &GuestOutput,
    baseline_from_us: u64,
    start_us: u64,
    end_us: u64,
    after_until_us: u64,
) -> WorkloadResult {
    let baseline = source.ops_rate(baseline_from_us, start_us);
    let during = ops_rate(source.ops.iter().chain(&destination.ops), start_us, end_us);
    let after = destination.ops_rate(end_us, after_until_us);
    let degradation_pct = match (baseline, during) {
        (Some(b), Some(d)) if b > 0.0 => Some((1.0 - d / b) * 100.0),
        _ => None,
    };
    WorkloadResult {
        baseline_ops_per_s: baseline,
        during_ops_per_s: during,
        after_ops_per_s: after,
        degradation_pct,
    }
}

/// Did the guest keep running on the destination with its data intact?
pub fn check_destination(
    source: &GuestOutput,
    destination: &GuestOutput,
    switch_us: u64,
    expect_verification: bool,
) -> DestinationCheck {
    let last_source = source.heartbeats.iter().map(|(s, _)| *s).max();
    let first_destination = destination.heartbeats.iter().map(|(s, _)| *s).min();
    let mut problems = Vec::new();
    match (last_source, first_destination) {
        (_, None) => problems.push("the destination printed no heartbeat".to_owned()),
        (Some(last), Some(first)) if first > last + 1 => problems.push(format!(
            "heartbeat jumped from {last} on the source to {first} on the destination"
        )),
        (Some(last), Some(first)) if first + 100 < last => problems.push(format!(
            "destination heartbeat restarted at {first} although the source had reached {last} (guest rebooted?)"
        )),
        _ => {}
    }
    let destination_heartbeats = destination.heartbeats.len() as u64;
    if destination_heartbeats > 0 && destination_heartbeats < 20 {
        problems.push(format!(
            "the destination printed only {destination_heartbeats} heartbeats: the guest stalled"
        ));
    }
    for detail in source.corruption.iter().chain(&destination.corruption) {
        problems.push(format!("workload found corrupted data: {detail}"));
    }
    for line in &destination.console_problems {
        problems.push(format!("destination console: {line}"));
    }
    let verified_after_switch = destination.verified_at.iter().any(|&t| t > switch_us);
    if expect_verification && !verified_after_switch {
        problems.push("the workload never completed a self-check on the destination".to_owned());
    }
    DestinationCheck {
        healthy: problems.is_empty(),
        last_source_heartbeat: last_source,
        first_destination_heartbeat: first_destination,
        destination_heartbeats,
        verified_after_switch,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(texts: &[(u64, &str)]) -> Vec<SerialLine> {
        texts
            .iter()
            .map(|(at_us, text)| SerialLine::complete(*at_us, *text))
            .collect()
    }

    fn heartbeats(range: std::ops::Range<u64>, start_us: u64) -> Vec<SerialLine> {
        range
            .enumerate()
            .map(|(i, seq)| SerialLine::complete(start_us + i as u64 * 10_000, format!("HB {seq}")))
            .collect()
    }

    #[test]
    fn gap_spans_the_switch() {
        let src = GuestOutput::parse(&heartbeats(0..100, 0), &[], &[]);
        // Seq 100 arrives 250 ms after seq 99 (at 990 ms).
        let dst = GuestOutput::parse(&heartbeats(100..200, 1_240_000), &[], &[]);
        let gap = largest_heartbeat_gap_ms(&src, &dst, 0, u64::MAX).unwrap();
        assert!((gap - 250.0).abs() < 1e-9, "{gap}");
        let check = check_destination(&src, &dst, 1_000_000, false);
        assert!(check.healthy, "{:?}", check.problems);
    }

    #[test]
    fn restarted_or_silent_destination_is_unhealthy() {
        let src = GuestOutput::parse(&heartbeats(0..500, 0), &[], &[]);
        let rebooted = GuestOutput::parse(&heartbeats(0..100, 6_000_000), &[], &[]);
        assert!(!check_destination(&src, &rebooted, 5_000_000, false).healthy);
        let silent = GuestOutput::parse(&[], &[], &[]);
        assert!(!check_destination(&src, &silent, 5_000_000, false).healthy);
    }

    #[test]
    fn corruption_and_panic_fail_the_check() {
        let src = GuestOutput::parse(&heartbeats(0..100, 0), &[], &[]);
        let dst = GuestOutput::parse(
            &heartbeats(100..200, 1_000_000),
            &lines(&[
                (1_500_000, "CORRUPT page 7 checksum mismatch"),
                (2_000_000, "VERIFY OK 100"),
            ]),
            &lines(&[(
                1_100_000,
                "[ 3.1] Kernel panic - not syncing: Fatal exception",
            )]),
        );
        let check = check_destination(&src, &dst, 1_000_000, true);
        assert!(!check.healthy);
        assert_eq!(check.problems.len(), 2, "{:?}", check.problems);
        assert!(check.verified_after_switch);
    }

    #[test]
    fn workload_rates_per_phase() {
        let src = GuestOutput::parse(
            &[],
            &lines(&[
                (500_000, "OPS 100 100000"),
                (1_500_000, "OPS 100 100000"),
                (2_500_000, "OPS 50 100000"),
            ]),
            &[],
        );
        let dst = GuestOutput::parse(&[], &lines(&[(3_500_000, "OPS 100 100000")]), &[]);
        let rates = workload_rates(&src, &dst, 0, 2_000_000, 3_000_000, 4_000_000);
        assert_eq!(rates.baseline_ops_per_s, Some(100.0));
        assert_eq!(rates.during_ops_per_s, Some(50.0));
        assert_eq!(rates.after_ops_per_s, Some(100.0));
        assert_eq!(rates.degradation_pct, Some(50.0));
    }
}
