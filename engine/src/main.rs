//! The `redrain` binary (minimal: the ticket toolchain only, until the node's main lands).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

#[derive(clap::Parser, Debug)]
#[command(name = "redrain", about = "redrain access node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Red-packet ticket preparation (plan, gen, verify, reconcile, keyring).
    Tickets(redrain_engine::tickets::cli::TicketsArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Tickets(args) => match redrain_engine::tickets::cli::run(args) {
            Ok(code) => code,
            Err(error) => {
                eprintln!("error: {error:#}");
                2
            }
        },
    };
    std::process::exit(code);
}
