//! Per-core metrics and their Prometheus text rendering.
//!
//! Each core owns one [`CoreMetrics`] and is its only writer (relaxed atomics,
//! no contention, no locks); the admin endpoint reads every core's block and
//! renders them with a `core` label. Histograms use fixed exponential buckets
//! so recording is one index computation and one increment.

use redrain_net::code::ErrorClass;
use redrain_net::{ErrorCode, MessageType};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Request types that get their own frame counters and latency histogram
/// (index = position); everything else counts as `other`.
pub const TRACKED_TYPES: [MessageType; 15] = [
    MessageType::Hello,
    MessageType::Login,
    MessageType::Ping,
    MessageType::Logout,
    MessageType::Shake,
    MessageType::Open,
    MessageType::Send,
    MessageType::Sync,
    MessageType::SyncAck,
    MessageType::GroupCreate,
    MessageType::GroupJoin,
    MessageType::GroupLeave,
    MessageType::GroupMembers,
    MessageType::AdminSwitch,
    MessageType::AdminQuota,
];
const TYPE_SLOTS: usize = TRACKED_TYPES.len() + 1;

/// Outcome of one frame, for `redrain_frames_total{outcome=...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok = 0,
    /// A valid request answered "no".
    Logical = 1,
    /// The node failed or refused (busy, internal, shutting down).
    System = 2,
    /// The client sent something invalid.
    ClientFault = 3,
}
const OUTCOMES: [(&str, Outcome); 4] = [
    ("ok", Outcome::Ok),
    ("logical_failure", Outcome::Logical),
    ("system_failure", Outcome::System),
    ("client_fault", Outcome::ClientFault),
];

impl From<ErrorCode> for Outcome {
    fn from(code: ErrorCode) -> Self {
        match code.class() {
            ErrorClass::ClientFault => Outcome::ClientFault,
            ErrorClass::Logical => Outcome::Logical,
            ErrorClass::System => Outcome::System,
        }
    }
}

/// Upper bounds (microseconds) of the latency buckets; the last is +Inf.
pub const LATENCY_BUCKETS_US: [u64; 16] =
    [10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 5_000_000];

/// A Prometheus histogram with fixed buckets, single writer.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn record_us(&self, value_us: u64) {
        self.record_us_n(value_us, 1);
    }

    /// Records `n` observations of the same value.
    pub fn record_us_n(&self, value_us: u64, n: u64) {
        let i = LATENCY_BUCKETS_US.iter().position(|b| value_us <= *b).unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[i].fetch_add(n, Relaxed);
        self.sum_us.fetch_add(value_us.saturating_mul(n), Relaxed);
    }

    pub fn snapshot(&self) -> ([u64; LATENCY_BUCKETS_US.len() + 1], u64) {
        let mut b = [0u64; LATENCY_BUCKETS_US.len() + 1];
        for (dst, src) in b.iter_mut().zip(&self.buckets) {
            *dst = src.load(Relaxed);
        }
        (b, self.sum_us.load(Relaxed))
    }
}

/// Counts of frame types handled in one read pass, so the pass's latency can
/// be recorded once per frame under the right type.
#[derive(Debug, Default)]
pub struct PassKinds {
    counts: std::cell::Cell<[u16; TYPE_SLOTS]>,
}

impl PassKinds {
    pub fn note(&self, kind: Option<MessageType>) {
        let mut c = self.counts.get();
        let slot = type_slot(kind);
        c[slot] = c[slot].saturating_add(1);
        self.counts.set(c);
    }

    /// Records `value_us` for every noted frame and resets the counts.
    pub fn record_and_reset(&self, metrics: &CoreMetrics, value_us: u64) {
        for (slot, n) in self.counts.take().iter().enumerate() {
            if *n > 0 {
                metrics.latency[slot].record_us_n(value_us, u64::from(*n));
            }
        }
    }
}

