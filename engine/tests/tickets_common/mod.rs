//! Helpers shared by the ticket integration tests: a small budget and a generation into a
//! temporary directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use redrain_engine::tickets::budget::{Budget, LoadedBudget};
use redrain_engine::tickets::generate::{generate, GenerateOptions, GenerateReport};
use redrain_engine::tickets::plan::Topology;

/// Three merchants, two slots, 23,000 packets; a small key cap so that there are many keys.
pub const SMALL_BUDGET: &str = r#"
[event]
name = "test rain"
key_coverage_cap_fen = 2_000_000
instant_credit_top_percent = 10

[[event.slots]]
id = "early"
start = "20:00"
end = "21:00"

[[event.slots]]
id = "late"
start = "21:00"
end = "22:30"

[[merchants]]
id = "tea"
kind = "image"
budget_fen = 3_000_000
packets = 10_000
min_amount_fen = 1
max_amount_fen = 20_000
slot_weights = { early = 60, late = 40 }

[[merchants]]
id = "phones"
kind = "video"
budget_fen = 6_543_210
packets = 8_000
min_amount_fen = 200
max_amount_fen = 5_000
slot_weights = { early = 30, late = 70 }

[[merchants]]
id = "fixed"
kind = "logo"
budget_fen = 440_000
packets = 5_000
min_amount_fen = 88
max_amount_fen = 88
slot_weights = { late = 100 }
"#;

pub const SMALL_TOPOLOGY: Topology = Topology { nodes: 3, cores: 2 };

pub fn small_budget() -> LoadedBudget {
    Budget::parse_with_hash(SMALL_BUDGET).expect("test budget is valid")
}

/// A generation in `root/tickets` with the keyring at `root/keys.json`.
pub struct Generated {
    pub dir: PathBuf,
    pub keyring: PathBuf,
    pub report: GenerateReport,
}

pub fn generate_into(root: &Path, seed: u64, variant: u32, threads: usize) -> Generated {
    let dir = root.join("tickets");
    let keyring = root.join("keys.json");
    let options = GenerateOptions {
        out_dir: dir.clone(),
        keyring_path: keyring.clone(),
        seed: Some(seed),
        variant,
        threads,
        overwrite: false,
    };
    let report = generate(&small_budget(), SMALL_TOPOLOGY, &options).expect("generation succeeds");
    Generated { dir, keyring, report }
}

/// All files of a directory, name -> bytes, sorted.
pub fn read_dir_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (entry.file_name().to_string_lossy().into_owned(), std::fs::read(entry.path()).unwrap())
        })
        .collect();
    files.sort();
    files
}
