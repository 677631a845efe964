//! `redrain tickets ...`: the command-line edge of the ticket toolchain.
//!
//! Exit codes: 0 when everything holds; 1 when `verify` or `reconcile` found problems;
//! 2 when the input is refused (an impossible budget, a bad option). Other failures (I/O) are
//! returned as errors for the binary to print.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;

use super::budget::{Budget, BudgetError};
use super::generate::{generate, GenerateError, GenerateOptions};
use super::keyring::Keyring;
use super::plan::{yuan, Plan, Topology};
use super::reconcile::{reconcile, ReconcileOptions};
use super::verify::{verify, VerifyOptions};

/// Exit code: all checks hold.
pub const EXIT_OK: i32 = 0;
/// Exit code: verify or reconcile found problems.
pub const EXIT_PROBLEMS: i32 = 1;
/// Exit code: input refused.
pub const EXIT_REFUSED: i32 = 2;

/// Ticket preparation: plan, generate, verify, reconcile, manage the keyring.
#[derive(clap::Args, Debug)]
pub struct TicketsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: TicketsCommand,
}

/// The ticket subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum TicketsCommand {
    /// Validate a budget and print its fund script.
    Plan(PlanArgs),
    /// Generate ticket files, manifest and keyring.
    Gen(GenArgs),
    /// Decrypt and check every ticket of a generated directory.
    Verify(VerifyArgs),
    /// Check opened-packet records against the generated tickets.
    Reconcile(ReconcileArgs),
    /// Show the keyring or edit its whitelist and blacklist.
    Keyring(KeyringArgs),
    /// Print decrypted tickets of one file as NDJSON (audits, test data).
    Dump(DumpArgs),
}

/// `tickets dump`.
#[derive(clap::Args, Debug)]
pub struct DumpArgs {
    /// Generated ticket directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// Keyring file.
    #[arg(long)]
    pub keyring: PathBuf,
    /// Ticket file name (as in the manifest, e.g. n0000-c000-s000.tickets).
    #[arg(long)]
    pub file: String,
    /// First record index.
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// Records to print.
    #[arg(long, default_value_t = 10)]
    pub count: u64,
}

/// `tickets plan`.
#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// Budget TOML file.
    #[arg(long)]
    pub budget: PathBuf,
    /// Nodes in the fleet (with --cores, prints packets and money per node and core).
    #[arg(long, requires = "cores")]
    pub nodes: Option<u16>,
    /// Cores per node.
    #[arg(long, requires = "nodes")]
    pub cores: Option<u16>,
}

/// `tickets gen`.
#[derive(clap::Args, Debug)]
pub struct GenArgs {
    /// Budget TOML file.
    #[arg(long)]
    pub budget: PathBuf,
    /// Nodes in the fleet.
    #[arg(long)]
    pub nodes: u16,
    /// Cores per node.
    #[arg(long)]
    pub cores: u16,
    /// Output directory for ticket files and the manifest.
    #[arg(long)]
    pub out: PathBuf,
    /// Keyring file to write (mode 0600); default: `<out>.keyring.json` next to the directory.
    #[arg(long)]
    pub keyring: Option<PathBuf>,
    /// Reproducible seed (tests, audits). Without it the master secret comes from the OS.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Plan variant: another set of amounts, order and keys from the same budget.
    #[arg(long, default_value_t = 0)]
    pub variant: u32,
    /// Worker threads; default: the CPUs this process may use.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Replace an existing generation in the output directory.
    #[arg(long)]
    pub overwrite: bool,
}

/// `tickets verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Generated ticket directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// Keyring file.
    #[arg(long)]
    pub keyring: PathBuf,
    /// The budget, to check its hash and totals too.
    #[arg(long)]
    pub budget: Option<PathBuf>,
    /// Worker threads; default: the CPUs this process may use.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Problems listed (all are counted).
    #[arg(long, default_value_t = super::verify::PROBLEMS_LISTED_DEFAULT)]
    pub problems_listed: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `tickets reconcile`.
