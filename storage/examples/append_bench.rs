//! Histogram benchmark of durable appends (open loop, coordinated omission
//! corrected: latency counts from each append's intended send time).
//!
//! ```text
//! cargo run --release -p redrain-storage --example append_bench -- \
//!     --dir /var/tmp/redrain-bench --rates 50000,200000,800000 --step-secs 3
//! ```
//!
//! In one run it measures: the disk's sequential write bandwidth (buffered
//! and O_DIRECT), group-commit-shaped writes (write + fdatasync, buffered vs
//! O_DIRECT), then the local log and the replicated log (two peers on
//! loopback, in their own executor threads) at increasing offered rates and
//! at saturation (closed loop with a large window).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use clap::Parser;
use glommio::io::{BufferedFile, DmaFile};
use glommio::{LocalExecutorBuilder, Placement};
use redrain_storage::metrics::ValueHistogram;
use redrain_storage::{
    FileSystem, GlommioDirectFileSystem, GlommioFileSystem, Log, LogConfig, ReplicaServer, ReplicaServerConfig,
    ReplicatedLog, ReplicationConfig, StreamId,
};

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Scratch directory on the disk under test (emptied first).
    #[arg(long, default_value = "/var/tmp/redrain-append-bench")]
    dir: PathBuf,
    /// Offered rates (records/s) for the open-loop steps.
    #[arg(long, value_delimiter = ',', default_value = "20000,100000,400000,1000000")]
    rates: Vec<u64>,
    /// Seconds per step.
    #[arg(long, default_value_t = 3.0)]
    step_secs: f64,
    /// Payload bytes per record.
    #[arg(long, default_value_t = 100)]
    record_bytes: usize,
    /// MiB written by the sequential-bandwidth probe.
    #[arg(long, default_value_t = 512)]
    seq_mib: u64,
    /// Appends in flight in the saturation (closed-loop) step.
    #[arg(long, default_value_t = 400_000)]
    window: usize,
    /// local, replicated or both.
    #[arg(long, default_value = "both")]
    mode: String,
    /// File backend of the logs: direct (O_DIRECT, padded batches),
    /// buffered (page cache + fdatasync) or both (local steps run twice).
    #[arg(long, default_value = "both")]
    io: String,
    /// glommio preempt timer in microseconds (0 = glommio's default,
    /// 100 ms). Short timers make glommio 0.9's lost-park bug likely (an
    /// executor preempted before running anything can sleep for good).
    #[arg(long, default_value_t = 0)]
    preempt_us: u64,
    /// Executors (one pinned per CPU, each with its own log, as in the node)
    /// for the final node-shaped saturation step; 0 skips it.
    #[arg(long, default_value_t = 2)]
    cores: usize,
    /// Most bytes per batch (LogConfig::batch_bytes_max), in MiB.
    #[arg(long, default_value_t = 4)]
    batch_mib: usize,
    /// Most bytes per group commit, one or more batches
    /// (LogConfig::commit_bytes_max), in MiB.
    #[arg(long, default_value_t = 16)]
    commit_mib: usize,
    /// Records per append in the local closed-loop steps (the saturation
    /// step and the node-shaped step): 1 appends records one by one; more
    /// uses `Log::append_group` (one future per group, one batch). Open-loop
    /// and replicated steps always append single records.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=4096))]
    group: u16,
    /// Skip the open-loop steps: probes and the saturation step only.
    #[arg(long)]
    closed_only: bool,
    /// Microseconds the bench executors spin before parking (0 = park at
    /// once, as the node's executors do). glommio spins only on pinned
    /// executors, and io_uring runs fdatasync (and O_DIRECT writes that
    /// extend the file) on io-wq workers pinned to the same CPU, so a
    /// spinning executor delays its own commits: measured p99 write +
    /// fdatasync 2-4.6 ms with 2,000 us of spin against 0.3-0.5 ms without.
    #[arg(long, default_value_t = 0)]
    spin_us: u64,
    /// Log phases of the node-shaped step, each between two disk probes
    /// (its ratio is taken against the higher of the two); the step prints
    /// every round and the medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Size of each O_DIRECT write of the node-shaped step's disk probes, in
    /// MiB. The default matches the largest write of the logs (a group
    /// commit, `--commit-mib` 16): the yardstick gets writes as large as the
    /// logs' own.
    #[arg(long, default_value_t = 16)]
    probe_chunk_mib: usize,
}

