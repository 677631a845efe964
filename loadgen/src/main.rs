//! `redrain-loadgen`: see `redrain-loadgen --help` and docs/loadgen.md.

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use redrain_loadgen::cli::{Cli, Command, RunArgs};
use redrain_loadgen::config::RunConfig;
use redrain_loadgen::floor::{self, FloorConfig};
use redrain_loadgen::report::summary::add_counts;
use redrain_loadgen::report::{compare, hgrm, merge, svg, table};
use redrain_loadgen::scenario::chat::{self, ChatParams, ChatScenario};
use redrain_loadgen::scenario::connect::ConnectScenario;
use redrain_loadgen::scenario::ping::PingScenario;
use redrain_loadgen::scenario::shake::ShakeScenario;
use redrain_loadgen::scenario::Scenario;
use redrain_loadgen::stats::new_latency_histogram;
use redrain_loadgen::{processes, system, RunSummary};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The headline histogram, rebuilt from the summary's exact bucket counts.
fn headline_histogram(s: &RunSummary) -> Histogram<u64> {
    let mut h = new_latency_histogram();
    if let Some(hs) = &s.histograms {
        add_counts(&mut h, if s.headline == "sessions" { &hs.session_latency_us } else { &hs.request_latency_us });
    }
    h
}

fn write_outputs(
    summary: &RunSummary,
    json: &Option<PathBuf>,
    hgrm_path: &Option<PathBuf>,
    svg_path: &Option<PathBuf>,
) -> anyhow::Result<()> {
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(summary)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    let h = headline_histogram(summary);
    if let Some(path) = hgrm_path {
        std::fs::write(path, hgrm::render(&h)).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = svg_path {
        std::fs::write(path, svg::render(summary, &h)).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Attaches the stored floor of the run's runtime (a broken file is a warning).
fn attach_floor(summary: &mut RunSummary, path: &std::path::Path) {
    match floor::load(path) {
        Ok(mut file) => summary.floor = file.remove(&summary.config.runtime),
        Err(e) => summary.warnings.push(format!("floor not shown: {e}")),
    }
}

fn finish(args: &RunArgs, mut summary: RunSummary) -> anyhow::Result<ExitCode> {
    attach_floor(&mut summary, &args.floor_file);
    print!("{}", table::render(&summary));
    write_outputs(&summary, &args.json, &args.hgrm, &args.svg)?;
    if summary.sessions.established == 0 {
        eprintln!("no session could be established");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("redrain-loadgen: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// One run: in this process, or (`--processes N`, parent) in N children merged.
fn run_scenario<S: Scenario>(args: &RunArgs, cfg: RunConfig, scenario: S) -> anyhow::Result<ExitCode> {
    if cfg.process_count > 1 && args.start_at_unix_ms.is_none() {
        cfg.validate()?;
        let dir = tempfile::tempdir().context("temporary directory for the processes' summaries")?;
        let parent_args: Vec<OsString> = std::env::args_os().skip(1).collect();
        let per_process = cfg.connections.div_ceil(cfg.process_count);
        let start_at = processes::start_at_unix_ms(per_process, cfg.connect_rate_per_s);
        let paths = processes::run_children(&parent_args, cfg.process_count, start_at, dir.path())?;
        let merged = merge::merge_files(&paths)?;
        return finish(args, merged);
    }
    let out = redrain_loadgen::run(cfg, scenario)?;
    finish(args, out.summary)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let cpus = system::allowed_cpus().len();
    match cli.command {
        Command::Connect(args) => {
            let cfg = args.to_config(cpus)?;
            run_scenario(&args, cfg, ConnectScenario)
        }
        Command::Ping { run: args, payload_bytes } => {
            let cfg = args.to_config(cpus)?;
            run_scenario(&args, cfg, PingScenario::new(payload_bytes))
        }
        Command::Shake { run: args, ignore_shake_interval, no_open, ignore_backoff } => {
            let cfg = args.to_config(cpus)?;
            run_scenario(&args, cfg, ShakeScenario::new(!ignore_shake_interval, !no_open).obey_backoff(!ignore_backoff))
        }
        Command::Chat { run: args, groups, group_size, sync_every, ignore_backoff } => {
            let cfg = args.to_config(cpus)?;
            let params = ChatParams { groups, group_size, sync_every };
            // With --processes the parent only spawns; each child makes its own groups.
            let parent = cfg.process_count > 1 && args.start_at_unix_ms.is_none();
            let ids = if parent { Vec::new() } else { chat::create_groups(&cfg, &params)? };
            let scenario = if parent {
                ChatScenario::new(&cfg, ChatParams { groups: 0, ..params }, &[])?
            } else {
                ChatScenario::new(&cfg, params, &ids)?
            };
            run_scenario(&args, cfg, scenario.obey_backoff(!ignore_backoff))
        }
        Command::Compare { a, b } => {
            let sa = compare::load(&a)?;
            let sb = compare::load(&b)?;
            print!("{}", compare::render(&a.display().to_string(), &b.display().to_string(), &sa, &sb));
            Ok(ExitCode::SUCCESS)
        }
        Command::Merge { inputs, json, hgrm, svg } => {
            let merged = merge::merge_files(&inputs)?;
            print!("{}", table::render(&merged));
            write_outputs(&merged, &json, &hgrm, &svg)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Floor(a) => {
            let fc = FloorConfig {
                runtime: a.runtime,
                duration: a.duration,
                warmup: a.warmup,
                rate_per_s: a.rate,
                connections: a.connections,
                closed_loop_connections: a.closed_loop_connections,
                spin_before_send: a.spin_before_send,
                server_cpu: a.server_cpu,
            };
            let f = floor::measure(&fc)?;
            print!("{}", floor::render(&f));
            floor::store(&a.floor_file, &f)?;
            println!("  stored in {}", a.floor_file.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
