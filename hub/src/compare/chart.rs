//! SVG charts of a comparison (plotters): bytes per message, overhead
//! bytes beyond the payload, and latency percentiles, each against payload
//! size, one line per protocol, both axes logarithmic.

use std::path::Path;

use plotters::prelude::*;

use super::report::Report;
use super::CompareError;

const COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

/// `(protocol, [(payload size, value)])` per protocol.
type Series = Vec<(String, Vec<(f64, f64)>)>;
/// A labelled line and its style.
type Line = (String, Vec<(f64, f64)>, ShapeStyle);

fn chart_err(path: &Path, e: impl std::fmt::Display) -> CompareError {
    CompareError::Chart {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// `(protocol, [(payload size, value)])` for every protocol in the report.
fn series(report: &Report, value: impl Fn(&super::Row) -> f64) -> Series {
    let mut out: Series = Vec::new();
    for r in &report.rows {
        let point = (r.payload_size as f64, value(r).max(1e-3));
        match out.iter_mut().find(|(p, _)| *p == r.protocol) {
            Some((_, pts)) => pts.push(point),
            None => out.push((r.protocol.clone(), vec![point])),
        }
    }
    out
}

/// The axes' ranges around every point; `headroom` multiplies the top of
/// the y axis (room for the legend above flat lines).
fn ranges(lines: &Series, headroom: f64) -> ((f64, f64), (f64, f64)) {
    let pts = lines.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in pts {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if x0 > x1 {
        return ((1.0, 10.0), (1.0, 10.0));
    }
    ((x0 * 0.8, x1 * 1.25), (y0 * 0.7, y1 * headroom))
}

fn draw(
    path: &Path,
    title: &str,
    y_desc: &str,
    headroom: f64,
    lines: &[Line],
) -> Result<(), CompareError> {
    let plain: Series = lines
        .iter()
        .map(|(n, p, _)| (n.clone(), p.clone()))
        .collect();
    let ((x0, x1), (y0, y1)) = ranges(&plain, headroom);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| chart_err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
        .map_err(|e| chart_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("payload size (bytes)")
        .y_desc(y_desc)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| chart_err(path, e))?;
    for (name, pts, style) in lines {
        let style = *style;
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), style))
            .map_err(|e| chart_err(path, e))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 3, style.filled())))
            .map_err(|e| chart_err(path, e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| chart_err(path, e))?;
    root.present().map_err(|e| chart_err(path, e))?;
    Ok(())
}

/// One thick line per protocol from `main`, each followed by a thin line of
/// the same colour from `thin`, labelled with the protocol and a suffix.
fn paired(main: Series, main_suffix: &str, thin: &Series, thin_suffix: &str) -> Vec<Line> {
    let label = |name: &str, suffix: &str| {
        if suffix.is_empty() {
            name.to_owned()
        } else {
            format!("{name} {suffix}")
        }
    };
    let mut lines = Vec::new();
    for (i, (name, pts)) in main.into_iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        lines.push((label(&name, main_suffix), pts, c.stroke_width(3)));
        if let Some((_, s)) = thin.iter().find(|(n, _)| *n == name) {
            lines.push((
                label(&name, thin_suffix),
                s.clone(),
                c.mix(0.5).stroke_width(1),
            ));
        }
    }
    lines
}

/// Measured bytes per message (solid) and the spec minimum (thin) per
/// protocol, against payload size.
pub fn bytes_chart(report: &Report, path: &Path) -> Result<(), CompareError> {
    let measured = series(report, |r| r.bytes_per_message);
    let spec = series(report, |r| r.spec_min_bytes_per_message);
    draw(
        path,
        "Bytes on the wire per message (both hops)",
        "bytes per message",
        1.5,
        &paired(measured, "", &spec, "spec min"),
    )
}

/// What each message costs beyond its payload (both hops, so twice the
/// payload is taken off): measured (solid) and the spec minimum (thin).
pub fn overhead_chart(report: &Report, path: &Path) -> Result<(), CompareError> {
    let beyond = |total: f64, r: &super::Row| total - 2.0 * r.payload_size as f64;
    let measured = series(report, |r| beyond(r.bytes_per_message, r));
    let spec = series(report, |r| beyond(r.spec_min_bytes_per_message, r));
    draw(
        path,
        "Overhead per message: bytes beyond the payload (both hops)",
        "overhead bytes per message",
        8.0,
        &paired(measured, "", &spec, "spec min"),
    )
}

/// p50 (thick) and p99 (thin) one-way latency per protocol.
pub fn latency_chart(report: &Report, path: &Path) -> Result<(), CompareError> {
    let p50 = series(report, |r| r.latency_p50_us);
    let p99 = series(report, |r| r.latency_p99_us);
    draw(
        path,
        "One-way latency, publisher to subscriber",
        "latency (µs)",
        1.5,
        &paired(p50, "p50", &p99, "p99"),
    )
}