// The project's allocator for every binary: large batch buffers are reused
// instead of being mmapped and faulted in again for every group commit.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One append in flight: the local log's own future (no allocation per
/// record), or the replicated log's boxed one.
enum AppendFut {
    Local(redrain_storage::AppendFuture),
    Replicated(Pin<Box<dyn Future<Output = redrain_storage::Result<u64>>>>),
}

impl Future for AppendFut {
    type Output = redrain_storage::Result<u64>;
    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            AppendFut::Local(fut) => Pin::new(fut).poll(cx),
            AppendFut::Replicated(fut) => fut.as_mut().poll(cx),
        }
    }
}

#[derive(Clone)]
enum Target {
    Local(Rc<Log>),
    Replicated(Rc<ReplicatedLog>),
}

impl Target {
    /// One append of `group` (one record, or a group of records in one
    /// batch through `append_group`; groups are only issued to local logs).
    fn append(&self, group: &'static [&'static [u8]]) -> AppendFut {
        match self {
            Target::Local(log) if group.len() > 1 => AppendFut::Local(log.append_group(1, group)),
            Target::Local(log) => AppendFut::Local(log.append(1, group[0])),
            // append_rc queues the record now (like Log::append), so the
            // group commit sees every issued append at once.
            Target::Replicated(log) => AppendFut::Replicated(Box::pin(log.append_rc(1, group[0]))),
        }
    }
    fn log(&self) -> &Log {
        match self {
            Target::Local(log) => log,
            Target::Replicated(log) => log.log(),
        }
    }
}

struct StepReport {
    label: String,
    offered: Option<u64>,
    completed: u64,
    errors: u64,
    secs: f64,
    latency_us: ValueHistogram,
    /// How late the generator issued appends versus their intended time.
    issue_lateness_us: ValueHistogram,
    /// Write + fdatasync time per batch (the log is fresh for each step).
    batch_write_us: ValueHistogram,
    commits: u64,
    /// Bytes written, padding included.
    bytes: u64,
    /// Padding written (direct I/O keeps every write block-aligned).
    pad_bytes: u64,
}

impl StepReport {
    fn print(&self, seq_mib_s: f64) {
        let rate = self.completed as f64 / self.secs;
        // Throughput counts records only; padding is reported apart.
        let mib_s = (self.bytes - self.pad_bytes) as f64 / self.secs / (1 << 20) as f64;
        let pad_mib_s = self.pad_bytes as f64 / self.secs / (1 << 20) as f64;
        println!(
            "{:<15} offered {:>9} achieved {:>9.0} rec/s  p50 {:>6} us  p99 {:>6} us  p99.9 {:>6} us  max {:>7} us  commits {:>6} (avg {:>6.0} rec)  records {:>6.1} MiB/s = {:>5.1}% of seq (+{:.1} MiB/s padding)  errors {}",
            self.label,
            self.offered.map(|r| r.to_string()).unwrap_or_else(|| "closed".into()),
            rate,
            self.latency_us.quantile(0.5),
            self.latency_us.quantile(0.99),
            self.latency_us.quantile(0.999),
            self.latency_us.max(),
            self.commits,
            self.completed as f64 / self.commits.max(1) as f64,
            mib_s,
            100.0 * mib_s / seq_mib_s,
            pad_mib_s,
            self.errors
        );
        println!(
            "             commit write+fdatasync p50 {} us p99 {} us; generator lateness p50 {} us p99 {} us (included in the latencies above)",
            self.batch_write_us.quantile(0.5),
            self.batch_write_us.quantile(0.99),
            self.issue_lateness_us.quantile(0.5),
            self.issue_lateness_us.quantile(0.99)
        );
    }
}