/// Why a connection ended, for `redrain_connections_closed_total{reason=...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    PeerClosed = 0,
    Error = 1,
    Io = 2,
    Tls = 3,
    HandedOff = 4,
    /// The client did not take the pending output within the write timeout.
    WriteTimeout = 5,
    /// Pushes and deferred answers waiting for the connection passed `conn_pushed_bytes_max`.
    SlowReader = 6,
}
const CLOSE_REASONS: [&str; 7] =
    ["peer_closed", "error_frame", "io_error", "tls_error", "handed_off", "write_timeout", "slow_reader"];

/// Everything one core counts.
#[derive(Debug, Default)]
pub struct CoreMetrics {
    /// Connections open on this core (logged in or not).
    pub connections_open: AtomicU64,
    /// Logged-in sessions homed on this core.
    pub sessions_active: AtomicU64,
    pub connections_accepted_total: AtomicU64,
    pub connections_refused_full_total: AtomicU64,
    pub connections_closed_total: [AtomicU64; CLOSE_REASONS.len()],
    pub logins_total: AtomicU64,
    pub sessions_replaced_total: AtomicU64,
    pub handoffs_sent_total: AtomicU64,
    pub handoffs_received_total: AtomicU64,
    pub handoff_queue_full_total: AtomicU64,
    pub tls_handshakes_total: AtomicU64,
    /// TLS handshakes that resumed a session from a ticket (also in `tls_handshakes_total`).
    pub tls_handshakes_resumed_total: AtomicU64,
    pub bytes_received_total: AtomicU64,
    pub bytes_sent_total: AtomicU64,
    /// Socket writes; with packet merging this grows slower than frames.
    pub writes_total: AtomicU64,
    /// The red-packet rain and its streams (rendered by `rain::metrics`).
    pub rain: crate::rain::metrics::RainMetrics,
    /// The payment hand-off of this core's open queue (rendered by `handoff::metrics`).
    pub handoff: crate::handoff::metrics::HandoffMetrics,
    /// The payment hand-off of this core's lucky packet shares (its timeline log;
    /// rendered by `handoff::metrics::render_lucky`).
    pub handoff_lucky: crate::handoff::metrics::HandoffMetrics,
    /// The core's network ring (rendered by `shard::netring`).
    pub net: crate::shard::netring::NetRingMetrics,
    /// Timelines of this core (rendered by `timeline::metrics`).
    pub timeline: crate::timeline::metrics::TimelineMetrics,
    /// Overload protection (admission, degrade level, switches, retries).
    pub overload: crate::overload::metrics::OverloadMetrics,
    frames_total: [[AtomicU64; OUTCOMES.len()]; TYPE_SLOTS],
    rejected_total: CounterArray<{ ErrorCode::ALL.len() }>,
    latency: [Histogram; TYPE_SLOTS],
}

fn type_slot(kind: Option<MessageType>) -> usize {
    kind.and_then(|k| TRACKED_TYPES.iter().position(|t| *t == k)).unwrap_or(TRACKED_TYPES.len())
}

fn type_label(slot: usize) -> &'static str {
    TRACKED_TYPES.get(slot).map(|t| t.name()).unwrap_or("other")
}

impl CoreMetrics {
    /// Counts one frame of `kind` (None = unknown type) with its outcome.
    pub fn frame(&self, kind: Option<MessageType>, outcome: Outcome) {
        self.frames_total[type_slot(kind)][outcome as usize].fetch_add(1, Relaxed);
        self.overload.outcome(outcome);
    }

    /// Counts a frame answered with an error code (by reason).
    pub fn rejected(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.rejected_total[i].fetch_add(1, Relaxed);
        }
    }

    pub fn latency_us(&self, kind: Option<MessageType>, value_us: u64) {
        self.latency[type_slot(kind)].record_us(value_us);
    }

    pub fn closed(&self, reason: CloseReason) {
        self.connections_closed_total[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn frames(&self, kind: Option<MessageType>, outcome: Outcome) -> u64 {
        self.frames_total[type_slot(kind)][outcome as usize].load(Relaxed)
    }

    pub fn rejected_count(&self, code: ErrorCode) -> u64 {
        ErrorCode::ALL.iter().position(|c| *c == code).map(|i| self.rejected_total[i].load(Relaxed)).unwrap_or(0)
    }
}

/// Process-wide figures rendered next to the per-core ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessFigures {
    pub resident_bytes: u64,
    pub open_fds: u64,
    pub fd_limit: u64,
    pub cores: usize,
    pub shutting_down: bool,
    /// User + system CPU seconds of the whole process since it started.
    pub cpu_seconds: f64,
}

