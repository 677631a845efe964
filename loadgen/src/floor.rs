//! The generator's own floor on this machine, like wrk2's calibration: the
//! same driver, scenario and schedule as a real run, against a trivial echo
//! server ([`crate::reference_server`]) in this process on another core.
//!
//! Two short runs: a closed loop with one request in flight on one connection
//! (the round trip: the least any latency this generator reports can be), and
//! an open loop at a modest rate (how late sends leave their schedule, and the
//! coordinated-omission-corrected latency that results). The figures are kept
//! in a small JSON file, one entry per runtime, and every later run prints the
//! entry of its runtime next to its latency table.

use crate::config::{LoadMode, RunConfig, Runtime};
use crate::reference_server::ReferenceServer;
use crate::report::summary::LatencySummary;
use crate::scenario::ping::PingScenario;
use crate::system;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use thiserror::Error;

/// Default file the floor is written to and read from (current directory).
pub const FLOOR_FILE_DEFAULT: &str = "redrain-loadgen-floor.json";
/// Ping payload of the floor runs (the ping scenario's default).
const PAYLOAD_BYTES: usize = 16;
/// Largest floor file read.
const FLOOR_FILE_BYTES_MAX: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum FloorError {
    #[error("reference server: {0}")]
    Server(String),
    #[error("floor run: {0}")]
    Run(#[from] crate::driver::RunError),
    #[error("the floor run established no session with the reference server")]
    NoSession,
    #[error("floor file {path}: {reason}")]
    File { path: String, reason: String },
}

/// What `redrain-loadgen floor` measures (one runtime).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FloorSummary {
    pub runtime: String,
    /// UTC time of the measurement (seconds since the epoch).
    pub measured_at: String,
    pub generator_cpu: i64,
    pub server_cpu: usize,
    /// Closed loop, 1 in flight on each of `closed_loop_connections`: service time = round trip.
    pub round_trip: LatencySummary,
    #[serde(default)]
    pub closed_loop_connections: u32,
    pub round_trip_ok_per_s: f64,
    /// Open loop at `open_loop_rate_per_s` over `open_loop_connections`.
    pub open_loop_rate_per_s: f64,
    pub open_loop_connections: u32,
    pub send_lag: LatencySummary,
    /// Open loop, from the intended send (what a run would report as latency).
    pub open_loop_latency: LatencySummary,
    /// Open loop, from the actual send.
    pub open_loop_service: LatencySummary,
}

/// How to measure the floor.
#[derive(Debug, Clone)]
pub struct FloorConfig {
    pub runtime: Runtime,
    pub duration: Duration,
    pub warmup: Duration,
    pub rate_per_s: f64,
    pub connections: u32,
    /// Connections of the closed-loop run (1 in flight each): 1 gives the
    /// round trip, more give the generator's capacity against the echo server.
    pub closed_loop_connections: u32,
    /// tokio-uring: spin before a due send (see `--spin-before-send`).
    pub spin_before_send: Duration,
    /// CPU of the echo server; `None` picks an online CPU the generator does not use.
    pub server_cpu: Option<usize>,
}

/// The CPU for the echo server: an online CPU outside `allowed` (the
/// generator's), else the last allowed one that is not the generator's first.
pub fn pick_server_cpu(allowed: &[usize], online: usize) -> usize {
    if let Some(free) = (0..online).find(|c| !allowed.contains(c)) {
        return free;
    }
    allowed.iter().copied().rev().find(|c| Some(c) != allowed.first()).unwrap_or(0)
}

fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).max(1) as usize
}

/// Runs both floor measurements. Blocks for about 2 x (warm-up + duration).
pub fn measure(fc: &FloorConfig) -> Result<FloorSummary, FloorError> {
    let allowed = system::allowed_cpus();
    let server_cpu = fc.server_cpu.unwrap_or_else(|| pick_server_cpu(&allowed, online_cpus()));
    let secret: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
    let server = ReferenceServer::start(server_cpu, &secret).map_err(|e| FloorError::Server(e.to_string()))?;
    let base = |mode: LoadMode, connections: u32| {
        let mut cfg = RunConfig::with_defaults(server.addr, secret.clone());
        cfg.connections = connections;
        cfg.threads = 1;
        cfg.runtime = fc.runtime;
        cfg.duration = fc.duration;
        cfg.warmup = fc.warmup;
        cfg.interval = RunConfig::interval_for(fc.duration);
        cfg.mode = mode;
        cfg.spin_before_send = fc.spin_before_send;
        cfg
    };
    let closed = crate::run(
        base(LoadMode::ClosedLoop { in_flight_per_connection: 1 }, fc.closed_loop_connections),
        PingScenario::new(PAYLOAD_BYTES),
    )?;
    let open = crate::run(
        base(LoadMode::OpenLoop { rate_per_s: fc.rate_per_s }, fc.connections),
        PingScenario::new(PAYLOAD_BYTES),
    )?;
    if closed.summary.sessions.established == 0 || open.summary.sessions.established == 0 {
        return Err(FloorError::NoSession);
    }
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Ok(FloorSummary {
        runtime: fc.runtime.name().to_owned(),
        measured_at: format!("unix {secs}"),
        generator_cpu: closed.summary.generator.thread_cpus.first().copied().unwrap_or(-1),
        server_cpu,
        round_trip: closed.summary.service_time.clone(),
        closed_loop_connections: fc.closed_loop_connections,
        round_trip_ok_per_s: closed.summary.throughput_per_s,
        open_loop_rate_per_s: fc.rate_per_s,
        open_loop_connections: fc.connections,
        send_lag: open.summary.generator.send_lag_ms.clone(),
        open_loop_latency: open.summary.request_latency.clone(),
        open_loop_service: open.summary.service_time.clone(),
    })
}

