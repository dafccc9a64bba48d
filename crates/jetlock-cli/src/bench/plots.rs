//! `--plots DIR`: the report's curves as SVG charts beside its tables —
//! W1's latency distribution, throughput and owner changes against clients,
//! the coordinator's memory per held lock against held locks, CPU per pair
//! against coordinators, and a takeover's time against the acquires
//! queued. Each chart is drawn only when its workload ran.

use super::report::Report;
use super::CliError;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

const SIZE: (u32, u32) = (720, 420);
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// One line of a chart: its label and points.
struct Line {
    label: String,
    points: Vec<(f64, f64)>,
}

/// A chart's axes: x and y ranges, log or linear.
struct Axes<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    x_log: bool,
    y_log: bool,
    /// Ticks on the x axis shown as these labels instead of numbers.
    x_names: Option<&'a dyn Fn(&f64) -> String>,
}

/// Writes every chart the report has data for into `dir`; returns the
/// files written.
pub(super) fn write(report: &Report, dir: &Path) -> Result<Vec<PathBuf>, CliError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the plots folder {}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for (file, axes, lines) in charts(report) {
        if lines.iter().all(|l| l.points.is_empty()) {
            continue;
        }
        let path = dir.join(file);
        draw(&path, &axes, &lines).map_err(|e| format!("cannot draw {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn charts(report: &Report) -> Vec<(&'static str, Axes<'static>, Vec<Line>)> {
    // Quantile q at x = -log10(1 - q): 0.5 → 0.3, 0.99 → 2, 0.999 → 3;
    // the slowest pair is drawn one step further out.
    fn nines(q: f64) -> f64 {
        if q >= 1.0 {
            4.0
        } else {
            -(1.0 - q).log10()
        }
    }
    fn quantile_name(x: &f64) -> String {
        let x = *x;
        if x >= 3.99 {
            return "max".to_owned();
        }
        let p = format!("{:.1}", 100.0 * (1.0 - 10f64.powf(-x)));
        format!("p{}", p.trim_end_matches(".0"))
    }
    let first = report.durability.first();
    let latency = report
        .results
        .iter()
        .filter(|r| Some(&r.durability) == first)
        .map(|r| Line {
            label: r.workload.to_owned(),
            points: r
                .quantiles_us
                .iter()
                .map(|&(q, us)| (nines(q), us.max(1) as f64))
                .collect(),
        })
        .collect();
    let mut by_workload: Vec<Line> = Vec::new();
    for row in &report.scaling.distinct_keys {
        let label = format!("{} (W2, distinct keys), pairs/s", row.workload);
        add_point(
            &mut by_workload,
            label,
            (row.tasks as f64, row.pairs_per_sec),
        );
    }
    by_workload.push(Line {
        label: "jetlock queue (W3, one key), owner changes/s".to_owned(),
        points: report
            .scaling
            .one_key
            .iter()
            .map(|r| (r.clients as f64, r.owner_changes_per_sec))
            .collect(),
    });
    let memory = report.memory.as_ref().map_or_else(Vec::new, |m| {
        let held = &m.held;
        vec![
            Line {
                label: "bytes per held lock".to_owned(),
                points: held
                    .iter()
                    .map(|r| (r.held as f64, r.bytes_per_lock))
                    .collect(),
            },
            Line {
                label: format!("target ({} B)", super::memory::TARGET_PER_LOCK),
                points: held
                    .iter()
                    .map(|r| (r.held as f64, super::memory::TARGET_PER_LOCK))
                    .collect(),
            },
        ]
    });
    vec![
        (
            "latency.svg",
            Axes {
                title: "W1: acquire + release pair latency, one client",
                x_label: "quantile",
                y_label: "µs",
                x_log: false,
                y_log: true,
                x_names: Some(&quantile_name),
            },
            latency,
        ),
        (
            "scaling-clients.svg",
            Axes {
                title: "Throughput and owner changes by clients",
                x_label: "clients",
                y_label: "per second",
                x_log: true,
                y_log: false,
                x_names: None,
            },
            by_workload,
        ),
        (
            "memory.svg",
            Axes {
                title: "Coordinator memory per held lock",
                x_label: "held locks",
                y_label: "bytes",
                x_log: true,
                y_log: false,
                x_names: None,
            },
            memory,
        ),
        (
            "coordinators.svg",
            Axes {
                title: "JSON pairs: CPU per pair by coordinators (3-node cluster)",
                x_label: "coordinators",
                y_label: "µs of CPU per pair",
                x_log: false,
                y_log: true,
                x_names: Some(&whole_only),
            },
            coordinator_lines(&report.curve),
        ),
        (
            "takeover.svg",
            Axes {
                title: "Takeover: signal to the gone coordinator's partition served",
                x_label: "acquires queued",
                y_label: "ms (p50)",
                x_log: false,
                y_log: false,
                x_names: None,
            },
            takeover_lines(&report.takeover),
        ),
    ]
}

/// Integer ticks only (coordinators come whole).
fn whole_only(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{x:.0}")
    } else {
        String::new()
    }
}

/// For each K: the CPU each coordinator spends per pair (their mean), all
/// of them together, and the servers'.
fn coordinator_lines(curve: &[super::curve::CurveRow]) -> Vec<Line> {
    let mut lines: Vec<Line> = Vec::new();
    let mut point = |label: String, at: (f64, f64)| add_point(&mut lines, label, at);
    for row in curve {
        let n = row.coordinators as f64;
        let each = row.coordinator_us_per_pair.iter().sum::<f64>()
            / row.coordinator_us_per_pair.len().max(1) as f64;
        let k = row.buckets;
        point(format!("each coordinator, K = {k}"), (n, each));
        point(
            format!("all coordinators, K = {k}"),
            (n, row.coordinators_us_per_pair),
        );
        point(format!("servers, K = {k}"), (n, row.servers_us_per_pair));
    }
    lines
}

/// p50 by acquires queued, one line per way the coordinator went.
fn takeover_lines(rows: &[super::takeover::TakeoverRow]) -> Vec<Line> {
    let mut lines: Vec<Line> = Vec::new();
    for row in rows {
        let how = row.event.split(" →").next().unwrap_or(row.event);
        let label = format!("{how}, {} coordinators", row.coordinators);
        add_point(&mut lines, label, (row.queued as f64, row.p50_ms));
    }
    lines
}

/// Adds `at` to the line called `label`, a new one if there is none.
fn add_point(lines: &mut Vec<Line>, label: String, at: (f64, f64)) {
    match lines.iter_mut().find(|l| l.label == label) {
        Some(line) => line.points.push(at),
        None => lines.push(Line {
            label,
            points: vec![at],
        }),
    }
}

fn draw(path: &Path, axes: &Axes<'_>, lines: &[Line]) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let points = || lines.iter().flat_map(|l| l.points.iter());
    // Named ticks (the quantiles) span their whole scale.
    let (x0, x1) = match axes.x_names {
        Some(_) => (0.0, 4.2),
        None => range(points().map(|p| p.0), axes.x_log),
    };
    let (y0, y1) = range(points().map(|p| p.1), axes.y_log);
    let y0 = if axes.y_log { y0 } else { 0.0 };
    match (axes.x_log, axes.y_log) {
        (false, false) => chart(&root, axes, lines, x0..x1, y0..y1),
        (true, false) => chart(&root, axes, lines, (x0..x1).log_scale(), y0..y1),
        (false, true) => chart(&root, axes, lines, x0..x1, (y0..y1).log_scale()),
        (true, true) => chart(
            &root,
            axes,
            lines,
            (x0..x1).log_scale(),
            (y0..y1).log_scale(),
        ),
    }?;
    root.present()?;
    Ok(())
}

/// The span of `values` with a margin (a factor on a log axis).
fn range(values: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (0.0, 1.0);
    }
    if log {
        (lo.max(f64::MIN_POSITIVE) / 1.5, hi * 1.5)
    } else {
        let pad = ((hi - lo) * 0.08).max(hi.abs() * 0.05).max(1e-9);
        (lo - pad, hi + pad)
    }
}

