//! Human-readable views of results: one run's summary and a side-by-side table.

use std::fmt::Write;

use crate::qemu_settings::{QemuSettings, SideSettings};
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

fn limit_ms(r: &RunResult) -> String {
    ms(r.physical_limit.as_ref().map(|l| l.seconds * 1000.0))
}

fn times_limit(r: &RunResult) -> String {
    r.times_limit().map_or("-".into(), |x| format!("{x:.2}"))
}

/// One QEMU's settings on one line: capabilities, then parameters.
fn side(s: &SideSettings) -> String {
    let parameters: Vec<String> = s
        .parameters
        .iter()
        .map(|(name, value)| format!("{name}={}", value.to_string().trim_matches('"')))
        .collect();
    format!(
        "capabilities {}; parameters {}",
        s.capabilities.join(", "),
        if parameters.is_empty() {
            "-".into()
        } else {
            parameters.join(", ")
        }
    )
}

/// Which QEMU settings a run used, for the lines under a table.
pub(crate) fn settings(q: &QemuSettings) -> String {
    let mut s = format!(
        "source {}; destination {}",
        side(&q.source),
        side(&q.destination)
    );
    if let Some(m) = &q.mirror {
        let _ = write!(
            s,
            "; blockdev-mirror granularity={}, copy-mode={} then {} once ready",
            m.granularity, m.copy_mode, m.copy_mode_when_ready
        );
    }
    s
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
    if let Some(verify) = r.verify_ms.filter(|&verify| verify >= 1.0) {
        let _ = writeln!(
            s,
            "  of the downtime, {verify:.0} ms went to test mode's RAM and disk digests"
        );
    }
    if let Some(limit) = &r.physical_limit {
        let _ = writeln!(
            s,
            "  physical limit {} ms ({} MiB of distinct non-zero content after zstd), total {}x of it",
            ms(Some(limit.seconds * 1000.0)),
            mib(limit.bytes),
            times_limit(r)
        );
    }
    if let Some(q) = &r.qemu {
        let _ = writeln!(s, "  QEMU: {}", settings(q));
    }
    if let Some(d) = &r.dedup {
        let _ = writeln!(
            s,
            "  dedup: {} references ({} across memory and disk), {} MiB saved, {} fallbacks, {:.2} CPU s/GiB hashed",
            d.references,
            d.cross_space,
            mib(d.bytes_saved),
            d.fallbacks,
            d.cpu_seconds_per_gib
        );
    }
    if let Some(c) = &r.compression {
        let batches: Vec<String> = c
            .batches
            .iter()
            .map(|(codec, count)| format!("{codec} {count}"))
            .collect();
        let _ = writeln!(
            s,
            "  compression: last {}; batches {}",
            c.last,
            batches.join(", ")
        );
    }
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
        "limit ms",
        "x limit",
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
                limit_ms(r),
                times_limit(r),
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
    let _ = writeln!(
        out,
        "\n`limit ms`: the physical limit of the run, the source's distinct non-zero \
         content at the start after zstd -{}, at the link's rate, plus one RTT; \
         `x limit`: total time as a multiple of it.",
        crate::physical_limit::ZSTD_LEVEL
    );
    for r in results {
        if let Some(q) = &r.qemu {
            let _ = writeln!(out, "\n{} / {}: {}", r.scenario, r.method, settings(q));
        }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::method::Method;
    use crate::physical_limit::PhysicalLimit;

    fn run(method: Method, total_ms: f64) -> RunResult {
        let link = mllm_link::LinkConfig::default();
        RunResult {
            method: method.name().into(),
            scenario: "s".into(),
            success: true,
            total_time_ms: Some(total_ms),
            qemu: QemuSettings::for_method(method, &link, Duration::from_millis(300), true)
                .unwrap(),
            physical_limit: Some(PhysicalLimit {
                bytes: 1 << 20,
                seconds: 2.0,
                ram_bytes: 1 << 30,
                disk_bytes: 0,
                nonzero_pages: 300,
                ram_nonzero_pages: 300,
                unique_pages: 256,
                read_ms: 1.0,
                compress_ms: 1.0,
                how: "test".into(),
            }),
            ..RunResult::default()
        }
    }

    #[test]
    fn the_table_shows_total_time_as_a_multiple_of_the_limit_and_qemu_settings() {
        let table = compare(&[
            run(Method::QemuMultifdZstd, 5000.0),
            run(Method::Mllm, 3000.0),
        ]);
        let header = table.lines().next().unwrap();
        assert!(
            header.contains("limit ms") && header.contains("x limit"),
            "{header}"
        );
        let row = |method: &str| {
            table
                .lines()
                .find(|l| l.contains(&format!(" {method} ")))
                .unwrap()
                .to_owned()
        };
        assert!(
            row("qemu-multifd-zstd").contains(" 2000 ")
                && row("qemu-multifd-zstd").contains(" 2.50 ")
        );
        assert!(row("mllm").contains(" 1.50 "));
        assert!(table.contains("multifd-compression=zstd"), "{table}");
        assert!(
            table.contains("avail-switchover-bandwidth=12500000"),
            "{table}"
        );
        assert!(table.contains("granularity=65536"), "{table}");
        assert!(
            !table.contains("s / mllm:"),
            "mllm runs have no QEMU settings: {table}"
        );
    }

    #[test]
    fn the_summary_names_the_limit_and_the_settings() {
        let summary = summary(&run(Method::QemuPostcopyPreempt, 4000.0));
        assert!(summary.contains("physical limit 2000 ms"), "{summary}");
        assert!(summary.contains("2.00x"), "{summary}");
        assert!(summary.contains("postcopy-preempt"), "{summary}");
    }
}