#[derive(clap::Args, Debug)]
pub struct ReconcileArgs {
    /// Generated ticket directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// Keyring file.
    #[arg(long)]
    pub keyring: PathBuf,
    /// Opened-packet records (NDJSON).
    #[arg(long)]
    pub opened: PathBuf,
    /// Write the creditable opens here (NDJSON).
    #[arg(long)]
    pub credit_out: Option<PathBuf>,
    /// Most opened records read.
    #[arg(long, default_value_t = super::reconcile::OPENED_RECORDS_MAX_DEFAULT)]
    pub opened_max: usize,
    /// Problems listed (all are counted).
    #[arg(long, default_value_t = super::reconcile::PROBLEMS_LISTED_DEFAULT)]
    pub problems_listed: usize,
    /// Worker threads; default: the CPUs this process may use.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `tickets keyring`.
#[derive(clap::Args, Debug)]
pub struct KeyringArgs {
    /// Keyring file.
    #[arg(long)]
    pub keyring: PathBuf,
    /// Add key ids to the blacklist.
    #[arg(long, value_delimiter = ',')]
    pub blacklist: Vec<u16>,
    /// Remove key ids from the blacklist.
    #[arg(long, value_delimiter = ',')]
    pub unblacklist: Vec<u16>,
    /// Add key ids to the whitelist (creating it: from then on only listed keys are accepted).
    #[arg(long, value_delimiter = ',')]
    pub whitelist: Vec<u16>,
    /// Remove the whitelist (accept every key not blacklisted).
    #[arg(long)]
    pub clear_whitelist: bool,
}

fn default_threads(threads: Option<usize>) -> usize {
    threads.unwrap_or_else(|| std::thread::available_parallelism().map(usize::from).unwrap_or(1))
}

fn load_budget(path: &Path) -> Result<super::budget::LoadedBudget, i32> {
    Budget::load(path).map_err(|error| report_budget_error(&error))
}

fn report_budget_error(error: &BudgetError) -> i32 {
    // Every variant's message starts with its field (`BudgetError::field`), except parse and
    // read errors, whose messages carry the TOML position or the path.
    eprintln!("budget refused: {error}");
    EXIT_REFUSED
}

/// Runs a `tickets` subcommand; returns the process exit code.
pub fn run(args: TicketsArgs) -> anyhow::Result<i32> {
    match args.command {
        TicketsCommand::Plan(args) => run_plan(args),
        TicketsCommand::Gen(args) => run_gen(args),
        TicketsCommand::Verify(args) => run_verify(args),
        TicketsCommand::Reconcile(args) => run_reconcile(args),
        TicketsCommand::Keyring(args) => run_keyring(args),
        TicketsCommand::Dump(args) => run_dump(args),
    }
}

fn run_plan(args: PlanArgs) -> anyhow::Result<i32> {
    let loaded = match load_budget(&args.budget) {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let (topology, per_node) = match (args.nodes, args.cores) {
        (Some(nodes), Some(cores)) => (Topology { nodes, cores }, true),
        _ => (Topology { nodes: 1, cores: 1 }, false),
    };
    let plan = match Plan::new(&loaded.budget, topology) {
        Ok(plan) => plan,
        Err(error) => return Ok(report_budget_error(&error)),
    };
    println!("budget sha256: {}", loaded.sha256_hex);
    print!("{}", plan.fund_script(per_node));
    Ok(EXIT_OK)
}

fn run_gen(args: GenArgs) -> anyhow::Result<i32> {
    let loaded = match load_budget(&args.budget) {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let keyring_path = args.keyring.clone().unwrap_or_else(|| {
        let mut path = args.out.as_os_str().to_owned();
        path.push(".keyring.json");
        PathBuf::from(path)
    });
    let options = GenerateOptions {
        out_dir: args.out.clone(),
        keyring_path,
        seed: args.seed,
        variant: args.variant,
        threads: default_threads(args.threads),
        overwrite: args.overwrite,
    };
    let started = Instant::now();
    let report = match generate(&loaded, Topology { nodes: args.nodes, cores: args.cores }, &options) {
        Ok(report) => report,
        Err(GenerateError::Budget(error)) => return Ok(report_budget_error(&error)),
        Err(GenerateError::Options(reason)) => {
            eprintln!("refused: {reason}");
            return Ok(EXIT_REFUSED);
        }
        Err(error) => return Err(error).context("generation failed"),
    };
    let elapsed = started.elapsed();
    let manifest = &report.manifest;
    println!(
        "generated {} packets, {} yuan, {} files, {} keys in {:.2} s ({:.2} M packets/s, {} threads)",
        manifest.packets_total,
        yuan(manifest.amount_fen_total),
        manifest.files.len(),
        manifest.keys_total,
        elapsed.as_secs_f64(),
        manifest.packets_total as f64 / elapsed.as_secs_f64() / 1e6,
        options.threads
    );
    println!(
        "instant credit: packets >= {} yuan ({} packets)",
        yuan(u64::from(manifest.instant_credit_threshold_fen)),
        manifest.instant_credit_packets
    );
    println!("tickets and manifest: {}", options.out_dir.display());
    println!("keyring (mode 0600, keep apart): {}", report.keyring_path.display());
    Ok(EXIT_OK)
}

fn run_verify(args: VerifyArgs) -> anyhow::Result<i32> {
    let keyring = Keyring::load(&args.keyring)?;
    let budget = match args.budget.as_deref().map(load_budget).transpose() {
        Ok(budget) => budget,
        Err(code) => return Ok(code),
    };
    let started = Instant::now();
    let report = verify(
        &args.dir,
        &keyring,
        budget.as_ref(),
        &VerifyOptions { threads: default_threads(args.threads), problems_listed_max: args.problems_listed },
    )?;
    let elapsed = started.elapsed();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
        println!(
            "verified in {:.2} s ({:.2} M records/s)",
            elapsed.as_secs_f64(),
            report.records as f64 / elapsed.as_secs_f64() / 1e6
        );
    }
    Ok(if report.ok { EXIT_OK } else { EXIT_PROBLEMS })
}

fn run_reconcile(args: ReconcileArgs) -> anyhow::Result<i32> {
    let keyring = Keyring::load(&args.keyring)?;
    let report = reconcile(
        &args.dir,
        &keyring,
        &args.opened,
        &ReconcileOptions {
            threads: default_threads(args.threads),
            opened_max: args.opened_max,
            problems_listed_max: args.problems_listed,
            credit_out: args.credit_out,
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(if report.ok { EXIT_OK } else { EXIT_PROBLEMS })
}

fn run_keyring(args: KeyringArgs) -> anyhow::Result<i32> {
    let mut keyring = Keyring::load(&args.keyring)?;
    let edits = !args.blacklist.is_empty()
        || !args.unblacklist.is_empty()
        || !args.whitelist.is_empty()
        || args.clear_whitelist;
    for key_id in args.blacklist.iter().chain(&args.unblacklist).chain(&args.whitelist) {
        if keyring.key(*key_id).is_none() {
            eprintln!("refused: key {key_id} is not in the keyring");
            return Ok(EXIT_REFUSED);
        }
    }
    keyring.blacklist.extend(args.blacklist.iter().copied());
    for key_id in &args.unblacklist {
        keyring.blacklist.remove(key_id);
    }
    if args.clear_whitelist {
        keyring.whitelist = None;
    }
    if !args.whitelist.is_empty() {
        keyring.whitelist.get_or_insert_with(Default::default).extend(args.whitelist.iter().copied());
    }
    if edits {
        keyring.save(&args.keyring)?;
    }
    let coverage_max = keyring.keys.iter().map(|key| key.coverage_fen).max().unwrap_or(0);
    println!(
        "keyring for {:?}: {} keys (ids {}..={}), largest coverage {} yuan (cap {} yuan)",
        keyring.event_name,
        keyring.keys.len(),
        keyring.keys.first().map_or(0, |key| key.key_id),
        keyring.keys.last().map_or(0, |key| key.key_id),
        yuan(coverage_max),
        yuan(keyring.key_coverage_cap_fen)
    );
    println!("blacklist: {:?}", keyring.blacklist);
    match &keyring.whitelist {
        Some(whitelist) => println!("whitelist: {whitelist:?}"),
        None => println!("whitelist: none (every key not blacklisted is accepted)"),
    }
    Ok(EXIT_OK)
}

fn run_dump(args: DumpArgs) -> anyhow::Result<i32> {
    use std::io::Write;
    let keyring = Keyring::load(&args.keyring)?;
    let manifest = super::manifest::Manifest::load(&args.dir)?;
    let Some(file) = manifest.files.iter().find(|file| file.name == args.file) else {
        eprintln!("refused: {} is not a file of the manifest", args.file);
        return Ok(EXIT_REFUSED);
    };
    let decryptor = keyring.decryptor();
    let mut reader = super::file_reader::TicketFileReader::open_at(
        &args.dir.join(&file.name),
        file.tag(),
        args.from.min(file.records),
    )?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for _ in 0..args.count {
        let Some(issued) = reader.next_ticket(&decryptor)? else {
            break;
        };
        let line = match issued.ticket {
            Ok(ticket) => serde_json::json!({
                "index": issued.index,
                "packet_id": ticket.packet_id,
                "amount_fen": ticket.amount_fen,
                "batch_id": ticket.batch_id,
                "key_id": ticket.key_id,
            }),
            Err(error) => serde_json::json!({ "index": issued.index, "error": error.to_string() }),
        };
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(EXIT_OK)
}
