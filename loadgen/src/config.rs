//! The validated shape of one run. Every bound is explicit and checked here, so
//! the driver can trust these values (and assert them) without re-checking.

use std::net::SocketAddr;
use std::time::Duration;
use thiserror::Error;

/// Most connections one loadgen process drives (the fd limit usually binds first).
pub const CONNECTIONS_MAX: u32 = 1_000_000;
/// Most requests one connection may have outstanding.
pub const PIPELINE_DEPTH_MAX: u32 = 65_536;
/// Highest total offered rate accepted (requests per second).
pub const RATE_PER_S_MAX: f64 = 50_000_000.0;
/// Default spin before a due send (tokio-uring): covers the 20-40 us it takes
/// this VM to wake an idle CPU for a timer.
pub const SPIN_BEFORE_SEND_DEFAULT: Duration = Duration::from_micros(50);
/// Most generator processes of one run (`--processes`).
pub const PROCESSES_MAX: u32 = 64;
/// Most generator threads.
pub const THREADS_MAX: usize = 256;
/// Longest measured duration or warm-up.
pub const RUN_DURATION_MAX: Duration = Duration::from_secs(24 * 3600);
/// Most 127.0.0.x source addresses to spread connections over.
pub const SOURCE_IPS_MAX: u32 = 250;
/// Fewest and most over-time intervals a run reports (for the SVG and JSON).
pub const INTERVALS_MAX: u32 = 120;
pub const INTERVAL_MIN: Duration = Duration::from_millis(100);

/// How requests are offered after login.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LoadMode {
    /// A constant total rate spread evenly over all connections; latency counts
    /// from each request's intended send time (coordinated omission corrected).
    OpenLoop { rate_per_s: f64 },
    /// Each connection keeps this many requests outstanding; latency counts from
    /// the actual send time (what a closed-loop client observes).
    ClosedLoop { in_flight_per_connection: u32 },
    /// Only keep-alive pings at the node's advertised heartbeat interval
    /// (used by `connect`, whose subject is the sessions themselves).
    Heartbeat,
}

impl LoadMode {
    pub fn name(&self) -> &'static str {
        match self {
            LoadMode::OpenLoop { .. } => "open_loop",
            LoadMode::ClosedLoop { .. } => "closed_loop",
            LoadMode::Heartbeat => "heartbeat",
        }
    }
}

/// The runtime each generator thread runs (`--runtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Runtime {
    /// A glommio executor (what the node runs).
    Glommio,
    /// A tokio-uring current-thread runtime.
    #[default]
    TokioUring,
}

impl Runtime {
    pub fn name(&self) -> &'static str {
        match self {
            Runtime::Glommio => "glommio",
            Runtime::TokioUring => "tokio-uring",
        }
    }
}

/// Everything the driver needs for one run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub target: SocketAddr,
    /// Admin endpoint for `/metrics`; `None` skips node-side readings.
    pub admin: Option<SocketAddr>,
    pub connections: u32,
    pub duration: Duration,
    pub warmup: Duration,
    pub mode: LoadMode,
    /// Most requests outstanding per connection in open loop (sends wait for
    /// room; the wait counts in latency because it is the node's backlog).
    pub pipeline_depth: u32,
    /// New connections per second during the ramp; `None` = as fast as the
    /// per-thread connect concurrency bound allows.
    pub connect_rate_per_s: Option<f64>,
    pub connect_timeout: Duration,
    /// How long to wait after the measured window for outstanding responses.
    pub drain_timeout: Duration,
    pub threads: usize,
    /// Spread connections over 127.0.0.1..=127.0.0.N (bind before connect);
    /// 0 lets the kernel pick the source address.
    pub source_ips: u32,
    /// The node's auth secret, for minting login tokens.
    pub secret: Vec<u8>,
    /// Connection i logs in as user `user_id_base + i`, device 1.
    pub user_id_base: u64,
    pub token_ttl: Duration,
    /// Sends later than this behind their schedule (p99, for reasons of our
    /// own, not the node's backlog) mark the result generator-limited.
    pub lag_threshold: Duration,
    /// Send lag p99 above this share of the request latency p50 marks the
    /// result generator-limited (the generator's lateness is then a visible
    /// part of the latency it reports).
    pub lag_share_of_latency_max: f64,
    /// A generator thread busier than this fraction of wall time marks the
    /// result generator-limited.
    pub cpu_saturation_threshold: f64,
    /// Width of one over-time interval.
    pub interval: Duration,
    /// Largest response frame accepted from the node.
    pub frame_bytes_max: u32,
    /// The generator threads' runtime.
    pub runtime: Runtime,
    /// tokio-uring: wake a sleeping sender this long before its send is due
    /// and spin (yielding to the runtime) until it is; zero disables it.
    pub spin_before_send: Duration,
    /// This process is number `process_index` of `process_count` sharing one
    /// run (`--processes`): it drives the connections `j` with
    /// `j % process_count == process_index` of the run's `connections`, on the
    /// run's schedule, so the processes' requests interleave as one's would.
    pub process_index: u32,
    pub process_count: u32,
    /// Start the load at this wall-clock time (ms since the epoch) if the
    /// ramp is done by then, so the processes of one run share their window.
    pub start_at_unix_ms: Option<u64>,
    /// TLS to the node (`--tls`), for every scenario.
    pub tls: Option<crate::tls::TlsClientSetup>,
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum ConfigError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid { field, reason: reason.into() })
}

