//! The run summary: every figure of a run in one serialisable struct (the JSON
//! of `--json`, the input of `compare`).

use crate::config::{LoadMode, RunConfig};
use crate::driver::connection::code_name;
use crate::floor::FloorSummary;
use crate::node_metrics::{NodeMetrics, CONNECTIONS_OPEN, PROCESS_CPU_SECONDS, RESIDENT_BYTES, SESSIONS_ACTIVE};
use crate::scenario::{Headline, LoadShape};
use crate::stats::MergedStats;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Fewest sessions gained for a memory-per-session figure (below, RSS noise
/// of a few pages dominates).
pub const MEMORY_PER_SESSION_SESSIONS_MIN: f64 = 100.0;

/// Format identifier written into every JSON summary.
pub const SCHEMA: &str = "redrain-loadgen/1";

/// Static facts about the scenario of a run.
#[derive(Debug, Clone)]
pub struct ScenarioInfo {
    pub name: &'static str,
    pub counter_names: &'static [&'static str],
    pub headline: Headline,
    pub load_shape: LoadShape,
}

/// A `/metrics` reading and when it was taken (ns since the run base).
#[derive(Debug, Clone)]
pub struct TimedReading {
    pub metrics: NodeMetrics,
    pub at_ns: u64,
}

/// Node readings from `/metrics`: before the ramp, while the sessions are held,
/// and at both edges of the measured window (for the node's CPU in it).
#[derive(Debug, Clone, Default)]
pub struct NodeReadings {
    pub before: Option<NodeMetrics>,
    pub held: Option<NodeMetrics>,
    pub window_start: Option<TimedReading>,
    pub window_end: Option<TimedReading>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigSummary {
    pub target: String,
    pub connections: u32,
    pub threads: usize,
    pub mode: String,
    pub offered_rate_per_s: Option<f64>,
    pub in_flight_per_connection: Option<u32>,
    pub pipeline_depth: u32,
    pub connect_rate_per_s: Option<f64>,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub source_ips: u32,
    pub fd_limit: u64,
    /// The generator threads' runtime (absent in summaries written before it was recorded).
    #[serde(default)]
    pub runtime: String,
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    pub stddev_ms: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
            stddev_ms: h.stdev() / 1000.0,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestCounts {
    pub sent: u64,
    pub warmup_sent: u64,
    pub matched: u64,
    pub ok: u64,
    pub check_failures: u64,
    pub errors: u64,
    pub malformed: u64,
    pub unanswered: u64,
    pub unexpected: u64,
    pub duplicated: u64,
    pub framing_errors: u64,
    pub other_pushes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionCounts {
    pub target: u32,
    pub attempted: u64,
    pub established: u64,
    pub failures: BTreeMap<String, u64>,
    pub lost: u64,
    pub closings_by_code: BTreeMap<String, u64>,
    /// Sessions that ran a TLS handshake (`--tls`), and how many resumed a ticket.
    #[serde(default)]
    pub tls_handshakes: u64,
    #[serde(default)]
    pub tls_resumed: u64,
    /// From the ramp's start to the last session established.
    #[serde(default)]
    pub ramp_s: f64,
    /// Sessions established per second over the ramp (handshakes/s with --tls).
    #[serde(default)]
    pub established_per_s: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeSummary {
    pub rss_bytes_before: Option<f64>,
    pub rss_bytes_held: Option<f64>,
    pub sessions_before: Option<f64>,
    pub sessions_held: Option<f64>,
    pub connections_open_held: Option<f64>,
    /// (RSS held - RSS before) / (sessions held - sessions before), when at
    /// least [`MEMORY_PER_SESSION_SESSIONS_MIN`] sessions were gained.
    pub memory_per_session_bytes: Option<f64>,
    /// Node process CPU seconds (user + system) during the measured window.
    #[serde(default)]
    pub cpu_s_window: Option<f64>,
    /// Node process CPU per answered measured request, in microseconds: the
    /// figure to compare across runs and servers (one generator core cannot
    /// saturate one node core on a 2-core box, so throughput alone cannot).
    #[serde(default)]
    pub node_cpu_us_per_request: Option<f64>,
    /// Node process CPU from before the ramp to the window's start (ramp and
    /// warm-up) per session established: what a connect + handshake + Hello +
    /// Login costs the node (with --resume, both handshakes of each connection).
    #[serde(default)]
    pub cpu_us_per_session_ramp: Option<f64>,
    /// Node process CPU over the window, in cores (1.0 = one core fully busy).
    #[serde(default)]
    pub cpu_cores_busy: Option<f64>,
    /// Busy fraction of each node executor thread (`redrain-core-N`) over the window.
    #[serde(default)]
    pub core_busy: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GeneratorHealth {
    /// True when the generator, not the node, may have limited the result.
    pub limited: bool,
    /// Which rules fired ([`LimitRule::id`]), in the order of `reasons`.
    #[serde(default)]
    pub rules_fired: Vec<String>,
    pub reasons: Vec<String>,
    pub lag_threshold_ms: f64,
    /// The send-lag rule's share: limited when send lag p99 > this x latency p50.
    #[serde(default)]
    pub lag_share_of_latency_max: f64,
    pub cpu_threshold: f64,
    /// Sends behind their schedule for the generator's own reasons.
    pub send_lag_ms: LatencySummary,
    /// Busy fraction of each thread over the measured window (spinning towards
    /// due sends excluded: it is waiting, not load).
    pub thread_cpu_utilization: Vec<f64>,
    /// Fraction of the window each thread spun towards due sends.
    #[serde(default)]
    pub thread_spin_fraction: Vec<f64>,
    pub thread_cpus: Vec<i64>,
    pub cpu_utilization_max: f64,
    /// Busy fraction of each generator thread's pinned CPU over the window,
    /// counting other processes, softirq (loopback TCP) and steal too.
    pub core_busy: Vec<Option<f64>>,
    /// CPU seconds of the whole loadgen process, ramp and drain included.
    pub process_cpu_s: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IntervalSummary {
    pub start_s: f64,
    pub ok: u64,
    pub errors: u64,
    pub throughput_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub schema: String,
    pub scenario: String,
    /// `requests` or `sessions`: which latency is the headline.
    pub headline: String,
    pub started_at_unix_ms: u64,
    pub config: ConfigSummary,
    pub measured_s: f64,
    pub requests: RequestCounts,
    /// Accepted responses per second of the measured window.
    pub throughput_per_s: f64,
    /// Measured requests sent per second.
    pub sent_rate_per_s: f64,
    pub errors_by_code: BTreeMap<String, u64>,
    pub latency: LatencySummary,
    /// Intended send to response (coordinated omission corrected).
    pub request_latency: LatencySummary,
    /// Actual send to response (service time); request_latency minus this is
    /// the generator's and the schedule's share.
    #[serde(default)]
    pub service_time: LatencySummary,
    pub session_latency: LatencySummary,
    pub sessions: SessionCounts,
    pub node: Option<NodeSummary>,
    pub scenario_counters: BTreeMap<String, u64>,
    /// The scenario's own latencies (chat: send to notify, send to sync), from this
    /// process only (`merge` keeps the first input's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scenario_latency: BTreeMap<String, LatencySummary>,
    pub generator: GeneratorHealth,
    pub interval_s: f64,
    pub intervals: Vec<IntervalSummary>,
    pub warnings: Vec<String>,
    /// The generator's floor on this machine for this runtime (`redrain-loadgen floor`).
    #[serde(default)]
    pub floor: Option<FloorSummary>,
    /// The histograms behind the percentiles, exactly (for `merge`).
    #[serde(default)]
    pub histograms: Option<RunHistograms>,
}

/// A histogram as (value, count) pairs of its recorded buckets, in microseconds:
/// recording each pair back into a histogram of the same bounds rebuilds it exactly.
pub type HistogramCounts = Vec<(u64, u64)>;

/// Every histogram of a run, so that runs of several processes merge exactly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunHistograms {
    pub request_latency_us: HistogramCounts,
    pub service_time_us: HistogramCounts,
    pub session_latency_us: HistogramCounts,
    pub send_lag_us: HistogramCounts,
    /// Per over-time interval (2 significant digits).
    pub interval_latency_us: Vec<HistogramCounts>,
}

/// The recorded buckets of `h` as (highest equivalent value, count) pairs.
pub fn histogram_counts<T: hdrhistogram::Counter>(h: &Histogram<T>) -> HistogramCounts {
    h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value().as_u64())).collect()
}

/// Adds (value, count) pairs into `h` (values beyond its range saturate).
pub fn add_counts<T: hdrhistogram::Counter>(h: &mut Histogram<T>, counts: &[(u64, u64)]) {
    for (value, count) in counts {
        let Some(count) = T::from_u64(*count) else { continue };
        if h.record_n(*value, count).is_err() {
            let _ = h.record_n(h.high(), count);
        }
    }
}

impl RunSummary {
    /// Client-side checks that must all be zero in a correct run.
    pub fn correctness_violations(&self) -> u64 {
        self.requests.unexpected
            + self.requests.duplicated
            + self.requests.malformed
            + self.requests.framing_errors
            + self.requests.check_failures
    }
}

/// The node's CPU figures over the window between two timed readings.
pub fn node_cpu(n: &mut NodeSummary, start: &TimedReading, end: &TimedReading, requests_answered: u64) {
    let wall_s = end.at_ns.saturating_sub(start.at_ns) as f64 / 1e9;
    let cpu = |r: &TimedReading| r.metrics.sum(PROCESS_CPU_SECONDS);
    if let (Some(c0), Some(c1)) = (cpu(start), cpu(end)) {
        let cpu_s = (c1 - c0).max(0.0);
        n.cpu_s_window = Some(cpu_s);
        if wall_s > 0.0 {
            n.cpu_cores_busy = Some(cpu_s / wall_s);
        }
        if requests_answered > 0 {
            n.node_cpu_us_per_request = Some(cpu_s * 1e6 / requests_answered as f64);
        }
    }
    if wall_s > 0.0 {
        let before: BTreeMap<String, f64> = start.metrics.core_thread_cpu_seconds().into_iter().collect();
        for (name, s1) in end.metrics.core_thread_cpu_seconds() {
            if let Some(s0) = before.get(&name) {
                n.core_busy.insert(name, ((s1 - s0) / wall_s).max(0.0));
            }
        }
    }
}

fn node_summary(node: &NodeReadings, requests_answered: u64, sessions_established: u64) -> Option<NodeSummary> {
    let get = |m: &Option<NodeMetrics>, name: &str| m.as_ref().and_then(|m| m.sum(name));
    if node.before.is_none() && node.held.is_none() {
        return None;
    }
    let mut n = NodeSummary {
        rss_bytes_before: get(&node.before, RESIDENT_BYTES),
        rss_bytes_held: get(&node.held, RESIDENT_BYTES),
        sessions_before: get(&node.before, SESSIONS_ACTIVE),
        sessions_held: get(&node.held, SESSIONS_ACTIVE),
        connections_open_held: get(&node.held, CONNECTIONS_OPEN),
        memory_per_session_bytes: None,
        ..NodeSummary::default()
    };
    if let (Some(start), Some(end)) = (&node.window_start, &node.window_end) {
        node_cpu(&mut n, start, end, requests_answered);
    }
    if let (Some(c0), Some(c1)) = (
        get(&node.before, PROCESS_CPU_SECONDS),
        node.window_start.as_ref().and_then(|w| w.metrics.sum(PROCESS_CPU_SECONDS)),
    ) {
        if sessions_established > 0 {
            n.cpu_us_per_session_ramp = Some((c1 - c0).max(0.0) * 1e6 / sessions_established as f64);
        }
    }
    if let (Some(r0), Some(r1), Some(s0), Some(s1)) =
        (n.rss_bytes_before, n.rss_bytes_held, n.sessions_before, n.sessions_held)
    {
        if s1 - s0 >= MEMORY_PER_SESSION_SESSIONS_MIN {
            n.memory_per_session_bytes = Some((r1 - r0) / (s1 - s0));
        }
    }
    Some(n)
}

/// The rules that flag a run generator-limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitRule {
    /// Send lag p99 above `--lag-threshold`.
    SendLagThreshold,
    /// Send lag p99 above `--lag-share` of the request latency p50: the
    /// generator's own lateness is a visible part of what it reports.
    SendLagShareOfLatency,
    /// A generator thread busier than `--cpu-threshold`.
    ThreadCpu,
    /// Closed loop: the core a generator thread is pinned to busier than
    /// `--cpu-threshold` (softirq and other processes included).
    CoreBusy,
}

impl LimitRule {
    /// Stable name in JSON `generator.rules_fired`.
    pub fn id(&self) -> &'static str {
        match self {
            LimitRule::SendLagThreshold => "send_lag_threshold",
            LimitRule::SendLagShareOfLatency => "send_lag_share_of_latency",
            LimitRule::ThreadCpu => "thread_cpu",
            LimitRule::CoreBusy => "core_busy",
        }
    }
}

/// A rule that fired and why, in words.
#[derive(Debug, Clone, PartialEq)]
pub struct Fired {
    pub rule: LimitRule,
    pub reason: String,
}

/// What the generator-limited rules look at.
#[derive(Debug, Clone)]
pub struct LimitInputs<'a> {
    pub send_lag: &'a LatencySummary,
    pub request_latency: &'a LatencySummary,
    pub lag_threshold_ms: f64,
    pub lag_share_of_latency_max: f64,
    pub cpu_threshold: f64,
    /// (cpu, busy fraction) of each generator thread; cpu `usize::MAX` = unpinned.
    pub thread_utilization: &'a [(usize, f64)],
    pub core_busy: &'a [Option<f64>],
    pub closed_loop: bool,
}

