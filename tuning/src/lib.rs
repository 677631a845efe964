//! redrain host tuning: `redrain tune check [--apply]` and the capacity model behind it.
//!
//! A redrain node holds hundreds of thousands of long-lived TCP sessions on one
//! thread-per-core io_uring process. That only works when the host allows it: enough file
//! descriptors, enough locked memory for io_uring registered buffers, listen queues that
//! survive a reconnect storm, TCP memory sized for many small sockets. This crate checks
//! those settings and, on request, sets the sysctls among them.
//!
//! Layers, from the bottom:
//! - [`parse`]: pure parsers of the `/proc` and `/sys` file formats;
//! - [`host`]: [`Host`], the injectable `/proc` and `/sys` roots, bounded reads and writes;
//! - [`recommend`]: pure capacity arithmetic from a [`Target`] to recommended values;
//! - [`check`]: reads each setting and compares it, producing a [`Report`];
//! - [`apply`]: writes the sysctls that fall short and reports each result;
//! - [`render`]: text and JSON output;
//! - [`process`]: this process's allowed CPUs and open-file limit (used by the node and
//!   the load generator at start-up).
//!
//! The `redrain` binary mounts [`TuneArgs`] as its `tune` subcommand and calls [`run`].
//! Exit codes: [`check::EXIT_CODE_OK`] (0) when every item is ok, info or n/a;
//! [`check::EXIT_CODE_BELOW_RECOMMENDATION`] (1) when any is low, high or differs (after
//! `--apply`, judged on a re-check); errors (bad arguments, unknown `--pid`) come back as
//! `Err` for the binary to report.

pub mod apply;
pub mod check;
pub mod host;
pub mod parse;
pub mod process;
pub mod recommend;
pub mod render;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

pub use check::{Item, Report, Status};
pub use host::Host;
pub use recommend::Target;

/// Largest `--sessions` accepted: far above what one host can hold, small enough that
/// no arithmetic in the model comes near overflow.
pub const SESSIONS_ARG_MAX: u64 = 1_000_000_000;

/// Largest `--cores` accepted (Linux's `NR_CPUS` maximum).
pub const CORES_ARG_MAX: u64 = 8192;

/// Largest `--io-memory-kib` accepted: 64 GiB per executor.
pub const IO_MEMORY_KIB_ARG_MAX: u64 = 64 << 20;

/// `redrain tune ...`: host checks for a redrain node.
#[derive(Debug, clap::Args)]
pub struct TuneArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: TuneCommand,
}

/// Subcommands of `redrain tune`.
#[derive(Debug, clap::Subcommand)]
pub enum TuneCommand {
    /// Compare the host's settings with what the target needs. Exit 0 when all are ok,
    /// 1 when any falls short.
    Check(CheckArgs),
}

/// Options of `redrain tune check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// Concurrent sessions to size the host for.
    #[arg(long, default_value_t = recommend::SESSIONS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..=SESSIONS_ARG_MAX))]
    pub sessions: u64,
    /// Shard cores the node runs [default: CPUs the inspected process may run on].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=CORES_ARG_MAX))]
    pub cores: Option<u64>,
    /// io_uring registered memory per executor in KiB (glommio `io_memory`).
    #[arg(long, default_value_t = recommend::IO_MEMORY_BYTES_PER_EXECUTOR_DEFAULT / 1024,
          value_parser = clap::value_parser!(u64).range(64..=IO_MEMORY_KIB_ARG_MAX))]
    pub io_memory_kib: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write the recommended value of every sysctl that falls short (needs root; lasts
    /// until reboot). Other items are reported with what to do instead.
    #[arg(long)]
    pub apply: bool,
    /// Read resource limits and allowed CPUs of this process (a running `redrain serve`)
    /// instead of the `tune` process itself.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Root of procfs; point at a fake tree to test (notably `--apply`) safely.
    #[arg(long, default_value = "/proc")]
    pub proc_root: PathBuf,
    /// Root of sysfs; point at a fake tree to test safely.
    #[arg(long, default_value = "/sys")]
    pub sys_root: PathBuf,
}

/// Runs `redrain tune ...`, printing to stdout, and returns the process exit code.
pub fn run(args: TuneArgs) -> anyhow::Result<i32> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    run_to(args, &mut out)
}

/// [`run`] with the output going to `out`, for tests.
pub fn run_to(args: TuneArgs, out: &mut dyn Write) -> anyhow::Result<i32> {
    match args.command {
        TuneCommand::Check(check_args) => run_check(&check_args, out),
    }
}

fn host_for(args: &CheckArgs) -> anyhow::Result<Host> {
    let mut host = Host::system();
    host.proc_root = args.proc_root.clone();
    host.sys_root = args.sys_root.clone();
    if let Some(pid) = args.pid {
        host.process = pid.to_string();
        let dir = host.proc_root.join(&host.process);
        anyhow::ensure!(dir.is_dir(), "no process {pid}: {} does not exist", dir.display());
    }
    Ok(host)
}

fn run_check(args: &CheckArgs, out: &mut dyn Write) -> anyhow::Result<i32> {
    let host = host_for(args)?;
    let cores = match args.cores {
        Some(cores) => cores,
        None => check::allowed_cpu_count(&host)
            .ok()
            .filter(|&count| count > 0)
            .or_else(|| std::thread::available_parallelism().ok().map(|count| count.get() as u64))
            .unwrap_or(1),
    };
    let target = Target {
        sessions: args.sessions,
        cores,
        io_memory_bytes_per_executor: args.io_memory_kib.saturating_mul(1024),
    };
    let report = check::check_host(&host, &target);
    let (applied, after_apply) = if args.apply {
        let outcomes = apply::apply_report(&host, &report);
        let after = check::check_host(&host, &target);
        (Some(outcomes), Some(after))
    } else {
        (None, None)
    };
    let exit_code = after_apply.as_ref().unwrap_or(&report).exit_code();
    let applied = applied.as_deref();
    let after_apply = after_apply.as_ref();
    let written = if args.json {
        render::write_json(out, &report, applied, after_apply, exit_code)
    } else {
        render::write_text(out, &report, applied, after_apply, exit_code)
    };
    match written {
        Ok(()) => Ok(exit_code),
        // `tune check | head` closing the pipe early is not a failed check.
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(exit_code),
        Err(error) => Err(error).context("writing the report"),
    }
}