impl RunConfig {
    /// A config with the documented defaults for `target` (tests start from it).
    pub fn with_defaults(target: SocketAddr, secret: Vec<u8>) -> Self {
        Self {
            target,
            admin: None,
            connections: 10,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            mode: LoadMode::ClosedLoop { in_flight_per_connection: 1 },
            pipeline_depth: 128,
            connect_rate_per_s: None,
            connect_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            threads: 1,
            source_ips: 0,
            secret,
            user_id_base: 1_000_000,
            token_ttl: Duration::from_secs(24 * 3600),
            lag_threshold: Duration::from_millis(10),
            lag_share_of_latency_max: 0.1,
            cpu_saturation_threshold: 0.9,
            interval: Duration::from_secs(1),
            frame_bytes_max: 1 << 20,
            runtime: Runtime::default(),
            spin_before_send: SPIN_BEFORE_SEND_DEFAULT,
            process_index: 0,
            process_count: 1,
            start_at_unix_ms: None,
            tls: None,
        }
    }

    /// The global indices of the connections this process drives.
    pub fn local_connections(&self) -> impl Iterator<Item = u64> {
        let count = u64::from(self.process_count.max(1));
        (u64::from(self.process_index)..u64::from(self.connections)).step_by(count as usize)
    }

    /// How many connections this process drives.
    pub fn local_connection_count(&self) -> u32 {
        let count = self.process_count.max(1);
        (self.connections + count - 1 - self.process_index.min(count - 1)) / count
    }

    /// Picks the over-time interval for a measured duration: at most
    /// [`INTERVALS_MAX`] intervals, none shorter than [`INTERVAL_MIN`].
    pub fn interval_for(duration: Duration) -> Duration {
        let even = duration / INTERVALS_MAX;
        let candidates = [100u64, 250, 500, 1000, 2000, 5000, 10_000, 30_000, 60_000, 300_000, 900_000];
        candidates
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .find(|c| *c >= even && *c >= INTERVAL_MIN)
            .unwrap_or(Duration::from_secs(900))
    }