/// Evaluates every generator-limited rule; empty when the run is trustworthy.
pub fn limited_rules(i: &LimitInputs<'_>) -> Vec<Fired> {
    let mut fired = Vec::new();
    let lag = i.send_lag;
    if lag.count > 0 && lag.p99_ms > i.lag_threshold_ms {
        fired.push(Fired {
            rule: LimitRule::SendLagThreshold,
            reason: format!(
                "sends fell behind schedule: p99 lag {:.3} ms > {:.3} ms (max {:.3} ms)",
                lag.p99_ms, i.lag_threshold_ms, lag.max_ms
            ),
        });
    }
    let share_limit_ms = i.request_latency.p50_ms * i.lag_share_of_latency_max;
    if lag.count > 0 && i.request_latency.count > 0 && lag.p99_ms > share_limit_ms {
        fired.push(Fired {
            rule: LimitRule::SendLagShareOfLatency,
            reason: format!(
                "send lag p99 {:.3} ms > {:.0}% of latency p50 {:.3} ms",
                lag.p99_ms,
                i.lag_share_of_latency_max * 100.0,
                i.request_latency.p50_ms
            ),
        });
    }
    // In closed loop there is no schedule to fall behind; a saturated core
    // (whoever saturates it) is the evidence that the generator held back.
    if i.closed_loop {
        for ((cpu, _), busy) in i.thread_utilization.iter().zip(i.core_busy) {
            if let Some(b) = busy.filter(|b| *b > i.cpu_threshold) {
                fired.push(Fired {
                    rule: LimitRule::CoreBusy,
                    reason: format!(
                        "cpu {cpu} running a generator thread was {:.0}% busy (all tasks, softirq, steal) > {:.0}%",
                        b * 100.0,
                        i.cpu_threshold * 100.0
                    ),
                });
            }
        }
    }
    for (cpu, u) in i.thread_utilization {
        if *u > i.cpu_threshold {
            let cpu = if *cpu == usize::MAX { "unpinned".to_owned() } else { format!("cpu {cpu}") };
            fired.push(Fired {
                rule: LimitRule::ThreadCpu,
                reason: format!("generator thread on {cpu} busy {:.0}% > {:.0}%", u * 100.0, i.cpu_threshold * 100.0),
            });
        }
    }
    fired
}