/// Open loop at `rate` (or closed loop with `window` in flight if `rate` is
/// None) for `secs`.
async fn run_step(
    target: Target,
    label: &str,
    rate: Option<u64>,
    window: usize,
    secs: f64,
    group: &'static [&'static [u8]],
) -> StepReport {
    // Each append in flight with its intended send time, in microseconds
    // since `start` (compact: the closed loop keeps hundreds of thousands).
    let queue: Rc<RefCell<VecDeque<(u32, AppendFut)>>> = Rc::new(RefCell::new(VecDeque::new()));
    // Records per queue entry (each entry is one append of `group`).
    let per_entry = group.len();
    let consumer_waker: Rc<Cell<Option<Waker>>> = Rc::new(Cell::new(None));
    let generator_waker: Rc<Cell<Option<Waker>>> = Rc::new(Cell::new(None));
    let done = Rc::new(Cell::new(false));
    let before = target.log().stats();
    let start = Instant::now();
    let duration = Duration::from_secs_f64(secs);

    let consumer = {
        let queue = queue.clone();
        let consumer_waker = consumer_waker.clone();
        let generator_waker = generator_waker.clone();
        let done = done.clone();
        glommio::spawn_local(async move {
            let mut histogram = ValueHistogram::default();
            let (mut completed, mut errors) = (0u64, 0u64);
            // One pass per wake-up drains every append that is done, in
            // order, and stops at the first one still waiting (polling it
            // registers this task with its batch, once per batch). Appends
            // of one batch resolve at the same instant: the clock is read
            // at the start of a pass and every 512 appends handled (so the
            // reading is never more than a few microseconds old), and runs
            // of equal latencies go into the histogram at once.
            std::future::poll_fn(|cx| {
                let mut queue = queue.borrow_mut();
                let mut now_us = start.elapsed().as_micros() as u32;
                let mut handled = 0u32;
                let mut run = (0u64, 0u64); // (latency, records)
                let outcome = loop {
                    let Some((intended, fut)) = queue.front_mut() else {
                        if done.get() {
                            break Poll::Ready(());
                        }
                        consumer_waker.set(Some(cx.waker().clone()));
                        break Poll::Pending;
                    };
                    match Pin::new(fut).poll(cx) {
                        Poll::Ready(Ok(_)) => {
                            let latency = u64::from(now_us.saturating_sub(*intended));
                            if latency != run.0 {
                                if run.1 > 0 {
                                    histogram.record_n(run.0, run.1);
                                }
                                run = (latency, 0);
                            }
                            run.1 += per_entry as u64;
                            completed += per_entry as u64;
                        }
                        Poll::Ready(Err(_)) => errors += per_entry as u64,
                        Poll::Pending => break Poll::Pending,
                    }
                    queue.pop_front();
                    handled += 1;
                    if handled.is_multiple_of(512) {
                        now_us = start.elapsed().as_micros() as u32;
                    }
                };
                if run.1 > 0 {
                    histogram.record_n(run.0, run.1);
                }
                if handled > 0 {
                    if let Some(w) = generator_waker.take() {
                        w.wake();
                    }
                }
                outcome
            })
            .await;
            (histogram, completed, errors)
        })
    };

    let mut issued = 0u64;
    let mut issue_lateness_us = ValueHistogram::default();
    loop {
        let elapsed = start.elapsed();
        if elapsed >= duration {
            break;
        }
        match rate {
            Some(rate) => {
                let due = (elapsed.as_secs_f64() * rate as f64) as u64;
                let now = Instant::now();
                while issued < due {
                    let intended = start + Duration::from_secs_f64(issued as f64 / rate as f64);
                    issue_lateness_us.record(now.saturating_duration_since(intended).as_micros() as u64);
                    let intended_us = intended.duration_since(start).as_micros() as u32;
                    queue.borrow_mut().push_back((intended_us, target.append(group)));
                    issued += 1;
                }
                if let Some(w) = consumer_waker.take() {
                    w.wake();
                }
                glommio::timer::sleep(Duration::from_micros(100)).await;
            }
            None => {
                let free = window.saturating_sub(queue.borrow().len() * per_entry);
                let now_us = start.elapsed().as_micros() as u32;
                {
                    let mut queue = queue.borrow_mut();
                    for _ in 0..free.min(4_096).div_ceil(per_entry) {
                        queue.push_back((now_us, target.append(group)));
                        issued += per_entry as u64;
                    }
                }
                if let Some(w) = consumer_waker.take() {
                    w.wake();
                }
                // Step aside so the reactor submits and reaps I/O (the
                // writer's) between chunks, as a node core does between
                // passes: a generator that ran for tens of milliseconds
                // would delay the next group commit, not measure it. A
                // short timer, not a shorter preempt timer: glommio 0.9 can
                // park an executor for good when preempted before running
                // anything, and a pending timer bounds that.
                glommio::timer::sleep(Duration::from_micros(20)).await;
                // Wait until the consumer made room (or a short while).
                futures_lite::future::or(
                    std::future::poll_fn(|cx| {
                        if queue.borrow().len() * per_entry < window / 2 {
                            Poll::Ready(())
                        } else {
                            generator_waker.set(Some(cx.waker().clone()));
                            Poll::Pending
                        }
                    }),
                    glommio::timer::sleep(Duration::from_millis(1)),
                )
                .await;
            }
        }
    }
    done.set(true);
    if let Some(w) = consumer_waker.take() {
        w.wake();
    }
    let (latency_us, completed, errors) = consumer.await;
    let secs = start.elapsed().as_secs_f64();
    let after = target.log().stats();
    let batch_write_us = target.log().batch_write_histogram();
    StepReport {
        label: label.to_string(),
        offered: rate,
        completed,
        errors,
        secs,
        latency_us,
        issue_lateness_us,
        batch_write_us,
        commits: after.commits_total - before.commits_total,
        bytes: after.bytes_total - before.bytes_total,
        pad_bytes: after.pad_bytes_total - before.pad_bytes_total,
    }
}

