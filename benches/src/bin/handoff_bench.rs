//! The payment hand-off on one core: the node's consumer (`handoff::consumer::drain`)
//! draining a redrain-storage open-queue log into the `file` sink or a NATS JetStream
//! stream, in-process on a pinned glommio executor (no sockets to clients).
//!
//! ```text
//! # throughput: 1,000,000 records written first (not timed), then drained
//! cargo run --release -p redrain-benches --bin handoff_bench -- --sink file --records 1000000
//! cargo run --release -p redrain-benches --bin handoff_bench -- --sink nats --nats-url nats://127.0.0.1:4222 --records 300000
//! # lag: opens appended at a steady rate (open loop) while the consumer drains
//! cargo run --release -p redrain-benches --bin handoff_bench -- --sink file --rate 100000 --seconds 10
//! cargo run --release -p redrain-benches --bin handoff_bench -- --sink none --rate 100000 --seconds 10
//! ```
//!
//! With `--rate`, every open is appended at its intended time and the figure "open durable"
//! is the time from that intended time to the group commit that made it durable: the part
//! of a user's open the hand-off could slow down (by CPU or disk). The hand-off lag is
//! sampled every 10 ms (age of the oldest open the sink has not acknowledged).

use clap::Parser;
use hdrhistogram::Histogram;
use redrain_engine::config::{Config, HandoffSinkKind};
use redrain_engine::handoff::file::{FileBounds, FileSink};
use redrain_engine::handoff::metrics::HandoffMetrics;
use redrain_engine::handoff::nats::NatsLink;
use redrain_engine::handoff::{consumer, ConsumerBounds, CoreSink};
use redrain_engine::rain::records::{OpenRecord, KIND_OPENED, OPEN_RECORD_INSTANT_CREDIT};
use redrain_storage::{GlommioFileSystem, Log, LogConfig};
use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
struct Args {
    /// Directory of the log, the positions and the file sink (on the disk to measure).
    #[arg(long, default_value = "/var/tmp/redrain-handoff-bench")]
    dir: PathBuf,
    /// file, nats, or none (no consumer: the baseline of --rate).
    #[arg(long, default_value = "file")]
    sink: String,
    /// NATS server (the stream REDRAIN_BENCH is created, and deleted first if present).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Throughput mode: records written before the consumer starts.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Lag mode: opens appended per second while the consumer runs (0: throughput mode).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Lag mode: seconds of appends.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Records per hand-off batch.
    #[arg(long, default_value_t = 4_096)]
    batch: usize,
    /// Longest wait for the consumer to catch up at the end.
    #[arg(long, default_value_t = 60)]
    drain_timeout_s: u64,
    /// Print the hand-off's progress every second (stderr).
    #[arg(long)]
    progress: bool,
    /// CPU to pin the executor to.
    #[arg(long, default_value_t = 0)]
    cpu: usize,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn record(i: u64) -> OpenRecord {
    OpenRecord {
        packet_id: i,
        user_id: i * 7 + 1,
        amount_fen: 100 + (i % 10_000) as u32,
        key_id: (i % 512) as u16,
        batch_id: 1,
        node: 0,
        core: 0,
        opened_at_ms: unix_ms(),
        flags: if i.is_multiple_of(10) { OPEN_RECORD_INSTANT_CREDIT } else { 0 },
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir)?;
    let bounds = ConsumerBounds {
        batch_records_max: args.batch,
        retry_backoff_min: Duration::from_millis(10),
        retry_backoff_max: Duration::from_millis(1_000),
    };
    let (sink, _link) = match args.sink.as_str() {
        "file" => {
            let bounds = FileBounds { file_bytes_max: 64 << 20, file_age_max: Duration::from_secs(60) };
            let sink = FileSink::open(&args.dir.join("sink"), 0, &args.dir.join("handoff-file.pos"), bounds)?;
            (Some(CoreSink::File(sink)), None)
        }
        "nats" => {
            delete_stream(&args.nats_url, "REDRAIN_BENCH")?;
            let config = Config {
                handoff_sink: HandoffSinkKind::Nats,
                handoff_nats_urls: vec![args.nats_url.clone()],
                handoff_nats_stream: "REDRAIN_BENCH".into(),
                handoff_nats_subject: "redrain.bench.opens".into(),
                handoff_nats_create_stream: true,
                handoff_batch_records_max: args.batch,
                ..Config::default()
            };
            let link = NatsLink::connect(&config, 1)?;
            let port = link.port(0, &args.dir.join("handoff-nats.pos"))?;
            (Some(CoreSink::Nats(port)), Some(link))
        }
        "none" => (None, None),
        other => anyhow::bail!("--sink {other}: file, nats or none"),
    };
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(args.cpu))
        .name("handoff-bench")
        .spawn(move || async move { run(args, sink, bounds).await })
        .map_err(|e| anyhow::anyhow!("executor: {e}"))?;
    handle.join().map_err(|e| anyhow::anyhow!("executor: {e}"))?
}

