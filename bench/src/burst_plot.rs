//! `--plot FILE.svg` of the `burst` scenario: four stacked panels sharing
//! the time axis, one line per policy, ON periods shaded:
//!
//! 1. offered rate (jobs/s, the same trace for every policy) against
//!    capacity;
//! 2. backlog (submitted − started, largest per 100 ms);
//! 3. workers (active core workers plus blocking threads, mean per 100 ms);
//! 4. p99 queue latency of the jobs started in each 100 ms window, on a log
//!    axis, with the target as a dashed line.

use crate::burst::Series;
use crate::BoxResult;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// Drawing size in pixels.
const SIZE: (u32, u32) = (1200, 1400);
/// Smallest latency drawn on the log axis, ms.
const FLOOR_MS: f64 = 0.001;

/// One line of a panel.
struct Line {
    name: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// One panel's content.
struct Panel<'a> {
    title: &'a str,
    y_desc: &'a str,
    lines: Vec<Line>,
    /// A dashed horizontal reference line and its label.
    reference: Option<(f64, String)>,
    /// The y range, low and high (the shading spans it).
    y: (f64, f64),
}

/// The colour of a policy's line.
fn color(name: &str) -> RGBColor {
    match name {
        "static-monolithic" => RGBColor(214, 39, 40),
        "static-sharded" => RGBColor(31, 119, 180),
        "always-max" => RGBColor(44, 160, 44),
        "lag" => RGBColor(148, 0, 211),
        _ => RGBColor(90, 90, 90),
    }
}

