//! A self-contained SVG plot of a run: the latency percentile distribution (the
//! usual HdrHistogram view, percentiles on a log scale of 1/(1-p)) and, over
//! time, throughput and p50/p99/max latency per interval. Hand-written SVG, no
//! dependencies.

use super::summary::RunSummary;
use hdrhistogram::Histogram;
use std::fmt::Write;

const WIDTH: f64 = 860.0;
const PANEL_HEIGHT: f64 = 230.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 40.0;
const TOP: f64 = 70.0;
const GAP: f64 = 60.0;
/// Deepest percentile plotted: 1/(1-p) up to 10^6 (99.9999%); fewer decades
/// when the histogram holds fewer values.
const INVERSE_DECADES_MAX: u32 = 6;

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

struct Panel {
    top: f64,
    height: f64,
}

impl Panel {
    fn width(&self) -> f64 {
        WIDTH - LEFT - RIGHT
    }
    fn frame(&self, out: &mut String, title: &str, y_label: &str, y_max: f64) {
        let _ = writeln!(
            out,
            r##"<rect x="{LEFT}" y="{}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
            self.top,
            self.width(),
            self.height
        );
        let _ = writeln!(
            out,
            r##"<text x="{LEFT}" y="{}" font-size="13" font-weight="bold">{}</text>"##,
            self.top - 8.0,
            escape(title)
        );
        let _ = writeln!(
            out,
            r##"<text x="14" y="{}" font-size="11" transform="rotate(-90 14 {})" text-anchor="middle">{}</text>"##,
            self.top + self.height / 2.0,
            self.top + self.height / 2.0,
            escape(y_label)
        );
        for i in 0..=4 {
            let v = y_max * f64::from(i) / 4.0;
            let y = self.top + self.height - self.height * f64::from(i) / 4.0;
            let _ = writeln!(
                out,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end">{}</text>"##,
                LEFT + self.width(),
                LEFT - 4.0,
                y + 3.0,
                format_value(v)
            );
        }
    }
    fn polyline(&self, out: &mut String, points: &[(f64, f64)], color: &str) {
        if points.is_empty() {
            return;
        }
        let pts: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", LEFT + x * self.width(), self.top + self.height - y * self.height))
            .collect();
        let _ = writeln!(
            out,
            r##"<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{}"/>"##,
            pts.join(" ")
        );
    }
}

fn format_value(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 1000.0 {
        format!("{:.0}", v)
    } else if v >= 10.0 {
        format!("{:.1}", v)
    } else {
        format!("{:.3}", v)
    }
}

fn legend(out: &mut String, x: f64, y: f64, items: &[(&str, &str)]) {
    let mut x = x;
    for (label, color) in items {
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"##,
            y - 4.0,
            x + 18.0,
            y - 4.0,
            x + 22.0,
            y,
            escape(label)
        );
        x += 30.0 + 7.0 * label.len() as f64;
    }
}

