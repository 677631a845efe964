//! Stand-alone `replica` tool (the same code as `redrain replica`), used by
//! the storage tests and handy before the engine binary wires it in.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use redrain_storage::replica_cli::{run, ReplicaArgs};

#[derive(Parser)]
#[command(name = "storage-replica", about = "redrain replica tools")]
struct Cli {
    #[command(flatten)]
    args: ReplicaArgs,
}

fn main() {
    let cli = Cli::parse();
    match run(cli.args) {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::exit(2);
        }
    }
}
