//! The run summary: every figure of a run in one serialisable struct (the JSON
//! of `--json`, the input of `compare`).

use crate::config::{LoadMode, RunConfig};
use crate::driver::connection::code_name;
use crate::node_metrics::{NodeMetrics, CONNECTIONS_OPEN, RESIDENT_BYTES, SESSIONS_ACTIVE};
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

/// Node readings from `/metrics`: before the ramp and while the sessions are held.
#[derive(Debug, Clone, Default)]
pub struct NodeReadings {
    pub before: Option<NodeMetrics>,
    pub held: Option<NodeMetrics>,
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
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GeneratorHealth {
    /// True when the generator, not the node, may have limited the result.
    pub limited: bool,
    pub reasons: Vec<String>,
    pub lag_threshold_ms: f64,
    pub cpu_threshold: f64,
    /// Sends behind their schedule for the generator's own reasons.
    pub send_lag_ms: LatencySummary,
    /// Busy fraction of each thread over the measured window.
    pub thread_cpu_utilization: Vec<f64>,
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
    pub request_latency: LatencySummary,
    pub session_latency: LatencySummary,
    pub sessions: SessionCounts,
    pub node: Option<NodeSummary>,
    pub scenario_counters: BTreeMap<String, u64>,
    pub generator: GeneratorHealth,
    pub interval_s: f64,
    pub intervals: Vec<IntervalSummary>,
    pub warnings: Vec<String>,
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

fn node_summary(node: &NodeReadings) -> Option<NodeSummary> {
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
    };
    if let (Some(r0), Some(r1), Some(s0), Some(s1)) =
        (n.rss_bytes_before, n.rss_bytes_held, n.sessions_before, n.sessions_held)
    {
        if s1 - s0 >= MEMORY_PER_SESSION_SESSIONS_MIN {
            n.memory_per_session_bytes = Some((r1 - r0) / (s1 - s0));
        }
    }
    Some(n)
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
        (LoadShape::Requests, LoadMode::OpenLoop { rate_per_s }) => (Some(rate_per_s), None),
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
    let mut reasons = Vec::new();
    if send_lag.count > 0 && send_lag.p99_ms > lag_threshold_ms {
        reasons.push(format!(
            "sends fell behind schedule: p99 lag {:.2} ms > {:.2} ms (max {:.2} ms)",
            send_lag.p99_ms, lag_threshold_ms, send_lag.max_ms
        ));
    }
    // In closed loop there is no schedule to fall behind; a saturated core
    // (whoever saturates it) is the evidence that the generator held back.
    if matches!(cfg.mode, LoadMode::ClosedLoop { .. }) && info.load_shape == LoadShape::Requests {
        for ((cpu, _), busy) in m.thread_utilization.iter().zip(&m.core_busy) {
            if let Some(b) = busy.filter(|b| *b > cfg.cpu_saturation_threshold) {
                reasons.push(format!(
                    "cpu {cpu} running a generator thread was {:.0}% busy (all tasks, softirq, steal) > {:.0}%",
                    b * 100.0,
                    cfg.cpu_saturation_threshold * 100.0
                ));
            }
        }
    }
    for (cpu, u) in &m.thread_utilization {
        if *u > cfg.cpu_saturation_threshold {
            let cpu = if *cpu == usize::MAX { "unpinned".to_owned() } else { format!("cpu {cpu}") };
            reasons.push(format!(
                "generator thread on {cpu} busy {:.0}% > {:.0}%",
                u * 100.0,
                cfg.cpu_saturation_threshold * 100.0
            ));
        }
    }

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
            connections: cfg.connections,
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
        session_latency,
        sessions: SessionCounts {
            target: cfg.connections,
            attempted: c.sessions_attempted,
            established: c.sessions_established,
            failures: c.session_failures.clone(),
            lost: c.connections_lost,
            closings_by_code: c.closings_by_code.iter().map(|(k, v)| (code_name(*k), *v)).collect(),
        },
        node: node_summary(node),
        scenario_counters: info
            .counter_names
            .iter()
            .zip(&m.scenario_counters)
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect(),
        generator: GeneratorHealth {
            limited: !reasons.is_empty(),
            reasons,
            lag_threshold_ms,
            cpu_threshold: cfg.cpu_saturation_threshold,
            send_lag_ms: send_lag,
            thread_cpu_utilization: utilization,
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
    }
}