async fn seq_bandwidth(dir: &Path, mib: u64) -> (f64, f64) {
    let chunk = 4usize << 20;
    let chunks = (mib << 20) as usize / chunk;
    let path = dir.join("seq-buffered");
    let file = BufferedFile::create(&path).await.expect("create probe file");
    let start = Instant::now();
    for i in 0..chunks {
        file.write_at(vec![0xabu8; chunk], (i * chunk) as u64).await.expect("write");
    }
    file.fdatasync().await.expect("fdatasync");
    let buffered = (chunks * chunk) as f64 / start.elapsed().as_secs_f64() / (1 << 20) as f64;
    file.close().await.ok();
    let _ = std::fs::remove_file(&path);

    let (written, secs) = direct_probe(&dir.join("seq-direct"), mib, 4).await;
    let direct = written as f64 / secs / (1 << 20) as f64;
    (buffered, direct)
}

/// Group-commit-shaped writes: append `size` bytes + fdatasync, repeatedly.
async fn commit_probe(dir: &Path, size: usize, secs: f64) {
    let path = dir.join("commit-buffered");
    let file = BufferedFile::create(&path).await.expect("create");
    let mut h = ValueHistogram::default();
    let start = Instant::now();
    let mut pos = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let t = Instant::now();
        file.write_at(vec![1u8; size], pos).await.expect("write");
        file.fdatasync().await.expect("sync");
        h.record(t.elapsed().as_micros() as u64);
        pos += size as u64;
    }
    let mib_s = pos as f64 / start.elapsed().as_secs_f64() / (1 << 20) as f64;
    println!(
        "commit probe buffered  {:>8} B write+fdatasync: {:>7.1} MiB/s  p50 {:>6} us  p99 {:>6} us",
        size,
        mib_s,
        h.quantile(0.5),
        h.quantile(0.99)
    );
    file.close().await.ok();
    let _ = std::fs::remove_file(&path);

    let path = dir.join("commit-direct");
    let file = DmaFile::create(&path).await.expect("create");
    let aligned = size.div_ceil(4096) * 4096;
    let mut h = ValueHistogram::default();
    let start = Instant::now();
    let mut pos = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let t = Instant::now();
        let mut buf = file.alloc_dma_buffer(aligned);
        buf.as_bytes_mut().fill(2);
        file.write_at(buf, pos).await.expect("write");
        file.fdatasync().await.expect("sync");
        h.record(t.elapsed().as_micros() as u64);
        pos += aligned as u64;
    }
    let mib_s = pos as f64 / start.elapsed().as_secs_f64() / (1 << 20) as f64;
    println!(
        "commit probe O_DIRECT  {:>8} B write+fdatasync: {:>7.1} MiB/s  p50 {:>6} us  p99 {:>6} us",
        aligned,
        mib_s,
        h.quantile(0.5),
        h.quantile(0.99)
    );
    file.close().await.ok();
    let _ = std::fs::remove_file(&path);
}

