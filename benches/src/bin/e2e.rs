//! End-to-end histogram benchmark: one node core against one generator core.
//!
//! ```text
//! cargo run --release -p redrain-benches --bin e2e -- --out results/$(date +%F)
//! ```
//!
//! Starts a reference server (benches' trivial ping server) and then a node
//! (`redrain serve --cores 1`, own ports, own data dir in a temp dir), each
//! pinned to `--node-cpu`, while the generator runs on `--loadgen-cpu`. For each
//! it measures the max ping rate (closed loop); for the node also open-loop
//! runs at 10% and 50% of that max. Every run writes .json, .hgrm and .svg into
//! the output directory; summary.json / summary.md hold the figures and the
//! ratios, and `--baseline` fails the process only when a ratio regressed by
//! more than the baseline's factor.

use anyhow::{bail, Context};
use clap::Parser;
use redrain_benches::baseline::{self, Baseline};
use redrain_benches::reference_server::ReferenceServer;
use redrain_loadgen::config::{LoadMode, RunConfig};
use redrain_loadgen::driver::RunOutput;
use redrain_loadgen::duration::parse_duration;
use redrain_loadgen::node_process::{self, NodeProcess};
use redrain_loadgen::report::{hgrm, svg, table};
use redrain_loadgen::scenario::ping::PingScenario;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Connections and requests in flight per connection of a max-rate run.
const MAX_RUN_CONNECTIONS: u32 = 16;
const MAX_RUN_IN_FLIGHT: u32 = 32;
/// Connections of the fixed-rate runs.
const RATE_RUN_CONNECTIONS: u32 = 16;
/// Connection sweep, short form: saturated cost at this many connections, 1 in flight...
const SWEEP_NARROW_CONNECTIONS: u32 = 100;
/// ...and the cost at a tenth of that rate from the narrow and from this many connections.
const SWEEP_WIDE_CONNECTIONS: u32 = 2_000;
/// Ping payload of every run.
const PAYLOAD_BYTES: usize = 16;

#[derive(Debug, Parser)]
#[command(about = "End-to-end ping benchmark: node on one core, generator on another")]
struct Args {
    /// Output directory (created).
    #[arg(long)]
    out: PathBuf,
    /// Short runs for CI (about 20 s in total).
    #[arg(long)]
    quick: bool,
    /// The redrain binary (default: build and use target/release/redrain).
    #[arg(long)]
    node_bin: Option<PathBuf>,
    /// Do not run `cargo build` for the node; use the binary as found.
    #[arg(long)]
    no_build: bool,
    #[arg(long, default_value_t = 0)]
    node_cpu: usize,
    #[arg(long, default_value_t = 1)]
    loadgen_cpu: usize,
    /// Measured duration of each run (default 10s, 2s with --quick).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Fail when a ratio regressed against this baseline by more than its factor.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Only measure the reference server (the generator's own capacity).
    #[arg(long)]
    reference_only: bool,
}

#[derive(Debug, Serialize)]
struct RunRecord {
    name: String,
    target: String,
    mode: String,
    throughput_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    errors: u64,
    correctness_violations: u64,
    generator_limited: bool,
    generator_cpu_max: f64,
    /// Busy fraction of the server's core over the run (node runs only).
    server_cpu_utilization: Option<f64>,
    /// CPU seconds (user + system) over the whole run, warm-up included.
    server_cpu_s: Option<f64>,
    generator_cpu_s: f64,
    /// Requests answered over the whole run, warm-up included.
    requests_total: u64,
    /// Busy fraction of the generator's core (all tasks, softirq, steal).
    generator_core_busy: Option<f64>,
}

#[derive(Debug, Serialize)]
struct E2eSummary {
    schema: &'static str,
    command: String,
    node_cpu: usize,
    loadgen_cpu: usize,
    duration_s: f64,
    runs: Vec<RunRecord>,
    ratios: BTreeMap<String, f64>,
    info: BTreeMap<String, f64>,
    verdicts: Vec<baseline::Verdict>,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("benches/ has a parent").to_path_buf()
}

