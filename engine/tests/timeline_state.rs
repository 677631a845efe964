//! The timelines of two cores driven as plain state machines: a fake disk that commits
//! appends in order (and sometimes fails them, or crashes and replays), mailboxes between
//! the cores, and devices that connect, disconnect, send, retry and sync at random.

use rand::{Rng, SeedableRng};
use redrain_engine::overload::rates::RateConfig;
use redrain_engine::shard::handoff::home_core;
use redrain_engine::shard::output::ConnOutput;
use redrain_engine::shard::state::{Caller, Clock, ConnAnswers, Handled};
use redrain_engine::timeline::records::KIND_ENTRY;
use redrain_engine::timeline::{
    fanout_bytes, group_home_core, TimelineConfig, TimelineOutput, Timelines, UserRateLimits,
};
use redrain_net::client::ClientCodec;
use redrain_net::message::Response;
use redrain_net::timeline::{
    TimelineRequest, TimelineResponse, U64List, CONTENT_LUCKY, CONTENT_READ_MARKER, CONTENT_TEXT, TARGET_GROUP,
    TARGET_USER,
};
use redrain_net::ErrorCode;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

const CORES: usize = 2;

/// One device of a user: its connection (if online), its sync position and what it saw.
struct Device {
    user: u64,
    conn: Option<u64>,
    held: ConnOutput,
    ready: Vec<u8>,
    since_seq: u64,
    /// message id -> times returned by sync.
    seen: HashMap<u64, u32>,
    last_seq: u64,
    notified: u64,
    /// latest_seq of the last Sync answer that was complete (`more` = 0).
    known_latest: u64,
    /// request id -> what it was.
    asked: HashMap<u32, Asked>,
    next_rid: u32,
    syncing: bool,
}

#[derive(Clone, Copy)]
enum Asked {
    Send { client_msg_id: u64 },
    Sync,
    Other,
}

/// A disk that keeps records in LSN order and loses the uncommitted tail on a crash.
#[derive(Default)]
struct Disk {
    records: Vec<(u8, u64, Vec<u8>)>,
    queued: VecDeque<(u8, Vec<u8>, u64)>,
    next_lsn: u64,
    /// The next this many appends fail (besides `fail_every`).
    fail_next: usize,
}

struct Sim {
    cores: Vec<Timelines>,
    disks: Vec<Disk>,
    groups_table: Vec<BTreeMap<u64, Vec<u8>>>,
    mail: VecDeque<(usize, redrain_engine::timeline::TimelineMail)>,
    devices: Vec<Device>,
    next_conn: u64,
    now_ms: u64,
    rng: rand_chacha::ChaCha8Rng,
    /// (sender, client msg id) -> (message id, addressed users), once acked.
    acked: HashMap<(u64, u64), (u64, Vec<u64>)>,
    /// Sends not acked yet: (device, client msg id, request) to retry.
    unacked: HashMap<(u64, u64), (usize, Vec<u8>)>,
    group_members: HashMap<u64, Vec<u64>>,
    fail_every: u64,
    /// The disks complete nothing while set (every append stays in flight).
    disk_paused: bool,
    /// While set, log reads are held here (core, lsns, token) instead of answered.
    held_reads: Option<Vec<(usize, Vec<u64>, u64)>>,
    group_results: Vec<Response<'static>>,
    errors: Vec<u16>,
    /// retry_after_ms of every error answer, in order.
    retry_after_ms: Vec<u32>,
    /// Devices sync when notified (a test of the pushes themselves turns it off).
    sync_on_notify: bool,
    /// Notify pushes received, per device.
    notifies: Vec<u32>,
    /// Capacity of the mailbox into each core within one round (None: unbounded); mail
    /// beyond it is handed back to its sender as the real queues do.
    mail_capacity_into: [Option<usize>; CORES],
    mails_refused: u64,
    rates: UserRateLimits,
    /// The config the cores run with (and restart with).
    config: TimelineConfig,
}

fn config() -> TimelineConfig {
    // The smallest memory of recent entries: syncs often read the log.
    TimelineConfig { recent_bytes_max: 4096, seq_step: 7, ..TimelineConfig::default() }
}

/// Rates that never refuse in these tests (they measure other bounds).
fn generous_rates() -> UserRateLimits {
    let rate = RateConfig { per_s: 1_000_000, burst: 1_000_000, users_max: 1_000 };
    UserRateLimits { messages: rate, syncs: rate }
}

fn timelines(core: usize, config: TimelineConfig, seed: u64, rates: UserRateLimits) -> Timelines {
    let mut t = Timelines::new(core, CORES, 1, config, seed);
    t.set_rate_limits(rates);
    t
}

impl Sim {
    fn new(seed: u64, users: u64, devices_per_user: usize) -> Self {
        Self::with_config(seed, users, devices_per_user, config())
    }

    fn with_config(seed: u64, users: u64, devices_per_user: usize, config: TimelineConfig) -> Self {
        Self::with_rates(seed, users, devices_per_user, config, generous_rates())
    }

    fn with_rates(
        seed: u64,
        users: u64,
        devices_per_user: usize,
        config: TimelineConfig,
        rates: UserRateLimits,
    ) -> Self {
        let mut devices = Vec::new();
        for user in 1..=users {
            for _ in 0..devices_per_user {
                devices.push(Device {
                    user,
                    conn: None,
                    held: ConnOutput::default(),
                    ready: Vec::new(),
                    since_seq: 0,
                    seen: HashMap::new(),
                    last_seq: 0,
                    notified: 0,
                    known_latest: 0,
                    asked: HashMap::new(),
                    next_rid: 1,
                    syncing: false,
                });
            }
        }
        Sim {
            cores: (0..CORES).map(|c| timelines(c, config.clone(), seed, rates)).collect(),
            config,
            disks: (0..CORES).map(|_| Disk { next_lsn: 1, ..Disk::default() }).collect(),
            groups_table: vec![BTreeMap::new(); CORES],
            mail: VecDeque::new(),
            devices,
            next_conn: 1,
            now_ms: 1_000,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            acked: HashMap::new(),
            unacked: HashMap::new(),
            group_members: HashMap::new(),
            fail_every: 0,
            disk_paused: false,
            held_reads: None,
            group_results: Vec::new(),
            errors: Vec::new(),
            retry_after_ms: Vec::new(),
            sync_on_notify: true,
            notifies: vec![0; users as usize * devices_per_user],
            mail_capacity_into: [None; CORES],
            mails_refused: 0,
            rates,
        }
    }

    fn clock(&self) -> Clock {
        Clock { mono_ms: self.now_ms, unix_ms: 1_767_225_600_000 + self.now_ms }
    }

    fn connect(&mut self, d: usize) {
        let conn = self.next_conn;
        self.next_conn += 1;
        let dev = &mut self.devices[d];
        dev.conn = Some(conn);
        dev.held = ConnOutput::default();
        dev.ready.clear();
        dev.asked.clear();
        dev.syncing = false;
        let core = home_core(dev.user, CORES);
        self.cores[core].on_login(conn, dev.user);
    }

    fn disconnect(&mut self, d: usize) {
        let dev = &mut self.devices[d];
        if let Some(conn) = dev.conn.take() {
            let core = home_core(dev.user, CORES);
            self.cores[core].on_closed(conn);
        }
    }

    /// Sends a request from device `d` (which must be online).
    fn request(&mut self, d: usize, req: TimelineRequest<'_>, asked: Asked) -> Option<ErrorCode> {
        let clock = self.clock();
        let dev = &mut self.devices[d];
        let conn = dev.conn?;
        let rid = dev.next_rid;
        dev.next_rid += 1;
        dev.asked.insert(rid, asked);
        let core = home_core(dev.user, CORES);
        let mut out = ConnAnswers { held: &mut dev.held, ready: &mut dev.ready };
        let caller = Caller { conn, user: dev.user, request_id: rid };
        match self.cores[core].on_request(caller, &req, clock, &mut out) {
            Ok(Handled::Now) | Ok(Handled::Later { .. }) => None,
            Err(code) => Some(code),
        }
    }

    fn send(&mut self, d: usize, target_kind: u8, target: u64, client_msg_id: u64, payload: &[u8]) {
        let user = self.devices[d].user;
        let req = TimelineRequest::Send { target_kind, target, client_msg_id, content_type: CONTENT_TEXT, payload };
        let mut body = Vec::new();
        req.encode_body(&mut body);
        self.unacked.insert((user, client_msg_id), (d, body));
        self.request(d, req, Asked::Send { client_msg_id });
    }

    /// Asks for the next page unless a Sync is in flight; true when it asked.
    fn sync(&mut self, d: usize) -> bool {
        if self.devices[d].syncing || self.devices[d].conn.is_none() {
            return false;
        }
        self.devices[d].syncing = true;
        let since_seq = self.devices[d].since_seq;
        self.request(d, TimelineRequest::Sync { since_seq, limit: 5 }, Asked::Sync);
        true
    }

    /// Runs outputs, mail and (some) disk completions until `steps` rounds passed.
    fn pump(&mut self, commit_all: bool) {
        for round in 0.. {
            assert!(
                round < 100_000,
                "pump never settles: {:?}",
                self.devices.iter().map(|d| (d.user, d.since_seq, d.notified, d.syncing)).collect::<Vec<_>>()
            );
            let mut progressed = false;
            for core in 0..CORES {
                // Each round is one housekeeping tick (refused answers are pushed again).
                let clock = self.clock();
                self.cores[core].on_tick(clock, 0);
                let mut outs = Vec::new();
                self.cores[core].drain(&mut outs);
                let (count, refused_before) = (outs.len() as u64, self.mails_refused);
                for o in outs {
                    self.carry_out(core, o);
                }
                // Mail a full mailbox handed back is no progress (it is tried again).
                progressed |= count > self.mails_refused - refused_before;
            }
            while let Some((to, mail)) = self.mail.pop_front() {
                self.cores[to].on_mail(mail);
                progressed = true;
            }
            for core in 0..CORES {
                let n = if self.disk_paused {
                    0
                } else if commit_all {
                    usize::MAX
                } else {
                    self.rng.gen_range(0..4)
                };
                for _ in 0..n {
                    let Some((kind, payload, token)) = self.disks[core].queued.pop_front() else { break };
                    progressed = true;
                    let disk = &mut self.disks[core];
                    let forced = disk.fail_next > 0;
                    disk.fail_next = disk.fail_next.saturating_sub(1);
                    let fail = forced || self.fail_every > 0 && self.rng.gen_range(0..self.fail_every) == 0;
                    if fail {
                        self.cores[core].on_appended(token, None);
                    } else {
                        let lsn = disk.next_lsn;
                        disk.next_lsn += 1;
                        disk.records.push((kind, lsn, payload));
                        self.cores[core].on_appended(token, Some(lsn));
                    }
                }
            }
            // Answers may ask for more (the next page, a Sync after a Notify).
            progressed |= self.read_answers();
            if !progressed {
                return;
            }
        }
    }