fn bench_log_config() -> LogConfig {
    LogConfig {
        segment_bytes_target: 1 << 30,
        batch_bytes_max: BATCH_MIB.load(Ordering::Relaxed) << 20,
        commit_bytes_max: COMMIT_MIB.load(Ordering::Relaxed) << 20,
        batch_records_max: 1_000_000, // the byte bound binds first
        appends_pending_max: 4_000_000,
        retention_bytes_max: 1 << 40,
        ..LogConfig::default()
    }
}

/// Starts a replica server on its own executor thread; returns its address.
fn start_peer(dir: PathBuf, backend: &'static str, stop: Arc<AtomicBool>) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .spawn(move || async move {
            let mut config = ReplicaServerConfig::new("127.0.0.1:0".parse().unwrap(), dir);
            config.log = bench_log_config();
            let server = ReplicaServer::start(config, file_system(backend)).expect("peer");
            tx.send(server.local_addr()).unwrap();
            while !stop.load(Ordering::Relaxed) {
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        })
        .expect("peer executor");
    let addr = rx.recv().expect("peer address");
    (
        addr,
        std::thread::spawn(move || {
            let _ = handle.join();
        }),
    )
}

/// What one core measured in one round of the node-shaped step.
struct CoreRound {
    /// The single-writer probe before the round's log phase (core 0 only).
    single_probe: Option<(u64, f64)>,
    /// This core's share of the parallel probe: bytes and seconds.
    parallel_probe: (u64, f64),
    /// The log phase (absent after the last probe): records, record bytes,
    /// seconds, p99 latency and p50 batch write+fdatasync in microseconds.
    log: Option<(u64, u64, f64, u64, u64)>,
}

