//! Randomized, seeded simulation of one replicated stream: an origin and two
//! peers, with client appends, group commits, shipping, acks, lost
//! messages, partitions, peer crashes, origin crashes and origin disk loss,
//! interleaved at random. It drives the real sans-IO pieces - the record
//! format, `plan_import` (dedup/gap rules of every replica and repair), and
//! `CommitTracker` (2-of-3 rule and no-quorum policy) - with simulated disks
//! and links, and checks after every step that no acknowledged record is
//! lost, duplicated or changed, and that replicas never diverge.
//!
//! The seed is printed; `STORAGE_SIM_SEED=<seed>` replays a run exactly, and
//! `STORAGE_SIM_RUNS` sets how many seeds one test run tries.

use std::collections::{HashMap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redrain_storage::log::plan_import;
use redrain_storage::record::{split_batches, BatchBuilder};
use redrain_storage::replication::{CommitTracker, NoQuorumPolicy, PeerState, Verdict};
use redrain_storage::Lsn;

/// A disk holding whole durable batches of one log.
#[derive(Default, Clone)]
struct Disk {
    bytes: Vec<u8>,
    /// (first, last, offset) of each batch, for reads by LSN.
    index: Vec<(Lsn, Lsn, usize)>,
}

impl Disk {
    fn durable_lsn(&self) -> Lsn {
        self.index.last().map(|b| b.1).unwrap_or(0)
    }
    fn append(&mut self, bytes: &[u8]) {
        for batch in split_batches(bytes).0 {
            self.index.push((batch.first_lsn, batch.last_lsn(), self.bytes.len()));
            self.bytes.extend_from_slice(batch.bytes);
        }
    }
    fn import(&mut self, incoming: &[u8]) -> Lsn {
        let plan = plan_import(incoming, self.durable_lsn() + 1, self.durable_lsn() == 0)
            .expect("import follows the protocol: no gaps, no damage");
        if let Some(plan) = plan {
            self.append(&plan.bytes);
        }
        self.durable_lsn()
    }
    /// Whole batches from the one holding `from`, at most `batches_max` of them.
    fn read_from(&self, from: Lsn, batches_max: usize) -> Vec<u8> {
        let start = self.index.partition_point(|b| b.1 < from);
        let end = (start + batches_max).min(self.index.len());
        if start >= end {
            return Vec::new();
        }
        let lo = self.index[start].2;
        let hi = self.index.get(end).map(|b| b.2).unwrap_or(self.bytes.len());
        self.bytes[lo..hi].to_vec()
    }
    fn records(&self) -> Vec<(Lsn, Vec<u8>)> {
        split_batches(&self.bytes).0.iter().flat_map(|b| b.records().map(|r| (r.lsn, r.payload.to_vec()))).collect()
    }
}

struct Peer {
    disk: Disk,
    up: bool,
    partitioned: bool,
    /// Origin -> peer frame in flight (stop-and-wait, like the shipper).
    to_peer: Option<Vec<u8>>,
    /// Peer -> origin ack in flight.
    to_origin: Option<Lsn>,
    /// Origin's view: connected and past the hello.
    connected: bool,
}

struct Sim {
    rng: StdRng,
    origin: Disk,
    origin_up: bool,
    /// Client appends not yet written: their unique ids.
    pending: VecDeque<u64>,
    /// Records durable locally whose clients wait for the commit: lsn -> id.
    waiting: HashMap<Lsn, u64>,
    tracker: CommitTracker,
    peers: [Peer; 2],
    next_client_id: u64,
    /// The oracle: every acknowledged record, lsn -> client id.
    acked: HashMap<Lsn, u64>,
    acks_total: u64,
    no_quorum_total: u64,
    steps: u64,
}

fn id_of(payload: &[u8]) -> u64 {
    u64::from_le_bytes(payload.try_into().expect("8-byte payload"))
}

impl Sim {
    fn new(seed: u64) -> Self {
        let peer = || Peer {
            disk: Disk::default(),
            up: true,
            partitioned: false,
            to_peer: None,
            to_origin: None,
            connected: false,
        };
        Sim {
            rng: StdRng::seed_from_u64(seed),
            origin: Disk::default(),
            origin_up: true,
            pending: VecDeque::new(),
            waiting: HashMap::new(),
            tracker: CommitTracker::new(NoQuorumPolicy::FailFast, 0),
            peers: [peer(), peer()],
            next_client_id: 1,
            acked: HashMap::new(),
            acks_total: 0,
            no_quorum_total: 0,
            steps: 0,
        }
    }

    fn step(&mut self) {
        let p = self.rng.gen_range(0..2usize);
        match self.rng.gen_range(0..100u32) {
            0..=24 if self.origin_up => {
                for _ in 0..self.rng.gen_range(1..5) {
                    self.pending.push_back(self.next_client_id);
                    self.next_client_id += 1;
                }
            }
            25..=39 if self.origin_up => self.group_commit(),
            40..=54 => self.ship(p),
            55..=69 => self.deliver_to_peer(p),
            70..=84 => self.deliver_ack(p),
            85 if self.rng.gen_bool(0.5) => self.crash_peer(p),
            86..=88 => self.restart_peer(p),
            89 => self.peers[p].partitioned = !self.peers[p].partitioned,
            90 if self.rng.gen_bool(0.5) => self.crash_origin(),
            91 if self.rng.gen_bool(0.3) => self.lose_origin_disk(),
            92..=93 => self.restart_origin(),
            94..=95 => self.detect_dead_link(p),
            _ => self.connect(p),
        }
        self.resolve_waiters();
        self.steps += 1;
        // A full check decodes every copy; every few steps keeps runs fast
        // while still catching a violation close to its cause.
        if self.steps.is_multiple_of(16) {
            self.check();
        }
    }

    /// The shipper's I/O timeout: a connection to a dead or partitioned peer
    /// is eventually declared down.
    fn detect_dead_link(&mut self, p: usize) {
        let peer = &self.peers[p];
        if peer.connected && (!peer.up || peer.partitioned) {
            self.disconnect(p);
        }
    }

    fn group_commit(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let take = self.rng.gen_range(1..=self.pending.len().min(50));
        let first = self.origin.durable_lsn() + 1;
        let mut builder = BatchBuilder::new(first);
        let mut ids = Vec::new();
        for _ in 0..take {
            let id = self.pending.pop_front().unwrap();
            builder.push(1, &id.to_le_bytes());
            ids.push(id);
        }
        builder.finish();
        // Sometimes the disk is full: the whole batch fails, nothing written.
        if self.rng.gen_bool(0.05) {
            return;
        }
        self.origin.append(&builder.take());
        for (i, id) in ids.into_iter().enumerate() {
            self.waiting.insert(first + i as Lsn, id);
        }
        self.tracker.local_durable(self.origin.durable_lsn());
    }

    fn connect(&mut self, p: usize) {
        let peer = &mut self.peers[p];
        if !self.origin_up || peer.connected {
            return;
        }
        if !peer.up || peer.partitioned {
            self.tracker.set_peer_state(p, PeerState::Down);
            return;
        }
        // Hello / HelloAck: resend starts from what the peer holds.
        peer.connected = true;
        self.tracker.peer_acked(p, peer.disk.durable_lsn());
        self.tracker.set_peer_state(p, PeerState::Up);
    }

    fn ship(&mut self, p: usize) {
        if !self.peers[p].connected {
            // The shipper reconnects (after its backoff) before sending.
            self.connect(p);
        }
        let acked = self.tracker.peer_acked_lsn(p);
        let batches_max = self.rng.gen_range(1..4);
        let peer = &mut self.peers[p];
        if !self.origin_up || !peer.connected || peer.to_peer.is_some() {
            return;
        }
        let frame = self.origin.read_from(acked + 1, batches_max);
        if !frame.is_empty() {
            peer.to_peer = Some(frame);
        }
    }

    fn deliver_to_peer(&mut self, p: usize) {
        let peer = &mut self.peers[p];
        if !peer.up || peer.partitioned {
            return;
        }
        if let Some(frame) = peer.to_peer.take() {
            let durable = peer.disk.import(&frame);
            peer.to_origin = Some(durable);
        }
    }

    fn deliver_ack(&mut self, p: usize) {
        let peer = &mut self.peers[p];
        if !self.origin_up || peer.partitioned {
            return;
        }
        if let Some(lsn) = peer.to_origin.take() {
            if peer.connected {
                self.tracker.peer_acked(p, lsn);
            }
        }
    }

    fn disconnect(&mut self, p: usize) {
        let peer = &mut self.peers[p];
        peer.connected = false;
        peer.to_peer = None;
        peer.to_origin = None;
        self.tracker.set_peer_state(p, PeerState::Down);
    }

    fn crash_peer(&mut self, p: usize) {
        self.peers[p].up = false;
        self.disconnect(p);
    }

    fn restart_peer(&mut self, p: usize) {
        self.peers[p].up = true;
    }

    fn resolve_waiters(&mut self) {
        if !self.origin_up {
            return;
        }
        let mut done = Vec::new();
        for (&lsn, &id) in &self.waiting {
            match self.tracker.verdict(lsn) {
                Verdict::Committed | Verdict::CommittedLocalOnly => {
                    assert!(self.acked.insert(lsn, id).is_none(), "LSN {lsn} acknowledged twice");
                    self.acks_total += 1;
                    done.push(lsn);
                }
                Verdict::NoQuorum => {
                    self.no_quorum_total += 1;
                    done.push(lsn);
                }
                Verdict::Wait => {}
            }
        }
        for lsn in done {
            self.waiting.remove(&lsn);
        }
    }

    fn crash_origin(&mut self) {
        // Pending and waiting clients get no answer: never acknowledged.
        self.origin_up = false;
        self.pending.clear();
        self.waiting.clear();
        for p in 0..2 {
            self.disconnect(p);
        }
    }

    fn lose_origin_disk(&mut self) {
        self.crash_origin();
        self.origin = Disk::default();
    }

    fn restart_origin(&mut self) {
        if self.origin_up {
            return;
        }
        let lost = self.origin.durable_lsn() == 0;
        let reachable: Vec<usize> = (0..2).filter(|&p| self.peers[p].up && !self.peers[p].partitioned).collect();
        if lost && reachable.len() < 2 {
            return; // ReplicatedLog::open refuses: stay down, retry later
        }
        // Catch up from every reachable peer before serving.
        for p in reachable {
            let mut from = self.origin.durable_lsn() + 1;
            loop {
                let chunk = self.peers[p].disk.read_from(from, 3);
                if chunk.is_empty() {
                    break;
                }
                let before = self.origin.durable_lsn();
                let after = self.origin.import(&chunk);
                if after == before {
                    break;
                }
                from = after + 1;
            }
        }
        self.tracker = CommitTracker::new(NoQuorumPolicy::FailFast, self.origin.durable_lsn());
        self.origin_up = true;
    }

    /// Invariants that hold after every step.
    fn check(&self) {
        let origin = self.origin.records();
        let lost_disk = origin.is_empty() && !self.origin_up;
        for (i, (lsn, _)) in origin.iter().enumerate() {
            assert_eq!(*lsn, i as Lsn + 1, "origin LSNs not contiguous");
        }
        // Every acknowledged record is on at least two copies, or, while the
        // origin's disk is gone, on at least one peer.
        let replicas = [self.peers[0].disk.records(), self.peers[1].disk.records()];
        for (&lsn, &id) in &self.acked {
            let on = |records: &[(Lsn, Vec<u8>)]| {
                records.get(lsn as usize - 1).is_some_and(|(l, payload)| *l == lsn && id_of(payload) == id)
            };
            let copies = on(&origin) as u32 + on(&replicas[0]) as u32 + on(&replicas[1]) as u32;
            let needed = if lost_disk { 1 } else { 2 };
            assert!(copies >= needed, "acknowledged LSN {lsn} on only {copies} copies");
        }
        // Replicas never disagree with the origin or each other.
        for records in &replicas {
            for (lsn, payload) in records {
                if let Some((_, mine)) = origin.get(*lsn as usize - 1) {
                    assert_eq!(mine, payload, "replica diverged at LSN {lsn}");
                }
            }
        }
        // No client's record appears twice.
        let mut seen = std::collections::HashSet::new();
        for (_, payload) in &origin {
            assert!(seen.insert(id_of(payload)), "a record was duplicated");
        }
    }

    /// Heals everything and lets the system settle; then all copies match.
    fn settle(&mut self) {
        for p in 0..2 {
            self.peers[p].up = true;
            self.peers[p].partitioned = false;
        }
        self.restart_origin();
        for _ in 0..10_000 {
            self.group_commit();
            for p in 0..2 {
                self.connect(p);
                self.ship(p);
                self.deliver_to_peer(p);
                self.deliver_ack(p);
            }
            self.resolve_waiters();
        }
        self.check();
        let origin = self.origin.records();
        for (&lsn, &id) in &self.acked {
            let (_, payload) = &origin[lsn as usize - 1];
            assert_eq!(id_of(payload), id, "acknowledged LSN {lsn} changed");
        }
        for peer in &self.peers {
            assert_eq!(peer.disk.records(), origin, "replica did not converge");
        }
    }
}

#[test]
fn random_interleavings_of_appends_crashes_and_peer_failures_keep_every_ack() {
    let runs: u64 = std::env::var("STORAGE_SIM_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    let fixed: Option<u64> = std::env::var("STORAGE_SIM_SEED").ok().and_then(|s| s.parse().ok());
    let base: u64 = fixed.unwrap_or_else(|| rand::thread_rng().gen());
    let mut acks = 0;
    let mut failures = 0;
    for run in 0..if fixed.is_some() { 1 } else { runs } {
        let seed = base.wrapping_add(run);
        println!("simulation seed {seed} (replay: STORAGE_SIM_SEED={seed})");
        let mut sim = Sim::new(seed);
        for _ in 0..3_000 {
            sim.step();
        }
        sim.settle();
        acks += sim.acks_total;
        failures += sim.no_quorum_total;
    }
    println!("{acks} acknowledged appends checked, {failures} fail-fast NoQuorum answers");
    assert!(acks > 0);
}
