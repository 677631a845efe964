//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};
use redrain_storage::Log;

/// Runs `make()` on a fresh glommio executor with a small io_memory (the
/// machine's RLIMIT_MEMLOCK is 8 MiB) and returns its output. Panics if it
/// takes longer than `limit`.
pub fn run_on_glommio<F, T>(limit: Duration, make: impl FnOnce() -> F + Send + 'static) -> T
where
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .spawn(move || async move {
            let work = make();
            futures_lite::future::or(async { Some(work.await) }, async {
                glommio::timer::sleep(limit).await;
                None
            })
            .await
        })
        .expect("spawn executor");
    handle.join().expect("executor thread").expect("test exceeded its time limit")
}

/// Payload used by tests: recognisable and different per index.
pub fn payload(i: u64) -> Vec<u8> {
    let mut p = format!("record-{i:08}-").into_bytes();
    p.resize(20 + (i % 37) as usize, b'x');
    p
}

/// Every record of `log` from LSN 1, with its payload.
pub async fn read_all(log: &Log) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    log.for_each_record(1, |r| out.push((r.lsn, r.payload.to_vec()))).await.expect("read log");
    out
}

/// The segment files in `dir`, in LSN order.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}