    fn carry_out(&mut self, core: usize, o: TimelineOutput) {
        match o {
            TimelineOutput::Respond { conn, slot, frame } => {
                if let Some(dev) = self.devices.iter_mut().find(|d| d.conn == Some(conn)) {
                    dev.held.complete(slot, frame, &mut dev.ready);
                }
            }
            TimelineOutput::Push { conn, frame } => {
                if let Some(dev) = self.devices.iter_mut().find(|d| d.conn == Some(conn)) {
                    dev.ready.extend_from_slice(&frame);
                }
            }
            TimelineOutput::Append { kind, payload, token } => {
                self.disks[core].queued.push_back((kind, payload, token))
            }
            TimelineOutput::PutGroup { group, members, token } => {
                self.groups_table[core].insert(group, members);
                self.cores[core].on_group_stored(token, true);
            }
            TimelineOutput::Read { lsns, token } => {
                if let Some(held) = self.held_reads.as_mut() {
                    return held.push((core, lsns, token));
                }
                // As the log does: records retention deleted are skipped, others must exist.
                let first = self.disks[core].records.first().map_or(self.disks[core].next_lsn, |r| r.1);
                let records = lsns
                    .iter()
                    .filter(|lsn| **lsn >= first)
                    .map(|lsn| {
                        self.disks[core].records.iter().find(|r| r.1 == *lsn).map(|r| r.2.clone()).ok_or("gone".into())
                    })
                    .collect::<Result<Vec<_>, String>>();
                self.cores[core].on_read(token, records);
            }
            TimelineOutput::Mail { core: to, mail } => {
                let queued = self.mail.iter().filter(|(t, _)| *t == to).count();
                if self.mail_capacity_into[to].is_some_and(|cap| queued >= cap) {
                    self.mails_refused += 1;
                    return self.cores[core].on_mail_refused(to, mail);
                }
                self.mail.push_back((to, mail))
            }
        }
    }