fn chart<X, Y>(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    axes: &Axes<'_>,
    lines: &[Line],
    x: X,
    y: Y,
) -> Result<(), Box<dyn std::error::Error>>
where
    X: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    Y: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    X::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
    Y::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(root)
        .caption(axes.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)?;
    let whole = |v: &f64| format!("{v:.0}");
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(axes.x_label)
        .y_desc(axes.y_label)
        .y_label_formatter(&whole);
    match axes.x_names {
        // One tick per named point: 0, 1, 2, ... on the axis.
        Some(names) => mesh.x_labels(5).x_label_formatter(names),
        None => mesh.x_labels(8).x_label_formatter(&whole),
    };
    mesh.draw()?;
    for (i, line) in lines.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(line.label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(
            line.points
                .iter()
                .map(|&p| Circle::new(p, 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_an_svg_with_its_title_legend_and_named_ticks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latency.svg");
        let names = |x: &f64| format!("q{x}");
        let axes = Axes {
            title: "pair latency",
            x_label: "quantile",
            y_label: "µs",
            x_log: false,
            y_log: true,
            x_names: Some(&names),
        };
        let lines = [Line {
            label: "raw kv pair".to_owned(),
            points: vec![(0.3, 600.0), (2.0, 1500.0), (4.0, 9000.0)],
        }];
        draw(&path, &axes, &lines).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        for text in ["pair latency", "raw kv pair", "quantile", "q1", "q4"] {
            assert!(svg.contains(text), "{text} missing");
        }
        assert_eq!(range(std::iter::empty(), false), (0.0, 1.0));
    }

    #[test]
    fn the_coordinator_curve_draws_each_total_and_servers_per_bucket_count() {
        let row =
            |coordinators: usize, buckets: usize, each: Vec<f64>| super::super::curve::CurveRow {
                coordinators,
                buckets,
                partitions: 64,
                tasks: 16,
                pairs: 1000,
                pairs_per_sec: 500.0,
                coordinators_us_per_pair: each.iter().sum(),
                coordinator_us_per_pair: each,
                servers_us_per_pair: 1200.0,
                coordinator_msgs_per_pair: vec![],
            };
        let lines = coordinator_lines(&[
            row(1, 1, vec![120.0]),
            row(2, 1, vec![100.0, 80.0]),
            row(1, 3, vec![200.0]),
        ]);
        let labels: Vec<&str> = lines.iter().map(|l| l.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "each coordinator, K = 1",
                "all coordinators, K = 1",
                "servers, K = 1",
                "each coordinator, K = 3",
                "all coordinators, K = 3",
                "servers, K = 3"
            ]
        );
        assert_eq!(lines[0].points, [(1.0, 120.0), (2.0, 90.0)]);
        assert_eq!(lines[1].points, [(1.0, 120.0), (2.0, 180.0)]);
        assert_eq!(range([10.0, 100.0].into_iter(), true), (10.0 / 1.5, 150.0));
    }
}