fn delete_stream(url: &str, name: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let client = async_nats::connect(url).await?;
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_stream(name).await;
        Ok(())
    })
}

async fn run(args: Args, sink: Option<CoreSink>, bounds: ConsumerBounds) -> anyhow::Result<()> {
    let log = Rc::new(
        Log::open(&args.dir.join("opens"), LogConfig::default(), Rc::new(GlommioFileSystem))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let metrics = Rc::new(HandoffMetrics::default());
    let stop = Rc::new(Cell::new(false));
    if args.rate == 0 {
        // Throughput: fill the log, then time the drain.
        let mut next = 0u64;
        while next < args.records {
            let payloads: Vec<[u8; 37]> =
                (next..(next + 8_192).min(args.records)).map(|i| record(i).encode()).collect();
            next += payloads.len() as u64;
            let refs: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
            log.append_group(KIND_OPENED, &refs).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let Some(sink) = sink else { anyhow::bail!("throughput mode needs a sink") };
        let end = log.durable_lsn();
        let started = Instant::now();
        let consumer = spawn_consumer(log.clone(), sink, bounds, metrics.clone(), stop.clone());
        while metrics.acknowledged_lsn.load(Relaxed) < end {
            glommio::timer::sleep(Duration::from_millis(5)).await;
            anyhow::ensure!(started.elapsed() < Duration::from_secs(args.drain_timeout_s), "drain timed out");
        }
        let took = started.elapsed();
        stop.set(true);
        let _ = consumer.await;
        println!(
            "sink={} records={} batch={} took={:.3}s rate={:.0} records/s batches={} retries={}",
            args.sink,
            metrics.records_total.load(Relaxed),
            args.batch,
            took.as_secs_f64(),
            metrics.records_total.load(Relaxed) as f64 / took.as_secs_f64(),
            metrics.batches_total.load(Relaxed),
            metrics.retries_total.load(Relaxed),
        );
        return Ok(());
    }

    // Lag: open loop at --rate for --seconds, the consumer draining meanwhile.
    let consumer = sink.map(|s| spawn_consumer(log.clone(), s, bounds, metrics.clone(), stop.clone()));
    let durable_us = Rc::new(std::cell::RefCell::new(Histogram::<u64>::new(3)?));
    let (tx, rx) = glommio::channels::local_channel::new_unbounded::<(Instant, redrain_storage::AppendFuture)>();
    let pump = {
        let durable_us = durable_us.clone();
        glommio::spawn_local(async move {
            while let Some((intended, append)) = rx.recv().await {
                if append.await.is_ok() {
                    let _ = durable_us.borrow_mut().record(intended.elapsed().as_micros() as u64);
                }
            }
        })
    };
    let lag_ms = Rc::new(std::cell::RefCell::new(Histogram::<u64>::new(3)?));
    let progress = args.progress;
    let sampler = {
        let (lag_ms, metrics, stop, log) = (lag_ms.clone(), metrics.clone(), stop.clone(), log.clone());
        glommio::spawn_local(async move {
            let mut tick = 0u64;
            while !stop.get() {
                glommio::timer::sleep(Duration::from_millis(10)).await;
                metrics.durable_lsn.store(log.durable_lsn(), Relaxed);
                let _ = lag_ms.borrow_mut().record(metrics.lag_ms(unix_ms()));
                tick += 1;
                if progress && tick.is_multiple_of(100) {
                    eprintln!(
                        "t={}s handed off {} depth {} lag {} ms retries {} last error {:?}",
                        tick / 100,
                        metrics.records_total.load(Relaxed),
                        metrics.depth(),
                        metrics.lag_ms(unix_ms()),
                        metrics.retries_total.load(Relaxed),
                        metrics.last_error()
                    );
                }
            }
        })
    };
    let started = Instant::now();
    let total = args.rate * args.seconds;
    let mut sent = 0u64;
    while sent < total {
        let due = ((started.elapsed().as_secs_f64() * args.rate as f64) as u64).min(total);
        while sent < due {
            let intended = started + Duration::from_secs_f64(sent as f64 / args.rate as f64);
            let _ = tx.try_send((intended, log.append(KIND_OPENED, &record(sent).encode())));
            sent += 1;
        }
        glommio::timer::sleep(Duration::from_micros(500)).await;
    }
    drop(tx);
    let _ = pump.await;
    let appended_in = started.elapsed();
    let end = log.durable_lsn();
    let drain_started = Instant::now();
    if consumer.is_some() {
        while metrics.acknowledged_lsn.load(Relaxed) < end
            && drain_started.elapsed() < Duration::from_secs(args.drain_timeout_s)
        {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    }
    stop.set(true);
    let _ = sampler.await;
    if let Some(c) = consumer {
        let _ = c.await;
    }
    let d = durable_us.borrow();
    let l = lag_ms.borrow();
    let (buckets, _) = metrics.lag.snapshot();
    let acked: u64 = buckets.iter().sum();
    let mut cumulative = 0;
    let lag_p99_bucket = redrain_engine::metrics::LATENCY_BUCKETS_US
        .iter()
        .zip(buckets)
        .find(|(_, n)| {
            cumulative += n;
            acked > 0 && cumulative * 100 >= acked * 99
        })
        .map(|(b, _)| format!("<= {} ms", b / 1_000))
        .unwrap_or_else(|| if acked == 0 { "n/a".into() } else { "> 5000 ms".into() });
    println!(
        "sink={} rate={}/s appended={} in {:.2}s | open durable p50={:.2}ms p99={:.2}ms p99.9={:.2}ms max={:.2}ms \
         | handed off {} of {} (left {}), drain after the load {:.2}s, retries {}, sink errors {} \
         | lag sampled p50={}ms p99={}ms max={}ms, per-record lag p99 {}",
        args.sink,
        args.rate,
        sent,
        appended_in.as_secs_f64(),
        d.value_at_quantile(0.5) as f64 / 1e3,
        d.value_at_quantile(0.99) as f64 / 1e3,
        d.value_at_quantile(0.999) as f64 / 1e3,
        d.max() as f64 / 1e3,
        metrics.records_total.load(Relaxed),
        end,
        end.saturating_sub(metrics.acknowledged_lsn.load(Relaxed)),
        drain_started.elapsed().as_secs_f64(),
        metrics.retries_total.load(Relaxed),
        metrics.sink_errors_total.load(Relaxed),
        l.value_at_quantile(0.5),
        l.value_at_quantile(0.99),
        l.max(),
        lag_p99_bucket,
    );
    Ok(())
}

fn spawn_consumer(
    log: Rc<Log>,
    sink: CoreSink,
    bounds: ConsumerBounds,
    metrics: Rc<HandoffMetrics>,
    stop: Rc<Cell<bool>>,
) -> glommio::Task<()> {
    glommio::spawn_local(async move {
        let stop = move || stop.get();
        consumer::drain(&log, sink, bounds, &metrics, 0, &unix_ms, &stop).await;
    })
}
