//! Crash safety: a child process appends under load and is killed with
//! SIGKILL at random moments; after every restart each acknowledged record
//! is present, in order, exactly once, and nothing unacknowledged is
//! half-visible (every record present is whole and is the one written).
//!
//! The seed is printed; set `STORAGE_CRASH_SEED` to replay a failure.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use redrain_storage::{FileSystem, GlommioDirectFileSystem, GlommioFileSystem, Log, LogConfig};

const ITERATIONS: usize = 25;

fn seed() -> u64 {
    std::env::var("STORAGE_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| rand::thread_rng().gen())
}

fn file_system(backend: &str) -> Rc<dyn FileSystem> {
    match backend {
        "direct" => Rc::new(GlommioDirectFileSystem),
        _ => Rc::new(GlommioFileSystem),
    }
}

/// Every record of the log, as (lsn, payload).
fn read_log(dir: &std::path::Path, backend: &'static str) -> Vec<(u64, Vec<u8>)> {
    let dir = dir.to_path_buf();
    common::run_on_glommio(Duration::from_secs(30), move || async move {
        let config = LogConfig { segment_bytes_target: 256 << 10, ..LogConfig::default() };
        let log = Log::open(&dir, config, file_system(backend)).await.expect("log reopens after SIGKILL");
        let mut out = Vec::new();
        log.for_each_record(1, |r| out.push((r.lsn, r.payload.to_vec()))).await.expect("log reads back");
        out
    })
}

#[test]
fn sigkill_at_random_moments_never_loses_an_acknowledged_append() {
    crash_and_check(|_| "buffered");
}

/// The same with direct I/O (padded, block-aligned batches); every third
/// run appends buffered, so logs written by one backend are continued by
/// the other (an unaligned tail is padded at start-up).
#[test]
fn sigkill_with_direct_io_never_loses_an_acknowledged_append() {
    crash_and_check(|iteration| if iteration % 3 == 2 { "buffered" } else { "direct" });
}

fn crash_and_check(backend: fn(usize) -> &'static str) {
    let seed = seed();
    println!("crash test seed: {seed} (set STORAGE_CRASH_SEED={seed} to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Under cargo's target dir: /tmp may be a tmpfs, which has no O_DIRECT.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut acked_max = 0u64;
    let mut acked_total = 0usize;
    // Runs whose group commits carried several batches (so some kills
    // landed in such writes).
    let mut packed_runs = 0usize;
    for iteration in 0..ITERATIONS {
        assert!(Instant::now() < deadline, "crash test exceeded its time bound");
        let mut child = Command::new(env!("CARGO_BIN_EXE_storage-crash-child"))
            .arg(dir.path())
            .arg(backend(iteration))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn crash child");
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut packed = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(lsn) = line.strip_prefix("acked ") {
                    acked.push(lsn.parse::<u64>().expect("lsn"));
                } else if let Some(stats) = line.strip_prefix("stats ") {
                    let (commits, batches) = stats.split_once(' ').expect("stats line");
                    packed |= batches.parse::<u64>().unwrap() > commits.parse::<u64>().unwrap();
                }
            }
            (acked, packed)
        });
        let run_for = Duration::from_millis(rng.gen_range(30..200));
        std::thread::sleep(run_for);
        child.kill().expect("SIGKILL the child we started");
        let status = child.wait().unwrap();
        assert!(!status.success(), "child exited by itself: {status}");
        let (acked, packed) = reader.join().unwrap();
        packed_runs += usize::from(packed);
        acked_total += acked.len();
        if let Some(&last) = acked.last() {
            acked_max = acked_max.max(last);
        }

        let records = read_log(dir.path(), backend(iteration + 1));
        // In order, no duplicates, no holes: LSNs are exactly 1..=n.
        for (i, (lsn, payload)) in records.iter().enumerate() {
            assert_eq!(*lsn, i as u64 + 1, "iteration {iteration}: LSN sequence broken");
            assert_eq!(
                payload,
                format!("rec-{lsn}").as_bytes(),
                "iteration {iteration}: record {lsn} is not the one written"
            );
        }
        let durable = records.len() as u64;
        assert!(
            durable >= acked_max,
            "iteration {iteration}: acknowledged up to {acked_max} but only {durable} recovered"
        );
    }
    println!(
        "{ITERATIONS} SIGKILLs, {acked_total} acknowledged appends, last acked LSN {acked_max}, \
         {packed_runs} runs with commits of several batches"
    );
    assert!(packed_runs > 0, "no run wrote a group commit of several batches");
    assert!(acked_max > 0, "the child never acknowledged anything");
}
