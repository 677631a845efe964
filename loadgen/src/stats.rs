//! What each generator thread records, and how threads' records merge.
//!
//! Latencies are recorded in microseconds. Only requests whose intended send
//! time falls inside the measured window count; warm-up traffic is tallied
//! separately and never reaches a histogram.

use hdrhistogram::Histogram;
use std::collections::BTreeMap;

/// Highest latency a histogram tracks (1 hour, in microseconds); larger values saturate.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Significant digits of the run-wide histograms.
pub const LATENCY_SIGFIG: u8 = 3;
/// Significant digits of the per-interval histograms (kept small: one per interval).
pub const INTERVAL_SIGFIG: u8 = 2;

pub fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGFIG).expect("static histogram bounds are valid")
}

pub fn new_interval_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, INTERVAL_SIGFIG).expect("static histogram bounds are valid")
}

/// Client-side correctness and volume counters of the measured window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub sessions_attempted: u64,
    pub sessions_established: u64,
    /// Failed attempts by reason (`connect`, `timeout`, `closed`, `refused:<code>`, ...).
    pub session_failures: BTreeMap<String, u64>,
    /// Established connections that ended before the run did.
    pub connections_lost: u64,
    /// Server pushes of `Closing`, by error code.
    pub closings_by_code: BTreeMap<u16, u64>,
    /// Requests sent whose intended time is in the measured window.
    pub requests_sent: u64,
    /// Requests sent during warm-up (not measured).
    pub warmup_requests_sent: u64,
    /// Measured requests answered by a response carrying their request id.
    pub responses_matched: u64,
    /// Matched responses the scenario accepted.
    pub responses_ok: u64,
    /// Matched non-error responses the scenario rejected.
    pub check_failures: u64,
    /// Matched `Error` responses, by code.
    pub errors_by_code: BTreeMap<u16, u64>,
    /// Responses whose body did not parse (counted, never trusted).
    pub malformed_responses: u64,
    /// Responses carrying a request id never sent on that connection.
    pub unexpected_responses: u64,
    /// Second responses to a request id already answered.
    pub duplicated_responses: u64,
    /// Server pushes other than `Closing`.
    pub other_pushes: u64,
    /// Measured requests still unanswered when their connection ended.
    pub unanswered: u64,
    /// Bytes that broke framing (the connection is dropped after one).
    pub framing_errors: u64,
    /// Established sessions that ran a TLS handshake, and how many of those resumed.
    pub tls_handshakes: u64,
    pub tls_resumed: u64,
    /// Time from the ramp's start to the last session established (the longest thread's).
    pub ramp_ns_max: u64,
}

impl Counters {
    pub fn errors_total(&self) -> u64 {
        self.errors_by_code.values().sum()
    }

    fn merge(&mut self, o: &Counters) {
        self.sessions_attempted += o.sessions_attempted;
        self.sessions_established += o.sessions_established;
        for (k, v) in &o.session_failures {
            *self.session_failures.entry(k.clone()).or_insert(0) += v;
        }
        self.connections_lost += o.connections_lost;
        for (k, v) in &o.closings_by_code {
            *self.closings_by_code.entry(*k).or_insert(0) += v;
        }
        self.requests_sent += o.requests_sent;
        self.warmup_requests_sent += o.warmup_requests_sent;
        self.responses_matched += o.responses_matched;
        self.responses_ok += o.responses_ok;
        self.check_failures += o.check_failures;
        for (k, v) in &o.errors_by_code {
            *self.errors_by_code.entry(*k).or_insert(0) += v;
        }
        self.malformed_responses += o.malformed_responses;
        self.unexpected_responses += o.unexpected_responses;
        self.duplicated_responses += o.duplicated_responses;
        self.other_pushes += o.other_pushes;
        self.unanswered += o.unanswered;
        self.framing_errors += o.framing_errors;
        self.tls_handshakes += o.tls_handshakes;
        self.tls_resumed += o.tls_resumed;
        self.ramp_ns_max = self.ramp_ns_max.max(o.ramp_ns_max);
    }
}

/// One over-time interval: completions and their latency.
#[derive(Debug, Clone)]
pub struct IntervalStats {
    pub completed_ok: u64,
    pub errors: u64,
    pub latency_us: Histogram<u32>,
}

/// Everything one generator thread measured.
#[derive(Debug, Clone)]
pub struct ThreadStats {
    pub counters: Counters,
    pub scenario_counters: Vec<u64>,
    /// Intended send time to response, for accepted responses (coordinated
    /// omission corrected: the generator's own lag is in it).
    pub request_latency_us: Histogram<u64>,
    /// Actual send to response, for accepted responses (service time: what the
    /// node and the network took, without the generator's lag or the schedule).
    pub service_time_us: Histogram<u64>,
    /// Intended connect time to `LoginOk`.
    pub session_latency_us: Histogram<u64>,
    /// How late sends left compared with when they could have left (schedule
    /// due and pipeline room available): the generator's own lag.
    pub send_lag_us: Histogram<u64>,
    pub intervals: Vec<IntervalStats>,
    /// CPU time and wall time of this thread over the measured window.
    pub cpu_ns: u64,
    pub wall_ns: u64,
    /// Wall time spent spinning towards due sends (voluntary waiting, part of `cpu_ns`).
    pub spin_ns: u64,
    /// Busy fraction of the CPU this thread is pinned to over the window
    /// (all tasks, softirq and steal; `None` when unpinned or unreadable).
    pub core_busy: Option<f64>,
    pub cpu: usize,
}

