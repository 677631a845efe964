//! Command line: `connect`, `ping`, `shake`, `chat` and `compare`.

use crate::config::{LoadMode, RunConfig, Runtime, SOURCE_IPS_MAX};
use crate::duration::parse_duration;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// Connections one loopback source address is given in the automatic spread.
pub const CONNECTIONS_PER_SOURCE_IP: u32 = 20_000;

#[derive(Debug, Parser)]
#[command(name = "redrain-loadgen", version, about = "Load generator for a redrain node")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ramp to N logged-in sessions at --connect-rate, hold them, report the
    /// node's memory per session.
    Connect(RunArgs),
    /// Ping/Pong at a constant rate (--rate, open loop) or with K requests in
    /// flight per connection (--in-flight, closed loop); checks every echo.
    Ping {
        #[command(flatten)]
        run: RunArgs,
        /// Ping payload bytes (0..=256), echoed by the node.
        #[arg(long, default_value_t = 16)]
        payload_bytes: usize,
    },
    /// The red-packet rain: shake, open every win, check every answer (same load flags as
    /// ping); obeys the node's minimum shake interval unless --ignore-shake-interval.
    Shake {
        #[command(flatten)]
        run: RunArgs,
        /// Shake without waiting for the node's minimum interval (abuse test).
        #[arg(long)]
        ignore_shake_interval: bool,
        /// Ignore server-driven backoff (Backoff pushes, the retry-after of Busy and
        /// Paused): the abuse case; by default the generator obeys it.
        #[arg(long)]
        ignore_backoff: bool,
        /// Do not open wins (measures shakes alone).
        #[arg(long)]
        no_open: bool,
    },
    /// Timelines: one-to-one and group messages; every device syncs on each notify and
    /// every delivery is checked (missing, duplicated) after a final drain (same load flags
    /// as ping; the node's messages_per_user_per_s and syncs_per_user_per_s bound
    /// --rate / --connections: a refusal's retry-after is obeyed unless --ignore-backoff).
    Chat {
        #[command(flatten)]
        run: RunArgs,
        /// Groups created before the load (0 = one-to-one messages only); members of a
        /// group send to it, the other connections to a random other connection.
        #[arg(long, default_value_t = 0)]
        groups: usize,
        /// Members of each group, its creator included.
        #[arg(long, default_value_t = 10)]
        group_size: usize,
        /// Also sync after this many requests without a notify (0 = only on notify).
        #[arg(long, default_value_t = 0)]
        sync_every: u64,
        /// Ignore the retry-after of Busy, RateLimited and Paused (abuse runs): by default a
        /// refused connection waits it out.
        #[arg(long)]
        ignore_backoff: bool,
    },
    /// Print the differences and ratios (b / a) of two JSON summaries.
    Compare { a: PathBuf, b: PathBuf },
    /// Combine the JSON summaries of several generator processes of one run:
    /// histograms added bucket by bucket, counts summed.
    Merge {
        /// Summaries written with --json.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long)]
        hgrm: Option<PathBuf>,
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Measure this generator's own floor (send lag, round trip) against a
    /// trivial echo server in this process on another core; stored in
    /// --floor-file and printed next to every later run's latency table.
    Floor(FloorArgs),
}

