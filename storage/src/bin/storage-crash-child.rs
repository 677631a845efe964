//! Test helper for `tests/crash.rs`: opens the log in the given directory,
//! then appends records as fast as it can, printing `acked <lsn>` on stdout
//! (flushed) as each append resolves, until it is killed. The payload of
//! record `lsn` is `rec-<lsn>` so the test can check every record's content.
//! A second argument picks the file backend: `buffered` (default) or
//! `direct` (O_DIRECT, padded block-aligned batches).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::VecDeque;
use std::io::Write;
use std::rc::Rc;

use glommio::{LocalExecutorBuilder, Placement};
use redrain_storage::{FileSystem, GlommioDirectFileSystem, GlommioFileSystem, Log, LogConfig};

/// Appends kept in flight at once: enough to form real group commits.
const IN_FLIGHT_MAX: usize = 256;

fn main() {
    let dir = std::env::args().nth(1).expect("usage: storage-crash-child <dir> [buffered|direct]");
    let direct = match std::env::args().nth(2).as_deref() {
        None | Some("buffered") => false,
        Some("direct") => true,
        Some(other) => {
            eprintln!("unknown backend {other:?}: buffered or direct");
            std::process::exit(2);
        }
    };
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .spawn(move || async move {
            // Small batches: with 256 appends in flight a group commit
            // carries several batches, so the kills land inside such writes.
            let config = LogConfig { segment_bytes_target: 256 << 10, batch_records_max: 16, ..LogConfig::default() };
            let fs: Rc<dyn FileSystem> =
                if direct { Rc::new(GlommioDirectFileSystem) } else { Rc::new(GlommioFileSystem) };
            let log = match Log::open(dir.as_ref(), config, fs).await {
                Ok(log) => log,
                Err(err) => {
                    eprintln!("open failed: {err}");
                    std::process::exit(2);
                }
            };
            let mut next = log.durable_lsn() + 1;
            let mut in_flight = VecDeque::new();
            let stdout = std::io::stdout();
            loop {
                while in_flight.len() < IN_FLIGHT_MAX {
                    let fut = log.append(1, format!("rec-{next}").as_bytes());
                    in_flight.push_back((next, fut));
                    next += 1;
                }
                let (expected, fut) = in_flight.pop_front().expect("non-empty");
                match fut.await {
                    Ok(lsn) if lsn == expected => {
                        let mut out = stdout.lock();
                        let _ = writeln!(out, "acked {lsn}");
                        if lsn % 1024 == 0 {
                            let stats = log.stats();
                            let _ = writeln!(out, "stats {} {}", stats.commits_total, stats.batches_total);
                        }
                        let _ = out.flush();
                    }
                    Ok(lsn) => {
                        eprintln!("append expected LSN {expected}, got {lsn}");
                        std::process::exit(3);
                    }
                    Err(err) => {
                        eprintln!("append failed: {err}");
                        std::process::exit(4);
                    }
                }
            }
        })
        .expect("spawn executor");
    let _ = handle.join();
}