impl ThreadStats {
    pub fn new(scenario_counters: usize, intervals: usize, cpu: usize) -> Self {
        Self {
            counters: Counters::default(),
            scenario_counters: vec![0; scenario_counters],
            request_latency_us: new_latency_histogram(),
            service_time_us: new_latency_histogram(),
            session_latency_us: new_latency_histogram(),
            send_lag_us: new_latency_histogram(),
            intervals: (0..intervals.max(1))
                .map(|_| IntervalStats { completed_ok: 0, errors: 0, latency_us: new_interval_histogram() })
                .collect(),
            cpu_ns: 0,
            wall_ns: 0,
            spin_ns: 0,
            core_busy: None,
            cpu,
        }
    }

    /// Records an accepted response completed in interval `interval`:
    /// `latency_us` from the intended send, `service_us` from the actual one.
    pub fn record_ok(&mut self, latency_us: u64, service_us: u64, interval: usize) {
        self.counters.responses_ok += 1;
        self.request_latency_us.saturating_record(latency_us.max(1));
        self.service_time_us.saturating_record(service_us.max(1));
        let last = self.intervals.len() - 1;
        let slot = &mut self.intervals[interval.min(last)];
        slot.completed_ok += 1;
        slot.latency_us.saturating_record(latency_us.max(1));
    }

    pub fn record_error(&mut self, code: u16, interval: usize) {
        *self.counters.errors_by_code.entry(code).or_insert(0) += 1;
        let last = self.intervals.len() - 1;
        self.intervals[interval.min(last)].errors += 1;
    }
}

/// All threads merged.
#[derive(Debug, Clone)]
pub struct MergedStats {
    pub counters: Counters,
    pub scenario_counters: Vec<u64>,
    pub request_latency_us: Histogram<u64>,
    pub service_time_us: Histogram<u64>,
    pub session_latency_us: Histogram<u64>,
    pub send_lag_us: Histogram<u64>,
    pub intervals: Vec<IntervalStats>,
    /// (cpu, busy fraction of the measured window, spinning excluded) per thread.
    pub thread_utilization: Vec<(usize, f64)>,
    /// Fraction of the window each thread spent spinning towards due sends.
    pub thread_spin: Vec<f64>,
    /// Busy fraction of each thread's pinned CPU (see [`ThreadStats::core_busy`]).
    pub core_busy: Vec<Option<f64>>,
}

/// Merges per-thread stats (all built with the same interval count).
pub fn merge(threads: &[ThreadStats]) -> MergedStats {
    let first = threads.first().expect("at least one generator thread");
    let mut m = MergedStats {
        counters: Counters::default(),
        scenario_counters: vec![0; first.scenario_counters.len()],
        request_latency_us: new_latency_histogram(),
        service_time_us: new_latency_histogram(),
        session_latency_us: new_latency_histogram(),
        send_lag_us: new_latency_histogram(),
        intervals: first
            .intervals
            .iter()
            .map(|_| IntervalStats { completed_ok: 0, errors: 0, latency_us: new_interval_histogram() })
            .collect(),
        thread_utilization: Vec::new(),
        thread_spin: Vec::new(),
        core_busy: Vec::new(),
    };
    for t in threads {
        m.counters.merge(&t.counters);
        for (a, b) in m.scenario_counters.iter_mut().zip(&t.scenario_counters) {
            *a += b;
        }
        // Same bounds everywhere, so adding cannot fail.
        let _ = m.request_latency_us.add(&t.request_latency_us);
        let _ = m.service_time_us.add(&t.service_time_us);
        let _ = m.session_latency_us.add(&t.session_latency_us);
        let _ = m.send_lag_us.add(&t.send_lag_us);
        for (a, b) in m.intervals.iter_mut().zip(&t.intervals) {
            a.completed_ok += b.completed_ok;
            a.errors += b.errors;
            let _ = a.latency_us.add(&b.latency_us);
        }
        let fraction = |ns: u64| if t.wall_ns == 0 { 0.0 } else { ns as f64 / t.wall_ns as f64 };
        m.thread_utilization.push((t.cpu, fraction(t.cpu_ns.saturating_sub(t.spin_ns))));
        m.thread_spin.push(fraction(t.spin_ns));
        m.core_busy.push(t.core_busy);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_counters_histograms_and_intervals() {
        let mut a = ThreadStats::new(2, 3, 0);
        let mut b = ThreadStats::new(2, 3, 1);
        a.record_ok(100, 60, 0);
        b.record_ok(300, 250, 2);
        b.record_ok(300, 250, 99);
        b.record_error(12, 1);
        a.scenario_counters[1] = 5;
        a.wall_ns = 100;
        a.cpu_ns = 60;
        a.spin_ns = 10;
        let m = merge(&[a, b]);
        assert_eq!(m.counters.responses_ok, 3);
        assert_eq!(m.counters.errors_total(), 1);
        assert_eq!(m.request_latency_us.len(), 3);
        assert_eq!(m.service_time_us.len(), 3);
        assert_eq!(m.service_time_us.max(), m.service_time_us.highest_equivalent(250));
        assert_eq!(m.intervals.iter().map(|i| i.completed_ok).collect::<Vec<_>>(), vec![1, 0, 2]);
        assert_eq!(m.scenario_counters, vec![0, 5]);
        assert_eq!(m.thread_utilization, vec![(0, 0.5), (1, 0.0)], "spinning is not load");
        assert_eq!(m.thread_spin, vec![0.1, 0.0]);
    }
}
