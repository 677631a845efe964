//! `redrain-loadgen`: see `redrain-loadgen --help` and docs/loadgen.md.

use anyhow::Context;
use clap::Parser;
use redrain_loadgen::cli::{Cli, Command, RunArgs};
use redrain_loadgen::driver::RunOutput;
use redrain_loadgen::report::{compare, hgrm, svg, table};
use redrain_loadgen::scenario::connect::ConnectScenario;
use redrain_loadgen::scenario::ping::PingScenario;
use redrain_loadgen::scenario::shake::ShakeScenario;
use redrain_loadgen::system;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn write_outputs(args: &RunArgs, out: &RunOutput) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&out.summary)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.hgrm {
        std::fs::write(path, hgrm::render(out.headline_histogram()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, svg::render(&out.summary, out.headline_histogram()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn finish(args: &RunArgs, out: RunOutput) -> anyhow::Result<ExitCode> {
    print!("{}", table::render(&out.summary));
    write_outputs(args, &out)?;
    if out.summary.sessions.established == 0 {
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

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let cpus = system::allowed_cpus().len();
    match cli.command {
        Command::Connect(args) => {
            let cfg = args.to_config(cpus)?;
            let out = redrain_loadgen::run(cfg, ConnectScenario)?;
            finish(&args, out)
        }
        Command::Ping { run: args, payload_bytes } => {
            let cfg = args.to_config(cpus)?;
            let out = redrain_loadgen::run(cfg, PingScenario::new(payload_bytes))?;
            finish(&args, out)
        }
        Command::Shake { run: args, ignore_shake_interval, no_open } => {
            let cfg = args.to_config(cpus)?;
            let out = redrain_loadgen::run(cfg, ShakeScenario::new(!ignore_shake_interval, !no_open))?;
            finish(&args, out)
        }
        Command::Compare { a, b } => {
            let sa = compare::load(&a)?;
            let sb = compare::load(&b)?;
            print!("{}", compare::render(&a.display().to_string(), &b.display().to_string(), &sa, &sb));
            Ok(ExitCode::SUCCESS)
        }
    }
}
