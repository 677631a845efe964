//! `redrain-loadgen merge a.json b.json ...`: one summary of a run driven by
//! several generator processes. Histograms are added bucket by bucket (never
//! percentiles averaged), so the merged percentiles are those of one histogram
//! of all samples; counts, rates and counters are summed.
//!
//! The processes are assumed to have measured the same window (`--processes`
//! starts them on one shared load start); the node was read by each of them,
//! so its CPU over the window is the mean of their readings, divided by all
//! the requests answered.

use super::compare::{self, CompareError};
use super::summary::{
    add_counts, histogram_counts, IntervalSummary, LatencySummary, NodeSummary, RunHistograms, RunSummary,
};
use crate::stats::{new_interval_histogram, new_latency_histogram};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::path::PathBuf;
use thiserror::Error;

/// Most summaries one merge takes.
pub const MERGE_INPUTS_MAX: usize = 1024;

#[derive(Debug, Error)]
pub enum MergeError {
    #[error(transparent)]
    Load(#[from] CompareError),
    #[error("nothing to merge")]
    Empty,
    #[error("at most {MERGE_INPUTS_MAX} summaries merge at once")]
    TooMany,
    #[error("{0}: written without histograms (by a loadgen older than `merge`); cannot merge exactly")]
    NoHistograms(String),
    #[error("{path}: scenario {found:?} / mode {mode:?} differs from the first summary's")]
    Mismatch { path: String, found: String, mode: String },
}

fn latency_of(counts: &[(u64, u64)]) -> (Histogram<u64>, LatencySummary) {
    let mut h = new_latency_histogram();
    add_counts(&mut h, counts);
    let l = LatencySummary::of(&h);
    (h, l)
}

fn add_maps(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_insert(0) += v;
    }
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Merges summaries already loaded (named for error messages).
pub fn merge(inputs: &[(String, RunSummary)]) -> Result<RunSummary, MergeError> {
    let ((_, first), rest) = inputs.split_first().ok_or(MergeError::Empty)?;
    if inputs.len() > MERGE_INPUTS_MAX {
        return Err(MergeError::TooMany);
    }
    for (path, s) in inputs {
        if s.histograms.is_none() {
            return Err(MergeError::NoHistograms(path.clone()));
        }
        if s.scenario != first.scenario || s.config.mode != first.config.mode {
            return Err(MergeError::Mismatch {
                path: path.clone(),
                found: s.scenario.clone(),
                mode: s.config.mode.clone(),
            });
        }
    }
    let hists = |f: fn(&RunHistograms) -> &Vec<(u64, u64)>| -> Vec<(u64, u64)> {
        inputs.iter().flat_map(|(_, s)| f(s.histograms.as_ref().expect("checked")).iter().copied()).collect()
    };
    let (request_h, request_latency) = latency_of(&hists(|h| &h.request_latency_us));
    let (service_h, service_time) = latency_of(&hists(|h| &h.service_time_us));
    let (session_h, session_latency) = latency_of(&hists(|h| &h.session_latency_us));
    let (lag_h, send_lag) = latency_of(&hists(|h| &h.send_lag_us));

    let mut out = first.clone();
    for (_, s) in rest {
        let (c, o) = (&mut out.config, &s.config);
        c.connections += o.connections;
        c.threads += o.threads;
        c.offered_rate_per_s = c.offered_rate_per_s.zip(o.offered_rate_per_s).map(|(a, b)| a + b);
        c.connect_rate_per_s = c.connect_rate_per_s.zip(o.connect_rate_per_s).map(|(a, b)| a + b);
        c.fd_limit = c.fd_limit.min(o.fd_limit);
        let (r, q) = (&mut out.requests, &s.requests);
        r.sent += q.sent;
        r.warmup_sent += q.warmup_sent;
        r.matched += q.matched;
        r.ok += q.ok;
        r.check_failures += q.check_failures;
        r.errors += q.errors;
        r.malformed += q.malformed;
        r.unanswered += q.unanswered;
        r.unexpected += q.unexpected;
        r.duplicated += q.duplicated;
        r.framing_errors += q.framing_errors;
        r.other_pushes += q.other_pushes;
        add_maps(&mut out.errors_by_code, &s.errors_by_code);
        let (se, so) = (&mut out.sessions, &s.sessions);
        se.target += so.target;
        se.attempted += so.attempted;
        se.established += so.established;
        se.lost += so.lost;
        add_maps(&mut se.failures, &so.failures);
        add_maps(&mut se.closings_by_code, &so.closings_by_code);
        add_maps(&mut out.scenario_counters, &s.scenario_counters);
        out.started_at_unix_ms = out.started_at_unix_ms.min(s.started_at_unix_ms);
        out.measured_s = out.measured_s.max(s.measured_s);
        let (g, h) = (&mut out.generator, &s.generator);
        g.limited |= h.limited;
        g.thread_cpu_utilization.extend(&h.thread_cpu_utilization);
        g.thread_spin_fraction.extend(&h.thread_spin_fraction);
        g.thread_cpus.extend(&h.thread_cpus);
        g.core_busy.extend(&h.core_busy);
        g.cpu_utilization_max = g.cpu_utilization_max.max(h.cpu_utilization_max);
        g.process_cpu_s += h.process_cpu_s;
        out.warnings.extend(s.warnings.iter().cloned());
    }
    // Reasons and rules, each prefixed with the process it came from.
    out.generator.reasons.clear();
    out.generator.rules_fired.clear();
    for (i, (_, s)) in inputs.iter().enumerate() {
        for (rule, reason) in s.generator.rules_fired.iter().zip(&s.generator.reasons) {
            out.generator.rules_fired.push(rule.clone());
            out.generator.reasons.push(format!("process {i}: {reason}"));
        }
    }
    out.generator.send_lag_ms = send_lag;
    let measured_s = out.measured_s.max(1e-9);
    out.throughput_per_s = out.requests.ok as f64 / measured_s;
    out.sent_rate_per_s = out.requests.sent as f64 / measured_s;
    out.latency = if out.headline == "sessions" { session_latency.clone() } else { request_latency.clone() };
    out.request_latency = request_latency;
    out.service_time = service_time;
    out.session_latency = session_latency;
    out.node = merge_node(inputs, out.requests.matched);
    out.intervals = merge_intervals(inputs, out.interval_s);
    out.histograms = Some(RunHistograms {
        request_latency_us: histogram_counts(&request_h),
        service_time_us: histogram_counts(&service_h),
        session_latency_us: histogram_counts(&session_h),
        send_lag_us: histogram_counts(&lag_h),
        interval_latency_us: inputs
            .iter()
            .map(|(_, s)| s.histograms.as_ref().expect("checked").interval_latency_us.len())
            .max()
            .map(|n| (0..n).map(|i| histogram_counts(&interval_histogram(inputs, i))).collect())
            .unwrap_or_default(),
    });
    Ok(out)
}

fn interval_histogram(inputs: &[(String, RunSummary)], i: usize) -> Histogram<u32> {
    let mut h = new_interval_histogram();
    for (_, s) in inputs {
        if let Some(c) = s.histograms.as_ref().and_then(|h| h.interval_latency_us.get(i)) {
            add_counts(&mut h, c);
        }
    }
    h
}

fn merge_intervals(inputs: &[(String, RunSummary)], interval_s: f64) -> Vec<IntervalSummary> {
    let n = inputs.iter().map(|(_, s)| s.intervals.len()).max().unwrap_or(0);
    (0..n)
        .map(|i| {
            let rows: Vec<&IntervalSummary> = inputs.iter().filter_map(|(_, s)| s.intervals.get(i)).collect();
            let h = interval_histogram(inputs, i);
            let ms = |q: f64| if h.is_empty() { 0.0 } else { h.value_at_quantile(q) as f64 / 1000.0 };
            IntervalSummary {
                start_s: i as f64 * interval_s,
                ok: rows.iter().map(|r| r.ok).sum(),
                errors: rows.iter().map(|r| r.errors).sum(),
                throughput_per_s: rows.iter().map(|r| r.throughput_per_s).sum(),
                p50_ms: ms(0.5),
                p99_ms: ms(0.99),
                max_ms: if h.is_empty() { 0.0 } else { h.max() as f64 / 1000.0 },
            }
        })
        .collect()
}

fn merge_node(inputs: &[(String, RunSummary)], matched: u64) -> Option<NodeSummary> {
    let nodes: Vec<&NodeSummary> = inputs.iter().filter_map(|(_, s)| s.node.as_ref()).collect();
    let first = (*nodes.first()?).clone();
    let mut n = first;
    n.sessions_held = nodes.iter().filter_map(|n| n.sessions_held).reduce(f64::max);
    n.rss_bytes_held = nodes.iter().filter_map(|n| n.rss_bytes_held).reduce(f64::max);
    n.cpu_s_window = mean(nodes.iter().filter_map(|n| n.cpu_s_window));
    n.cpu_cores_busy = mean(nodes.iter().filter_map(|n| n.cpu_cores_busy));
    n.node_cpu_us_per_request = n.cpu_s_window.filter(|_| matched > 0).map(|s| s * 1e6 / matched as f64);
    let mut busy: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for node in &nodes {
        for (k, v) in &node.core_busy {
            busy.entry(k.clone()).or_default().push(*v);
        }
    }
    n.core_busy = busy.into_iter().filter_map(|(k, v)| Some((k, mean(v.into_iter())?))).collect();
    Some(n)
}

/// Loads and merges the summaries at `paths`.
pub fn merge_files(paths: &[PathBuf]) -> Result<RunSummary, MergeError> {
    if paths.len() > MERGE_INPUTS_MAX {
        return Err(MergeError::TooMany);
    }
    let inputs = paths
        .iter()
        .map(|p| Ok((p.display().to_string(), compare::load(p)?)))
        .collect::<Result<Vec<_>, CompareError>>()?;
    merge(&inputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LoadMode, RunConfig};
    use crate::report::summary::{build_summary, NodeReadings, ScenarioInfo};
    use crate::scenario::{Headline, LoadShape};
    use crate::stats::{self, ThreadStats};

    fn info() -> ScenarioInfo {
        ScenarioInfo {
            name: "ping",
            counter_names: &["echo_mismatches"],
            headline: Headline::Requests,
            load_shape: LoadShape::Requests,
        }
    }

    fn cfg() -> RunConfig {
        let mut c = RunConfig::with_defaults("127.0.0.1:7000".parse().unwrap(), vec![1; 32]);
        c.mode = LoadMode::OpenLoop { rate_per_s: 1000.0 };
        c.duration = std::time::Duration::from_secs(2);
        c.interval = std::time::Duration::from_secs(1);
        c
    }

    /// A thread's stats with `n` samples drawn from a skewed spread seeded by `seed`.
    fn samples(seed: u64, n: u64, scale_us: u64) -> ThreadStats {
        let mut t = ThreadStats::new(1, 2, 0);
        let mut x = seed;
        for i in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let latency = 1 + (x % 1000) * (x % 1000) * scale_us / 1000;
            t.record_ok(latency + 7, latency, (i % 2) as usize);
            t.send_lag_us.saturating_record(x % 50);
            t.counters.requests_sent += 1;
            t.counters.responses_matched += 1;
        }
        t.scenario_counters[0] = seed % 3;
        t
    }

