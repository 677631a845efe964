//! `redrain-loadgen compare a.json b.json`: the figures of two runs side by
//! side with their difference and ratio (b / a).

use super::summary::{RunSummary, SCHEMA};
use std::fmt::Write;
use std::path::Path;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CompareError {
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: not a loadgen JSON summary: {source}")]
    Parse { path: String, source: serde_json::Error },
    #[error("{path}: schema {found:?}, expected {SCHEMA:?}")]
    Schema { path: String, found: String },
}

/// Loads a JSON summary written by `--json`.
pub fn load(path: &Path) -> Result<RunSummary, CompareError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| CompareError::Read { path: p.clone(), source })?;
    let s: RunSummary =
        serde_json::from_str(&text).map_err(|source| CompareError::Parse { path: p.clone(), source })?;
    if s.schema != SCHEMA {
        return Err(CompareError::Schema { path: p, found: s.schema });
    }
    Ok(s)
}

/// One compared figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub metric: &'static str,
    pub a: f64,
    pub b: f64,
}

impl Row {
    pub fn diff(&self) -> f64 {
        self.b - self.a
    }
    /// b / a, or `None` when a is zero.
    pub fn ratio(&self) -> Option<f64> {
        (self.a != 0.0).then(|| self.b / self.a)
    }
}

/// The figures compared, in display order.
pub fn rows(a: &RunSummary, b: &RunSummary) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut add = |metric, f: &dyn Fn(&RunSummary) -> f64| rows.push(Row { metric, a: f(a), b: f(b) });
    add("throughput_per_s", &|s| s.throughput_per_s);
    add("sent_rate_per_s", &|s| s.sent_rate_per_s);
    add("latency_p50_ms", &|s| s.latency.p50_ms);
    add("latency_p90_ms", &|s| s.latency.p90_ms);
    add("latency_p99_ms", &|s| s.latency.p99_ms);
    add("latency_p999_ms", &|s| s.latency.p999_ms);
    add("latency_max_ms", &|s| s.latency.max_ms);
    add("latency_mean_ms", &|s| s.latency.mean_ms);
    add("requests_ok", &|s| s.requests.ok as f64);
    add("errors", &|s| s.requests.errors as f64);
    add("unanswered", &|s| s.requests.unanswered as f64);
    add("correctness_violations", &|s| s.correctness_violations() as f64);
    add("sessions_established", &|s| s.sessions.established as f64);
    add("session_p99_ms", &|s| s.session_latency.p99_ms);
    add("memory_per_session_bytes", &|s| s.node.as_ref().and_then(|n| n.memory_per_session_bytes).unwrap_or(0.0));
    add("generator_cpu_max", &|s| s.generator.cpu_utilization_max);
    add("generator_limited", &|s| if s.generator.limited { 1.0 } else { 0.0 });
    rows
}

/// Renders the comparison table.
pub fn render(a_name: &str, b_name: &str, a: &RunSummary, b: &RunSummary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "a = {a_name} ({} {})", a.scenario, a.config.mode);
    let _ = writeln!(out, "b = {b_name} ({} {})", b.scenario, b.config.mode);
    if a.scenario != b.scenario {
        let _ = writeln!(out, "warning: different scenarios");
    }
    let _ = writeln!(out, "{:<26} {:>14} {:>14} {:>14} {:>9}", "metric", "a", "b", "b - a", "b / a");
    for r in rows(a, b) {
        let ratio = r.ratio().map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
        let _ = writeln!(out, "{:<26} {:>14.3} {:>14.3} {:>+14.3} {:>9}", r.metric, r.a, r.b, r.diff(), ratio);
    }
    out
}