/// Renders the plot of `summary` with the headline histogram `h` (values in µs).
pub fn render(summary: &RunSummary, h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let height = TOP + 3.0 * PANEL_HEIGHT + 2.0 * GAP + 40.0;
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">"##
    );
    let _ = writeln!(out, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let c = &summary.config;
    let load = match (c.offered_rate_per_s, c.in_flight_per_connection) {
        (Some(r), _) => format!("open loop {r:.0}/s"),
        (None, Some(k)) => format!("closed loop {k} in flight/conn"),
        _ => "heartbeats".into(),
    };
    let flag = if summary.generator.limited { " - GENERATOR-LIMITED" } else { "" };
    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="20" font-size="14" font-weight="bold">redrain-loadgen {}: {} latency{flag}</text>"##,
        escape(&summary.scenario),
        escape(&summary.headline),
    );
    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="38" font-size="12">{} connections, {load}, {:.1}s measured after {:.1}s warm-up, {:.0} ok/s, p99 {:.3} ms, max {:.3} ms</text>"##,
        c.connections,
        summary.measured_s,
        c.warmup_s,
        summary.throughput_per_s,
        summary.latency.p99_ms,
        summary.latency.max_ms,
    );

    // Panel 1: percentile distribution.
    let p1 = Panel { top: TOP, height: PANEL_HEIGHT };
    let max_ms = h.max() as f64 / 1000.0;
    let y_max = nice_max(max_ms);
    p1.frame(&mut out, "Latency by percentile", "latency (ms)", y_max);
    let decades = f64::from(((h.len().max(10) as f64).log10().ceil() as u32).clamp(1, INVERSE_DECADES_MAX));
    let mut points = Vec::new();
    if !h.is_empty() {
        for v in h.iter_quantiles(super::hgrm::TICKS_PER_HALF_DISTANCE) {
            let q = v.quantile_iterated_to();
            let x = if q >= 1.0 { 1.0 } else { ((1.0 / (1.0 - q)).log10() / decades).min(1.0) };
            points.push((x, v.value_iterated_to() as f64 / 1000.0 / y_max));
            if q >= 1.0 {
                break;
            }
        }
    }
    p1.polyline(&mut out, &points, "#1f77b4");
    let labels = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"];
    for (i, label) in labels.iter().take(decades as usize + 1).enumerate() {
        let x = LEFT + p1.width() * i as f64 / decades;
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" font-size="10" text-anchor="middle">{label}</text>"##,
            p1.top,
            p1.top + p1.height,
            p1.top + p1.height + 14.0
        );
    }

    // Panels 2 and 3: over time.
    let n = summary.intervals.len().max(1) as f64;
    let x_of = |i: usize| if n <= 1.0 { 0.5 } else { i as f64 / (n - 1.0) };
    let p2 = Panel { top: TOP + PANEL_HEIGHT + GAP, height: PANEL_HEIGHT };
    let tp_max = nice_max(summary.intervals.iter().map(|i| i.throughput_per_s).fold(0.0, f64::max));
    p2.frame(&mut out, &format!("Throughput per {:.2}s interval", summary.interval_s), "ok responses / s", tp_max);
    let tp: Vec<(f64, f64)> =
        summary.intervals.iter().enumerate().map(|(i, iv)| (x_of(i), iv.throughput_per_s / tp_max)).collect();
    p2.polyline(&mut out, &tp, "#2ca02c");

    let p3 = Panel { top: TOP + 2.0 * (PANEL_HEIGHT + GAP), height: PANEL_HEIGHT };
    let lat_max = nice_max(summary.intervals.iter().map(|i| i.max_ms).fold(0.0, f64::max));
    p3.frame(&mut out, "Request latency over time", "latency (ms)", lat_max);
    let series = |f: &dyn Fn(&super::summary::IntervalSummary) -> f64| -> Vec<(f64, f64)> {
        summary.intervals.iter().enumerate().map(|(i, iv)| (x_of(i), f(iv) / lat_max)).collect()
    };
    p3.polyline(&mut out, &series(&|iv| iv.p50_ms), "#1f77b4");
    p3.polyline(&mut out, &series(&|iv| iv.p99_ms), "#ff7f0e");
    p3.polyline(&mut out, &series(&|iv| iv.max_ms), "#d62728");
    legend(&mut out, LEFT + 250.0, p3.top - 8.0, &[("p50", "#1f77b4"), ("p99", "#ff7f0e"), ("max", "#d62728")]);
    for (panel, _) in [(&p2, 0), (&p3, 1)] {
        for k in 0..=4 {
            let x = LEFT + panel.width() * f64::from(k) / 4.0;
            let t = summary.measured_s * f64::from(k) / 4.0;
            let _ = writeln!(
                out,
                r##"<text x="{x:.1}" y="{:.1}" font-size="10" text-anchor="middle">{t:.1}s</text>"##,
                panel.top + panel.height + 14.0
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_axis_maxima_round_up() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(0.7), 1.0);
        assert_eq!(nice_max(1.2), 2.0);
        assert_eq!(nice_max(2100.0), 2500.0);
        assert_eq!(nice_max(9000.0), 10000.0);
    }
}
