//! The rain's hot paths on one core, without sockets: a winning shake (pace check, ticket
//! drawn, record CRC, AES decrypt, AES-GCM seal, ShakeOk encoded), a lost shake, and an
//! open's verification (seal opened, expiry, keyring decrypt, batch check).
//!
//! Run: `cargo bench -p redrain-benches --bench rain`. The demo event (1M packets) is
//! generated into a temporary directory first (about a second).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use redrain_engine::metrics::CoreMetrics;
use redrain_engine::rain::dispenser::{Dispenser, DispenserConfig};
use redrain_engine::rain::event::{Event, EventSource, DEMO_BUDGET};
use redrain_engine::rain::open::verify;
use redrain_engine::rain::seal::SealKey;
use redrain_engine::rain::{RainConfig, RainShared};
use redrain_engine::shard::output::ConnOutput;
use redrain_engine::shard::state::{Caller, Clock, ConnAnswers, Output, RainRequest, ShardState};
use redrain_engine::tickets::budget::Budget;
use redrain_engine::tickets::generate::{generate, GenerateOptions};
use redrain_engine::tickets::plan::Topology;
use redrain_net::message::{Response, SEALED_TICKET_BYTES};
use std::sync::Arc;
use std::time::{Duration, Instant};

const START_MS: u64 = 1_000_000_000;
/// Early in the first demo slot (5 minutes, about 333,000 tickets on one core): the pace
/// releases about 1.1 tickets per ms, so a shake per ms of fake time wins.
const NOW_MS: u64 = START_MS + 1_000;
/// Rebuild the state before the fake clock leaves the slot.
const SLOT_END_MARGIN_MS: u64 = START_MS + 290_000;

fn event(root: &std::path::Path) -> Arc<RainShared> {
    let options = GenerateOptions {
        out_dir: root.join("tickets"),
        keyring_path: root.join("keys.json"),
        seed: Some(1),
        variant: 0,
        threads: 2,
        overwrite: true,
    };
    let loaded = Budget::parse_with_hash(DEMO_BUDGET).unwrap();
    generate(&loaded, Topology { nodes: 1, cores: 1 }, &options).unwrap();
    let event = Event::load(&EventSource {
        tickets_dir: root.join("tickets"),
        keyring: root.join("keys.json"),
        node_id: 0,
        cores: 1,
        start_unix_ms: START_MS,
        adopt_node: None,
        now_unix_ms: NOW_MS,
    })
    .unwrap();
    let config = RainConfig {
        node_id: 0,
        shake_interval_ms: 0,
        sealed_ticket_ttl_s: 86_400,
        opens_pending_max: 1 << 20,
        shake_users_max: 1 << 20,
        dispenser: DispenserConfig { quota_per_sec: 1e12, cursor_step: 1 << 20, ..DispenserConfig::default() },
    };
    Arc::new(RainShared { event, seal: SealKey::new(&[7; 32], 0), config })
}

/// A core's state with its reads and reservations carried out at once.
struct Bench {
    state: ShardState,
    metrics: CoreMetrics,
    files: Vec<std::path::PathBuf>,
    held: ConnOutput,
    ready: Vec<u8>,
}

impl Bench {
    fn new(rain: &Arc<RainShared>) -> Bench {
        let files = &rain.event.files_by_core[0];
        let dispenser = Dispenser::new(rain.config.dispenser, files, |_| (0, 0));
        let mut b = Bench {
            state: ShardState::new(0, 1, Some(rain.clone()), Some(dispenser)),
            metrics: CoreMetrics::default(),
            files: files.iter().map(|f| f.path.clone()).collect(),
            held: ConnOutput::default(),
            ready: Vec::with_capacity(1 << 16),
        };
        b.state.on_tick(Clock { mono_ms: NOW_MS, unix_ms: NOW_MS }, false);
        b.serve();
        b
    }

    fn serve(&mut self) {
        let mut outs = Vec::new();
        loop {
            self.state.drain_outputs(&mut outs);
            if outs.is_empty() {
                return;
            }
            for o in outs.drain(..) {
                match o {
                    Output::Read { file, first, count } => {
                        let bytes = std::fs::read(&self.files[file]).unwrap();
                        let (a, b) = (first as usize * 26, (first as usize + count) * 26);
                        self.state.on_tickets_read(file, first, Ok(bytes[a..b].to_vec()));
                    }
                    Output::Append { token, .. } => self.state.on_appended(token, true, &self.metrics),
                    _ => {}
                }
            }
        }
    }

    fn shake(&mut self, user: u64, now_ms: u64) {
        self.state.on_request(
            Caller { conn: 1, user, request_id: 1 },
            &RainRequest::Shake,
            Clock { mono_ms: now_ms, unix_ms: now_ms },
            &mut ConnAnswers { held: &mut self.held, ready: &mut self.ready },
            &self.metrics,
        );
        if self.ready.len() > 60_000 {
            self.ready.clear();
        }
    }

    fn remaining(&self) -> u64 {
        self.state.dispenser().unwrap().remaining_in_slot(0)
    }
}

fn rain_paths(c: &mut Criterion) {
    let root = tempfile::tempdir().unwrap();
    let rain = event(root.path());
    let mut group = c.benchmark_group("rain");
    group.throughput(Throughput::Elements(1));

    // A winning shake: 1 ms of fake time between shakes is far more than the pace needs.
    let mut bench = Bench::new(&rain);
    let mut clock = NOW_MS;
    group.bench_function("shake_won", |b| {
        b.iter_custom(|iters| {
            if bench.remaining() < iters + 10_000 || clock + iters > SLOT_END_MARGIN_MS {
                bench = Bench::new(&rain);
                clock = NOW_MS;
            }
            let mut spent = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                // Serve prefetches and reservations outside the timed loop.
                let chunk = (iters - done).min(2_000);
                let t = Instant::now();
                for i in 0..chunk {
                    clock += 1;
                    bench.shake(black_box(i), clock);
                }
                spent += t.elapsed();
                bench.serve();
                done += chunk;
            }
            spent
        })
    });
    let won = bench.metrics.rain.shakes_won_total.load(std::sync::atomic::Ordering::Relaxed);
    let all = bench.metrics.rain.shakes_total.load(std::sync::atomic::Ordering::Relaxed);
    assert!(won * 10 >= all * 9, "shake_won measured mostly losses ({won} of {all})");

    // A lost shake (paced: no time passes between shakes).
    let mut lost = Bench::new(&rain);
    group.bench_function("shake_lost_paced", |b| b.iter(|| lost.shake(black_box(9), NOW_MS)));

    // Open verification of a real sealed ticket.
    let mut win = Bench::new(&rain);
    win.shake(42, NOW_MS + 500);
    let mut codec = redrain_net::client::ClientCodec::new(1 << 20);
    codec.feed(&win.ready);
    let f = codec.next_frame().unwrap().unwrap();
    let sealed: [u8; SEALED_TICKET_BYTES] = match f.parse().unwrap() {
        Response::ShakeOk { sealed: Some(s), .. } => *s,
        other => panic!("no win to open: {other:?}"),
    };
    group.bench_function("open_verify", |b| {
        b.iter(|| verify(&rain.seal, &rain.event, black_box(&sealed), 42, NOW_MS / 1000, 86_400).unwrap())
    });
    group.bench_function("seal_only", |b| {
        b.iter(|| rain.seal.seal(black_box(42), black_box(1234), 1_767_225_600, &[9; 16], 7))
    });
    group.finish();
}

criterion_group!(benches, rain_paths);
criterion_main!(benches);