/// Draws the four panels for `series` (policy name, first seed's series).
pub fn draw(
    path: &Path,
    series: &[(&str, &Series)],
    bursts: &[(u64, u64)],
    target_ms: f64,
    capacity: f64,
) -> BoxResult<()> {
    let x_max =
        series.iter().filter_map(|(_, s)| s.t_s.last().map(|t| t + 0.1)).fold(1.0f64, f64::max);
    let bursts: Vec<(f64, f64)> =
        bursts.iter().map(|&(a, b)| (a as f64 / 1e9, b as f64 / 1e9)).collect();
    let per_policy = |get: fn(&Series) -> &Vec<f64>, floor: f64| -> Vec<Line> {
        series
            .iter()
            .map(|(name, s)| Line {
                name: name.to_string(),
                color: color(name),
                points: s
                    .t_s
                    .iter()
                    .zip(get(s))
                    .map(|(&t, &v)| (t, if v.is_finite() { v.max(floor) } else { v }))
                    .collect(),
            })
            .collect()
    };
    let max_of = |lines: &[Line]| {
        lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max)
    };

    let offered = series
        .first()
        .map(|(_, s)| Line {
            name: "offered".into(),
            color: RGBColor(0, 0, 0),
            points: s.t_s.iter().copied().zip(s.offered.iter().copied()).collect(),
        })
        .into_iter()
        .collect::<Vec<_>>();
    let offered_max = max_of(&offered).max(capacity) * 1.1;
    let backlog = per_policy(|s| &s.backlog, 0.0);
    let backlog_max = max_of(&backlog).max(1.0) * 1.1;
    let workers = per_policy(|s| &s.workers, 0.0);
    let workers_max = max_of(&workers).max(1.0) + 0.5;
    let p99 = per_policy(|s| &s.p99_ms, FLOOR_MS);
    let p99_max = max_of(&p99).max(target_ms) * 3.0;

    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((4, 1));
    let linear = |hi: f64| 0.0..hi;
    let panels = [
        Panel {
            title: "offered load",
            y_desc: "jobs/s",
            lines: offered,
            reference: Some((capacity, "capacity".into())),
            y: (0.0, offered_max),
        },
        Panel {
            title: "backlog (submitted − started, max per 100 ms)",
            y_desc: "jobs",
            lines: backlog,
            reference: None,
            y: (0.0, backlog_max),
        },
        Panel {
            title: "workers (active core workers + blocking threads, mean per 100 ms)",
            y_desc: "workers",
            lines: workers,
            reference: None,
            y: (0.0, workers_max),
        },
        Panel {
            title: "p99 queue latency of jobs started in each 100 ms (log)",
            y_desc: "ms",
            lines: p99,
            reference: Some((target_ms, format!("target {target_ms} ms"))),
            y: (FLOOR_MS, p99_max),
        },
    ];
    for (i, (area, panel)) in areas.iter().zip(&panels).enumerate() {
        if i == 3 {
            draw_panel(area, panel, x_max, &bursts, (FLOOR_MS..p99_max).log_scale())?;
        } else {
            draw_panel(area, panel, x_max, &bursts, linear(panel.y.1))?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

/// One panel on `area` with the y axis `y`.
fn draw_panel<Y>(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    p: &Panel<'_>,
    x_max: f64,
    bursts: &[(f64, f64)],
    y: Y,
) -> BoxResult<()>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(p.title, ("sans-serif", 18))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc(p.y_desc)
        .x_labels(12)
        .y_labels(6)
        .y_label_formatter(&|v: &f64| axis_label(*v))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(err)?;
    let shade = RGBColor(255, 165, 0).mix(0.12).filled();
    chart
        .draw_series(bursts.iter().map(|&(a, b)| Rectangle::new([(a, p.y.0), (b, p.y.1)], shade)))
        .map_err(err)?;
    if let Some((v, label)) = &p.reference {
        let style = RGBColor(120, 120, 120).stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new(vec![(0.0, *v), (x_max, *v)], 6, 4, style))
            .map_err(err)?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    for line in &p.lines {
        let style = line.color.stroke_width(2);
        for (k, seg) in segments(&line.points).into_iter().enumerate() {
            let drawn = chart.draw_series(LineSeries::new(seg, style)).map_err(err)?;
            if k == 0 {
                drawn
                    .label(line.name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            }
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// A compact axis label: `40k`, `2.5`, `0.01`.
fn axis_label(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        let k = v / 1000.0;
        if (k - k.round()).abs() < 1e-9 {
            format!("{k:.0}k")
        } else {
            format!("{k:.1}k")
        }
    } else if a == 0.0 || a >= 1.0 && (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        // Shortest of a few precisions that keeps the value.
        (1..=4)
            .map(|p| format!("{v:.p$}"))
            .find(|s| s.parse::<f64>().is_ok_and(|x| (x - v).abs() <= a * 1e-6))
            .unwrap_or_else(|| format!("{v}"))
    }
}

/// Runs of consecutive finite points (a NaN breaks the line).
fn segments(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut cur = Vec::new();
    for &(x, y) in points {
        if y.is_finite() {
            cur.push((x, y));
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A plotters error as the harness's error.
fn err<E: std::fmt::Display>(e: E) -> crate::BoxError {
    format!("plot: {e}").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels() {
        assert_eq!(axis_label(40_000.0), "40k");
        assert_eq!(axis_label(2500.0), "2.5k");
        assert_eq!(axis_label(0.0), "0");
        assert_eq!(axis_label(2.0), "2");
        assert_eq!(axis_label(0.5), "0.5");
        assert_eq!(axis_label(0.01), "0.01");
    }

    #[test]
    fn nan_breaks_lines() {
        let s = segments(&[(0.0, 1.0), (1.0, f64::NAN), (2.0, 2.0), (3.0, 3.0)]);
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].len(), 2);
    }

    #[test]
    fn draws_an_svg() {
        let s = Series {
            t_s: vec![0.0, 0.1, 0.2],
            offered: vec![100.0, 2000.0, 100.0],
            backlog: vec![0.0, 30.0, 0.0],
            workers: vec![1.0, 2.0, 1.0],
            p99_ms: vec![0.05, 4.0, f64::NAN],
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.svg");
        draw(&path, &[("lag", &s), ("always-max", &s)], &[(50_000_000, 150_000_000)], 10.0, 4000.0)
            .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("always-max"));
    }
}
