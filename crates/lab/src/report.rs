//! Human-readable views of results: one run's summary and a side-by-side table.

use std::fmt::Write;

use crate::result::RunResult;

fn ms(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.0}"))
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1 << 20) as f64)
}

fn rate(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.0}"))
}

/// A few lines about one run.
pub fn summary(r: &RunResult) -> String {
    let mut s = String::new();
    let status = if r.success { "ok" } else { "FAILED" };
    let _ = writeln!(s, "{} / {}: {status}", r.scenario, r.method);
    if let Some(error) = &r.error {
        let _ = writeln!(s, "  error: {error}");
    }
    let _ = writeln!(
        s,
        "  total {} ms, downtime {} ms, guest gap {} ms, {} rounds",
        ms(r.total_time_ms),
        ms(r.downtime_ms),
        ms(r.guest_gap_ms),
        r.rounds
    );
    let _ = writeln!(
        s,
        "  link {} MiB (memory {} MiB, disk {} MiB)",
        mib(r.link_bytes),
        mib(r.memory_bytes),
        mib(r.disk_bytes)
    );
    let w = &r.workload;
    let _ = write!(
        s,
        "  workload ops/s: before {}, during {}, after {} (degradation {}%)",
        rate(w.baseline_ops_per_s),
        rate(w.during_ops_per_s),
        rate(w.after_ops_per_s),
        w.degradation_pct.map_or("-".into(), |d| format!("{d:.1}"))
    );
    s
}

/// Runs side by side, one row per run.
pub fn compare(results: &[RunResult]) -> String {
    let header = [
        "scenario",
        "method",
        "ok",
        "total ms",
        "down ms",
        "gap ms",
        "link MiB",
        "mem MiB",
        "disk MiB",
        "rounds",
        "resent pages",
        "post-copy pages",
        "fault p50/p99 ms",
        "ops/s before",
        "during",
        "after",
        "degr %",
    ];
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.scenario.clone(),
                r.method.clone(),
                if r.success { "yes".into() } else { "NO".into() },
                ms(r.total_time_ms),
                ms(r.downtime_ms),
                ms(r.guest_gap_ms),
                mib(r.link_bytes),
                mib(r.memory_bytes),
                mib(r.disk_bytes),
                r.rounds.to_string(),
                r.retransmitted_pages
                    .map_or("-".into(), |pages| pages.to_string()),
                r.postcopy
                    .as_ref()
                    .map_or("-".into(), |p| p.pages.to_string()),
                r.postcopy.as_ref().map_or("-".into(), |p| {
                    format!("{}/{}", ms(p.fault_p50_ms), ms(p.fault_p99_ms))
                }),
                rate(r.workload.baseline_ops_per_s),
                rate(r.workload.during_ops_per_s),
                rate(r.workload.after_ops_per_s),
                r.workload
                    .degradation_pct
                    .map_or("-".into(), |d| format!("{d:.1}")),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "| {} |", padded.join(" | "));
    };
    line(header.to_vec(), &mut out);
    line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
        &mut out,
    );
    for row in &rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    for r in results.iter().filter(|r| !r.success) {
        let _ = writeln!(
            out,
            "\n{} / {} failed: {}",
            r.scenario,
            r.method,
            r.error.as_deref().unwrap_or("?")
        );
    }
    out
}
