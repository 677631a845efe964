//! Stand-in for `redrain tune ...` until the engine binary mounts [`TuneArgs`]:
//! `cargo run -p redrain-tuning --example tune -- check --sessions 100000`.

use clap::Parser;
use redrain_tuning::TuneArgs;

#[derive(Parser)]
#[command(name = "redrain-tune", about = "redrain host checks")]
struct Cli {
    #[command(flatten)]
    tune: TuneArgs,
}

fn main() {
    let cli = Cli::parse();
    match redrain_tuning::run(cli.tune) {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            eprintln!("redrain tune: {error:#}");
            // 2 keeps "could not check" apart from "checked, falls short" (1).
            std::process::exit(2);
        }
    }
}