/// The node's shape at saturation: one pinned executor per core, each
/// appending to its own log (closed loop), all at once. This virtual disk's
/// bandwidth drifts by 2x within minutes (its host absorbs writes), so a
/// probe taken once is a poor yardstick: the step alternates probes and log
/// phases, `P0 L1 P1 L2 ... Ln Pn` (`--rounds n`), and each log phase is
/// compared with the higher of the probes either side of it. A probe is the
/// higher of one writer (`seq_mib` MiB) and every core in parallel (one file
/// each, `seq_mib` MiB in all), with 4 MiB O_DIRECT writes to a new file and
/// an fdatasync. Each log phase uses fresh logs; after every removal of
/// files the disk settles (sync and a pause), before probes and logs alike.
fn node_saturation(args: &Args, backend: &'static str, group: &'static [&'static [u8]], seq_mib_s: f64) {
    let cpus: Vec<usize> = (0..args.cores).collect();
    let rounds = args.rounds.max(1);
    let barrier = Arc::new(std::sync::Barrier::new(cpus.len()));
    let probe_mib = (args.seq_mib / cpus.len() as u64).max(4);
    let handles: Vec<_> = cpus
        .iter()
        .map(|&cpu| {
            let base = args.dir.join(format!("node-{backend}-core{cpu}"));
            let (barrier, window, secs) = (barrier.clone(), args.window, args.step_secs);
            let cores = args.cores;
            let chunk_mib = args.probe_chunk_mib.max(1);
            LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .io_memory(1 << 20)
                .preempt_timer(preempt_timer(args.preempt_us))
                .spin_before_park(Duration::from_micros(args.spin_us))
                .spawn(move || async move {
                    std::fs::create_dir_all(&base).expect("core dir");
                    // Primes glommio's IOPOLL probe before the first DMA file.
                    redrain_storage::direct_io_supported(&base).await;
                    let mut out = Vec::with_capacity(rounds + 1);
                    for round in 0..=rounds {
                        barrier.wait();
                        let single_probe = if cpu == 0 {
                            Some(direct_probe(&base.join("probe"), probe_mib * cores as u64, chunk_mib).await)
                        } else {
                            None
                        };
                        barrier.wait();
                        let parallel_probe = direct_probe(&base.join("probe"), probe_mib, chunk_mib).await;
                        settle(Duration::from_millis(300)).await;
                        if round == rounds {
                            out.push(CoreRound { single_probe, parallel_probe, log: None });
                            break;
                        }
                        let dir = base.join(format!("log-{round}"));
                        let log =
                            Rc::new(Log::open(&dir, bench_log_config(), file_system(backend)).await.expect("log"));
                        barrier.wait();
                        let label = format!("core{cpu}/{backend}");
                        let report = run_step(Target::Local(log), &label, None, window, secs, group).await;
                        let _ = std::fs::remove_dir_all(&dir);
                        settle(Duration::from_millis(300)).await;
                        out.push(CoreRound {
                            single_probe,
                            parallel_probe,
                            log: Some((
                                report.completed,
                                report.bytes - report.pad_bytes,
                                report.secs,
                                report.latency_us.quantile(0.99),
                                report.batch_write_us.quantile(0.5),
                            )),
                        });
                    }
                    let _ = std::fs::remove_dir_all(&base);
                    out
                })
                .expect("core executor")
        })
        .collect();
    let per_core: Vec<Vec<CoreRound>> = handles.into_iter().map(|h| h.join().expect("core run")).collect();
    let mib = |bytes: u64, secs: f64| bytes as f64 / secs / (1 << 20) as f64;
    // The disk at each probe: the higher of one writer and all in parallel.
    let probes: Vec<(f64, f64, f64)> = (0..=rounds)
        .map(|r| {
            let single = per_core[0][r].single_probe.map_or(0.0, |(b, s)| mib(b, s));
            let bytes: u64 = per_core.iter().map(|core| core[r].parallel_probe.0).sum();
            let secs = per_core.iter().map(|core| core[r].parallel_probe.1).fold(0.0, f64::max);
            let parallel = mib(bytes, secs);
            (single.max(parallel), single, parallel)
        })
        .collect();
    let n = cpus.len();
    let (mut rates, mut ratios, mut start_ratios) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let logs: Vec<(u64, u64, f64, u64, u64)> =
            per_core.iter().map(|core| core[r].log.expect("log phase")).collect();
        let records: u64 = logs.iter().map(|l| l.0).sum();
        let bytes: u64 = logs.iter().map(|l| l.1).sum();
        let secs = logs.iter().map(|l| l.2).fold(0.0, f64::max);
        let (rate, mib_s) = (records as f64 / secs, mib(bytes, secs));
        let disk = probes[r].0.max(probes[r + 1].0);
        let ratio = 100.0 * mib_s / disk;
        let cores: Vec<String> = logs
            .iter()
            .enumerate()
            .map(|(cpu, l)| format!("core{cpu} {:.2} M/s p99 {} us commit p50 {} us", l.0 as f64 / l.2 / 1e6, l.3, l.4))
            .collect();
        println!(
            "node {n} cores/{backend:<8} round {}: {rate:>9.0} rec/s  records {mib_s:>6.1} MiB/s = {ratio:>5.1}% of the disk either side (before {:.1} [1 writer {:.1}, {n} writers {:.1}], after {:.1}); {}",
            r + 1,
            probes[r].0,
            probes[r].1,
            probes[r].2,
            probes[r + 1].0,
            cores.join(", ")
        );
        rates.push(rate);
        ratios.push(ratio);
        start_ratios.push(100.0 * mib_s / seq_mib_s);
    }
    println!(
        "node {n} cores/{backend:<8} closed, median of {rounds} rounds: {:>9.0} rec/s = {:.1}% of the disk either side (rounds {:.1}-{:.1}%) = {:.1}% of the probe at the start ({seq_mib_s:.1} MiB/s)",
        median(&rates),
        median(&ratios),
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
        median(&start_ratios)
    );
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        len if len % 2 == 1 => sorted[len / 2],
        len => (sorted[len / 2 - 1] + sorted[len / 2]) / 2.0,
    }
}

