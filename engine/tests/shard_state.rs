//! The shard's state machine driven directly: no sockets, no executor, a fake clock and a
//! fake disk. Pacing and quota, reservations before issue, restarts, ticket moves between
//! cores, and exactly-once opens with storage failures.

mod tickets_common;

use redrain_engine::metrics::CoreMetrics;
use redrain_engine::rain::dispenser::{Dispenser, DispenserConfig};
use redrain_engine::rain::event::{Event, EventSource};
use redrain_engine::rain::records::{CursorRecord, KIND_CURSOR_EXACT, KIND_CURSOR_RESERVED};
use redrain_engine::rain::seal::SealKey;
use redrain_engine::rain::{RainConfig, RainShared};
use redrain_engine::shard::output::ConnOutput;
use redrain_engine::shard::state::{Caller, Clock, ConnAnswers, Handled, Output, RainMail, RainRequest, ShardState};
use redrain_engine::tickets::format::FileTag;
use redrain_net::client::ClientCodec;
use redrain_net::message::{Response, SealedTicketHeader, OPEN_FLAG_REPEAT, SEALED_TICKET_BYTES};
use redrain_net::ErrorCode;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

const START_MS: u64 = 1_000_000_000;
/// The small event's first slot lasts an hour.
const SLOT_MS: u64 = 3_600_000;

struct Fixture {
    _root: tempfile::TempDir,
    rain: Arc<RainShared>,
}

fn fixture(node: u16, cores: usize, quota_per_sec: f64, cursor_step: u64, adopt: Option<u16>, now_ms: u64) -> Fixture {
    let root = tempfile::tempdir().unwrap();
    let g = tickets_common::generate_into(root.path(), 11, 0, 2);
    let event = Event::load(&EventSource {
        tickets_dir: g.dir,
        keyring: g.keyring,
        node_id: node,
        cores,
        start_unix_ms: START_MS,
        adopt_node: adopt,
        now_unix_ms: now_ms,
    })
    .unwrap();
    let config = RainConfig {
        node_id: node,
        shake_interval_ms: 0,
        sealed_ticket_ttl_s: 86_400,
        opens_pending_max: 4,
        shake_users_max: 100_000,
        dispenser: DispenserConfig { cursor_step, prefetch_records: 256, quota_per_sec, burst_ms: 100, move_batch: 64 },
    };
    Fixture { _root: root, rain: Arc::new(RainShared { event, seal: SealKey::new(&[3; 32], node), config }) }
}

/// A fake disk: appends are held until `complete` (or failed); reads are served at once.
#[derive(Default)]
struct Disk {
    held: Vec<(u64, u8, Vec<u8>)>,
    cursors: Vec<(u8, CursorRecord)>,
    appends_failing: bool,
}

/// One core: its state machine, its metrics and a connection's output per connection.
struct Core {
    state: ShardState,
    metrics: CoreMetrics,
    disk: Disk,
    files: Vec<std::path::PathBuf>,
    answers: HashMap<u64, (ConnOutput, Vec<u8>)>,
    mail_out: Vec<(usize, RainMail)>,
    closed: Vec<(u64, ErrorCode)>,
}

impl Core {
    fn new(f: &Fixture, id: usize, cores: usize, resume: &HashMap<FileTag, (u64, u64)>) -> Core {
        let files = &f.rain.event.files_by_core[id];
        let dispenser =
            Dispenser::new(f.rain.config.dispenser, files, |tag| resume.get(&tag).copied().unwrap_or((0, 0)));
        Core {
            state: ShardState::new(id, cores, Some(f.rain.clone()), Some(dispenser)),
            metrics: CoreMetrics::default(),
            disk: Disk::default(),
            files: files.iter().map(|f| f.path.clone()).collect(),
            answers: HashMap::new(),
            mail_out: Vec::new(),
            closed: Vec::new(),
        }
    }