fn node_binary(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.node_bin {
        return Ok(p.clone());
    }
    let root = workspace_root();
    if !args.no_build {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        eprintln!("e2e: building the node (cargo build --release -p redrain-engine --bin redrain)");
        let status = std::process::Command::new(cargo)
            .args(["build", "--release", "-p", "redrain-engine", "--bin", "redrain"])
            .current_dir(&root)
            .status()
            .context("running cargo build")?;
        if !status.success() {
            bail!("building the node failed: {status}");
        }
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
        return Ok(target.join("release").join("redrain"));
    }
    Ok(node_process::find_node_binary()?)
}

fn base_config(target: SocketAddr, secret: &[u8], duration: Duration, warmup: Duration) -> RunConfig {
    let mut cfg = RunConfig::with_defaults(target, secret.to_vec());
    cfg.duration = duration;
    cfg.warmup = warmup;
    cfg.interval = RunConfig::interval_for(duration);
    cfg.threads = 1;
    cfg.drain_timeout = Duration::from_secs(3);
    cfg
}

struct Runner<'a> {
    out: &'a Path,
    runs: Vec<RunRecord>,
}

impl Runner<'_> {
    fn run(&mut self, name: &str, cfg: RunConfig, server_cpu_s: &dyn Fn() -> Option<f64>) -> anyhow::Result<RunOutput> {
        let target = cfg.target.to_string();
        let cpu0 = server_cpu_s();
        let wall0 = std::time::Instant::now();
        let out = redrain_loadgen::run(cfg, PingScenario::new(PAYLOAD_BYTES)).with_context(|| format!("run {name}"))?;
        let server_cpu_s = match (server_cpu_s(), cpu0) {
            (Some(c1), Some(c0)) => Some(c1 - c0),
            _ => None,
        };
        let server_cpu = server_cpu_s.map(|c| c / wall0.elapsed().as_secs_f64());
        println!("== {name}");
        print!("{}", table::render(&out.summary));
        if let Some(u) = server_cpu {
            println!("  server cpu {:.0}% of one core over the whole run (ramp and drain included)", u * 100.0);
        }
        let s = &out.summary;
        std::fs::write(self.out.join(format!("{name}.json")), serde_json::to_string_pretty(s)? + "\n")?;
        std::fs::write(self.out.join(format!("{name}.hgrm")), hgrm::render(out.headline_histogram()))?;
        std::fs::write(self.out.join(format!("{name}.svg")), svg::render(s, out.headline_histogram()))?;
        self.runs.push(RunRecord {
            name: name.to_owned(),
            target,
            mode: s.config.mode.clone(),
            throughput_per_s: s.throughput_per_s,
            p50_ms: s.latency.p50_ms,
            p99_ms: s.latency.p99_ms,
            p999_ms: s.latency.p999_ms,
            max_ms: s.latency.max_ms,
            errors: s.requests.errors,
            correctness_violations: s.correctness_violations(),
            generator_limited: s.generator.limited,
            generator_cpu_max: s.generator.cpu_utilization_max,
            server_cpu_utilization: server_cpu,
            server_cpu_s,
            generator_cpu_s: s.generator.process_cpu_s,
            requests_total: s.requests.ok + s.requests.warmup_sent,
            generator_core_busy: s.generator.core_busy.first().copied().flatten(),
        });
        if s.sessions.established == 0 {
            bail!("run {name}: no session established");
        }
        Ok(out)
    }
}

fn max_config(target: SocketAddr, secret: &[u8], d: Duration, w: Duration) -> RunConfig {
    let mut cfg = base_config(target, secret, d, w);
    cfg.connections = MAX_RUN_CONNECTIONS;
    cfg.mode = LoadMode::ClosedLoop { in_flight_per_connection: MAX_RUN_IN_FLIGHT };
    cfg
}