    /// Reads every device's answers; true when that issued new requests.
    fn read_answers(&mut self) -> bool {
        let mut to_sync = Vec::new();
        for d in 0..self.devices.len() {
            let bytes = std::mem::take(&mut self.devices[d].ready);
            if bytes.is_empty() {
                continue;
            }
            let mut codec = ClientCodec::new(1 << 20);
            codec.feed(&bytes);
            while let Some(f) = codec.next_frame().unwrap() {
                let dev = &mut self.devices[d];
                let asked = dev.asked.remove(&f.request_id);
                match f.parse().unwrap() {
                    Response::Timeline(TimelineResponse::Notify { latest_seq }) => {
                        assert!(latest_seq >= dev.notified, "notifies never go back");
                        dev.notified = latest_seq;
                        self.notifies[d] += 1;
                        if self.sync_on_notify {
                            to_sync.push(d);
                        }
                    }
                    Response::Timeline(TimelineResponse::SendOk { message_id, .. }) => {
                        // A send this test does not track (a lucky packet).
                        let Some(Asked::Send { client_msg_id }) = asked else { continue };
                        let key = (dev.user, client_msg_id);
                        if let Some((_, body)) = self.unacked.remove(&key) {
                            let req = TimelineRequest::parse(redrain_net::MessageType::Send, &body).unwrap();
                            let TimelineRequest::Send { target_kind, target, .. } = req else { unreachable!() };
                            let users = if target_kind == TARGET_USER {
                                vec![dev.user, target]
                            } else {
                                self.group_members[&target].clone()
                            };
                            let prev = self.acked.insert(key, (message_id, users));
                            assert!(prev.is_none_or(|p| p.0 == message_id), "a retried send keeps its message id");
                        } else if let Some((id, _)) = self.acked.get(&key) {
                            assert_eq!(*id, message_id, "a repeated ack names the same message");
                        }
                    }
                    Response::Timeline(TimelineResponse::SyncOk { latest_seq, more, expired, entries }) => {
                        dev.syncing = false;
                        if expired && !more && entries.iter().next().is_none() {
                            // Retention dropped everything up to the head: continue from there.
                            dev.last_seq = dev.last_seq.max(latest_seq);
                        }
                        for e in entries.iter() {
                            assert!(e.seq > dev.last_seq, "seqs strictly increase within one device's syncs");
                            dev.last_seq = e.seq;
                            if e.content_type != CONTENT_READ_MARKER {
                                *dev.seen.entry(e.message_id).or_default() += 1;
                            }
                        }
                        dev.since_seq = dev.last_seq.max(dev.since_seq);
                        assert!(dev.since_seq <= latest_seq);
                        // A Notify newer than this answer (it may have been computed
                        // before the Notify's entry) asks for one more Sync: the node
                        // sends no other Notify until this device syncs.
                        if !more {
                            // Everything up to latest_seq is here (seqs may be skipped).
                            dev.known_latest = dev.known_latest.max(latest_seq);
                        }
                        if more || dev.notified > dev.since_seq.max(dev.known_latest) {
                            to_sync.push(d);
                        }
                    }
                    Response::Timeline(other) => self.group_results.push(owned(other)),
                    Response::Error { code, retry_after_ms, .. } => {
                        if matches!(asked, Some(Asked::Sync)) {
                            dev.syncing = false;
                        }
                        self.errors.push(code);
                        self.retry_after_ms.push(retry_after_ms);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        let mut asked = false;
        for d in to_sync {
            asked |= self.sync(d);
        }
        asked
    }

    /// Restarts both cores from their disks (queued, uncommitted appends are lost).
    fn crash_and_restart(&mut self, seed: u64) {
        for d in 0..self.devices.len() {
            self.devices[d].conn = None;
            self.devices[d].syncing = false;
            self.devices[d].asked.clear();
        }
        self.mail.clear();
        for core in 0..CORES {
            self.disks[core].queued.clear();
            let mut t = timelines(core, self.config.clone(), seed, self.rates);
            for (group, members) in &self.groups_table[core] {
                let members = members.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().unwrap())).collect();
                t.recover_group(*group, members);
            }
            for (kind, lsn, payload) in &self.disks[core].records {
                assert!(t.recover_record(*kind, *lsn, payload));
            }
            t.finish_recovery();
            self.cores[core] = t;
        }
    }

    fn create_group(&mut self, d: usize, members: &[u64]) -> u64 {
        let bytes: Vec<u8> = members.iter().flat_map(|m| m.to_be_bytes()).collect();
        self.group_results.clear();
        self.request(d, TimelineRequest::GroupCreate { members: U64List::from_bytes(&bytes) }, Asked::Other);
        self.pump(true);
        let Some(Response::Timeline(TimelineResponse::GroupCreateOk { group_id, .. })) = self.group_results.pop()
        else {
            panic!("group not created: {:?}", self.errors)
        };
        let mut all: Vec<u64> = members.to_vec();
        all.push(self.devices[d].user);
        all.sort_unstable();
        all.dedup();
        self.group_members.insert(group_id, all);
        group_id
    }

    /// Brings every device online and syncs until nothing moves.
    fn drain_and_sync_all(&mut self) {
        for d in 0..self.devices.len() {
            if self.devices[d].conn.is_none() {
                self.connect(d);
            }
        }
        self.pump(true);
        for _ in 0..200 {
            for d in 0..self.devices.len() {
                self.sync(d);
            }
            self.pump(true);
            if self.devices.iter().all(|d| !d.syncing) {
                let behind = self.devices.iter().any(|d| {
                    let core = home_core(d.user, CORES);
                    d.since_seq < self.cores[core].inbox(d.user).map_or(0, |i| i.latest_seq())
                });
                if !behind {
                    return;
                }
            }
        }
        let state: Vec<_> = self
            .devices
            .iter()
            .map(|d| {
                (
                    d.user,
                    d.syncing,
                    d.since_seq,
                    self.cores[home_core(d.user, CORES)].inbox(d.user).map(|i| i.latest_seq()),
                )
            })
            .collect();
        panic!("devices never caught up: {state:?} errors {:?}", self.errors);
    }

    /// Every acked message reached every addressed device exactly once.
    fn check_exactly_once(&self) {
        for ((sender, cmid), (message_id, users)) in &self.acked {
            for dev in self.devices.iter().filter(|d| users.contains(&d.user)) {
                let times = dev.seen.get(message_id).copied().unwrap_or(0);
                assert_eq!(times, 1, "message {message_id} ({sender}/{cmid}) seen {times} times by user {}", dev.user);
            }
        }
        for dev in &self.devices {
            for (id, times) in &dev.seen {
                assert_eq!(*times, 1, "user {} saw message {id} {times} times", dev.user);
            }
        }
    }
}

fn owned(r: TimelineResponse<'_>) -> Response<'static> {
    let mut out = Vec::new();
    Response::Timeline(r).encode(0, &mut out);
    let leaked: &'static [u8] = Box::leak(out.into_boxed_slice());
    let (frame, _) = redrain_net::FrameDecoder::new(1 << 20).decode(leaked).unwrap().unwrap();
    Response::parse(&frame).unwrap()
}

#[test]
fn every_device_syncs_every_message_addressed_to_it_exactly_once_in_order_across_disconnects() {
    for seed in 0..4u64 {
        let mut sim = Sim::new(seed, 12, 2);
        for d in 0..sim.devices.len() {
            sim.connect(d);
        }
        let g1 = sim.create_group(0, &[2, 3, 4, 5, 6, 7]);
        let g2 = sim.create_group(9, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let groups = [g1, g2];
        assert_ne!(group_home_core(g1, CORES), group_home_core(g2, CORES).wrapping_add(7), "ids carry a core");
        let mut cmid = 1u64;
        for _ in 0..600 {
            sim.now_ms += sim.rng.gen_range(0..20);
            let d = sim.rng.gen_range(0..sim.devices.len());
            match sim.rng.gen_range(0..10) {
                0 => sim.disconnect(d),
                1 if sim.devices[d].conn.is_none() => {
                    sim.connect(d);
                    sim.sync(d);
                }
                2..=5 if sim.devices[d].conn.is_some() => {
                    let target = sim.rng.gen_range(1..=12);
                    sim.send(d, TARGET_USER, target, cmid, b"hello");
                    cmid += 1;
                }
                6 | 7 if sim.devices[d].conn.is_some() => {
                    let g = groups[sim.rng.gen_range(0..2)];
                    if sim.group_members[&g].contains(&sim.devices[d].user) {
                        sim.send(d, TARGET_GROUP, g, cmid, b"to all");
                        cmid += 1;
                    }
                }
                8 => {
                    // Retry an unacked send from an online device (same client msg id).
                    let retry = sim
                        .unacked
                        .iter()
                        .find(|(_, (dd, _))| sim.devices[*dd].conn.is_some())
                        .map(|(k, (dd, body))| (*k, *dd, body.clone()));
                    if let Some(((_, c), dd, body)) = retry {
                        let req = TimelineRequest::parse(redrain_net::MessageType::Send, &body).unwrap();
                        sim.request(dd, req, Asked::Send { client_msg_id: c });
                    }
                }
                _ => {
                    sim.sync(d);
                }
            }
            sim.pump(false);
        }
        // Every send is retried until acknowledged.
        for _ in 0..10 {
            sim.drain_and_sync_all();
            let retries: Vec<_> = sim.unacked.iter().map(|(k, (d, body))| (*k, *d, body.clone())).collect();
            if retries.is_empty() {
                break;
            }
            for ((_, c), d, body) in retries {
                let req = TimelineRequest::parse(redrain_net::MessageType::Send, &body).unwrap();
                sim.request(d, req, Asked::Send { client_msg_id: c });
            }
            sim.pump(true);
        }
        sim.drain_and_sync_all();
        assert!(sim.unacked.is_empty(), "every send was acknowledged in the end");
        assert!(sim.acked.len() > 100, "the run exercised many sends ({})", sim.acked.len());
        let log_reads: u64 = sim.cores.iter().map(|c| c.stats.sync_log_reads).sum();
        assert!(log_reads > 0, "some syncs read entries that left memory from the log");
        sim.check_exactly_once();
    }
}

#[test]
fn a_device_gets_one_notify_until_it_syncs_and_a_new_one_for_entries_after_its_sync() {
    // Users 1 and 2, one device each; user 1 sends user 2 many messages.
    let mut sim = Sim::new(3, 2, 1);
    sim.sync_on_notify = false;
    sim.connect(0);
    sim.connect(1);
    for cmid in 1..=10 {
        sim.send(0, TARGET_USER, 2, cmid, b"hi");
        sim.pump(true);
    }
    assert_eq!(sim.notifies[1], 1, "ten entries, no sync: one Notify");
    assert_eq!(sim.devices[1].notified, 1, "the Notify named the first entry's seq");
    // The sender's own device got its copies the same way: one Notify.
    assert_eq!(sim.notifies[0], 1);
    let gated_before = sim.cores.iter().map(|c| c.stats.notifies_gated).sum::<u64>();
    assert!(gated_before >= 18, "the other 18 moves were gated ({gated_before})");

    sim.sync(1);
    sim.pump(true);
    assert_eq!(sim.devices[1].since_seq, 10, "pages of 5 until `more` is 0");
    assert_eq!(sim.notifies[1], 1, "syncing pages brings no Notify");
    sim.send(0, TARGET_USER, 2, 11, b"hi");
    sim.pump(true);
    assert_eq!(sim.notifies[1], 2, "an entry after the Sync notifies again");
    assert_eq!(sim.devices[1].notified, 11);
    // A device that synced while nothing new came gets nothing; a second device of the
    // same user is gated on its own.
    sim.sync(0);
    sim.pump(true);
    let before = sim.notifies[0];
    sim.pump(true);
    assert_eq!(sim.notifies[0], before, "no entry, no Notify");
    sim.sync_on_notify = true;
    sim.drain_and_sync_all();
    sim.check_exactly_once();
}

#[test]
fn after_a_crash_every_acknowledged_message_is_there_seqs_keep_increasing_and_retries_are_not_duplicated() {
    let mut sim = Sim::new(11, 10, 1);
    sim.fail_every = 0;
    for d in 0..sim.devices.len() {
        sim.connect(d);
    }
    let g = sim.create_group(0, &[2, 3, 4, 5, 6, 7, 8, 9, 10]);
    let mut cmid = 1;
    for round in 0..3 {
        for _ in 0..200 {
            let d = sim.rng.gen_range(0..sim.devices.len());
            if sim.devices[d].conn.is_none() {
                sim.connect(d);
            }
            if sim.rng.gen_bool(0.5) {
                let target = sim.rng.gen_range(1..=10);
                sim.send(d, TARGET_USER, target, cmid, b"x");
            } else {
                sim.send(d, TARGET_GROUP, g, cmid, b"y");
            }
            cmid += 1;
            sim.pump(false);
        }
        let latest_before: Vec<u64> =
            (1..=10).map(|u| sim.cores[home_core(u, CORES)].inbox(u).map_or(0, |i| i.latest_seq())).collect();
        sim.crash_and_restart(100 + round);
        // Retry every unacknowledged send after the restart.
        let retries: Vec<_> = sim.unacked.iter().map(|(k, (d, body))| (*k, *d, body.clone())).collect();
        for d in 0..sim.devices.len() {
            sim.connect(d);
        }
        for ((_, c), d, body) in retries {
            let req = TimelineRequest::parse(redrain_net::MessageType::Send, &body).unwrap();
            sim.request(d, req, Asked::Send { client_msg_id: c });
        }
        sim.pump(true);
        for u in 1..=10u64 {
            let core = home_core(u, CORES);
            if let Some(inbox) = sim.cores[core].inbox(u) {
                assert!(inbox.latest_seq() >= latest_before[(u - 1) as usize], "durable seqs survive the crash");
            }
        }
        sim.drain_and_sync_all();
    }
    assert!(sim.unacked.is_empty());
    sim.check_exactly_once();
    // Seqs never repeat: every device saw strictly increasing seqs across all rounds
    // (checked as entries arrived), and each message once.
}

#[test]
fn a_failed_write_fails_the_send_and_a_retry_delivers_it_once() {
    let mut sim = Sim::new(5, 6, 2);
    sim.fail_every = 5;
    for d in 0..sim.devices.len() {
        sim.connect(d);
    }
    for c in 1..=100u64 {
        let d = (c as usize) % sim.devices.len();
        sim.send(d, TARGET_USER, (c % 6) + 1, c, b"z");
        sim.pump(false);
    }
    sim.fail_every = 0;
    for _ in 0..5 {
        let retries: Vec<_> = sim.unacked.iter().map(|(k, (d, body))| (*k, *d, body.clone())).collect();
        for ((_, c), d, body) in retries {
            let req = TimelineRequest::parse(redrain_net::MessageType::Send, &body).unwrap();
            sim.request(d, req, Asked::Send { client_msg_id: c });
        }
        sim.pump(true);
    }
    assert!(sim.errors.contains(&ErrorCode::Internal.as_u16()), "some sends failed first");
    sim.drain_and_sync_all();
    assert!(sim.unacked.is_empty());
    sim.check_exactly_once();
}

#[test]
fn a_group_send_beyond_the_fanout_byte_bound_is_refused_busy_and_leaves_nothing_behind() {
    // Room for exactly one send of a 2-byte message to a group of 6 in flight.
    let bound = fanout_bytes(6, 2);
    let mut sim = Sim::with_config(11, 6, 1, TimelineConfig { fanout_pending_bytes_max: bound, ..config() });
    for d in 0..sim.devices.len() {
        sim.connect(d);
    }
    let g = sim.create_group(0, &[2, 3, 4, 5, 6]);
    let home = group_home_core(g, CORES);
    let queued = |sim: &Sim| sim.disks.iter().map(|d| d.queued.len()).sum::<usize>();
    let entries = |sim: &Sim| sim.disks.iter().flat_map(|d| &d.records).filter(|r| r.0 == KIND_ENTRY).count();

    sim.disk_paused = true;
    sim.send(0, TARGET_GROUP, g, 1, b"hi");
    sim.pump(false);
    assert_eq!(sim.cores[home].fanout_pending_bytes(), bound, "the first send holds the whole bound");
    let appends_of_first = queued(&sim);
    assert!(appends_of_first >= 6, "one entry per member is waiting for the disk");

    sim.errors.clear();
    sim.send(1, TARGET_GROUP, g, 2, b"yo");
    sim.pump(false);
    assert_eq!(sim.errors, vec![ErrorCode::Busy.as_u16()], "the second send is refused Busy");
    assert!(sim.retry_after_ms[sim.retry_after_ms.len() - 1] > 0, "Busy carries a retry-after");
    assert_eq!(queued(&sim), appends_of_first, "the refused send appended nothing");
    assert_eq!(sim.cores[home].fanout_pending_bytes(), bound, "the refused send holds no bytes");

    sim.disk_paused = false;
    sim.pump(true);
    assert_eq!(sim.cores[home].fanout_pending_bytes(), 0, "a durable send gives its bytes back");
    assert!(sim.acked.contains_key(&(1, 1)), "the first send is acknowledged");
    assert_eq!(entries(&sim), 6, "one entry per member, of the first message only");

    // The refused send, retried once the first is durable, is delivered once.
    let (d, body) = sim.unacked[&(2, 2)].clone();
    let req = TimelineRequest::parse(redrain_net::MessageType::Send, &body).unwrap();
    sim.request(d, req, Asked::Send { client_msg_id: 2 });
    sim.pump(true);
    assert!(sim.unacked.is_empty(), "the retry is acknowledged");
    assert_eq!(entries(&sim), 12, "and stored once for each member");
    sim.drain_and_sync_all();
    sim.check_exactly_once();
}

#[test]
fn a_sync_beyond_the_concurrent_log_read_bound_is_refused_busy_and_the_held_read_still_answers() {
    let mut sim = Sim::with_config(12, 2, 2, TimelineConfig { sync_reads_max: 1, ..config() });
    let (a, b) = (2, 3); // the two devices of user 2, offline while it receives
    sim.connect(0);
    // More entries than a core keeps in memory (4 KiB): a sync from 0 must read the log.
    for c in 1..=200 {
        sim.send(0, TARGET_USER, 2, c, b"m");
    }
    sim.pump(true);
    assert!(sim.unacked.is_empty());
    sim.connect(a);
    sim.connect(b);
    sim.held_reads = Some(Vec::new());
    sim.errors.clear();
    sim.sync(a);
    sim.pump(true);
    assert_eq!(sim.held_reads.as_ref().map(Vec::len), Some(1), "the first sync reads the log");
    assert!(sim.errors.is_empty());
    sim.sync(b);
    sim.pump(true);
    assert_eq!(sim.errors, vec![ErrorCode::Busy.as_u16()], "the second sync is refused while the first reads");
    assert!(sim.retry_after_ms[sim.retry_after_ms.len() - 1] > 0, "Busy carries a retry-after");
    assert_eq!(sim.held_reads.as_ref().map(Vec::len), Some(1), "the refused sync started no read");
    // The held read completes; then both devices catch up.
    for (core, lsns, token) in sim.held_reads.take().unwrap() {
        let records = lsns
            .iter()
            .map(|lsn| sim.disks[core].records.iter().find(|r| r.1 == *lsn).map(|r| r.2.clone()).ok_or("gone".into()))
            .collect::<Result<Vec<_>, String>>();
        sim.cores[core].on_read(token, records);
    }
    sim.pump(true);
    assert!(sim.devices[a].since_seq > 0, "the held sync was answered");
    sim.drain_and_sync_all();
    sim.check_exactly_once();
}

#[test]
fn bad_input_gets_typed_errors_and_stores_nothing() {
    let mut sim = Sim::new(3, 8, 1);
    for d in 0..sim.devices.len() {
        sim.connect(d);
    }
    let g = sim.create_group(0, &[2, 3]);
    let records_before: usize = sim.disks.iter().map(|d| d.records.len()).sum();
    let big = vec![0u8; config().message_bytes_max + 1];
    let code = |sim: &mut Sim, d: usize, req: TimelineRequest<'_>| {
        sim.errors.clear();
        let now = sim.request(d, req, Asked::Other);
        sim.pump(true);
        now.map(|c| c.as_u16()).or(sim.errors.first().copied())
    };
    let send = |kind, target, payload| TimelineRequest::Send {
        target_kind: kind,
        target,
        client_msg_id: 77,
        content_type: CONTENT_TEXT,
        payload,
    };
    assert_eq!(code(&mut sim, 0, send(TARGET_USER, 2, &big)), Some(ErrorCode::MessageTooLarge.as_u16()));
    let outsider = 7; // user 8
    assert_eq!(code(&mut sim, outsider, send(TARGET_GROUP, g, b"hi")), Some(ErrorCode::NotGroupMember.as_u16()));
    assert_eq!(code(&mut sim, 0, send(TARGET_GROUP, g ^ 0xffff, b"hi")), Some(ErrorCode::UnknownGroup.as_u16()));
    let too_many: Vec<u8> = (100..100 + config().group_members_max as u64).flat_map(|m| m.to_be_bytes()).collect();
    assert_eq!(
        code(&mut sim, 0, TimelineRequest::GroupCreate { members: U64List::from_bytes(&too_many) }),
        Some(ErrorCode::GroupFull.as_u16())
    );
    assert_eq!(
        code(&mut sim, 0, TimelineRequest::Sync { since_seq: 5, limit: 10 }),
        Some(ErrorCode::SeqFromFuture.as_u16())
    );
    let lucky_bad = [0u8, 0, 0, 2, 0, 3]; // 0.02 yuan in 3 shares
    let req = TimelineRequest::Send {
        target_kind: TARGET_GROUP,
        target: g,
        client_msg_id: 78,
        content_type: CONTENT_LUCKY,
        payload: &lucky_bad,
    };
    assert_eq!(code(&mut sim, 0, req), Some(ErrorCode::BadLuckyPacket.as_u16()));
    assert_eq!(
        code(&mut sim, outsider, TimelineRequest::LuckyOpen { group_id: g, packet_id: 1 }),
        Some(ErrorCode::NotGroupMember.as_u16())
    );
    assert_eq!(
        code(&mut sim, 0, TimelineRequest::LuckyOpen { group_id: g, packet_id: 1 }),
        Some(ErrorCode::UnknownLuckyPacket.as_u16())
    );
    let records_after: usize = sim.disks.iter().map(|d| d.records.len()).sum();
    assert_eq!(records_before, records_after, "nothing was stored");
    // A full group refuses one more member.
    let cap = config().group_members_max;
    let members: Vec<u64> = (1000..1000 + cap as u64 - 1).collect();
    let big_group = sim.create_group(0, &members);
    assert_eq!(
        code(&mut sim, 0, TimelineRequest::GroupJoin { group_id: big_group, user: 5 }),
        Some(ErrorCode::GroupFull.as_u16())
    );
}

#[test]
fn lucky_packet_sums_exactly_each_member_opens_once_and_count_is_respected_from_both_cores() {
    for seed in 0..5u64 {
        let mut sim = Sim::new(seed, 40, 1);
        for d in 0..sim.devices.len() {
            sim.connect(d);
        }
        let members: Vec<u64> = (2..=40).collect();
        let g = sim.create_group(0, &members);
        let homes: HashSet<usize> = (1..=40u64).map(|u| home_core(u, CORES)).collect();
        assert_eq!(homes.len(), 2, "members on both cores");
        let (total, count) = (10_000u32, 25u16);
        let mut payload = total.to_be_bytes().to_vec();
        payload.extend_from_slice(&count.to_be_bytes());
        let req = TimelineRequest::Send {
            target_kind: TARGET_GROUP,
            target: g,
            client_msg_id: 1,
            content_type: CONTENT_LUCKY,
            payload: &payload,
        };
        sim.request(0, req, Asked::Other);
        sim.pump(true);
        // The packet id is the message id: read it from the sender's sync.
        sim.drain_and_sync_all();
        let packet_id = *sim.devices[0].seen.keys().next().expect("the packet is in the sender's timeline");
        // Every member opens at once (twice each), interleaved across both cores.
        sim.group_results.clear();
        sim.errors.clear();
        let mut order: Vec<usize> = (0..40).chain(0..40).collect();
        for i in (1..order.len()).rev() {
            let j = sim.rng.gen_range(0..=i);
            order.swap(i, j);
        }
        for d in order {
            sim.request(d, TimelineRequest::LuckyOpen { group_id: g, packet_id }, Asked::Other);
            sim.pump(false);
        }
        sim.pump(true);
        let mut by_amount = Vec::new();
        let mut repeats = 0;
        for r in &sim.group_results {
            if let Response::Timeline(TimelineResponse::LuckyOpenOk { amount_fen, flags, .. }) = r {
                if flags & 1 == 0 {
                    by_amount.push(*amount_fen);
                } else {
                    repeats += 1;
                }
            }
        }
        assert_eq!(by_amount.len(), usize::from(count), "exactly count first opens");
        assert_eq!(by_amount.iter().map(|a| u64::from(*a)).sum::<u64>(), u64::from(total), "sum exact to the fen");
        assert!(by_amount.iter().all(|a| *a >= 1));
        assert_eq!(repeats, usize::from(count), "a second open of a winner repeats its amount");
        let gone = sim.errors.iter().filter(|c| **c == ErrorCode::LuckyAllGone.as_u16()).count();
        assert_eq!(gone, 2 * (40 - usize::from(count)), "the others hear all gone");
        let p = sim.cores[group_home_core(g, CORES)].lucky_packet(packet_id).unwrap();
        assert_eq!(p.opened.len(), usize::from(count));
        // Durable: a restart recovers the same shares.
        let shares: BTreeMap<u64, u32> = p.opened.iter().map(|(u, a)| (*u, *a)).collect();
        sim.crash_and_restart(seed);
        let p = sim.cores[group_home_core(g, CORES)].lucky_packet(packet_id).unwrap();
        let recovered: BTreeMap<u64, u32> = p.opened.iter().map(|(u, a)| (*u, *a)).collect();
        assert_eq!(shares, recovered);
        assert_eq!(p.remaining_count, 0);
    }
}

#[test]
fn a_config_without_room_for_one_entry_in_flight_or_one_sync_read_is_refused() {
    let frame = redrain_net::frame::FRAME_BYTES_LIMIT;
    assert!(config().validate(frame).is_ok());
    let one_entry = fanout_bytes(1, config().message_bytes_max);
    assert!(TimelineConfig { fanout_pending_bytes_max: one_entry, ..config() }.validate(frame).is_ok());
    assert!(TimelineConfig { fanout_pending_bytes_max: one_entry - 1, ..config() }.validate(frame).is_err());
    assert!(TimelineConfig { sync_reads_max: 0, ..config() }.validate(frame).is_err());
}

/// Inbox entries on the disks of both cores (written or waiting to be).
fn entries_stored(sim: &Sim) -> usize {
    sim.disks.iter().map(|d| d.records.iter().filter(|r| r.0 == KIND_ENTRY).count() + d.queued.len()).sum()
}

#[test]
fn sends_and_read_markers_share_the_message_bucket_and_a_refusal_stores_nothing() {
    let rates =
        UserRateLimits { messages: RateConfig { per_s: 2, burst: 3, users_max: 100 }, syncs: generous_rates().syncs };
    let mut sim = Sim::with_rates(31, 2, 1, config(), rates);
    sim.connect(0);
    sim.connect(1);
    for c in 1..=3 {
        sim.send(0, TARGET_USER, 2, c, b"m");
    }
    sim.pump(true);
    assert!(sim.unacked.is_empty(), "the burst of 3 is served: {:?}", sim.errors);
    let stored = entries_stored(&sim);
    sim.errors.clear();
    sim.retry_after_ms.clear();
    sim.send(0, TARGET_USER, 2, 4, b"m");
    let marker = TimelineRequest::SyncAck { conv_kind: TARGET_USER, conv_id: 2, read_seq: 1 };
    assert_eq!(sim.request(0, marker, Asked::Other), Some(ErrorCode::RateLimited));
    sim.pump(true);
    let limited = ErrorCode::RateLimited.as_u16();
    assert_eq!(sim.errors, vec![limited, limited], "a 4th send and a read marker share the empty bucket");
    assert_eq!(sim.retry_after_ms, vec![500, 500], "the bucket has a token again after 1 / (2 per s)");
    assert_eq!(entries_stored(&sim), stored, "a refused send or read marker stores nothing");
    let home = home_core(1, CORES);
    assert_eq!(sim.cores[home].stats.rate_limited_messages, 2);
    // The other user has its own bucket.
    sim.send(1, TARGET_USER, 1, 1, b"r");
    sim.pump(true);
    assert!(!sim.unacked.contains_key(&(2, 1)), "user 2 is not limited by user 1's sends");
    // After the retry-after the bucket serves again.
    sim.now_ms += 500;
    sim.send(0, TARGET_USER, 2, 5, b"m");
    sim.pump(true);
    assert!(!sim.unacked.contains_key(&(1, 5)), "served after the retry-after");

    // The operator lowers the rate at run time: the burst keeps its length in seconds.
    for core in &mut sim.cores {
        core.apply_rate_switches(Some(1), None);
    }
    assert_eq!(sim.cores[home].rate_limits().messages, RateConfig { per_s: 1, burst: 1, users_max: 100 });
    sim.now_ms += 10_000;
    sim.errors.clear();
    sim.retry_after_ms.clear();
    sim.send(0, TARGET_USER, 2, 6, b"m");
    sim.send(0, TARGET_USER, 2, 7, b"m");
    sim.pump(true);
    assert_eq!((sim.errors.clone(), sim.retry_after_ms.clone()), (vec![limited], vec![1_000]));
    // And restores it (None: as configured).
    for core in &mut sim.cores {
        core.apply_rate_switches(None, None);
    }
    assert_eq!(sim.cores[home].rate_limits(), rates);
}

#[test]
fn group_changes_and_lucky_opens_take_from_the_message_bucket_and_member_lists_from_the_sync_bucket() {
    let rates = UserRateLimits {
        messages: RateConfig { per_s: 1, burst: 3, users_max: 100 },
        syncs: RateConfig { per_s: 1, burst: 2, users_max: 100 },
    };
    let mut sim = Sim::with_rates(34, 4, 1, config(), rates);
    for d in 0..4 {
        sim.connect(d);
    }
    let limited = Some(ErrorCode::RateLimited.as_u16());
    let code = |sim: &mut Sim, d: usize, req: TimelineRequest<'_>| {
        sim.errors.clear();
        sim.retry_after_ms.clear();
        let now = sim.request(d, req, Asked::Other);
        sim.pump(true);
        now.map(|c| c.as_u16()).or(sim.errors.first().copied())
    };
    let g = sim.create_group(0, &[2, 3]);
    let mut payload = 100u32.to_be_bytes().to_vec();
    payload.extend_from_slice(&2u16.to_be_bytes());
    let lucky = TimelineRequest::Send {
        target_kind: TARGET_GROUP,
        target: g,
        client_msg_id: 1,
        content_type: CONTENT_LUCKY,
        payload: &payload,
    };
    assert_eq!(code(&mut sim, 2, lucky), None);
    sim.drain_and_sync_all();
    let packet_id = *sim.devices[2].seen.keys().next().expect("the packet is in the sender's timeline");
    // Every bucket full again.
    sim.now_ms += 10_000;

    // Group changes: three pass, the fourth is refused and changes nothing.
    assert_eq!(code(&mut sim, 0, TimelineRequest::GroupJoin { group_id: g, user: 4 }), None);
    assert_eq!(code(&mut sim, 0, TimelineRequest::GroupLeave { group_id: g, user: 4 }), None);
    assert_eq!(code(&mut sim, 0, TimelineRequest::GroupJoin { group_id: g, user: 4 }), None);
    assert_eq!(code(&mut sim, 0, TimelineRequest::GroupLeave { group_id: g, user: 4 }), limited);
    assert_eq!(sim.retry_after_ms, vec![1_000]);
    let home = home_core(1, CORES);
    assert_eq!(sim.cores[home].stats.rate_limited_messages, 1);
    // Member lists take from the sync bucket (2): user 4 is still a member.
    sim.group_results.clear();
    assert_eq!(code(&mut sim, 1, TimelineRequest::GroupMembers { group_id: g }), None);
    let Some(Response::Timeline(TimelineResponse::GroupMembersOk { members })) = sim.group_results.pop() else {
        panic!("{:?}", sim.group_results)
    };
    assert!(members.iter().any(|m| m == 4), "the refused leave changed nothing");
    assert_eq!(code(&mut sim, 1, TimelineRequest::GroupMembers { group_id: g }), None);
    assert_eq!(code(&mut sim, 1, TimelineRequest::GroupMembers { group_id: g }), limited);
    assert_eq!(sim.cores[home_core(2, CORES)].stats.rate_limited_syncs, 1);

    // Lucky opens: user 2 spends its message bucket on sends, then its open is refused
    // and takes no share; after the retry-after it opens and gets a first share.
    for c in 1..=3 {
        sim.send(1, TARGET_USER, 1, 100 + c, b"m");
    }
    sim.pump(true);
    let open = TimelineRequest::LuckyOpen { group_id: g, packet_id };
    assert_eq!(code(&mut sim, 1, open), limited);
    assert!(sim.cores[group_home_core(g, CORES)].lucky_packet(packet_id).unwrap().opened.is_empty());
    sim.now_ms += 1_000;
    sim.group_results.clear();
    assert_eq!(code(&mut sim, 1, open), None);
    let Some(Response::Timeline(TimelineResponse::LuckyOpenOk { flags, .. })) = sim.group_results.pop() else {
        panic!("{:?}", sim.group_results)
    };
    assert_eq!(flags & 1, 0, "a first open, not a repeat");
    assert_eq!(sim.cores[group_home_core(g, CORES)].lucky_packet(packet_id).unwrap().opened.len(), 1);
}

#[test]
fn syncs_take_from_their_own_bucket_with_its_retry_after() {
    let rates = UserRateLimits {
        messages: generous_rates().messages,
        syncs: RateConfig { per_s: 4, burst: 2, users_max: 100 },
    };
    let mut sim = Sim::with_rates(32, 1, 1, config(), rates);
    sim.connect(0);
    for _ in 0..2 {
        sim.sync(0);
        sim.pump(true);
    }
    assert!(sim.errors.is_empty(), "the burst of 2 syncs is served: {:?}", sim.errors);
    sim.sync(0);
    sim.pump(true);
    assert_eq!(sim.errors, vec![ErrorCode::RateLimited.as_u16()]);
    assert_eq!(sim.retry_after_ms, vec![250]);
    assert_eq!(sim.cores[home_core(1, CORES)].stats.rate_limited_syncs, 1);
    // An empty sync bucket does not hold back sends (they take from the message bucket).
    sim.send(0, TARGET_USER, 1, 1, b"m");
    sim.pump(true);
    assert!(sim.unacked.is_empty());
    sim.now_ms += 250;
    sim.errors.clear();
    sim.sync(0);
    sim.pump(true);
    assert!(sim.errors.is_empty(), "a token again after the retry-after");
}

#[test]
fn a_full_reverse_mailbox_delays_answers_but_every_send_finishes_and_fanout_bytes_return_to_zero() {
    let mut sim = Sim::new(41, 12, 1);
    for d in 0..sim.devices.len() {
        sim.connect(d);
    }
    let g = sim.create_group(0, &[2, 3, 4, 5, 6, 7, 8, 9]);
    // Every send reaches its recipients' cores while the disks hold the writes...
    sim.disk_paused = true;
    let mut cmid = 0;
    for _ in 0..5 {
        for d in 0..sim.devices.len() {
            let user = sim.devices[d].user;
            cmid += 1;
            sim.send(d, TARGET_USER, user % 12 + 1, cmid, b"m");
            if user <= 9 {
                cmid += 1;
                sim.send(d, TARGET_GROUP, g, cmid, b"g");
            }
        }
        sim.pump(false);
    }
    assert!(sim.cores.iter().any(|c| c.fanout_pending_bytes() > 0));
    // ...then the writes commit at once, and the reports and answers going back meet
    // mailboxes that take one mail per destination per round.
    sim.mail_capacity_into = [Some(1); CORES];
    sim.disk_paused = false;
    sim.pump(true);
    assert!(sim.mails_refused > 0, "the tiny mailboxes refused mail");
    assert!(sim.errors.is_empty(), "no send failed: {:?}", sim.errors);
    assert!(sim.unacked.is_empty(), "every send finished: {} left", sim.unacked.len());
    for core in &sim.cores {
        assert_eq!(core.fanout_pending_bytes(), 0, "every fan-out gave its bytes back");
        assert_eq!(core.mail_outbox_len(), 0, "nothing is left in an outbox");
    }
    let retried: u64 = sim.cores.iter().map(|c| c.stats.mail_retried).sum();
    assert!(retried >= sim.mails_refused, "every refused answer was pushed again (and counted)");
    sim.mail_capacity_into = [None; CORES];
    sim.drain_and_sync_all();
    sim.check_exactly_once();
}

#[test]
fn while_the_outbox_holds_mail_outbox_max_answers_new_sends_are_refused_busy_and_the_held_answer_still_arrives() {
    let mut sim = Sim::with_config(42, 8, 1, TimelineConfig { mail_outbox_max: 1, ..config() });
    for d in 0..sim.devices.len() {
        sim.connect(d);
    }
    let on = |sim: &Sim, core| (0..sim.devices.len()).find(|&d| home_core(sim.devices[d].user, CORES) == core);
    let (a, b) = (on(&sim, 0).unwrap(), on(&sim, 1).unwrap());
    let (a_user, b_user) = (sim.devices[a].user, sim.devices[b].user);
    // Every user gets an inbox (a note to self), so the final sync check covers them all.
    for d in 0..sim.devices.len() {
        let user = sim.devices[d].user;
        sim.send(d, TARGET_USER, user, 100, b"self");
    }
    sim.pump(true);
    assert!(sim.unacked.is_empty());
    // Nothing reaches core 0: core 1's Delivered for a's send waits in core 1's outbox.
    sim.mail_capacity_into = [Some(0), None];
    sim.send(a, TARGET_USER, b_user, 1, b"m");
    sim.pump(true);
    assert_eq!(sim.cores[1].mail_outbox_len(), 1, "the Delivered waits for room");
    assert!(sim.cores[0].fanout_pending_bytes() > 0, "the send is not finished yet");
    assert!(sim.unacked.contains_key(&(a_user, 1)));
    // Core 1's outbox is at its bound: new sends there are refused Busy, nothing stored.
    let stored = entries_stored(&sim);
    sim.errors.clear();
    sim.send(b, TARGET_USER, b_user, 2, b"n");
    sim.pump(true);
    assert_eq!(sim.errors, vec![ErrorCode::Busy.as_u16()]);
    assert_eq!(entries_stored(&sim), stored, "the refused send stored nothing");
    assert_eq!(sim.cores[1].stats.refused_outbox_full, 1);
    // Syncs are still served (they send no mail).
    sim.errors.clear();
    sim.sync(b);
    sim.pump(true);
    assert!(sim.errors.is_empty(), "{:?}", sim.errors);
    // Room again: the held answer arrives, the send finishes and gives its bytes back.
    sim.mail_capacity_into = [None; CORES];
    sim.pump(true);
    assert!(!sim.unacked.contains_key(&(a_user, 1)), "the held send is acknowledged");
    assert_eq!(sim.cores[0].fanout_pending_bytes(), 0);
    assert_eq!(sim.cores[1].mail_outbox_len(), 0);
    assert!(sim.cores[1].stats.mail_retried >= 1);
    sim.send(b, TARGET_USER, b_user, 2, b"n");
    sim.pump(true);
    assert!(sim.unacked.is_empty(), "new sends are served again");
    sim.drain_and_sync_all();
    sim.check_exactly_once();
}

#[test]
fn sends_whose_deliveries_a_full_mailbox_refused_fail_and_every_acknowledged_message_arrives_exactly_once() {
    let mut sim = Sim::new(41, 12, 1);
    for d in 0..sim.devices.len() {
        sim.connect(d);
    }
    let g = sim.create_group(0, &[2, 3, 4, 5, 6, 7, 8, 9]);
    sim.mail_capacity_into = [Some(1); CORES];
    let mut cmid = 0;
    for _ in 0..5 {
        for d in 0..sim.devices.len() {
            let user = sim.devices[d].user;
            cmid += 1;
            sim.send(d, TARGET_USER, user % 12 + 1, cmid, b"m");
            if user <= 9 {
                cmid += 1;
                sim.send(d, TARGET_GROUP, g, cmid, b"g");
            }
        }
        sim.pump(false);
    }
    sim.pump(true);
    // Refused deliveries and group requests fail their sends (Busy, Internal); the rest
    // are acknowledged, and nothing is left in flight.
    assert!(sim.mails_refused > 0 && !sim.errors.is_empty() && !sim.acked.is_empty());
    for core in &sim.cores {
        assert_eq!(core.fanout_pending_bytes(), 0);
    }
    sim.mail_capacity_into = [None; CORES];
    sim.drain_and_sync_all();
    sim.check_exactly_once();
}

// ---- retention and compaction (checkpoint.rs) ------------------------------------------

fn retention_config() -> TimelineConfig {
    TimelineConfig {
        retention_bytes_max: 1 << 20,
        segment_bytes: 4096,
        checkpoint_interval_s: 1,
        checkpoint_records_per_tick: 2,
        ..config()
    }
}

impl Sim {
    /// Advances the clock by `ms` and runs every core's housekeeping tick (which writes
    /// checkpoint records); then the fake log deletes every record below the core's
    /// retention watermark (as if each record were a segment past the bounds).
    fn tick(&mut self, ms: u64) {
        self.now_ms += ms;
        let clock = self.clock();
        for core in 0..CORES {
            let first = self.disks[core].records.first().map_or(self.disks[core].next_lsn, |r| r.1);
            self.cores[core].on_tick(clock, first);
        }
        self.pump(true);
        for core in 0..CORES {
            let watermark = self.cores[core].retention_watermark();
            self.disks[core].records.retain(|r| r.1 >= watermark);
        }
    }

    /// Ticks until every core finished a checkpoint started after now.
    fn checkpoint_all(&mut self) {
        let before: Vec<u64> = self.cores.iter().map(|c| c.retention_stats().checkpoints_total).collect();
        for _ in 0..200 {
            self.tick(1_100);
            if self.cores.iter().zip(&before).all(|(c, b)| c.retention_stats().checkpoints_total > *b + 1) {
                return;
            }
        }
        panic!("no checkpoint finished");
    }

    /// A Sync of user `user`'s device `d` from `since_seq`, answered at once: (flags, seqs).
    fn raw_sync(&mut self, d: usize, since_seq: u64) -> (bool, bool, Vec<(u64, u8)>) {
        let user = self.devices[d].user;
        let core = home_core(user, CORES);
        let (mut held, mut ready) = (ConnOutput::default(), Vec::new());
        let mut out = ConnAnswers { held: &mut held, ready: &mut ready };
        let caller = Caller { conn: 9_999, user, request_id: 77 };
        let req = TimelineRequest::Sync { since_seq, limit: 500 };
        let clock = self.clock();
        let handled = self.cores[core].on_request(caller, &req, clock, &mut out);
        if let Ok(Handled::Later { .. }) = handled {
            // Older entries come from the log: answer the read, take the deferred answer.
            for _ in 0..2 {
                let mut outs = Vec::new();
                self.cores[core].drain(&mut outs);
                for o in outs {
                    match o {
                        TimelineOutput::Respond { conn: 9_999, frame, .. } => ready = frame,
                        TimelineOutput::Read { lsns, token } => {
                            let disk = &self.disks[core];
                            let first = disk.records.first().map_or(disk.next_lsn, |r| r.1);
                            let records = lsns
                                .iter()
                                .filter(|l| **l >= first)
                                .map(|l| {
                                    disk.records.iter().find(|r| r.1 == *l).map(|r| r.2.clone()).ok_or("gone".into())
                                })
                                .collect();
                            self.cores[core].on_read(token, records);
                        }
                        other => self.carry_out(core, other),
                    }
                }
            }
        }
        let mut codec = ClientCodec::new(1 << 20);
        codec.feed(&ready);
        let f = codec.next_frame().unwrap().expect("one answer");
        let Response::Timeline(TimelineResponse::SyncOk { more, expired, entries, .. }) = f.parse().unwrap() else {
            panic!("SyncOk expected")
        };
        (more, expired, entries.iter().map(|e| (e.seq, e.content_type)).collect())
    }

    fn lucky_opens(&mut self, g: u64, packet_id: u64, devices: impl Iterator<Item = usize>) -> Vec<(u32, u8)> {
        self.group_results.clear();
        for d in devices {
            self.request(d, TimelineRequest::LuckyOpen { group_id: g, packet_id }, Asked::Other);
            self.pump(false);
        }
        self.pump(true);
        self.group_results
            .iter()
            .filter_map(|r| match r {
                Response::Timeline(TimelineResponse::LuckyOpenOk { amount_fen, flags, .. }) => {
                    Some((*amount_fen, *flags))
                }
                _ => None,
            })
            .collect()
    }
}

#[test]
fn after_retention_deleted_old_records_a_restart_keeps_seqs_retries_lucky_shares_and_read_markers() {
    let mut sim = Sim::with_config(3, 10, 1, retention_config());
    for d in 0..sim.devices.len() {
        sim.connect(d);
    }
    let g = sim.create_group(0, &(2..=10).collect::<Vec<_>>());
    // A lucky packet, half opened before compaction.
    let (total, count) = (1_000u32, 9u16);
    let mut payload = total.to_be_bytes().to_vec();
    payload.extend_from_slice(&count.to_be_bytes());
    let req = TimelineRequest::Send {
        target_kind: TARGET_GROUP,
        target: g,
        client_msg_id: 10_000,
        content_type: CONTENT_LUCKY,
        payload: &payload,
    };
    sim.request(0, req, Asked::Other);
    sim.pump(true);
    sim.drain_and_sync_all();
    let packet_id = *sim.devices[0].seen.keys().next().expect("the packet is in the sender's timeline");
    let first_half = sim.lucky_opens(g, packet_id, 0..5);
    assert_eq!(first_half.len(), 5);
    // User 1 marks its conversation with user 2 read.
    sim.request(0, TimelineRequest::SyncAck { conv_kind: TARGET_USER, conv_id: 2, read_seq: 1 }, Asked::Other);
    sim.pump(true);
    let marker_seq = sim.cores[home_core(1, CORES)].inbox(1).unwrap().latest_seq();
    // Traffic, with checkpoints and deletions between rounds.
    let mut cmid = 1;
    for _ in 0..6 {
        for _ in 0..60 {
            let d = sim.rng.gen_range(0..sim.devices.len());
            let target = sim.rng.gen_range(2..=10);
            sim.send(d, TARGET_USER, target, cmid, b"x");
            cmid += 1;
            sim.pump(false);
        }
        sim.pump(true);
        sim.drain_and_sync_all();
        sim.checkpoint_all();
    }
    let appended: u64 = sim.disks.iter().map(|d| d.next_lsn - 1).sum();
    let kept: usize = sim.disks.iter().map(|d| d.records.len()).sum();
    assert!(sim.disks.iter().all(|d| d.records[0].1 > 1), "both logs lost their oldest records");
    assert!(kept * 2 < appended as usize, "retention keeps {kept} of {appended} records");
    // The last acked send of device 0, retried after the restart.
    let (key, (message_id, users)) = sim
        .acked
        .iter()
        .filter(|((s, _), _)| *s == 1)
        .max_by_key(|((_, c), _)| *c)
        .map(|(k, v)| (*k, v.clone()))
        .unwrap();
    let latest_before: Vec<u64> =
        (1..=10).map(|u| sim.cores[home_core(u, CORES)].inbox(u).map_or(0, |i| i.latest_seq())).collect();
    let shares_before = sim.cores[group_home_core(g, CORES)].lucky_packet(packet_id).unwrap().opened.clone();

    sim.crash_and_restart(77);

    for d in 0..sim.devices.len() {
        sim.connect(d);
    }
    // A retried recent send is recognised: same message id, nothing stored again.
    let target = users.iter().copied().find(|u| *u != 1).unwrap_or(1);
    sim.request(
        0,
        TimelineRequest::Send {
            target_kind: TARGET_USER,
            target,
            client_msg_id: key.1,
            content_type: CONTENT_TEXT,
            payload: b"x",
        },
        Asked::Send { client_msg_id: key.1 },
    );
    sim.pump(true);
    assert_eq!(sim.acked[&key].0, message_id);
    // (Were it stored again, its recipients' devices would see it twice: checked below.)
    // The lucky packet: recovered shares; the rest open at most once each; exact sum.
    let p = sim.cores[group_home_core(g, CORES)].lucky_packet(packet_id).expect("the packet survived compaction");
    assert_eq!(p.opened, shares_before);
    let again = sim.lucky_opens(g, packet_id, 0..10);
    let fresh: Vec<u32> = again.iter().filter(|(_, f)| f & 1 == 0).map(|(a, _)| *a).collect();
    let repeats: Vec<u32> = again.iter().filter(|(_, f)| f & 1 == 1).map(|(a, _)| *a).collect();
    assert_eq!(fresh.len(), 4, "the four members left draw once each");
    assert_eq!(repeats.len(), 5, "the first five hear their amounts again");
    let sum: u64 = first_half.iter().map(|(a, _)| u64::from(*a)).chain(fresh.iter().map(|a| u64::from(*a))).sum();
    assert_eq!(sum, u64::from(total), "shares sum exactly to the fen");
    let mut first_amounts: Vec<u32> = first_half.iter().map(|(a, _)| *a).collect();
    let mut repeat_amounts = repeats.clone();
    first_amounts.sort_unstable();
    repeat_amounts.sort_unstable();
    assert_eq!(first_amounts, repeat_amounts);
    // New traffic: seqs continue above everything before (each device checks strictly
    // increasing seqs as entries arrive), and every acked message arrives once.
    for _ in 0..40 {
        let d = sim.rng.gen_range(0..sim.devices.len());
        let target = sim.rng.gen_range(2..=10);
        sim.send(d, TARGET_USER, target, cmid, b"z");
        cmid += 1;
    }
    sim.pump(true);
    sim.drain_and_sync_all();
    sim.check_exactly_once();
    for u in 1..=10u64 {
        let latest = sim.cores[home_core(u, CORES)].inbox(u).map_or(0, |i| i.latest_seq());
        assert!(latest >= latest_before[(u - 1) as usize]);
    }
    // A Sync from 0: the dropped read marker first (flagged expired), then the retained
    // entries from the first one kept, also flagged.
    let (more, expired, page) = sim.raw_sync(0, 0);
    assert!(more && expired, "the first page carries the dropped read markers");
    assert_eq!(page, vec![(marker_seq, CONTENT_READ_MARKER)]);
    let (_, expired, page) = sim.raw_sync(0, marker_seq);
    assert!(expired, "entries after the marker were dropped too");
    assert!(page.first().is_some_and(|(seq, _)| *seq > marker_seq + 1), "{page:?}");
    let last = sim.cores[home_core(1, CORES)].inbox(1).unwrap().latest_seq();
    let (_, expired, _) = sim.raw_sync(0, last);
    assert!(!expired, "a Sync from the head is not expired");
}

#[test]
fn a_crash_at_any_point_of_a_checkpoint_loses_nothing() {
    for cut in 0..12usize {
        let mut sim = Sim::with_config(cut as u64, 6, 1, retention_config());
        for d in 0..sim.devices.len() {
            sim.connect(d);
        }
        let mut cmid = 1;
        for _ in 0..80 {
            let d = sim.rng.gen_range(0..sim.devices.len());
            let target = sim.rng.gen_range(1..=6);
            sim.send(d, TARGET_USER, target, cmid, b"a");
            cmid += 1;
        }
        sim.pump(true);
        sim.drain_and_sync_all();
        sim.checkpoint_all();
        // A second checkpoint, cut after `cut` of its appends reached the disk.
        sim.disk_paused = true;
        for _ in 0..4 {
            sim.tick(1_100);
        }
        for core in 0..CORES {
            for _ in 0..cut {
                let Some((kind, payload, token)) = sim.disks[core].queued.pop_front() else { break };
                let lsn = sim.disks[core].next_lsn;
                sim.disks[core].next_lsn += 1;
                sim.disks[core].records.push((kind, lsn, payload));
                sim.cores[core].on_appended(token, Some(lsn));
            }
            // The log deletes below whatever watermark the core reached.
            let watermark = sim.cores[core].retention_watermark();
            sim.disks[core].records.retain(|r| r.1 >= watermark);
        }
        sim.disk_paused = false;
        let dedup_before: Vec<(u64, u64)> = sim.acked.keys().copied().collect();
        sim.crash_and_restart(cut as u64);
        for d in 0..sim.devices.len() {
            sim.connect(d);
        }
        // Every acked send retried: recognised (same message id), nothing duplicated.
        for (sender, c) in dedup_before {
            let d = (sender - 1) as usize;
            let users = sim.acked[&(sender, c)].1.clone();
            let target = users.iter().copied().find(|u| *u != sender).unwrap_or(sender);
            let req = TimelineRequest::Send {
                target_kind: TARGET_USER,
                target,
                client_msg_id: c,
                content_type: CONTENT_TEXT,
                payload: b"a",
            };
            sim.request(d, req, Asked::Send { client_msg_id: c });
            sim.pump(true);
        }
        // A retry stored again would reach its recipients' devices twice (checked below).
        for _ in 0..30 {
            let d = sim.rng.gen_range(0..sim.devices.len());
            let target = sim.rng.gen_range(1..=6);
            sim.send(d, TARGET_USER, target, cmid, b"b");
            cmid += 1;
        }
        sim.pump(true);
        sim.drain_and_sync_all();
        sim.check_exactly_once();
    }
}

#[test]
fn retention_bounds_out_of_range_are_refused() {
    let ok = retention_config();
    assert!(ok.validate(1 << 20).is_ok());
    for bad in [
        TimelineConfig { segment_bytes: 100, ..ok.clone() },
        TimelineConfig { retention_bytes_max: 4096, ..ok.clone() },
        TimelineConfig { checkpoint_interval_s: 0, ..ok.clone() },
        TimelineConfig { checkpoint_records_per_tick: 0, ..ok.clone() },
        TimelineConfig { dedup_window_s: 0, ..ok.clone() },
        TimelineConfig { read_markers_per_user_max: 0, ..ok.clone() },
        TimelineConfig { read_markers_per_user_max: 5_000, ..ok.clone() },
    ] {
        assert!(bad.validate(1 << 20).is_err(), "{bad:?} must be refused");
    }
}

#[test]
fn without_the_groups_table_groups_come_back_from_the_log_also_after_retention_deleted_their_records() {
    let mut sim = Sim::with_config(5, 10, 1, retention_config());
    for d in 0..sim.devices.len() {
        sim.connect(d);
    }
    let g1 = sim.create_group(0, &(2..=6).collect::<Vec<_>>());
    sim.request(0, TimelineRequest::GroupJoin { group_id: g1, user: 7 }, Asked::Other);
    sim.request(0, TimelineRequest::GroupLeave { group_id: g1, user: 3 }, Asked::Other);
    sim.pump(true);
    let g2 = sim.create_group(1, &[1, 8, 9]);
    assert!(sim.errors.is_empty(), "{:?}", sim.errors);
    let groups = |sim: &Sim| -> Vec<Vec<u64>> {
        [g1, g2].iter().map(|g| sim.cores[group_home_core(*g, CORES)].group(*g).expect("the group").to_vec()).collect()
    };
    let before = groups(&sim);
    assert!(before[0].contains(&7) && !before[0].contains(&3), "{before:?}");
    // The harness's own book of members (it saw the creation only).
    sim.group_members.insert(g1, before[0].clone());
    let group_records = |sim: &Sim| -> usize {
        sim.disks
            .iter()
            .flat_map(|d| &d.records)
            .filter(|r| r.0 == redrain_engine::timeline::records::KIND_GROUP)
            .count()
    };
    assert_eq!(group_records(&sim), 4, "one record per change");

    // The node lost its groups table (its peers never had it): the log's records of the
    // changes rebuild every group, in order.
    for t in &mut sim.groups_table {
        t.clear();
    }
    sim.crash_and_restart(5);
    assert_eq!(groups(&sim), before);

    // Traffic with checkpoints until retention deleted the records of the changes: the
    // checkpoints carry the lists.
    for d in 0..sim.devices.len() {
        sim.connect(d);
    }
    let mut cmid = 1;
    for _ in 0..6 {
        for _ in 0..60 {
            let d = sim.rng.gen_range(0..sim.devices.len());
            let to = sim.rng.gen_range(1..=10);
            sim.send(d, TARGET_USER, to, cmid, b"x");
            cmid += 1;
            sim.pump(false);
        }
        sim.pump(true);
        sim.drain_and_sync_all();
        sim.checkpoint_all();
    }
    assert_eq!(group_records(&sim), 0, "retention deleted the records of the changes");
    for t in &mut sim.groups_table {
        t.clear();
    }
    sim.crash_and_restart(6);
    assert_eq!(groups(&sim), before);
    // And the group works: a member's send reaches every member once.
    for d in 0..sim.devices.len() {
        sim.connect(d);
    }
    sim.errors.clear();
    sim.send(1, TARGET_GROUP, g1, 1 << 30, b"still here");
    sim.pump(true);
    assert!(sim.errors.is_empty() && sim.unacked.is_empty(), "{:?}", sim.errors);
    sim.drain_and_sync_all();
    sim.check_exactly_once();
}

#[test]
fn a_group_change_whose_record_fails_is_answered_internal_and_undone_and_its_retry_holds() {
    let mut sim = Sim::new(9, 6, 1);
    for d in 0..sim.devices.len() {
        sim.connect(d);
    }
    let g = sim.create_group(0, &[2, 3]);
    let home = group_home_core(g, CORES);
    let code = |sim: &mut Sim, d: usize, req: TimelineRequest<'_>| {
        sim.errors.clear();
        let now = sim.request(d, req, Asked::Other);
        sim.pump(true);
        now.map(|c| c.as_u16()).or(sim.errors.first().copied())
    };
    sim.disks[home].fail_next = 1;
    let join = TimelineRequest::GroupJoin { group_id: g, user: 4 };
    assert_eq!(code(&mut sim, 0, join), Some(ErrorCode::Internal.as_u16()));
    assert_eq!(sim.cores[home].group(g), Some(&[1, 2, 3][..]), "the failed join is undone");
    assert_eq!(sim.cores[home].stats.group_changes_failed, 1);
    // A group send now reaches the old members only.
    sim.send(1, TARGET_GROUP, g, 1, b"before");
    sim.pump(true);
    sim.drain_and_sync_all();
    sim.check_exactly_once();
    assert!(sim.devices[3].seen.is_empty(), "user 4 is not a member");
    // The retry holds, also across a restart.
    assert_eq!(code(&mut sim, 0, join), None);
    assert_eq!(sim.cores[home].group(g), Some(&[1, 2, 3, 4][..]));
    sim.crash_and_restart(9);
    assert_eq!(sim.cores[home].group(g), Some(&[1, 2, 3, 4][..]));

    // Two joins of user 5 at once, the first record failing: the second is not answered
    // before it knows, and its own record makes the join hold.
    for d in 0..sim.devices.len() {
        sim.connect(d);
    }
    sim.errors.clear();
    sim.group_results.clear();
    sim.disks[home].fail_next = 1;
    let join5 = TimelineRequest::GroupJoin { group_id: g, user: 5 };
    assert_eq!(sim.request(0, join5, Asked::Other), None);
    assert_eq!(sim.request(1, join5, Asked::Other), None);
    sim.pump(true);
    assert_eq!(sim.errors, vec![ErrorCode::Internal.as_u16()], "the first join failed");
    assert!(
        matches!(sim.group_results.as_slice(), [Response::Timeline(TimelineResponse::GroupJoinOk { members: 5 })]),
        "{:?}",
        sim.group_results
    );
    assert_eq!(sim.cores[home].group(g), Some(&[1, 2, 3, 4, 5][..]), "the acknowledged join holds");
    sim.crash_and_restart(10);
    assert_eq!(sim.cores[home].group(g), Some(&[1, 2, 3, 4, 5][..]));
}

#[test]
fn checkpoints_taken_while_entries_and_shares_are_in_flight_lose_nothing_across_a_crash() {
    for seed in 0..6u64 {
        let mut sim = Sim::with_config(seed, 8, 1, retention_config());
        for d in 0..sim.devices.len() {
            sim.connect(d);
        }
        let g = sim.create_group(0, &(2..=8).collect::<Vec<_>>());
        let (total, count) = (5_000u32, 8u16);
        let mut payload = total.to_be_bytes().to_vec();
        payload.extend_from_slice(&count.to_be_bytes());
        let lucky = TimelineRequest::Send {
            target_kind: TARGET_GROUP,
            target: g,
            client_msg_id: 1 << 30,
            content_type: CONTENT_LUCKY,
            payload: &payload,
        };
        sim.request(0, lucky, Asked::Other);
        sim.pump(true);
        sim.drain_and_sync_all();
        let packet_id = *sim.devices[0].seen.keys().next().unwrap();
        sim.group_results.clear();
        // Some appends fail too (entries, shares and checkpoint records alike).
        sim.fail_every = 15;
        for cmid in 1..400u64 {
            let d = sim.rng.gen_range(0..sim.devices.len());
            match sim.rng.gen_range(0..10) {
                0 => {
                    sim.request(d, TimelineRequest::LuckyOpen { group_id: g, packet_id }, Asked::Other);
                }
                1 | 2 => {
                    // Devices catch up first (retention would rightly drop what a device
                    // has not synced yet), then more traffic is put in flight: the
                    // housekeeping tick runs while appends are still queued, so each
                    // checkpoint starts with entries and shares in flight.
                    sim.drain_and_sync_all();
                    for i in 0..8u64 {
                        let target = sim.rng.gen_range(1..=8);
                        sim.send(d, TARGET_USER, target, (1 << 20) + cmid * 8 + i, b"f");
                        let opener = sim.rng.gen_range(0..8);
                        sim.request(opener, TimelineRequest::LuckyOpen { group_id: g, packet_id }, Asked::Other);
                        sim.pump(false);
                    }
                    sim.now_ms += 400;
                    let clock = sim.clock();
                    for core in 0..CORES {
                        let first = sim.disks[core].records.first().map_or(sim.disks[core].next_lsn, |r| r.1);
                        sim.cores[core].on_tick(clock, first);
                        let watermark = sim.cores[core].retention_watermark();
                        sim.disks[core].records.retain(|r| r.1 >= watermark);
                    }
                }
                3 => sim.send(d, TARGET_GROUP, g, cmid, b"g"),
                _ => {
                    let target = sim.rng.gen_range(1..=8);
                    sim.send(d, TARGET_USER, target, cmid, b"u");
                }
            }
            sim.pump(false);
        }
        assert!(sim.cores.iter().all(|c| c.retention_stats().checkpoints_total >= 3), "checkpoints ran");
        sim.fail_every = 0;
        // Sends that failed are retried before the crash (a send whose sender's own entry
        // failed while another recipient's was stored gets a new message id when retried
        // only after a restart: a limit of recovery from the log, not of retention).
        let failed: Vec<_> = sim.unacked.iter().map(|(k, (d, body))| (k.1, *d, body.clone())).collect();
        for (c, d, body) in failed {
            let req = TimelineRequest::parse(redrain_net::MessageType::Send, &body).unwrap();
            sim.request(d, req, Asked::Send { client_msg_id: c });
            sim.pump(true);
        }
        assert!(sim.unacked.is_empty(), "every failed send went through on its retry");
        assert!(sim.disks.iter().all(|d| d.records[0].1 > 1), "old records were deleted");
        sim.crash_and_restart(seed);
        for d in 0..sim.devices.len() {
            sim.connect(d);
        }
        // Every send retried (acked or not): each stored once.
        let retries: Vec<_> = sim
            .acked
            .iter()
            .map(|(k, (_, users))| (*k, users.clone()))
            .chain(sim.unacked.iter().map(|(k, (d, _))| (*k, vec![sim.devices[*d].user])))
            .collect();
        for ((sender, c), _) in retries {
            let body = sim.unacked.get(&(sender, c)).map(|(_, b)| b.clone());
            let d = (sender - 1) as usize;
            match body {
                Some(body) => {
                    let req = TimelineRequest::parse(redrain_net::MessageType::Send, &body).unwrap();
                    sim.request(d, req, Asked::Send { client_msg_id: c });
                }
                None => {
                    let users = sim.acked[&(sender, c)].1.clone();
                    let (kind, target) = if users.len() > 2 {
                        (TARGET_GROUP, g)
                    } else {
                        (TARGET_USER, users.iter().copied().find(|u| *u != sender).unwrap_or(sender))
                    };
                    let payload: &[u8] = if kind == TARGET_GROUP { b"g" } else { b"u" };
                    let req = TimelineRequest::Send {
                        target_kind: kind,
                        target,
                        client_msg_id: c,
                        content_type: CONTENT_TEXT,
                        payload,
                    };
                    sim.request(d, req, Asked::Send { client_msg_id: c });
                }
            }
            sim.pump(true);
        }
        // Everybody opens (again): at most `count` fresh shares in the whole run, each
        // user's share recorded once, and they sum exactly to the total.
        sim.pump(true);
        for d in 0..sim.devices.len() {
            sim.request(d, TimelineRequest::LuckyOpen { group_id: g, packet_id }, Asked::Other);
            sim.pump(true);
        }
        let fresh: Vec<u32> = sim
            .group_results
            .iter()
            .filter_map(|r| match r {
                Response::Timeline(TimelineResponse::LuckyOpenOk { amount_fen, flags: 0, .. }) => Some(*amount_fen),
                _ => None,
            })
            .collect();
        assert_eq!(fresh.len(), usize::from(count), "seed {seed}: one fresh share per member over the whole run");
        assert_eq!(fresh.iter().map(|a| u64::from(*a)).sum::<u64>(), u64::from(total), "seed {seed}: exact sum");
        let p = sim.cores[group_home_core(g, CORES)].lucky_packet(packet_id).unwrap();
        assert_eq!(p.opened.values().map(|a| u64::from(*a)).sum::<u64>(), u64::from(total));
        sim.drain_and_sync_all();
        assert!(sim.unacked.is_empty());
        sim.check_exactly_once();
    }
}