/// Writes `mib` MiB sequentially to a new file at `path` with `chunk_mib`
/// MiB O_DIRECT writes, one at a time, then fdatasyncs and removes it; returns the bytes written and the
/// seconds the writes and the fdatasync took.
async fn direct_probe(path: &Path, mib: u64, chunk_mib: usize) -> (u64, f64) {
    let chunk = chunk_mib << 20;
    let chunks = (mib << 20) as usize / chunk;
    let file = DmaFile::create(path).await.expect("create probe file");
    let start = Instant::now();
    for i in 0..chunks {
        let mut buf = file.alloc_dma_buffer(chunk);
        buf.as_bytes_mut().fill(0xcd);
        file.write_at(buf, (i * chunk) as u64).await.expect("write");
    }
    file.fdatasync().await.expect("fdatasync");
    let secs = start.elapsed().as_secs_f64();
    file.close().await.ok();
    let _ = std::fs::remove_file(path);
    ((chunks * chunk) as u64, secs)
}

/// Lets the disk settle after the bench removed files: flushes everything
/// (removing gigabytes of probe files makes ext4 discard and write metadata)
/// and waits, so that work does not land in the next step's latencies.
async fn settle(wait: Duration) {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    glommio::timer::sleep(wait).await;
}

fn preempt_timer(us: u64) -> Duration {
    if us == 0 {
        Duration::from_millis(100)
    } else {
        Duration::from_micros(us)
    }
}

fn file_system(backend: &str) -> Rc<dyn FileSystem> {
    match backend {
        "direct" => Rc::new(GlommioDirectFileSystem),
        _ => Rc::new(GlommioFileSystem),
    }
}

/// `--batch-mib`, for every log the bench opens (peers included).
static BATCH_MIB: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(4);
/// `--commit-mib`, likewise.
static COMMIT_MIB: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(16);

