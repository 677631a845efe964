//! Durable opens on one core: the shard's state machine and the core's open-queue log,
//! driven in-process on a pinned glommio executor (no sockets).
//!
//! ```text
//! cargo run --release -p redrain-benches --bin open_bench -- --dir /var/tmp/rr-open --opens 1000000
//! ```
//!
//! It generates an event (one slot, 2M packets), wins `--opens` tickets through the state
//! machine with a fake clock (not timed), then opens them all as fast as the state machine
//! and the log allow, with at most `--in-flight` opens waiting for durability. Every open
//! is answered only after its record's group commit (write + fdatasync) returned, exactly
//! as on the node. It prints opens per second, the latency of an open from request to
//! durable answer (p50/p99/p99.9/max), the group commits and the CPU time of the thread.
//! The network path is not part of this figure (see docs/performance.md for the node's
//! per-request cost over TCP).

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use redrain_engine::metrics::CoreMetrics;
use redrain_engine::rain::dispenser::{Dispenser, DispenserConfig};
use redrain_engine::rain::event::{Event, EventSource};
use redrain_engine::rain::seal::SealKey;
use redrain_engine::rain::{RainConfig, RainShared};
use redrain_engine::shard::output::ConnOutput;
use redrain_engine::shard::state::{Caller, Clock, ConnAnswers, Handled, Output, RainRequest, ShardState};
use redrain_engine::tickets::budget::Budget;
use redrain_engine::tickets::generate::{generate, GenerateOptions};
use redrain_engine::tickets::plan::Topology;
use redrain_net::message::{Response, SEALED_TICKET_BYTES};
use redrain_storage::{GlommioFileSystem, Log, LogConfig};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
struct Args {
    /// Directory for the event and the log (on the disk to measure, not tmpfs).
    #[arg(long, default_value = "/var/tmp/redrain-open-bench")]
    dir: PathBuf,
    /// Opens to make durable.
    #[arg(long, default_value_t = 1_000_000)]
    opens: usize,
    /// Opens waiting for durability at most (the node's opens_pending_max).
    #[arg(long, default_value_t = 65_536)]
    in_flight: usize,
    /// CPU to pin the executor to.
    #[arg(long, default_value_t = 0)]
    cpu: usize,
    /// Open-loop rate (opens per second, latency from the intended time); 0 = as fast as
    /// possible (closed loop at --in-flight).
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

const START_MS: u64 = 1_000_000_000;

fn budget(packets: usize) -> String {
    format!(
        r#"
[event]
name = "open bench"
key_coverage_cap_fen = 100_000_000_000
instant_credit_top_percent = 10

[[event.slots]]
id = "only"
start = "00:00"
end = "00:01"

[[merchants]]
id = "m"
kind = "image"
budget_fen = {}
packets = {packets}
min_amount_fen = 1
max_amount_fen = 1000
slot_weights = {{ only = 100 }}
"#,
        packets * 100
    )
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir)?;
    let packets = (args.opens + args.opens / 4).max(100_000);
    let loaded = Budget::parse_with_hash(&budget(packets))?;
    let options = GenerateOptions {
        out_dir: args.dir.join("tickets"),
        keyring_path: args.dir.join("keys.json"),
        seed: Some(1),
        variant: 0,
        threads: 2,
        overwrite: true,
    };
    generate(&loaded, Topology { nodes: 1, cores: 1 }, &options).context("generating the event")?;
    let event = Event::load(&EventSource {
        tickets_dir: args.dir.join("tickets"),
        keyring: args.dir.join("keys.json"),
        node_id: 0,
        cores: 1,
        start_unix_ms: START_MS,
        adopt_node: None,
        now_unix_ms: START_MS,
    })?;
    let config = RainConfig {
        node_id: 0,
        shake_interval_ms: 0,
        sealed_ticket_ttl_s: 86_400,
        opens_pending_max: args.in_flight,
        shake_users_max: 1 << 22,
        dispenser: DispenserConfig { quota_per_sec: 1e12, cursor_step: 1 << 20, ..DispenserConfig::default() },
    };
    let rain = Arc::new(RainShared { event, seal: SealKey::new(&[7; 32], 0), config });
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(args.cpu))
        .name("open-bench")
        .spawn(move || async move { run(args, rain).await })
        .map_err(|e| anyhow::anyhow!("executor: {e}"))?;
    handle.join().map_err(|e| anyhow::anyhow!("executor: {e}"))?
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: plain out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

