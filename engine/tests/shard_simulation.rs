//! A seeded simulation of two cores' state machines with a fake clock, a fake disk that
//! holds appends until the simulation makes them durable (or fails them), cross-core mail,
//! and crashes that lose everything not yet durable. Thousands of random interleavings of
//! shakes, opens (by the winner, by other users, repeated), completions, failures, ticks
//! and crashes; after every step and at the end the invariants must hold:
//!
//! - a packet is issued at most once, across crashes;
//! - a packet's first open is acknowledged at most once, and every acknowledged first open
//!   is in the durable open queue exactly once;
//! - a repeated open answers the amount of the first;
//! - a ticket opened by another user is refused and records nothing.
//!
//! `REDRAIN_SIM_SEEDS=N` runs more seeds (default 4), `REDRAIN_SIM_STEPS=N` more steps.

mod tickets_common;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use redrain_engine::metrics::CoreMetrics;
use redrain_engine::rain::dispenser::{Dispenser, DispenserConfig};
use redrain_engine::rain::event::{Event, EventSource};
use redrain_engine::rain::records::{CursorRecord, OpenRecord, KIND_CURSOR_EXACT, KIND_OPENED};
use redrain_engine::rain::seal::SealKey;
use redrain_engine::rain::{RainConfig, RainShared};
use redrain_engine::shard::handoff::home_core;
use redrain_engine::shard::output::ConnOutput;
use redrain_engine::shard::state::{Caller, Clock, ConnAnswers, Output, RainMail, RainRequest, ShardState};
use redrain_engine::tickets::format::FileTag;
use redrain_net::client::ClientCodec;
use redrain_net::message::{Response, SealedTicketHeader, OPEN_FLAG_REPEAT, SEALED_TICKET_BYTES};
use redrain_net::ErrorCode;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

const CORES: usize = 2;
const USERS: u64 = 64;
const START_MS: u64 = 1_000_000_000;
/// A minute before the end of the small event's first (one-hour) slot: a fast pace.
const SIM_START_MS: u64 = START_MS + 3_600_000 - 60_000;

/// What one core has made durable (survives crashes).
#[derive(Default)]
struct Durable {
    cursors: Vec<(u8, CursorRecord)>,
    opens: Vec<OpenRecord>,
}

struct SimCore {
    state: ShardState,
    metrics: CoreMetrics,
    held: VecDeque<(u64, u8, Vec<u8>)>,
    files: Vec<std::path::PathBuf>,
    answers: HashMap<u64, (ConnOutput, Vec<u8>)>,
    mail: Vec<(usize, RainMail)>,
}

#[derive(Clone, Copy, Debug)]
enum Asked {
    Shake,
    Open { packet_id: u64 },
    OpenByOther,
}

struct Sim {
    rain: Arc<RainShared>,
    cores: Vec<SimCore>,
    durable: Vec<Durable>,
    now_ms: u64,
    next_request_id: u32,
    asked: HashMap<u32, Asked>,
    /// Every packet issued in the run.
    issued: HashSet<u64>,
    /// Won tickets: (owner, sealed).
    tickets: Vec<(u64, [u8; SEALED_TICKET_BYTES])>,
    /// Packets whose first open was acknowledged, with the amount.
    acked: HashMap<u64, u32>,
    crashes: u32,
}

impl Sim {
    fn new(rain: Arc<RainShared>) -> Sim {
        let mut sim = Sim {
            rain,
            cores: Vec::new(),
            durable: (0..CORES).map(|_| Durable::default()).collect(),
            now_ms: SIM_START_MS,
            next_request_id: 1,
            asked: HashMap::new(),
            issued: HashSet::new(),
            tickets: Vec::new(),
            acked: HashMap::new(),
            crashes: 0,
        };
        sim.start_cores();
        sim
    }

    /// (Re)starts both cores from what is durable, as the node does at start.
    fn start_cores(&mut self) {
        let mut resume: HashMap<FileTag, (u64, u64)> = HashMap::new();
        for (kind, r) in self.durable.iter().flat_map(|d| d.cursors.iter()) {
            let e = resume.entry(r.tag).or_default();
            e.0 = e.0.max(r.cursor);
            if *kind == KIND_CURSOR_EXACT {
                e.1 = e.1.max(r.cursor);
            }
        }
        self.cores = (0..CORES)
            .map(|id| {
                let files = &self.rain.event.files_by_core[id];
                let dispenser =
                    Dispenser::new(self.rain.config.dispenser, files, |t| resume.get(&t).copied().unwrap_or((0, 0)));
                let mut state = ShardState::new(id, CORES, Some(self.rain.clone()), Some(dispenser));
                for open in self.durable.iter().flat_map(|d| d.opens.iter()) {
                    if home_core(open.user_id, CORES) == id {
                        state.recover_open(open.packet_id);
                    }
                }
                SimCore {
                    state,
                    metrics: CoreMetrics::default(),
                    held: VecDeque::new(),
                    files: files.iter().map(|f| f.path.clone()).collect(),
                    answers: HashMap::new(),
                    mail: Vec::new(),
                }
            })
            .collect();
        self.asked.clear();
        for c in 0..CORES {
            self.tick(c, true);
        }
    }