/// The floor file: one entry per runtime name.
pub type FloorFile = BTreeMap<String, FloorSummary>;

/// Reads the floor file; a missing file is an empty one.
pub fn load(path: &Path) -> Result<FloorFile, FloorError> {
    let err = |reason: String| FloorError::File { path: path.display().to_string(), reason };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FloorFile::new()),
        Err(e) => return Err(err(e.to_string())),
        Ok(m) if m.len() > FLOOR_FILE_BYTES_MAX => {
            return Err(err(format!("larger than {FLOOR_FILE_BYTES_MAX} bytes")))
        }
        Ok(_) => {}
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| err(e.to_string()))
}

/// Stores `floor` as its runtime's entry, keeping the other runtimes' entries.
pub fn store(path: &Path, floor: &FloorSummary) -> Result<(), FloorError> {
    let err = |reason: String| FloorError::File { path: path.display().to_string(), reason };
    let mut file = load(path)?;
    file.insert(floor.runtime.clone(), floor.clone());
    let text = serde_json::to_string_pretty(&file).map_err(|e| err(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| err(e.to_string()))
}

/// Renders a floor measurement for the terminal.
pub fn render(f: &FloorSummary) -> String {
    let row = |label: &str, l: &LatencySummary| {
        format!(
            "  {label:<22} p50 {:>8.3}  p90 {:>8.3}  p99 {:>8.3}  p99.9 {:>8.3}  max {:>8.3} ms  ({} samples)\n",
            l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.count
        )
    };
    let mut out = format!(
        "redrain-loadgen floor: {} runtime, generator on cpu {}, echo server on cpu {} ({})\n",
        f.runtime, f.generator_cpu, f.server_cpu, f.measured_at
    );
    let label = format!("round trip ({} x 1)", f.closed_loop_connections);
    out += &row(&label, &f.round_trip);
    out += &format!("  {:<22} {:.0} ok/s\n", "closed-loop rate", f.round_trip_ok_per_s);
    let label = format!("send lag ({:.0}/s)", f.open_loop_rate_per_s);
    out += &row(&label, &f.send_lag);
    out += &row("open-loop latency", &f.open_loop_latency);
    out += &row("open-loop service", &f.open_loop_service);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_echo_server_goes_to_a_cpu_the_generator_does_not_use() {
        assert_eq!(pick_server_cpu(&[1], 2), 0);
        assert_eq!(pick_server_cpu(&[0], 2), 1);
        assert_eq!(pick_server_cpu(&[0, 1], 2), 1, "all allowed: not the generator's first cpu");
        assert_eq!(pick_server_cpu(&[0], 1), 0, "one cpu only: shared");
    }

    #[test]
    fn the_floor_file_keeps_one_entry_per_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("floor.json");
        assert!(load(&path).unwrap().is_empty(), "missing file = no floor");
        let mut f = FloorSummary {
            runtime: "tokio-uring".into(),
            measured_at: "unix 1".into(),
            generator_cpu: 1,
            server_cpu: 0,
            round_trip: LatencySummary { count: 10, p50_ms: 0.05, ..Default::default() },
            closed_loop_connections: 1,
            round_trip_ok_per_s: 20_000.0,
            open_loop_rate_per_s: 1000.0,
            open_loop_connections: 1,
            send_lag: LatencySummary::default(),
            open_loop_latency: LatencySummary::default(),
            open_loop_service: LatencySummary::default(),
        };
        store(&path, &f).unwrap();
        f.runtime = "glommio".into();
        store(&path, &f).unwrap();
        f.round_trip.p50_ms = 0.04;
        store(&path, &f).unwrap();
        let file = load(&path).unwrap();
        assert_eq!(file.len(), 2);
        assert_eq!(file["glommio"].round_trip.p50_ms, 0.04, "a new measurement replaces its runtime's entry");
        assert_eq!(file["tokio-uring"].round_trip.p50_ms, 0.05);
        std::fs::write(&path, "not json").unwrap();
        assert!(matches!(load(&path), Err(FloorError::File { .. })));
    }
}