    /// Carries out outputs: reads at once, appends held (or failed), mail collected.
    fn run_outputs(&mut self) {
        loop {
            let mut outs = Vec::new();
            self.state.drain_outputs(&mut outs);
            if outs.is_empty() {
                return;
            }
            for o in outs {
                match o {
                    Output::Read { file, first, count } => {
                        let bytes = std::fs::read(&self.files[file]).unwrap();
                        let (a, b) = (first as usize * 26, (first as usize + count) * 26);
                        self.state.on_tickets_read(file, first, Ok(bytes[a..b].to_vec()));
                    }
                    Output::Append { kind, payload, token, .. } => {
                        if self.disk.appends_failing {
                            self.state.on_appended(token, false, &self.metrics);
                        } else {
                            self.disk.held.push((token, kind, payload));
                        }
                    }
                    Output::Respond { conn, slot, frame } => {
                        let (held, ready) = self.answers.entry(conn).or_default();
                        assert!(held.complete(slot, frame, ready), "answer for an unknown slot");
                    }
                    Output::Send { core, mail } => self.mail_out.push((core, mail)),
                    Output::Close { conn, code } => self.closed.push((conn, code)),
                    // No timeline requests here (see timeline_state.rs).
                    Output::Timeline(o) => panic!("unexpected timeline output {o:?}"),
                }
            }
        }
    }

    /// Makes every held append durable.
    fn complete(&mut self) {
        while !self.disk.held.is_empty() {
            for (token, kind, payload) in std::mem::take(&mut self.disk.held) {
                if kind == KIND_CURSOR_RESERVED || kind == KIND_CURSOR_EXACT {
                    self.disk.cursors.push((kind, CursorRecord::decode(kind, &payload).unwrap()));
                }
                self.state.on_appended(token, true, &self.metrics);
            }
            self.run_outputs();
        }
    }

    fn request(&mut self, conn: u64, user: u64, request: RainRequest, now_ms: u64) -> Handled {
        let (held, ready) = self.answers.entry(conn).or_default();
        let handled = self.state.on_request(
            Caller { conn, user, request_id: 1 },
            &request,
            Clock { mono_ms: now_ms, unix_ms: now_ms },
            &mut ConnAnswers { held, ready },
            &self.metrics,
        );
        self.run_outputs();
        handled
    }