    fn clock(&self) -> Clock {
        Clock { mono_ms: self.now_ms, unix_ms: self.now_ms }
    }

    /// Carries out a core's outputs: reads at once, appends held, mail queued.
    fn run_outputs(&mut self, c: usize) {
        loop {
            let mut outs = Vec::new();
            self.cores[c].state.drain_outputs(&mut outs);
            if outs.is_empty() {
                return;
            }
            for o in outs {
                let core = &mut self.cores[c];
                match o {
                    Output::Read { file, first, count } => {
                        let bytes = std::fs::read(&core.files[file]).unwrap();
                        let (a, b) = (first as usize * 26, (first as usize + count) * 26);
                        core.state.on_tickets_read(file, first, Ok(bytes[a..b].to_vec()));
                    }
                    Output::Append { kind, payload, token, .. } => core.held.push_back((token, kind, payload)),
                    Output::Respond { conn, slot, frame } => {
                        let (held, ready) = core.answers.entry(conn).or_default();
                        assert!(held.complete(slot, frame, ready));
                    }
                    Output::Send { core: to, mail } => core.mail.push((to, mail)),
                    Output::Close { .. } => {}
                    Output::Timeline(o) => panic!("unexpected timeline output {o:?}"),
                }
            }
        }
    }

    fn request(&mut self, user: u64, request: RainRequest, asked: Asked) {
        let c = home_core(user, CORES);
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.asked.insert(request_id, asked);
        let clock = self.clock();
        let core = &mut self.cores[c];
        let (held, ready) = core.answers.entry(user).or_default();
        core.state.on_request(
            Caller { conn: user, user, request_id },
            &request,
            clock,
            &mut ConnAnswers { held, ready },
            &core.metrics,
        );
        self.run_outputs(c);
    }

    /// Makes (or fails) the first `n` held appends of core `c`, in order.
    fn complete(&mut self, c: usize, n: usize, ok: bool) {
        for _ in 0..n {
            let Some((token, kind, payload)) = self.cores[c].held.pop_front() else { break };
            if ok {
                match kind {
                    KIND_OPENED => self.durable[c].opens.push(OpenRecord::decode(kind, &payload).unwrap()),
                    _ => self.durable[c].cursors.push((kind, CursorRecord::decode(kind, &payload).unwrap())),
                }
            }
            let core = &mut self.cores[c];
            core.state.on_appended(token, ok, &core.metrics);
            self.run_outputs(c);
        }
    }

    fn tick(&mut self, c: usize, every_second: bool) {
        let clock = self.clock();
        self.cores[c].state.on_tick(clock, every_second);
        self.run_outputs(c);
    }

    fn deliver_mail(&mut self) {
        for from in 0..CORES {
            for (to, mail) in std::mem::take(&mut self.cores[from].mail) {
                let clock = self.clock();
                self.cores[to].state.on_mail(mail, clock);
                self.run_outputs(to);
            }
        }
    }

    /// Everything not durable is lost; connections are gone.
    fn crash(&mut self) {
        self.crashes += 1;
        self.start_cores();
    }

    /// Reads every answer that left and checks it against what was asked.
    fn check_answers(&mut self) {
        for c in 0..CORES {
            let conns: Vec<u64> = self.cores[c].answers.keys().copied().collect();
            for conn in conns {
                let bytes = std::mem::take(&mut self.cores[c].answers.get_mut(&conn).unwrap().1);
                let mut codec = ClientCodec::new(1 << 20);
                codec.feed(&bytes);
                while let Some(f) = codec.next_frame().unwrap() {
                    let asked = self.asked.remove(&f.request_id).expect("an answer to something asked");
                    match (asked, f.parse().unwrap()) {
                        (Asked::Shake, Response::ShakeOk { sealed: Some(s), .. }) => {
                            let h = SealedTicketHeader::parse(s);
                            assert_eq!(h.user_id, conn);
                            assert!(self.issued.insert(h.packet_id), "packet {} issued twice", h.packet_id);
                            self.tickets.push((conn, *s));
                        }
                        (Asked::Shake, Response::ShakeOk { sealed: None, .. }) => {}
                        (Asked::Open { packet_id }, Response::OpenOk { packet_id: got, amount_fen, flags, .. }) => {
                            assert_eq!(got, packet_id);
                            if flags & OPEN_FLAG_REPEAT == 0 {
                                assert!(
                                    self.acked.insert(packet_id, amount_fen).is_none(),
                                    "first open of packet {packet_id} acknowledged twice"
                                );
                            } else if let Some(first) = self.acked.get(&packet_id) {
                                assert_eq!(*first, amount_fen, "a repeat answers the first amount");
                            }
                            // First or repeat, an OpenOk says the packet is opened: durably.
                            let durable = self.durable.iter().flat_map(|d| d.opens.iter());
                            assert!(
                                durable.clone().any(|o| o.packet_id == packet_id && o.amount_fen == amount_fen),
                                "OpenOk for packet {packet_id} without its durable record"
                            );
                        }
                        (Asked::Open { .. }, Response::Error { code, .. }) => {
                            // A failed record or a full pending table; nothing was opened.
                            assert!(
                                code == ErrorCode::Internal.as_u16() || code == ErrorCode::Busy.as_u16(),
                                "open refused with {code}"
                            );
                        }
                        (Asked::OpenByOther, Response::Error { code, .. }) => {
                            assert_eq!(code, ErrorCode::TicketOtherUser.as_u16())
                        }
                        (asked, other) => panic!("{asked:?} answered {other:?}"),
                    }
                }
            }
        }
    }