#[derive(Debug, Clone, Args)]
pub struct FloorArgs {
    #[arg(long, value_enum, default_value_t = Runtime::default())]
    pub runtime: Runtime,
    /// Measured duration of each of the two runs.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub duration: Duration,
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Open-loop rate of the send-lag run.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Connections of the send-lag run.
    #[arg(long, default_value_t = 1)]
    pub connections: u32,
    /// Connections of the round-trip run (1 in flight each; more = the generator's capacity).
    #[arg(long, default_value_t = 1)]
    pub closed_loop_connections: u32,
    /// tokio-uring: wake this long before a send is due and spin until it is (0 = off).
    #[arg(long, default_value = "50us", value_parser = parse_duration)]
    pub spin_before_send: Duration,
    /// CPU of the echo server (default: an online CPU the generator is not allowed on).
    #[arg(long)]
    pub server_cpu: Option<usize>,
    /// Where the floor is stored (one entry per runtime).
    #[arg(long, default_value = crate::floor::FLOOR_FILE_DEFAULT)]
    pub floor_file: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Node client address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub target: SocketAddr,
    /// Node admin address (for /metrics).
    #[arg(long, default_value = "127.0.0.1:7080")]
    pub admin: SocketAddr,
    /// Do not read the node's /metrics.
    #[arg(long)]
    pub no_admin: bool,
    /// Connections (sessions) to open.
    #[arg(long, default_value_t = 10)]
    pub connections: u32,
    /// Measured duration (e.g. 10s, 500ms, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load before the measured window (excluded from results).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Open loop: total requests per second over all connections.
    #[arg(long, conflicts_with = "in_flight")]
    pub rate: Option<f64>,
    /// Closed loop: requests kept in flight per connection (default 1 when no --rate).
    #[arg(long)]
    pub in_flight: Option<u32>,
    /// Open loop: most requests outstanding per connection.
    #[arg(long, default_value_t = 128)]
    pub pipeline: u32,
    /// New connections per second during the ramp (default: as fast as possible,
    /// 64 handshakes at once per thread).
    #[arg(long)]
    pub connect_rate: Option<f64>,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Wait this long after the window for outstanding responses.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Generator threads, each pinned to one allowed CPU (default: allowed CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Runtime of each generator thread.
    #[arg(long, value_enum, default_value_t = Runtime::default())]
    pub runtime: Runtime,
    /// tokio-uring: wake this long before a send is due and spin until it is
    /// (0 = sleep until the timer fires; at most 1ms).
    #[arg(long, default_value = "50us", value_parser = parse_duration)]
    pub spin_before_send: Duration,
    /// Spread connections over 127.0.0.1..=127.0.0.N (default: one address per 20,000
    /// connections to a loopback target; 0 = kernel's choice).
    #[arg(long)]
    pub source_ips: Option<u32>,
    /// The node's auth secret in hex.
    #[arg(long, conflicts_with = "secret_file")]
    pub secret_hex: Option<String>,
    /// File holding the node's hex auth secret.
    #[arg(long, default_value = "./redrain-data/auth.secret")]
    pub secret_file: PathBuf,
    /// Connection i logs in as user (base + i).
    #[arg(long, default_value_t = 1_000_000)]
    pub user_id_base: u64,
    /// Flag the result generator-limited when sends lag their schedule by more (p99).
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub lag_threshold: Duration,
    /// Flag the result generator-limited when send lag p99 exceeds this share of latency p50.
    #[arg(long, default_value_t = 0.1)]
    pub lag_share: f64,
    /// Flag the result generator-limited when a generator thread is busier than this fraction.
    #[arg(long, default_value_t = 0.9)]
    pub cpu_threshold: f64,
    /// Over-time interval (default: chosen from --duration, at most 120 intervals).
    #[arg(long, value_parser = parse_duration)]
    pub interval: Option<Duration>,
    /// Write the JSON summary here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the headline latency histogram here (.hgrm percentile format, ms).
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
    /// Write an SVG plot here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// The generator's floor (`redrain-loadgen floor`), printed next to the latency table.
    #[arg(long, default_value = crate::floor::FLOOR_FILE_DEFAULT)]
    pub floor_file: PathBuf,
    /// Drive the run from N generator processes (this binary started N times,
    /// each with its share of the connections and the schedule, one load start),
    /// then merge their summaries exactly.
    #[arg(long, default_value_t = 1)]
    pub processes: u32,
    /// Set by --processes on each child: which process this is.
    #[arg(long, hide = true, default_value_t = 0)]
    pub process_index: u32,
    /// Set by --processes on each child: the load start (ms since the epoch).
    #[arg(long, hide = true)]
    pub start_at_unix_ms: Option<u64>,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

#[derive(Debug, Error)]
pub enum CliError {
    #[error("cannot read auth secret from {path}: {source} (pass --secret-hex or --secret-file)")]
    SecretFile { path: String, source: std::io::Error },
    #[error("auth secret: {0}")]
    Secret(#[from] redrain_net::token::SecretError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsSetupError),
}

impl RunArgs {
    /// The secret bytes from --secret-hex or --secret-file.
    pub fn secret(&self) -> Result<Vec<u8>, CliError> {
        let text = match &self.secret_hex {
            Some(hex) => hex.clone(),
            None => std::fs::read_to_string(&self.secret_file)
                .map_err(|source| CliError::SecretFile { path: self.secret_file.display().to_string(), source })?,
        };
        Ok(redrain_net::token::parse_secret_hex(&text)?)
    }

    /// Builds the run configuration (validated later by the driver).
    pub fn to_config(&self, allowed_cpus: usize) -> Result<RunConfig, CliError> {
        let mut cfg = RunConfig::with_defaults(self.target, self.secret()?);
        cfg.admin = (!self.no_admin).then_some(self.admin);
        cfg.connections = self.connections;
        cfg.duration = self.duration;
        cfg.warmup = self.warmup;
        cfg.mode = match (self.rate, self.in_flight) {
            (Some(rate_per_s), _) => LoadMode::OpenLoop { rate_per_s },
            (None, k) => LoadMode::ClosedLoop { in_flight_per_connection: k.unwrap_or(1) },
        };
        cfg.pipeline_depth = self.pipeline;
        cfg.connect_rate_per_s = self.connect_rate;
        cfg.connect_timeout = self.connect_timeout;
        cfg.drain_timeout = self.drain_timeout;
        cfg.runtime = self.runtime;
        cfg.spin_before_send = self.spin_before_send;
        cfg.process_count = self.processes;
        cfg.process_index = self.process_index;
        cfg.start_at_unix_ms = self.start_at_unix_ms;
        let threads_default = if self.processes > 1 { 1 } else { allowed_cpus.min(self.connections.max(1) as usize) };
        cfg.threads = self.threads.unwrap_or(threads_default).max(1);
        cfg.source_ips = self.source_ips.unwrap_or_else(|| {
            if self.target.ip().is_loopback() {
                self.connections.div_ceil(CONNECTIONS_PER_SOURCE_IP).clamp(1, SOURCE_IPS_MAX)
            } else {
                0
            }
        });
        cfg.user_id_base = self.user_id_base;
        cfg.lag_threshold = self.lag_threshold;
        cfg.lag_share_of_latency_max = self.lag_share;
        cfg.cpu_saturation_threshold = self.cpu_threshold;
        cfg.interval = self.interval.unwrap_or_else(|| RunConfig::interval_for(self.duration));
        cfg.tls = self.tls.setup()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(args).unwrap()
    }

    #[test]
    fn ping_flags_become_an_open_loop_config() {
        let cli = parse(&[
            "redrain-loadgen",
            "ping",
            "--rate",
            "2000",
            "--connections",
            "40000",
            "--duration",
            "3s",
            "--warmup",
            "500ms",
            "--secret-hex",
            "00112233445566778899aabbccddeeff",
            "--threads",
            "2",
        ]);
        let Command::Ping { run, payload_bytes } = cli.command else { panic!() };
        assert_eq!(payload_bytes, 16);
        let cfg = run.to_config(2).unwrap();
        assert_eq!(cfg.mode, LoadMode::OpenLoop { rate_per_s: 2000.0 });
        assert_eq!(cfg.duration, Duration::from_secs(3));
        assert_eq!(cfg.warmup, Duration::from_millis(500));
        assert_eq!(cfg.source_ips, 2, "40k connections spread over two loopback addresses");
        assert_eq!(cfg.threads, 2);
        assert_eq!(cfg.secret.len(), 16);
        cfg.validate().unwrap();
    }

    #[test]
    fn rate_and_in_flight_are_exclusive_and_default_is_closed_loop() {
        assert!(Cli::try_parse_from(["x", "ping", "--rate", "1", "--in-flight", "2"]).is_err());
        let Command::Ping { run, .. } =
            parse(&["x", "ping", "--secret-hex", "00112233445566778899aabbccddeeff"]).command
        else {
            panic!()
        };
        assert_eq!(run.to_config(1).unwrap().mode, LoadMode::ClosedLoop { in_flight_per_connection: 1 });
    }

    #[test]
    fn missing_secret_file_names_the_path() {
        let Command::Connect(run) = parse(&["x", "connect", "--secret-file", "/nonexistent/auth.secret"]).command
        else {
            panic!()
        };
        let err = run.to_config(1).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/auth.secret"), "{err}");
    }

    #[test]
    fn tls_flags_need_tls_and_a_missing_ca_file_is_a_typed_error() {
        assert!(Cli::try_parse_from(["x", "connect", "--resume"]).is_err(), "--resume needs --tls");
        assert!(Cli::try_parse_from(["x", "connect", "--tls", "--tls-insecure", "--tls-ca", "a.pem"]).is_err());
        let secret = "00112233445566778899aabbccddeeff";
        let Command::Connect(run) =
            parse(&["x", "connect", "--tls", "--tls-ca", "/nonexistent/ca.pem", "--secret-hex", secret]).command
        else {
            panic!()
        };
        let err = run.to_config(1).unwrap_err();
        assert!(matches!(err, CliError::Tls(crate::tls::TlsSetupError::Ca { .. })), "{err}");
        let Command::Ping { run, .. } =
            parse(&["x", "ping", "--tls", "--tls-insecure", "--resume", "--secret-hex", secret]).command
        else {
            panic!()
        };
        let cfg = run.to_config(1).unwrap();
        assert!(cfg.tls.as_ref().is_some_and(|t| t.resume));
        let Command::Ping { run, .. } = parse(&["x", "ping", "--secret-hex", secret]).command else { panic!() };
        assert!(run.to_config(1).unwrap().tls.is_none());
    }
}