/// User + system CPU seconds of this process (CLOCK_PROCESS_CPUTIME_ID: ns resolution).
pub fn process_cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Most threads [`thread_cpu_seconds`] reports (a node runs one per core plus a few).
pub const THREADS_REPORTED_MAX: usize = 1024;

/// (thread name, user + system CPU seconds) of each thread of this process, from
/// /proc/self/task/*/stat (clock-tick resolution); empty where /proc is missing.
pub fn thread_cpu_seconds() -> Vec<(String, f64)> {
    // SAFETY: sysconf has no preconditions.
    let ticks = (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    let mut out: Vec<(String, f64)> = dir
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter_map(|stat| parse_task_stat(&stat, ticks))
        .take(THREADS_REPORTED_MAX)
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// (comm, utime + stime in seconds) of one /proc task stat line.
fn parse_task_stat(stat: &str, ticks_per_s: f64) -> Option<(String, f64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    // Fields after the command name start at field 3; utime and stime are 14 and 15.
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((comm, (utime + stime) / ticks_per_s))
}

/// Renders per-thread CPU seconds (threads of the same name are summed).
pub fn render_thread_cpu(threads: &[(String, f64)], out: &mut String) {
    family(out, "redrain_thread_cpu_seconds_total", "counter", "User + system CPU seconds of each node thread.");
    let mut by_name: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();
    for (name, s) in threads {
        let clean: String = name.chars().filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\').collect();
        *by_name.entry(clean).or_insert(0.0) += s;
    }
    for (name, s) in by_name {
        let _ = writeln!(out, "redrain_thread_cpu_seconds_total{{thread=\"{name}\"}} {s}");
    }
}

/// Reads resident set size from /proc/self/statm (0 if unavailable).
pub fn resident_bytes() -> u64 {
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .map(|pages| pages * page)
        .unwrap_or(0)
}

/// Counts entries of /proc/self/fd (0 if unavailable).
pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0)
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders all cores in the Prometheus text exposition format (0.0.4).
pub fn render_prometheus(cores: &[&CoreMetrics], process: ProcessFigures, out: &mut String) {
    type Getter = fn(&CoreMetrics) -> &AtomicU64;
    const PER_CORE: [(&str, &str, &str, Getter); 14] = [
        ("redrain_connections_open", "gauge", "Connections open per core, logged in or not.", |m| &m.connections_open),
        ("redrain_sessions_active", "gauge", "Logged-in sessions homed on each core.", |m| &m.sessions_active),
        ("redrain_connections_accepted_total", "counter", "Connections accepted.", |m| &m.connections_accepted_total),
        ("redrain_connections_refused_full_total", "counter", "Connections refused at the per-core limit.", |m| {
            &m.connections_refused_full_total
        }),
        ("redrain_logins_total", "counter", "Successful logins registered on their home core.", |m| &m.logins_total),
        ("redrain_sessions_replaced_total", "counter", "Sessions closed by a newer login of the same device.", |m| {
            &m.sessions_replaced_total
        }),
        ("redrain_handoffs_sent_total", "counter", "Sessions moved to their home core.", |m| &m.handoffs_sent_total),
        ("redrain_handoffs_received_total", "counter", "Sessions received from other cores.", |m| {
            &m.handoffs_received_total
        }),
        (
            "redrain_handoff_queue_full_total",
            "counter",
            "Logins answered Busy because a hand-off queue was full.",
            |m| &m.handoff_queue_full_total,
        ),
        ("redrain_tls_handshakes_total", "counter", "Completed TLS handshakes.", |m| &m.tls_handshakes_total),
        (
            "redrain_tls_handshakes_resumed_total",
            "counter",
            "Completed TLS handshakes that resumed a session from a ticket.",
            |m| &m.tls_handshakes_resumed_total,
        ),
        ("redrain_received_bytes_total", "counter", "Bytes read from client sockets (after TLS).", |m| {
            &m.bytes_received_total
        }),
        ("redrain_sent_bytes_total", "counter", "Bytes written to client sockets (before TLS).", |m| {
            &m.bytes_sent_total
        }),
        ("redrain_socket_writes_total", "counter", "Socket writes (responses of one pass leave in one write).", |m| {
            &m.writes_total
        }),
    ];
    for (name, kind, help, get) in PER_CORE {
        family(out, name, kind, help);
        for (i, m) in cores.iter().enumerate() {
            let _ = writeln!(out, "{name}{{core=\"{i}\"}} {}", get(m).load(Relaxed));
        }
    }

    let net: Vec<_> = cores.iter().map(|m| &m.net).collect();
    crate::shard::netring::render_metrics(&net, out);

    family(out, "redrain_connections_closed_total", "counter", "Connections closed, by reason.");
    for (i, m) in cores.iter().enumerate() {
        for (r, label) in CLOSE_REASONS.iter().enumerate() {
            let _ = writeln!(
                out,
                "redrain_connections_closed_total{{core=\"{i}\",reason=\"{label}\"}} {}",
                m.connections_closed_total[r].load(Relaxed)
            );
        }
    }

    family(out, "redrain_frames_total", "counter", "Request frames handled, by type and outcome.");
    for (i, m) in cores.iter().enumerate() {
        for slot in 0..TYPE_SLOTS {
            for (o, (label, _)) in OUTCOMES.iter().enumerate() {
                let v = m.frames_total[slot][o].load(Relaxed);
                if v > 0 || slot < 4 {
                    let _ = writeln!(
                        out,
                        "redrain_frames_total{{core=\"{i}\",type=\"{}\",outcome=\"{label}\"}} {v}",
                        type_label(slot)
                    );
                }
            }
        }
    }

    family(out, "redrain_rejected_frames_total", "counter", "Frames answered with an error, by error code.");
    for (i, m) in cores.iter().enumerate() {
        for (c, code) in ErrorCode::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "redrain_rejected_frames_total{{core=\"{i}\",reason=\"{}\"}} {}",
                code.name(),
                m.rejected_total[c].load(Relaxed)
            );
        }
    }

    family(out, "redrain_request_latency_seconds", "histogram", "Time from a frame's arrival to its response leaving.");
    for (i, m) in cores.iter().enumerate() {
        for slot in 0..TYPE_SLOTS {
            let (buckets, sum_us) = m.latency[slot].snapshot();
            let count: u64 = buckets.iter().sum();
            if count == 0 && slot >= 4 {
                continue;
            }
            let label = type_label(slot);
            let mut cumulative = 0;
            for (b, bound_us) in LATENCY_BUCKETS_US.iter().enumerate() {
                cumulative += buckets[b];
                let _ = writeln!(
                    out,
                    "redrain_request_latency_seconds_bucket{{core=\"{i}\",type=\"{label}\",le=\"{}\"}} {cumulative}",
                    *bound_us as f64 / 1e6
                );
            }
            let _ = writeln!(
                out,
                "redrain_request_latency_seconds_bucket{{core=\"{i}\",type=\"{label}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "redrain_request_latency_seconds_sum{{core=\"{i}\",type=\"{label}\"}} {}",
                sum_us as f64 / 1e6
            );
            let _ = writeln!(out, "redrain_request_latency_seconds_count{{core=\"{i}\",type=\"{label}\"}} {count}");
        }
    }

    let sessions: u64 = cores.iter().map(|m| m.connections_open.load(Relaxed)).sum();
    family(out, "redrain_process_resident_bytes", "gauge", "Resident set size of the node process.");
    let _ = writeln!(out, "redrain_process_resident_bytes {}", process.resident_bytes);
    family(out, "redrain_process_open_fds", "gauge", "Open file descriptors of the node process.");
    let _ = writeln!(out, "redrain_process_open_fds {}", process.open_fds);
    family(out, "redrain_process_fd_limit", "gauge", "RLIMIT_NOFILE soft limit of the node process.");
    let _ = writeln!(out, "redrain_process_fd_limit {}", process.fd_limit);
    family(out, "redrain_process_cpu_seconds_total", "counter", "User + system CPU seconds of the node process.");
    let _ = writeln!(out, "redrain_process_cpu_seconds_total {}", process.cpu_seconds);
    family(out, "redrain_cores", "gauge", "Executors (pinned cores) the node runs.");
    let _ = writeln!(out, "redrain_cores {}", process.cores);
    family(out, "redrain_connections_open_all", "gauge", "Connections open on all cores.");
    let _ = writeln!(out, "redrain_connections_open_all {sessions}");
    family(out, "redrain_shutting_down", "gauge", "1 while the node drains for shutdown.");
    let _ = writeln!(out, "redrain_shutting_down {}", u8::from(process.shutting_down));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_in_the_rendering() {
        let m = CoreMetrics::default();
        m.latency_us(Some(MessageType::Ping), 5);
        m.latency_us(Some(MessageType::Ping), 30);
        m.latency_us(Some(MessageType::Ping), 10_000_000);
        m.frame(Some(MessageType::Ping), Outcome::Ok);
        m.rejected(ErrorCode::BadToken);
        let mut out = String::new();
        render_prometheus(&[&m], ProcessFigures::default(), &mut out);
        assert!(
            out.contains("redrain_request_latency_seconds_bucket{core=\"0\",type=\"ping\",le=\"0.00001\"} 1"),
            "{out}"
        );
        assert!(out.contains("redrain_request_latency_seconds_bucket{core=\"0\",type=\"ping\",le=\"0.00005\"} 2"));
        assert!(out.contains("redrain_request_latency_seconds_bucket{core=\"0\",type=\"ping\",le=\"+Inf\"} 3"));
        assert!(out.contains("redrain_frames_total{core=\"0\",type=\"ping\",outcome=\"ok\"} 1"));
        assert!(out.contains("redrain_rejected_frames_total{core=\"0\",reason=\"bad_token\"} 1"));
    }

    #[test]
    fn process_and_thread_cpu_seconds_are_exported() {
        let figures = ProcessFigures { cpu_seconds: 1.25, ..ProcessFigures::default() };
        let mut out = String::new();
        render_prometheus(&[], figures, &mut out);
        assert!(out.contains("redrain_process_cpu_seconds_total 1.25\n"), "{out}");
        let mut out = String::new();
        render_thread_cpu(
            &[("redrain-core-0".into(), 0.5), ("redrain-core-0".into(), 0.25), ("x\"y".into(), 1.0)],
            &mut out,
        );
        assert!(out.contains("redrain_thread_cpu_seconds_total{thread=\"redrain-core-0\"} 0.75\n"), "{out}");
        assert!(out.contains("{thread=\"xy\"} 1\n"), "{out}");
        assert!(process_cpu_seconds() > 0.0);
        let threads = thread_cpu_seconds();
        assert!(!threads.is_empty() && threads.iter().all(|(_, s)| *s >= 0.0), "{threads:?}");
    }

    #[test]
    fn task_stat_lines_with_spaces_and_parentheses_in_the_name_parse() {
        let line = "42 (core (1) x) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0";
        assert_eq!(parse_task_stat(line, 100.0), Some(("core (1) x".to_owned(), 3.0)));
        assert_eq!(parse_task_stat("garbage", 100.0), None);
    }
}

/// A fixed array of counters that is `Default` at any length (std derives `Default` for
/// arrays of at most 32; the error codes outgrew that).
#[derive(Debug)]
pub struct CounterArray<const N: usize>([AtomicU64; N]);

impl<const N: usize> Default for CounterArray<N> {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl<const N: usize> std::ops::Deref for CounterArray<N> {
    type Target = [AtomicU64; N];
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}
