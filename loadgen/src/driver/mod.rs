//! Runs a scenario: checks limits, starts one pinned thread per generator
//! thread (each running the configured runtime, see [`backend`]), reads the node's metrics around the measured window, and
//! merges what the threads measured into a [`RunOutput`].

pub mod backend;
pub mod connection;
pub mod pending;
pub mod precise_timer;
pub mod socket;
pub mod thread;

use crate::config::{ConfigError, RunConfig, Runtime};
use crate::node_metrics::{self, NodeMetrics};
use crate::report::summary::{build_summary, LatencySummary, NodeReadings, RunSummary, ScenarioInfo, TimedReading};
use crate::scenario::{Headline, Scenario};
use crate::stats::{self, MergedStats};
use crate::system::{self, SystemError};
use hdrhistogram::Histogram;
use redrain_net::token::{SecretError, TokenKeys};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use thread::{RunShared, Timeline};

/// How long before the end of the measured window the node is read (so the
/// sessions are still held).
const HELD_READING_LEAD_MAX: Duration = Duration::from_millis(200);
const MAIN_POLL: Duration = Duration::from_millis(5);

#[derive(Debug, Error)]
pub enum RunError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    System(#[from] SystemError),
    #[error("auth secret: {0}")]
    Secret(#[from] SecretError),
    #[error("generator thread {thread}: {reason}")]
    Thread { thread: usize, reason: String },
}

/// A finished run: the summary and the histograms behind it.
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub summary: RunSummary,
    pub stats: MergedStats,
    pub headline: Headline,
}

impl RunOutput {
    /// The histogram the scenario reports as its headline (`.hgrm` file).
    pub fn headline_histogram(&self) -> &Histogram<u64> {
        match self.headline {
            Headline::Requests => &self.stats.request_latency_us,
            Headline::Sessions => &self.stats.session_latency_us,
        }
    }
}

fn scrape(admin: Option<std::net::SocketAddr>, warnings: &mut Vec<String>) -> Option<NodeMetrics> {
    let addr = admin?;
    match node_metrics::scrape(addr) {
        Ok(m) => Some(m),
        Err(e) => {
            warnings.push(format!("node metrics unavailable: {e}"));
            None
        }
    }
}

/// Runs `scenario` as configured by `cfg`. Blocks until the run is over.
pub fn run<S: Scenario>(cfg: RunConfig, scenario: S) -> Result<RunOutput, RunError> {
    cfg.validate()?;
    let fd_limit = system::ensure_fd_limit(u64::from(cfg.local_connection_count()), cfg.threads as u64)?;
    let keys = TokenKeys::new(&cfg.secret, None)?;
    let cpus = system::allowed_cpus();
    let mut warnings = Vec::new();
    let info = ScenarioInfo {
        name: scenario.name(),
        counter_names: scenario.counter_names(),
        headline: scenario.headline(),
        load_shape: scenario.load_shape(),
    };
    let before = scrape(cfg.admin, &mut warnings);
    let started_at_unix_ms = redrain_net::time::now_unix_ms();

    let cfg = Arc::new(cfg);
    let scenario = Arc::new(scenario);
    let shared = Arc::new(RunShared::new(cfg.threads, cfg.start_at_unix_ms));
    let process_cpu0 = system::process_cpu_ns();
    let mut handles = Vec::with_capacity(cfg.threads);
    for thread in 0..cfg.threads {
        let cpu = cpus[(cfg.process_index as usize * cfg.threads + thread) % cpus.len()];
        let (cfg, scenario, shared, keys) = (cfg.clone(), scenario.clone(), shared.clone(), keys.clone());
        let handle = std::thread::Builder::new()
            .name(format!("loadgen-{thread}"))
            .spawn(move || match cfg.runtime {
                Runtime::TokioUring => {
                    thread::thread_main::<S, backend::TokioUring>(thread, cpu, cfg, scenario, shared, keys)
                }
                Runtime::Glommio => {
                    thread::thread_main::<S, backend::Glommio>(thread, cpu, cfg, scenario, shared, keys)
                }
            })
            .map_err(|e| RunError::Thread { thread, reason: e.to_string() })?;
        handles.push(handle);
    }

    // Wait for the load start, then read the node just before the window closes.
    let load_start_ns = loop {
        if let Some(s) = shared.load_start_ns() {
            break Some(s);
        }
        if handles.iter().all(|h| h.is_finished()) {
            break None;
        }
        std::thread::sleep(MAIN_POLL);
    };
    let mut held = None;
    let (mut window_start, mut window_end) = (None, None);
    if let Some(load_start_ns) = load_start_ns {
        let tl = Timeline::new(&cfg, load_start_ns);
        let sleep_until_ns = |at_ns: u64| {
            let now_ns = shared.now_ns();
            if at_ns > now_ns {
                std::thread::sleep(Duration::from_nanos(at_ns - now_ns));
            }
        };
        // The node's CPU over the measured window: one reading at each edge,
        // stamped with the middle of the scrape.
        let timed_scrape = |warnings: &mut Vec<String>| {
            let t0 = shared.now_ns();
            let m = scrape(cfg.admin, warnings);
            let t1 = shared.now_ns();
            m.map(|m| TimedReading { metrics: m, at_ns: t0 + (t1 - t0) / 2 })
        };
        sleep_until_ns(tl.measure_start_ns);
        window_start = timed_scrape(&mut warnings);
        let lead_ns = (cfg.duration / 10).min(HELD_READING_LEAD_MAX).as_nanos() as u64;
        sleep_until_ns(tl.measure_end_ns.saturating_sub(lead_ns));
        held = scrape(cfg.admin, &mut warnings);
        sleep_until_ns(tl.measure_end_ns);
        window_end = timed_scrape(&mut warnings);
    }

    let mut per_thread = Vec::with_capacity(handles.len());
    for (thread, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(s)) => per_thread.push(s),
            Ok(Err(e)) => return Err(RunError::Thread { thread, reason: e.to_string() }),
            Err(_) => return Err(RunError::Thread { thread, reason: "panicked".into() }),
        }
    }
    let process_cpu_ns = system::process_cpu_ns().saturating_sub(process_cpu0);
    let mut merged = stats::merge(&per_thread);
    let scenario_histograms = scenario.finish(&mut merged.scenario_counters);
    let node = NodeReadings { before, held, window_start, window_end };
    let mut summary =
        build_summary(&cfg, &info, &merged, &node, started_at_unix_ms, process_cpu_ns, fd_limit, warnings);
    summary.scenario_latency =
        scenario_histograms.iter().map(|(name, h)| ((*name).to_owned(), LatencySummary::of(h))).collect();
    Ok(RunOutput { summary, stats: merged, headline: info.headline })
}