fn main() {
    let args = Args::parse();
    BATCH_MIB.store(args.batch_mib, Ordering::Relaxed);
    COMMIT_MIB.store(args.commit_mib.max(args.batch_mib), Ordering::Relaxed);
    let backends: Vec<&'static str> = match args.io.as_str() {
        "both" => vec!["direct", "buffered"],
        "direct" => vec!["direct"],
        "buffered" => vec!["buffered"],
        other => {
            eprintln!("--io {other:?}: direct, buffered or both");
            std::process::exit(2);
        }
    };
    // The replicated steps (origin and both peers) use the first backend.
    let replicated_backend = backends[0];
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir).expect("bench dir");
    let payload: &'static [u8] = Box::leak(vec![0x42u8; args.record_bytes].into_boxed_slice());
    let single: &'static [&'static [u8]] = Box::leak(vec![payload].into_boxed_slice());
    let grouped: &'static [&'static [u8]] = Box::leak(vec![payload; usize::from(args.group)].into_boxed_slice());
    // Open-loop steps append single records; closed loops use `--group`.
    let step_group = move |rate: Option<u64>| if rate.is_some() { single } else { grouped };
    let stop = Arc::new(AtomicBool::new(false));
    let peers = if args.mode != "local" {
        Some([
            start_peer(args.dir.join("peer-a"), replicated_backend, stop.clone()),
            start_peer(args.dir.join("peer-b"), replicated_backend, stop.clone()),
        ])
    } else {
        None
    };
    let peer_addrs = peers.as_ref().map(|p| [p[0].0, p[1].0]);
    let run_args = args.clone();
    let run_backends = backends.clone();
    let seq_measured = Arc::new(std::sync::Mutex::new(0.0f64));
    let seq_out = seq_measured.clone();
    // Pinned like a node core (the peers' executors are not pinned).
    LocalExecutorBuilder::new(Placement::Fixed(0))
        .io_memory(2 << 20)
        .preempt_timer(preempt_timer(args.preempt_us))
        .spin_before_park(Duration::from_micros(args.spin_us))
        .spawn(move || async move {
            let args = run_args;
            let backends = run_backends;
            // Also primes glommio's per-device IOPOLL probe with a real
            // block (see file_io::prime_iopoll_probe) before the probes
            // open DMA files of their own.
            if !redrain_storage::direct_io_supported(&args.dir).await {
                eprintln!("{}: no O_DIRECT here; run the bench on a disk-backed directory", args.dir.display());
                std::process::exit(2);
            }
            let (buffered, direct) = seq_bandwidth(&args.dir, args.seq_mib).await;
            println!("sequential write bandwidth: buffered+fdatasync {buffered:.1} MiB/s, O_DIRECT {direct:.1} MiB/s");
            let seq = buffered.max(direct);
            *seq_out.lock().unwrap() = seq;
            for size in [4096usize, 256 << 10, 4 << 20] {
                commit_probe(&args.dir, size, 1.0).await;
            }
            settle(Duration::from_secs(1)).await;
            println!("record payload {} B ({} B on disk)", args.record_bytes, args.record_bytes + 17);
            let open_rates = if args.closed_only { Vec::new() } else { args.rates.clone() };
            if args.mode != "replicated" {
                for backend in &backends {
                    let label = format!("local/{backend}");
                    for (i, rate) in open_rates.iter().copied().map(Some).chain([None]).enumerate() {
                        let dir = args.dir.join(format!("local-{backend}-{i}"));
                        let log =
                            Rc::new(Log::open(&dir, bench_log_config(), file_system(backend)).await.expect("log"));
                        let report =
                            run_step(Target::Local(log), &label, rate, args.window, args.step_secs, step_group(rate))
                                .await;
                        report.print(seq);
                        let _ = std::fs::remove_dir_all(&dir);
                        settle(Duration::from_millis(300)).await;
                    }
                }
            }
            let fs = file_system(replicated_backend);
            if let Some(peers) = peer_addrs {
                for (i, rate) in open_rates.iter().copied().map(Some).chain([None]).enumerate() {
                    let dir = args.dir.join(format!("origin-{i}"));
                    let stream = StreamId { origin_node: 1, core: i as u16 };
                    let config = ReplicationConfig::new(stream, peers);
                    let (log, _) = ReplicatedLog::open(&dir, bench_log_config(), config, fs.clone())
                        .await
                        .expect("replicated log");
                    let log = Rc::new(log);
                    let report = run_step(
                        Target::Replicated(log.clone()),
                        &format!("repl/{replicated_backend}"),
                        rate,
                        args.window,
                        args.step_secs,
                        single,
                    )
                    .await;
                    report.print(seq);
                    let m = log.metrics();
                    println!(
                        "             ship batches avg {:.0} rec (p99 {}), peers acked {:?}, local {}",
                        m.ship_batch_records.mean(),
                        m.ship_batch_records.quantile(0.99),
                        m.peers.iter().map(|p| p.acked_lsn).collect::<Vec<_>>(),
                        m.local_durable_lsn
                    );
                    drop(log);
                    let _ = std::fs::remove_dir_all(&dir);
                    settle(Duration::from_millis(300)).await;
                }
            }
        })
        .expect("bench executor")
        .join()
        .expect("bench run");
    stop.store(true, Ordering::Relaxed);
    if args.mode != "replicated" && args.cores > 0 {
        let seq = *seq_measured.lock().unwrap();
        for backend in &backends {
            node_saturation(&args, backend, grouped, seq);
        }
    }
    if let Some(peers) = peers {
        for (_, handle) in peers {
            let _ = handle.join();
        }
    }
    let _ = std::fs::remove_dir_all(&args.dir);
}