async fn run(args: Args, rain: Arc<RainShared>) -> anyhow::Result<()> {
    let metrics = CoreMetrics::default();
    let files: Vec<PathBuf> = rain.event.files_by_core[0].iter().map(|f| f.path.clone()).collect();
    let dispenser = Dispenser::new(rain.config.dispenser, &rain.event.files_by_core[0], |_| (0, 0));
    let mut state = ShardState::new(0, 1, Some(rain.clone()), Some(dispenser));
    let log = Rc::new(
        Log::open(&args.dir.join("opens"), LogConfig::default(), Rc::new(GlommioFileSystem))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );

    // 1. Win the tickets (not timed): a fake clock moves 1 ms per 20 shakes.
    let mut held = ConnOutput::default();
    let mut ready = Vec::new();
    let mut sealed: Vec<(u64, [u8; SEALED_TICKET_BYTES])> = Vec::with_capacity(args.opens);
    let mut now = START_MS;
    let mut outs = Vec::new();
    let mut user = 0u64;
    while sealed.len() < args.opens {
        user += 1;
        if user.is_multiple_of(20) {
            now += 1;
            state.on_tick(Clock { mono_ms: now, unix_ms: now }, false);
        }
        assert!(now < START_MS + 59_000, "the slot ended before {} wins", args.opens);
        let caller = Caller { conn: 1, user, request_id: 1 };
        let clock = Clock { mono_ms: now, unix_ms: now };
        state.on_request(
            caller,
            &RainRequest::Shake,
            clock,
            &mut ConnAnswers { held: &mut held, ready: &mut ready },
            &metrics,
        );
        let mut codec = redrain_net::client::ClientCodec::new(1 << 20);
        codec.feed(&ready);
        ready.clear();
        if let Some(f) = codec.next_frame()? {
            if let Ok(Response::ShakeOk { sealed: Some(s), .. }) = f.parse() {
                sealed.push((user, *s));
            }
        }
        state.drain_outputs(&mut outs);
        for o in outs.drain(..) {
            match o {
                Output::Read { file, first, count } => {
                    let bytes = std::fs::read(&files[file])?;
                    let (a, b) = (first as usize * 26, (first as usize + count) * 26);
                    state.on_tickets_read(file, first, Ok(bytes[a..b].to_vec()));
                }
                Output::Append { token, .. } => state.on_appended(token, true, &metrics),
                _ => {}
            }
        }
        state.drain_outputs(&mut outs);
        outs.clear();
    }
    println!("won {} tickets; opening them against {}", sealed.len(), args.dir.join("opens").display());

    // 2. Open them all, durably, with a bounded number in flight.
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut issued_at: HashMap<u64, Instant> = HashMap::with_capacity(args.in_flight * 2);
    let mut in_flight: VecDeque<(u64, redrain_storage::AppendFuture)> = VecDeque::new();
    let mut next = 0usize;
    let mut answered = 0usize;
    let mut failed = 0usize;
    let cpu_start = thread_cpu();
    let started = Instant::now();
    let clock = Clock { mono_ms: now + 1, unix_ms: now + 1 };
    let interval_ns = 1_000_000_000u64.checked_div(args.rate).unwrap_or(0);
    while answered + failed < sealed.len() {
        // Issue opens up to the bound (and, open loop, up to the schedule).
        let due = match (started.elapsed().as_nanos() as u64).checked_div(interval_ns) {
            Some(intervals) => (intervals as usize + 1).min(sealed.len()),
            None => sealed.len(),
        };
        while next < due && issued_at.len() < args.in_flight {
            let (user, s) = sealed[next];
            let conn = next as u64;
            let handled = state.on_request(
                Caller { conn, user, request_id: 1 },
                &RainRequest::Open(s),
                clock,
                &mut ConnAnswers { held: &mut held, ready: &mut ready },
                &metrics,
            );
            match handled {
                Handled::Later { slot } => {
                    // Open loop: latency counts from the intended send time.
                    let at = if interval_ns > 0 {
                        started + Duration::from_nanos(next as u64 * interval_ns)
                    } else {
                        Instant::now()
                    };
                    issued_at.insert(slot, at);
                }
                Handled::Now => failed += 1,
            }
            next += 1;
            state.drain_outputs(&mut outs);
            for o in outs.drain(..) {
                if let Output::Append { kind, payload, token, .. } = o {
                    in_flight.push_back((token, log.append(kind, &payload)));
                }
            }
        }
        // Take completions in LSN order (the first waits; those behind it are usually ready).
        // Open loop: never wait past the next intended send; let the log's writer run.
        let Some((token, mut append)) = in_flight.pop_front() else {
            glommio::timer::sleep(Duration::from_micros(20)).await;
            continue;
        };
        let ok = if interval_ns > 0 {
            match futures_lite::future::poll_once(&mut append).await {
                Some(result) => result.is_ok(),
                None => {
                    in_flight.push_front((token, append));
                    glommio::timer::sleep(Duration::from_micros(20)).await;
                    continue;
                }
            }
        } else {
            append.await.is_ok()
        };
        state.on_appended(token, ok, &metrics);
        state.drain_outputs(&mut outs);
        let done = Instant::now();
        for o in outs.drain(..) {
            if let Output::Respond { slot, frame, .. } = o {
                if let Some(at) = issued_at.remove(&slot) {
                    latency.saturating_record(done.duration_since(at).as_micros().max(1) as u64);
                }
                if frame.get(4) == Some(&0x91) {
                    answered += 1;
                } else {
                    failed += 1;
                }
            }
        }
        held = ConnOutput::default();
        ready.clear();
    }
    let elapsed = started.elapsed();
    let cpu = thread_cpu() - cpu_start;
    let stats = log.stats();
    println!(
        "opens: {answered} durable, {failed} refused, in {:.3} s = {:.0} opens/s on one core (in flight <= {}, {})",
        elapsed.as_secs_f64(),
        answered as f64 / elapsed.as_secs_f64(),
        args.in_flight,
        if args.rate > 0 {
            format!("open loop at {}/s, latency from the intended time", args.rate)
        } else {
            "closed loop".into()
        }
    );
    println!(
        "latency request -> durable answer: p50 {} us, p99 {} us, p99.9 {} us, max {} us",
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.99),
        latency.value_at_quantile(0.999),
        latency.max()
    );
    println!(
        "log: {} records in {} group commits ({:.0} records per fdatasync), {} bytes; executor thread CPU {:.3} s = {:.2} us per open",
        stats.records_total,
        stats.commits_total,
        stats.records_total as f64 / stats.commits_total.max(1) as f64,
        stats.bytes_total,
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / answered.max(1) as f64
    );
    Ok(())
}