    /// Number of over-time intervals covering the measured window.
    pub fn interval_count(&self) -> usize {
        let n = self.duration.as_nanos().div_ceil(self.interval.as_nanos().max(1));
        (n as usize).max(1)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.connections == 0 || self.connections > CONNECTIONS_MAX {
            return invalid("connections", format!("must be within 1..={CONNECTIONS_MAX}"));
        }
        if self.duration.is_zero() || self.duration > RUN_DURATION_MAX {
            return invalid("duration", "must be positive and at most 24h");
        }
        if self.warmup > RUN_DURATION_MAX {
            return invalid("warmup", "must be at most 24h");
        }
        match self.mode {
            LoadMode::OpenLoop { rate_per_s } => {
                if !(rate_per_s > 0.0 && rate_per_s <= RATE_PER_S_MAX) {
                    return invalid("rate", format!("must be within (0, {RATE_PER_S_MAX}] requests/s"));
                }
            }
            LoadMode::ClosedLoop { in_flight_per_connection } => {
                if in_flight_per_connection == 0 || in_flight_per_connection > PIPELINE_DEPTH_MAX {
                    return invalid("in-flight", format!("must be within 1..={PIPELINE_DEPTH_MAX}"));
                }
            }
            LoadMode::Heartbeat => {}
        }
        if self.pipeline_depth == 0 || self.pipeline_depth > PIPELINE_DEPTH_MAX {
            return invalid("pipeline", format!("must be within 1..={PIPELINE_DEPTH_MAX}"));
        }
        if let Some(r) = self.connect_rate_per_s {
            if !(r > 0.0 && r <= RATE_PER_S_MAX) {
                return invalid("connect-rate", "must be positive");
            }
        }
        if self.process_count == 0 || self.process_count > PROCESSES_MAX || self.process_index >= self.process_count {
            return invalid("processes", format!("must be within 1..={PROCESSES_MAX}, index below the count"));
        }
        if self.process_count > self.connections {
            return invalid("processes", "more processes than connections");
        }
        if self.threads == 0 || self.threads > THREADS_MAX {
            return invalid("threads", format!("must be within 1..={THREADS_MAX}"));
        }
        if self.source_ips > SOURCE_IPS_MAX {
            return invalid("source-ips", format!("must be at most {SOURCE_IPS_MAX}"));
        }
        if self.source_ips > 0 && !self.target.ip().is_loopback() {
            return invalid("source-ips", "127.0.0.x source addresses only reach a loopback target");
        }
        if self.connect_timeout.is_zero() || self.drain_timeout > RUN_DURATION_MAX {
            return invalid("connect-timeout/drain-timeout", "connect timeout must be positive");
        }
        if !(self.lag_share_of_latency_max > 0.0 && self.lag_share_of_latency_max <= 1.0) {
            return invalid("lag-share", "must be within (0, 1]");
        }
        if !(self.cpu_saturation_threshold > 0.0 && self.cpu_saturation_threshold <= 1.0) {
            return invalid("cpu-threshold", "must be within (0, 1]");
        }
        if self.interval < INTERVAL_MIN || self.interval_count() > INTERVALS_MAX as usize {
            return invalid("interval", format!("must be at least 100ms and give at most {INTERVALS_MAX} intervals"));
        }
        if self.spin_before_send > crate::driver::precise_timer::SPIN_LEAD_MAX {
            return invalid("spin-before-send", "must be at most 1ms");
        }
        if self.frame_bytes_max < 512 {
            return invalid("frame_bytes_max", "must be at least 512");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RunConfig {
        RunConfig::with_defaults("127.0.0.1:7000".parse().unwrap(), vec![7; 32])
    }

    #[test]
    fn defaults_are_valid() {
        cfg().validate().unwrap();
    }

    #[test]
    fn out_of_bound_values_are_rejected_with_the_flag_name() {
        let mut c = cfg();
        c.connections = 0;
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "connections", .. })));
        let mut c = cfg();
        c.mode = LoadMode::OpenLoop { rate_per_s: 0.0 };
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "rate", .. })));
        let mut c = cfg();
        c.target = "10.0.0.1:7000".parse().unwrap();
        c.source_ips = 4;
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "source-ips", .. })));
    }

    #[test]
    fn processes_split_the_connections_round_robin_without_overlap() {
        let mut seen = Vec::new();
        for i in 0..3 {
            let mut c = cfg();
            c.connections = 10;
            c.process_count = 3;
            c.process_index = i;
            c.validate().unwrap();
            let mine: Vec<u64> = c.local_connections().collect();
            assert_eq!(mine.len() as u32, c.local_connection_count());
            seen.extend(mine);
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<u64>>());
        let mut c = cfg();
        c.process_count = 2;
        c.process_index = 2;
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "processes", .. })));
    }

    #[test]
    fn interval_keeps_the_interval_count_bounded() {
        for secs in [1u64, 3, 10, 60, 600, 3600, 24 * 3600] {
            let mut c = cfg();
            c.duration = Duration::from_secs(secs);
            c.interval = RunConfig::interval_for(c.duration);
            assert!(c.interval_count() <= INTERVALS_MAX as usize, "{secs}s");
            c.validate().unwrap();
        }
        assert_eq!(RunConfig::interval_for(Duration::from_secs(3)), Duration::from_millis(100));
    }
}
