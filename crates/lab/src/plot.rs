//! The timeline plot of a run: workload throughput and link throughput over
//! time, with the migration's phases marked.

use std::path::Path;

use anyhow::{anyhow, Result};
use mllm_link::LinkSample;
use plotters::prelude::*;

use crate::result::RunResult;
use mllm_core::convert::saturating_usize;

/// Host wall-clock instants (µs since the epoch) of the migration's phases.
#[derive(Debug)]
pub struct Phases {
    pub started_us: u64,
    pub stopped_us: Option<u64>,
    pub resumed_us: Option<u64>,
    pub completed_us: Option<u64>,
}

const BIN_S: f64 = 0.5;

#[allow(clippy::too_many_arguments)]
pub fn draw(
    path: &Path,
    result: &RunResult,
    ops: &[(u64, u64)],
    link: &[LinkSample],
    link_started_us: u64,
    from_us: u64,
    to_us: u64,
    phases: &Phases,
) -> Result<()> {
    let seconds = |us: u64| (us as f64 - from_us as f64) / 1e6;
    let span = seconds(to_us).max(1.0);
    // Whole bins only: a partial last bin would look like a throughput drop.
    let bins = saturating_usize((span / BIN_S).floor());

    let mut ops_per_s = vec![0.0; bins];
    for &(at, n) in ops {
        let t = seconds(at);
        let bin = saturating_usize((t / BIN_S).floor());
        if t >= 0.0 && bin < bins {
            ops_per_s[bin] += n as f64 / BIN_S;
        }
    }
    let link_mbit: Vec<(f64, f64)> = link
        .windows(2)
        .map(|w| {
            let dt = (w[1].elapsed_ms - w[0].elapsed_ms).max(1) as f64 / 1000.0;
            let bytes = (w[1].bytes_forward + w[1].bytes_backward)
                - (w[0].bytes_forward + w[0].bytes_backward);
            let t = seconds(link_started_us + w[1].elapsed_ms * 1000);
            (t, bytes as f64 * 8.0 / dt / 1e6)
        })
        .collect();

    let root = SVGBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (top, bottom) = root.split_vertically(300);
    let marks: Vec<(f64, &str)> = [
        (Some(phases.started_us), "start"),
        (phases.stopped_us, "stop"),
        (phases.resumed_us, "resume"),
        (phases.completed_us, "done"),
    ]
    .into_iter()
    .filter_map(|(t, name)| t.map(|t| (seconds(t), name)))
    .collect();

    let ops_series: Vec<(f64, f64)> = ops_per_s
        .iter()
        .enumerate()
        .map(|(i, v)| (i as f64 * BIN_S, *v))
        .collect();
    let title = format!("{} / {}: workload ops/s", result.scenario, result.method);
    panel(&top, &title, "ops/s", span, &ops_series, &marks, &BLUE)?;
    panel(
        &bottom,
        "link throughput, Mbit/s (both directions)",
        "Mbit/s",
        span,
        &link_mbit,
        &marks,
        &RED,
    )?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

fn panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    title: &str,
    y_label: &str,
    span: f64,
    series: &[(f64, f64)],
    marks: &[(f64, &str)],
    color: &RGBColor,
) -> Result<()> {
    let y_max = series.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..span, 0.0..y_max)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(y_label)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(LineSeries::new(series.iter().copied(), color))
        .map_err(|e| anyhow!("{e}"))?;
    // Phases can be milliseconds apart: stagger their labels vertically.
    for (i, (t, name)) in marks.iter().enumerate() {
        let label_y = y_max * (0.95 - 0.08 * i as f64);
        chart
            .draw_series(LineSeries::new([(*t, 0.0), (*t, y_max)], BLACK.mix(0.4)))
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .draw_series([Text::new(
                name.to_string(),
                (*t, label_y),
                ("sans-serif", 12),
            )])
            .map_err(|e| anyhow!("{e}"))?;
    }
    Ok(())
}