    /// The durable open queue holds every acknowledged first open, each packet once.
    fn check_durable(&self) {
        let mut seen = HashSet::new();
        for open in self.durable.iter().flat_map(|d| d.opens.iter()) {
            assert!(seen.insert(open.packet_id), "packet {} recorded twice", open.packet_id);
            assert!(self.issued.contains(&open.packet_id), "packet {} opened but never issued", open.packet_id);
        }
        for (packet, amount) in &self.acked {
            let open = self.durable.iter().flat_map(|d| d.opens.iter()).find(|o| o.packet_id == *packet);
            assert_eq!(open.map(|o| o.amount_fen), Some(*amount), "acknowledged open of {packet} not durable");
        }
    }
}

fn run(seed: u64, steps: usize, rain: &Arc<RainShared>) -> (usize, usize, u32) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut sim = Sim::new(rain.clone());
    for _ in 0..steps {
        match rng.gen_range(0..100) {
            0..=39 => {
                let user = rng.gen_range(1..=USERS);
                sim.request(user, RainRequest::Shake, Asked::Shake);
            }
            40..=64 if !sim.tickets.is_empty() => {
                let (owner, sealed) = sim.tickets[rng.gen_range(0..sim.tickets.len())];
                if rng.gen_bool(0.1) {
                    let other = owner % USERS + 1;
                    sim.request(other, RainRequest::Open(sealed), Asked::OpenByOther);
                } else {
                    let packet_id = SealedTicketHeader::parse(&sealed).packet_id;
                    sim.request(owner, RainRequest::Open(sealed), Asked::Open { packet_id });
                }
            }
            65..=79 => {
                let c = rng.gen_range(0..CORES);
                let n = rng.gen_range(1..=8);
                let ok = !rng.gen_bool(0.1);
                sim.complete(c, n, ok);
            }
            80..=91 => {
                sim.now_ms += rng.gen_range(0..100);
                let every_second = rng.gen_bool(0.2);
                for c in 0..CORES {
                    sim.tick(c, every_second);
                }
            }
            92..=97 => sim.deliver_mail(),
            98..=99 if rng.gen_bool(0.5) => {
                sim.check_answers();
                sim.crash();
            }
            _ => {}
        }
        sim.check_answers();
    }
    for c in 0..CORES {
        let n = sim.cores[c].held.len();
        sim.complete(c, n, true);
    }
    sim.check_answers();
    sim.check_durable();
    (sim.issued.len(), sim.acked.len(), sim.crashes)
}

#[test]
fn seeded_simulation_keeps_the_invariants_across_failures_and_crashes() {
    let root = tempfile::tempdir().unwrap();
    let g = tickets_common::generate_into(root.path(), 5, 0, 2);
    let event = Event::load(&EventSource {
        tickets_dir: g.dir,
        keyring: g.keyring,
        node_id: 0,
        cores: CORES,
        start_unix_ms: START_MS,
        adopt_node: None,
        now_unix_ms: SIM_START_MS,
    })
    .unwrap();
    let config = RainConfig {
        node_id: 0,
        shake_interval_ms: 0,
        sealed_ticket_ttl_s: 86_400,
        opens_pending_max: 16,
        shake_users_max: 10_000,
        dispenser: DispenserConfig {
            cursor_step: 16,
            prefetch_records: 64,
            quota_per_sec: 1e9,
            burst_ms: 100,
            move_batch: 8,
        },
    };
    let rain = Arc::new(RainShared { event, seal: SealKey::new(&[9; 32], 0), config });
    let seeds = std::env::var("REDRAIN_SIM_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(4u64);
    let steps = std::env::var("REDRAIN_SIM_STEPS").ok().and_then(|v| v.parse().ok()).unwrap_or(6_000usize);
    let (mut issued, mut acked, mut crashes) = (0, 0, 0);
    for seed in 0..seeds {
        let (i, a, c) = run(seed, steps, &rain);
        issued += i;
        acked += a;
        crashes += c;
    }
    // The simulation must have exercised what it checks.
    assert!(issued > 50 * seeds as usize, "only {issued} tickets issued");
    assert!(acked > 10 * seeds as usize, "only {acked} first opens acknowledged");
    assert!(crashes >= seeds as u32, "only {crashes} crashes");
}