    fn summary_of(threads: &[ThreadStats]) -> RunSummary {
        let m = stats::merge(threads);
        build_summary(&cfg(), &info(), &m, &NodeReadings::default(), 0, 0, 1024, Vec::new())
    }

    #[test]
    fn merge_of_two_runs_equals_one_histogram_of_all_samples() {
        let (a, b) = (samples(0x1234_5678, 20_000, 3), samples(0x0bad_cafe, 7_000, 40));
        let run_a = summary_of(std::slice::from_ref(&a));
        let run_b = summary_of(std::slice::from_ref(&b));
        // Through JSON, as `merge` reads them from disk.
        let through_json =
            |s: &RunSummary| serde_json::from_str::<RunSummary>(&serde_json::to_string(s).unwrap()).unwrap();
        let merged = merge(&[("a".into(), through_json(&run_a)), ("b".into(), through_json(&run_b))]).unwrap();
        let one = summary_of(&[a, b]);

        assert_eq!(merged.requests.ok, 27_000);
        assert_eq!(merged.requests, one.requests);
        assert_eq!(merged.request_latency, one.request_latency, "percentiles of one histogram of all samples");
        assert_eq!(merged.service_time, one.service_time);
        assert_eq!(merged.generator.send_lag_ms, one.generator.send_lag_ms);
        assert_eq!(merged.latency, one.latency);
        assert_eq!(merged.scenario_counters, one.scenario_counters);
        assert_eq!(merged.histograms, one.histograms, "bucket counts identical");
        for (m, o) in merged.intervals.iter().zip(&one.intervals) {
            assert_eq!((m.ok, m.p50_ms, m.p99_ms, m.max_ms), (o.ok, o.p50_ms, o.p99_ms, o.max_ms));
        }
        assert_eq!(merged.config.connections, run_a.config.connections + run_b.config.connections);
        // The merged p99 is not the mean of the two p99s (what averaging would give).
        let averaged = (run_a.request_latency.p99_ms + run_b.request_latency.p99_ms) / 2.0;
        assert_ne!(merged.request_latency.p99_ms, averaged);
    }

    #[test]
    fn summaries_without_histograms_or_of_other_scenarios_are_refused() {
        let s = summary_of(&[samples(1, 10, 1)]);
        let mut old = s.clone();
        old.histograms = None;
        assert!(
            matches!(merge(&[("a".into(), s.clone()), ("old".into(), old)]), Err(MergeError::NoHistograms(p)) if p == "old")
        );
        let mut other = s.clone();
        other.scenario = "connect".into();
        assert!(matches!(merge(&[("a".into(), s), ("b".into(), other)]), Err(MergeError::Mismatch { .. })));
        assert!(matches!(merge(&[]), Err(MergeError::Empty)));
    }
}