    /// Takes the answers that left on `conn`.
    fn take(&mut self, conn: u64) -> Vec<Response<'static>> {
        let (_, ready) = self.answers.entry(conn).or_default();
        let mut codec = ClientCodec::new(1 << 20);
        codec.feed(ready);
        ready.clear();
        let mut out = Vec::new();
        while let Some(f) = codec.next_frame().unwrap() {
            let body: &'static [u8] = Box::leak(f.body.clone().into_boxed_slice());
            let frame = redrain_net::FrameRef {
                header: redrain_net::FrameHeader { kind: f.kind, flags: 0, request_id: f.request_id },
                body,
            };
            out.push(Response::parse(&frame).unwrap());
        }
        out
    }

    fn shake(&mut self, user: u64, now_ms: u64) -> Option<[u8; SEALED_TICKET_BYTES]> {
        assert_eq!(self.request(user, user, RainRequest::Shake, now_ms), Handled::Now);
        match self.take(user).as_slice() {
            [Response::ShakeOk { sealed, .. }] => sealed.copied(),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn tick(&mut self, now_ms: u64) {
        self.state.on_tick(Clock { mono_ms: now_ms, unix_ms: now_ms }, true);
        self.run_outputs();
    }

    fn resume_point(&self) -> HashMap<FileTag, (u64, u64)> {
        let mut out: HashMap<FileTag, (u64, u64)> = HashMap::new();
        for (kind, r) in &self.disk.cursors {
            let e = out.entry(r.tag).or_default();
            e.0 = e.0.max(r.cursor);
            if *kind == KIND_CURSOR_EXACT {
                e.1 = e.1.max(r.cursor);
            }
        }
        out
    }
}

fn packet(sealed: &[u8; SEALED_TICKET_BYTES]) -> u64 {
    SealedTicketHeader::parse(sealed).packet_id
}

/// Shakes once per ms per user (distinct users) for `ms`, making appends durable at once.
fn shake_for(core: &mut Core, from_ms: u64, ms: u64, won: &mut Vec<u64>) {
    for t in from_ms..from_ms + ms {
        if t % 100 == 0 {
            core.tick(t);
        }
        if let Some(s) = core.shake(t % 1000, t) {
            won.push(packet(&s));
        }
        core.complete();
    }
}

#[test]
fn no_ticket_is_issued_before_its_reservation_is_durable() {
    let start = START_MS + SLOT_MS - 10_000; // late in the slot: a fast pace
    let f = fixture(0, 2, 1_000_000.0, 64, None, start);
    let mut core = Core::new(&f, 0, 2, &HashMap::new());
    core.tick(start);
    assert!(!core.disk.held.is_empty(), "a reservation was requested at slot start");
    for t in 0..200 {
        assert_eq!(core.shake(t, start + 1_000 + t), None, "won before the reservation was durable");
    }
    assert!(core.metrics.rain.shakes_not_ready_total.load(std::sync::atomic::Ordering::Relaxed) > 0);
    core.complete();
    assert!(core.shake(999, start + 2_000).is_some());
}

#[test]
fn wins_follow_the_slot_pace_and_the_quota_caps_them() {
    // Pace: this core holds its slot-0 tickets for an hour; in 10 s it may release about
    // remaining * 10 / 3600 of them.
    let f = fixture(0, 2, 1_000_000.0, 4096, None, START_MS);
    let mut core = Core::new(&f, 0, 2, &HashMap::new());
    let total: u64 = f.rain.event.files_by_core[0].iter().filter(|x| x.tag.slot == 0).map(|x| x.records).sum();
    core.tick(START_MS);
    core.complete();
    let mut won = Vec::new();
    shake_for(&mut core, START_MS + 1, 10_000, &mut won);
    let expected = total as f64 * 10_000.0 / SLOT_MS as f64;
    assert!((won.len() as f64 - expected).abs() <= expected * 0.2 + 2.0, "won {} of ~{expected:.1}", won.len());
    // Quota: 50 tickets/s per core caps a much larger pace.
    let f = fixture(0, 2, 50.0, 4096, None, START_MS + SLOT_MS - 20_000);
    let mut core = Core::new(&f, 0, 2, &HashMap::new());
    let start = START_MS + SLOT_MS - 20_000;
    core.tick(start);
    core.complete();
    let mut won = Vec::new();
    shake_for(&mut core, start + 1, 10_000, &mut won);
    assert!((450..=560).contains(&won.len()), "quota 50/s gave {} wins in 10 s", won.len());
    let unique: HashSet<_> = won.iter().collect();
    assert_eq!(unique.len(), won.len());
}

#[test]
fn a_restart_resumes_at_the_reservation_and_never_reissues_a_ticket() {
    let start = START_MS + SLOT_MS - 30_000; // late in the slot: a fast pace
    let f = fixture(0, 1, 1_000_000.0, 64, None, start);
    let mut core = Core::new(&f, 0, 1, &HashMap::new());
    core.tick(start);
    core.complete();
    let mut first = Vec::new();
    shake_for(&mut core, start + 1, 3_000, &mut first);
    assert!(first.len() > 100, "{}", first.len());
    // Crash: the exact cursor of the last tick may be behind; resume from what is durable.
    let resume = core.resume_point();
    let mut again = Core::new(&f, 0, 1, &resume);
    let skipped = again.state.dispenser().unwrap().stats().tickets_skipped_at_start_max;
    assert!(skipped <= 64 * f.rain.event.files_by_core[0].len() as u64, "skipped {skipped}");
    again.tick(start + 3_001);
    again.complete();
    let mut second = Vec::new();
    shake_for(&mut again, start + 3_002, 3_000, &mut second);
    assert!(!second.is_empty());
    let first: HashSet<_> = first.into_iter().collect();
    assert!(second.iter().all(|p| !first.contains(p)), "a ticket was issued again after the restart");
}

#[test]
fn a_busy_core_gets_tickets_from_a_quiet_sibling_and_none_is_issued_twice() {
    let start = START_MS + SLOT_MS - 60_000;
    let f = fixture(0, 2, 1_000_000.0, 4096, None, start);
    let mut cores = [Core::new(&f, 0, 2, &HashMap::new()), Core::new(&f, 1, 2, &HashMap::new())];
    for c in &mut cores {
        c.tick(start);
        c.complete();
    }
    let own = cores[1].state.dispenser().unwrap().remaining_in_slot(0);
    // Core 1's users shake every ms (more than its pace); core 0's users do not shake.
    let mut won = Vec::new();
    let mut t = start + 1;
    while t < start + 40_000 {
        shake_for(&mut cores[1], t, 100, &mut won);
        t += 100;
        cores[0].tick(t);
        for (to, m) in std::mem::take(&mut cores[1].mail_out) {
            assert_eq!(to, 0);
            cores[0].state.on_mail(m, Clock { mono_ms: t, unix_ms: t });
            cores[0].run_outputs();
            cores[0].complete();
        }
        for (to, m) in std::mem::take(&mut cores[0].mail_out) {
            assert_eq!(to, 1);
            cores[1].state.on_mail(m, Clock { mono_ms: t, unix_ms: t });
        }
    }
    let moved = cores[1].state.dispenser().unwrap().stats().tickets_moved_in_total;
    assert!(moved > 0, "no tickets moved");
    assert!(won.len() as u64 > own * 2 / 3 + 50, "core 1 won {} with {own} of its own and {moved} moved", won.len());
    let mut from_core0 = Vec::new();
    shake_for(&mut cores[0], t, 2_000, &mut from_core0);
    won.extend(from_core0);
    let unique: HashSet<_> = won.iter().collect();
    assert_eq!(unique.len(), won.len(), "a moved ticket was issued twice");
}

#[test]
fn opens_are_exactly_once_wait_for_storage_and_a_failed_record_opens_nothing() {
    let f = fixture(0, 1, 1_000_000.0, 4096, None, START_MS + SLOT_MS - 10_000);
    let mut core = Core::new(&f, 0, 1, &HashMap::new());
    let now = START_MS + SLOT_MS - 10_000;
    core.tick(now);
    core.complete();
    let sealed = (1..1000).find_map(|t| core.shake(7, now + t)).expect("a win");
    core.complete();
    // Two devices (connections 1 and 2) of user 7 open at once: both wait for one record.
    let open = RainRequest::Open(sealed);
    assert!(matches!(core.request(1, 7, open.clone(), now + 2_000), Handled::Later { .. }));
    assert!(matches!(core.request(2, 7, open.clone(), now + 2_000), Handled::Later { .. }));
    assert!(core.take(1).is_empty() && core.take(2).is_empty(), "no answer before durability");
    assert_eq!(core.disk.held.len(), 1, "one record for both opens");
    core.complete();
    let a = core.take(1);
    let b = core.take(2);
    let (Response::OpenOk { amount_fen: x, flags: fx, .. }, Response::OpenOk { amount_fen: y, flags: fy, .. }) =
        (&a[0], &b[0])
    else {
        panic!("{a:?} {b:?}")
    };
    assert_eq!((x, fx & OPEN_FLAG_REPEAT, fy & OPEN_FLAG_REPEAT), (y, 0, OPEN_FLAG_REPEAT));
    // Later: answered at once, a repeat.
    assert_eq!(core.request(1, 7, open, now + 3_000), Handled::Now);
    assert!(matches!(core.take(1)[0], Response::OpenOk { flags, .. } if flags & OPEN_FLAG_REPEAT != 0));

    // A record that fails: the client hears Internal and the packet stays unopened.
    let sealed = (1..1000).find_map(|t| core.shake(8, now + 4_000 + t)).expect("a win");
    core.complete();
    core.disk.appends_failing = true;
    core.request(3, 8, RainRequest::Open(sealed), now + 6_000);
    assert!(matches!(core.take(3)[0], Response::Error { code, .. } if code == ErrorCode::Internal.as_u16()));
    core.disk.appends_failing = false;
    core.request(3, 8, RainRequest::Open(sealed), now + 6_001);
    core.complete();
    assert!(matches!(core.take(3)[0], Response::OpenOk { flags: 0, .. } | Response::OpenOk { flags: 2, .. }));
    assert_eq!(core.state.opened_len(), 2);
}

#[test]
fn the_pending_table_is_bounded_and_answers_busy() {
    let now = START_MS + SLOT_MS - 10_000;
    let f = fixture(0, 1, 1_000_000.0, 4096, None, now);
    let mut core = Core::new(&f, 0, 1, &HashMap::new());
    core.tick(now);
    core.complete();
    let wins: Vec<_> = (1..5000).filter_map(|t| core.shake(t, now + t)).take(5).collect();
    core.complete();
    assert_eq!(wins.len(), 5);
    for (i, s) in wins.iter().enumerate() {
        let user = SealedTicketHeader::parse(s).user_id;
        core.request(100 + i as u64, user, RainRequest::Open(*s), now + 6_000);
    }
    // opens_pending_max = 4: the fifth is refused at once.
    assert!(matches!(core.take(104)[0], Response::Error { code, .. } if code == ErrorCode::Busy.as_u16()));
    core.complete();
    assert_eq!(core.state.opened_len(), 4);
}

#[test]
fn an_adopting_node_issues_its_failed_peers_files_from_the_next_slot_on() {
    // Node 1 adopts node 0 while slot 0 is open: node 0's slot-1 files only.
    let f = fixture(1, 2, 1_000_000.0, 4096, Some(0), START_MS + 1_000);
    let tags: Vec<_> = f.rain.event.files_by_core.iter().flatten().map(|x| x.tag).collect();
    assert!(tags.iter().any(|t| t.node == 1 && t.slot == 0));
    assert!(tags.iter().any(|t| t.node == 0 && t.slot == 1));
    assert!(!tags.iter().any(|t| t.node == 0 && t.slot == 0), "the failed peer's current slot is given up");
    assert!(!tags.iter().any(|t| t.node == 2));
}

#[test]
fn a_newer_login_closes_the_older_session_and_silent_connections_time_out() {
    let f = fixture(0, 1, 1_000.0, 4096, None, START_MS);
    let mut core = Core::new(&f, 0, 1, &HashMap::new());
    core.state
        .set_session_timeouts(redrain_engine::shard::sessions::SessionTimeouts { idle_ms: 5_000, login_ms: 1_000 });
    let at = |ms: u64| Clock { mono_ms: ms, unix_ms: START_MS + ms };
    for conn in [1, 2, 3] {
        core.state.on_connected(conn, at(0));
    }
    core.state.on_login(1, 42, 7, &core.metrics);
    core.state.on_login(2, 42, 7, &core.metrics);
    core.run_outputs();
    assert_eq!(core.closed, vec![(1, ErrorCode::Replaced)]);
    core.state.on_closed(1, &core.metrics);
    core.closed.clear();
    // Connection 3 never logs in: closed after the login timeout; 2 after the idle timeout.
    core.state.on_tick(at(1_500), true);
    core.run_outputs();
    assert_eq!(core.closed, vec![(3, ErrorCode::IdleTimeout)]);
    core.state.on_closed(3, &core.metrics);
    core.closed.clear();
    core.state.on_activity(2, at(4_000));
    core.state.on_tick(at(8_000), true);
    core.run_outputs();
    assert!(core.closed.is_empty(), "activity at 4 s keeps it until 9 s");
    core.state.on_tick(at(9_500), true);
    core.run_outputs();
    assert!(core.closed.contains(&(2, ErrorCode::IdleTimeout)));
}