fn rate_config(target: SocketAddr, secret: &[u8], d: Duration, w: Duration, rate: f64) -> RunConfig {
    let mut cfg = base_config(target, secret, d, w);
    cfg.connections = RATE_RUN_CONNECTIONS;
    cfg.mode = LoadMode::OpenLoop { rate_per_s: rate.max(1.0) };
    cfg.pipeline_depth = 4096;
    cfg
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let duration = args.duration.unwrap_or(if args.quick { Duration::from_secs(2) } else { Duration::from_secs(10) });
    let warmup = if args.quick { Duration::from_millis(500) } else { Duration::from_secs(2) };
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let baseline = args.baseline.as_deref().map(Baseline::load).transpose()?;
    let node_bin = if args.reference_only { None } else { Some(node_binary(&args)?) };

    // The generator's threads inherit this thread's mask: its own core only.
    redrain_loadgen::system::pin_current_thread(args.loadgen_cpu)?;
    let work = tempfile::tempdir()?;
    let mut runner = Runner { out: &args.out, runs: Vec::new() };
    let mut ratios = BTreeMap::new();
    let mut info = BTreeMap::new();

    let secret: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
    let reference = ReferenceServer::start(args.node_cpu, &secret)?;
    let ref_max = runner
        .run("reference_max", max_config(reference.addr, &secret, duration, warmup), &|| reference.cpu_seconds())?;
    drop(reference);
    let ref_cpu_us_per_ping =
        runner.runs.last().and_then(|r| r.server_cpu_s.map(|s| s * 1e6 / r.requests_total.max(1) as f64));
    if let Some(us) = ref_cpu_us_per_ping {
        info.insert("reference_cpu_us_per_ping".into(), us);
    }
    let ref_tp = ref_max.summary.throughput_per_s;
    info.insert("reference_max_throughput_per_s".into(), ref_tp);
    info.insert("reference_max_generator_cpu".into(), ref_max.summary.generator.cpu_utilization_max);

    if let Some(bin) = node_bin {
        let node = NodeProcess::start(&bin, work.path(), 1, Some(&[args.node_cpu]))?;
        let node_cpu = || node.cpu_seconds();
        let max = runner.run("node_max", max_config(node.client, &node.secret, duration, warmup), &node_cpu)?;
        let node_tp = max.summary.throughput_per_s;
        let mut low = None;
        let mut mid = None;
        for (pct, slot) in [(10u32, &mut low), (50, &mut mid)] {
            let rate = node_tp * f64::from(pct) / 100.0;
            let cfg = rate_config(node.client, &node.secret, duration, warmup, rate);
            *slot = Some(runner.run(&format!("node_rate_{pct}pct"), cfg, &node_cpu)?);
        }
        let (low, mid) = (low.expect("ran"), mid.expect("ran"));
        ratios.insert("node_over_reference_max_throughput".into(), node_tp / ref_tp);
        ratios.insert("p50_at_50pct_over_p50_at_10pct".into(), mid.summary.latency.p50_ms / low.summary.latency.p50_ms);
        // Reported, not gated: it swung from 0.1 to 2 between runs on the development VM.
        info.insert("p99_at_50pct_over_p99_at_10pct".into(), mid.summary.latency.p99_ms / low.summary.latency.p99_ms);
        info.insert("node_max_throughput_per_s".into(), node_tp);
        info.insert("node_max_generator_cpu".into(), max.summary.generator.cpu_utilization_max);
        info.insert("generator_drive_over_node_max".into(), ref_tp / node_tp);
        if let Some(r) = runner.runs.iter().find(|r| r.name == "node_max") {
            // CPU cost per ping on each side (softirq time is charged to
            // neither); their quotient is how many node cores' worth of pings
            // one generator core can drive.
            let requests = r.requests_total.max(1) as f64;
            let gen_us = r.generator_cpu_s * 1e6 / requests;
            info.insert("node_max_generator_cpu_us_per_ping".into(), gen_us);
            if let (Some(u), Some(node_s)) = (r.server_cpu_utilization, r.server_cpu_s) {
                let node_us = node_s * 1e6 / requests;
                info.insert("node_max_server_cpu".into(), u);
                info.insert("node_max_node_cpu_us_per_ping".into(), node_us);
                ratios.insert("generator_cores_needed_per_node_core".into(), gen_us / node_us);
                if let Some(ref_us) = ref_cpu_us_per_ping {
                    ratios.insert("node_cpu_per_ping_over_reference".into(), node_us / ref_us);
                }
            }
            if let Some(b) = r.generator_core_busy {
                info.insert("node_max_generator_core_busy".into(), b);
            }
        }
        info.insert("node_p99_ms_at_10pct".into(), low.summary.latency.p99_ms);
        info.insert("node_p99_ms_at_50pct".into(), mid.summary.latency.p99_ms);

        // The connection sweep's short form (benches/conn-sweep.sh is the full one): node CPU
        // per ping from the node's /metrics over each measured window (ramp excluded).
        let window_cpu = |o: &RunOutput| o.summary.node.as_ref().and_then(|n| n.node_cpu_us_per_request);
        let mut sat = base_config(node.client, &node.secret, duration, warmup);
        sat.admin = Some(node.admin);
        sat.connections = SWEEP_NARROW_CONNECTIONS;
        sat.mode = LoadMode::ClosedLoop { in_flight_per_connection: 1 };
        let sat = runner.run("node_saturated_100conns", sat, &node_cpu)?;
        let rate = sat.summary.throughput_per_s / 10.0;
        let mut fixed = Vec::new();
        for conns in [SWEEP_NARROW_CONNECTIONS, SWEEP_WIDE_CONNECTIONS] {
            let mut cfg = rate_config(node.client, &node.secret, duration, warmup, rate);
            cfg.admin = Some(node.admin);
            cfg.connections = conns;
            fixed.push(runner.run(&format!("node_10pct_{conns}conns"), cfg, &node_cpu)?);
        }
        if let (Some(sat_us), Some(narrow_us), Some(wide_us)) =
            (window_cpu(&sat), window_cpu(&fixed[0]), window_cpu(&fixed[1]))
        {
            info.insert("node_saturated_cpu_us_per_ping_100conns".into(), sat_us);
            info.insert("node_10pct_cpu_us_per_ping_100conns".into(), narrow_us);
            info.insert("node_10pct_cpu_us_per_ping_2000conns".into(), wide_us);
            info.insert("node_10pct_p99_ms_2000conns".into(), fixed[1].summary.latency.p99_ms);
            // Reported, not gated: it moves with how cheap a wake-up is on the machine (4.5-7
            // on the development VM), and the goal of 2 is not met yet (docs/performance.md).
            info.insert("cpu_per_ping_at_10pct_over_saturated".into(), narrow_us / sat_us);
            ratios.insert("cpu_per_ping_2000conns_over_100conns".into(), wide_us / narrow_us);
        }
    }

    let verdicts = baseline.as_ref().map(|b| baseline::check(b, &ratios)).unwrap_or_default();
    let summary = E2eSummary {
        schema: "redrain-e2e/1",
        command: std::env::args().collect::<Vec<_>>().join(" "),
        node_cpu: args.node_cpu,
        loadgen_cpu: args.loadgen_cpu,
        duration_s: duration.as_secs_f64(),
        runs: runner.runs,
        ratios,
        info,
        verdicts,
    };
    std::fs::write(args.out.join("summary.json"), serde_json::to_string_pretty(&summary)? + "\n")?;
    let md = render_markdown(&summary);
    std::fs::write(args.out.join("summary.md"), &md)?;
    println!("\n{md}");
    let regressed: Vec<&baseline::Verdict> = summary.verdicts.iter().filter(|v| v.regressed).collect();
    if !regressed.is_empty() {
        eprintln!("e2e: {} ratio(s) regressed beyond the baseline factor", regressed.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn render_markdown(s: &E2eSummary) -> String {
    use std::fmt::Write;
    let mut md = String::new();
    let _ = writeln!(md, "# e2e ping benchmark\n\n`{}`\n", s.command);
    let _ = writeln!(
        md,
        "| run | mode | ok/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | violations | gen. cpu | gen. limited | server cpu |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    for r in &s.runs {
        let server = r.server_cpu_utilization.map(|u| format!("{:.0}%", u * 100.0)).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {:.0}% | {} | {server} |",
            r.name,
            r.mode,
            r.throughput_per_s,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.max_ms,
            r.errors,
            r.correctness_violations,
            r.generator_cpu_max * 100.0,
            r.generator_limited
        );
    }
    let _ = writeln!(md, "\n| ratio | value |\n|---|---:|");
    for (k, v) in &s.ratios {
        let _ = writeln!(md, "| {k} | {v:.3} |");
    }
    let _ = writeln!(md, "\n| figure | value |\n|---|---:|");
    for (k, v) in &s.info {
        let _ = writeln!(md, "| {k} | {v:.3} |");
    }
    if !s.verdicts.is_empty() {
        let _ = writeln!(md, "\n| ratio | baseline | current | worse by | regressed |\n|---|---:|---:|---:|---|");
        for v in &s.verdicts {
            let f = |x: Option<f64>| x.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
            let _ = writeln!(
                md,
                "| {} | {:.3} | {} | {} | {} |",
                v.name,
                v.baseline,
                f(v.current),
                f(v.worse_by),
                v.regressed
            );
        }
    }
    md
}