#[allow(clippy::too_many_arguments)]
pub fn build_summary(
    cfg: &RunConfig,
    info: &ScenarioInfo,
    m: &MergedStats,
    node: &NodeReadings,
    started_at_unix_ms: u64,
    process_cpu_ns: u64,
    fd_limit: u64,
    warnings: Vec<String>,
) -> RunSummary {
    let c = &m.counters;
    let measured_s = cfg.duration.as_secs_f64();
    let (offered, in_flight) = match (info.load_shape, cfg.mode) {
        // This process's share of the run's schedule (all of it with one process).
        (LoadShape::Requests, LoadMode::OpenLoop { rate_per_s }) => {
            (Some(rate_per_s * f64::from(cfg.local_connection_count()) / f64::from(cfg.connections)), None)
        }
        (LoadShape::Requests, LoadMode::ClosedLoop { in_flight_per_connection }) => {
            (None, Some(in_flight_per_connection))
        }
        _ => (None, None),
    };
    let mode = match info.load_shape {
        LoadShape::Heartbeat => "heartbeat",
        LoadShape::Requests => cfg.mode.name(),
    };
    let request_latency = LatencySummary::of(&m.request_latency_us);
    let session_latency = LatencySummary::of(&m.session_latency_us);
    let latency = match info.headline {
        Headline::Requests => request_latency.clone(),
        Headline::Sessions => session_latency.clone(),
    };

    let send_lag = LatencySummary::of(&m.send_lag_us);
    let lag_threshold_ms = cfg.lag_threshold.as_secs_f64() * 1e3;
    let utilization: Vec<f64> = m.thread_utilization.iter().map(|(_, u)| *u).collect();
    let cpu_max = utilization.iter().copied().fold(0.0, f64::max);
    let closed_loop = matches!(cfg.mode, LoadMode::ClosedLoop { .. }) && info.load_shape == LoadShape::Requests;
    let fired = limited_rules(&LimitInputs {
        send_lag: &send_lag,
        request_latency: &request_latency,
        lag_threshold_ms,
        lag_share_of_latency_max: cfg.lag_share_of_latency_max,
        cpu_threshold: cfg.cpu_saturation_threshold,
        thread_utilization: &m.thread_utilization,
        core_busy: &m.core_busy,
        closed_loop,
    });
    let (rules, reasons): (Vec<String>, Vec<String>) =
        fired.into_iter().map(|f| (f.rule.id().to_owned(), f.reason)).unzip();

    let start_ms = |i: usize| i as f64 * cfg.interval.as_secs_f64();
    let intervals = m
        .intervals
        .iter()
        .enumerate()
        .map(|(i, iv)| {
            let width_s = (measured_s - start_ms(i)).min(cfg.interval.as_secs_f64()).max(1e-9);
            let h = &iv.latency_us;
            let ms = |q: f64| if h.is_empty() { 0.0 } else { h.value_at_quantile(q) as f64 / 1000.0 };
            IntervalSummary {
                start_s: start_ms(i),
                ok: iv.completed_ok,
                errors: iv.errors,
                throughput_per_s: iv.completed_ok as f64 / width_s,
                p50_ms: ms(0.5),
                p99_ms: ms(0.99),
                max_ms: if h.is_empty() { 0.0 } else { h.max() as f64 / 1000.0 },
            }
        })
        .collect();

    RunSummary {
        schema: SCHEMA.to_owned(),
        scenario: info.name.to_owned(),
        headline: match info.headline {
            Headline::Requests => "requests".into(),
            Headline::Sessions => "sessions".into(),
        },
        started_at_unix_ms,
        config: ConfigSummary {
            target: cfg.target.to_string(),
            connections: cfg.local_connection_count(),
            threads: cfg.threads,
            mode: mode.to_owned(),
            offered_rate_per_s: offered,
            in_flight_per_connection: in_flight,
            pipeline_depth: cfg.pipeline_depth,
            connect_rate_per_s: cfg.connect_rate_per_s,
            duration_s: measured_s,
            warmup_s: cfg.warmup.as_secs_f64(),
            source_ips: cfg.source_ips,
            fd_limit,
            runtime: cfg.runtime.name().to_owned(),
        },
        measured_s,
        requests: RequestCounts {
            sent: c.requests_sent,
            warmup_sent: c.warmup_requests_sent,
            matched: c.responses_matched,
            ok: c.responses_ok,
            check_failures: c.check_failures,
            errors: c.errors_total(),
            malformed: c.malformed_responses,
            unanswered: c.unanswered,
            unexpected: c.unexpected_responses,
            duplicated: c.duplicated_responses,
            framing_errors: c.framing_errors,
            other_pushes: c.other_pushes,
        },
        throughput_per_s: c.responses_ok as f64 / measured_s,
        sent_rate_per_s: c.requests_sent as f64 / measured_s,
        errors_by_code: c.errors_by_code.iter().map(|(k, v)| (code_name(*k), *v)).collect(),
        latency,
        request_latency,
        service_time: LatencySummary::of(&m.service_time_us),
        session_latency,
        sessions: SessionCounts {
            target: cfg.local_connection_count(),
            attempted: c.sessions_attempted,
            established: c.sessions_established,
            failures: c.session_failures.clone(),
            lost: c.connections_lost,
            closings_by_code: c.closings_by_code.iter().map(|(k, v)| (code_name(*k), *v)).collect(),
            tls_handshakes: c.tls_handshakes,
            tls_resumed: c.tls_resumed,
            ramp_s: c.ramp_ns_max as f64 / 1e9,
            established_per_s: if c.ramp_ns_max > 0 {
                c.sessions_established as f64 / (c.ramp_ns_max as f64 / 1e9)
            } else {
                0.0
            },
        },
        node: node_summary(node, c.responses_matched, c.sessions_established),
        scenario_counters: info
            .counter_names
            .iter()
            .zip(&m.scenario_counters)
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect(),
        scenario_latency: BTreeMap::new(),
        generator: GeneratorHealth {
            limited: !reasons.is_empty(),
            rules_fired: rules,
            reasons,
            lag_share_of_latency_max: cfg.lag_share_of_latency_max,
            lag_threshold_ms,
            cpu_threshold: cfg.cpu_saturation_threshold,
            send_lag_ms: send_lag,
            thread_cpu_utilization: utilization,
            thread_spin_fraction: m.thread_spin.clone(),
            thread_cpus: m
                .thread_utilization
                .iter()
                .map(|(c, _)| if *c == usize::MAX { -1 } else { *c as i64 })
                .collect(),
            cpu_utilization_max: cpu_max,
            core_busy: m.core_busy.clone(),
            process_cpu_s: process_cpu_ns as f64 / 1e9,
        },
        interval_s: cfg.interval.as_secs_f64(),
        intervals,
        warnings,
        floor: None,
        histograms: Some(RunHistograms {
            request_latency_us: histogram_counts(&m.request_latency_us),
            service_time_us: histogram_counts(&m.service_time_us),
            session_latency_us: histogram_counts(&m.session_latency_us),
            send_lag_us: histogram_counts(&m.send_lag_us),
            interval_latency_us: m.intervals.iter().map(|i| histogram_counts(&i.latency_us)).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lat(p50_ms: f64, p99_ms: f64) -> LatencySummary {
        LatencySummary { count: 1000, p50_ms, p99_ms, max_ms: p99_ms, ..Default::default() }
    }

    fn inputs<'a>(lag: &'a LatencySummary, latency: &'a LatencySummary) -> LimitInputs<'a> {
        LimitInputs {
            send_lag: lag,
            request_latency: latency,
            lag_threshold_ms: 10.0,
            lag_share_of_latency_max: 0.1,
            cpu_threshold: 0.9,
            thread_utilization: &[(1, 0.3)],
            core_busy: &[Some(0.5)],
            closed_loop: false,
        }
    }

    fn ids(f: &[Fired]) -> Vec<&'static str> {
        f.iter().map(|f| f.rule.id()).collect()
    }

    #[test]
    fn send_lag_within_a_tenth_of_latency_p50_and_idle_threads_flag_nothing() {
        let (lag, latency) = (lat(0.005, 0.009), lat(0.1, 0.3));
        assert!(limited_rules(&inputs(&lag, &latency)).is_empty());
    }

    #[test]
    fn send_lag_p99_above_a_tenth_of_latency_p50_fires_the_share_rule_only() {
        // The case of the issue: lag p99 1.57 ms against a true round trip of 0.07 ms.
        let (lag, latency) = (lat(0.77, 1.57), lat(1.3, 2.0));
        let fired = limited_rules(&inputs(&lag, &latency));
        assert_eq!(ids(&fired), vec!["send_lag_share_of_latency"]);
        assert!(fired[0].reason.contains("1.570 ms") && fired[0].reason.contains("10%"), "{}", fired[0].reason);
    }

    #[test]
    fn send_lag_above_the_absolute_threshold_fires_both_lag_rules() {
        let (lag, latency) = (lat(5.0, 12.0), lat(20.0, 40.0));
        assert_eq!(
            ids(&limited_rules(&inputs(&lag, &latency))),
            vec!["send_lag_threshold", "send_lag_share_of_latency"]
        );
    }

    #[test]
    fn a_busy_thread_fires_the_cpu_rule_and_a_busy_core_only_in_closed_loop() {
        let (lag, latency) = (LatencySummary::default(), lat(0.1, 0.2));
        let mut i = inputs(&lag, &latency);
        let busy_thread = [(1usize, 0.95)];
        let busy_core = [Some(0.97)];
        i.thread_utilization = &busy_thread;
        i.core_busy = &busy_core;
        assert_eq!(ids(&limited_rules(&i)), vec!["thread_cpu"]);
        i.closed_loop = true;
        assert_eq!(ids(&limited_rules(&i)), vec!["core_busy", "thread_cpu"]);
    }

    #[test]
    fn node_cpu_per_request_is_the_window_cpu_over_the_answered_requests() {
        let reading = |cpu: f64, core0: f64, at_ns: u64| {
            TimedReading {
            metrics: NodeMetrics::parse(&format!(
                "redrain_process_cpu_seconds_total {cpu}\nredrain_thread_cpu_seconds_total{{thread=\"redrain-core-0\"}} {core0}\n"
            )),
            at_ns,
        }
        };
        let mut n = NodeSummary::default();
        node_cpu(&mut n, &reading(10.0, 9.0, 1_000_000_000), &reading(12.0, 10.5, 3_000_000_000), 100_000);
        assert_eq!(n.cpu_s_window, Some(2.0));
        assert_eq!(n.node_cpu_us_per_request, Some(20.0));
        assert_eq!(n.cpu_cores_busy, Some(1.0));
        assert_eq!(n.core_busy.get("redrain-core-0"), Some(&0.75));
    }

    #[test]
    fn no_send_lag_samples_fire_no_lag_rule() {
        let (lag, latency) = (LatencySummary::default(), lat(0.01, 0.02));
        assert!(limited_rules(&inputs(&lag, &latency)).is_empty());
    }
}
