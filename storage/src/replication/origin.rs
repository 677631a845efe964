//! The origin side of replication: [`ReplicatedLog`] wraps the core's local
//! log, ships it to both peers, and resolves appends when 2 of 3 copies are
//! durable.
//!
//! Ordering rule: a batch is shipped only after it is durable locally. A
//! failed local write therefore never leaves a record on a peer that the
//! origin does not have, and after any crash the origin's own log is at
//! least as long as every peer's replica unless its disk was lost (then it
//! refetches from the peers before serving; see [`ReplicatedLog::open`]).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::Path;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use glommio::net::TcpStream;

use super::commit::{CommitTracker, NoQuorumPolicy, PeerState, Verdict};
use super::fetch::{fetch_from_peer, FetchLimits};
use super::io::FramedStream;
use super::wire::Message;
use super::{ReplicationConfig, FRAME_SLACK_BYTES};
use crate::config::{DamagePolicy, LogConfig};
use crate::error::StorageError;
use crate::file_io::FileSystem;
use crate::log::Log;
use crate::metrics::{PeerMetrics, StorageMetrics, ValueHistogram};
use crate::record::{split_batches, RecordKind};
use crate::{Lsn, Result};

/// What `ReplicatedLog::open` found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Durable LSN of the local log after its own recovery.
    pub local_durable_lsn: Lsn,
    /// True when the local log was empty or cut at damage.
    pub local_data_lost: bool,
    /// Records fetched from peers.
    pub records_fetched: u64,
    /// Peers that answered the catch-up.
    pub peers_reached: usize,
    /// Durable LSN after the catch-up.
    pub durable_lsn: Lsn,
}

struct CommitWaiter {
    lsn: Lsn,
    started: Instant,
    waker: Waker,
}

#[derive(Default)]
struct Counters {
    commits_total: u64,
    local_only_commits_total: u64,
    no_quorum_failures_total: u64,
    commit_timeouts_total: u64,
    commit_latency_us: ValueHistogram,
    ship_batch_records: ValueHistogram,
    peers: [PeerCounters; 2],
}

#[derive(Default, Clone)]
struct PeerCounters {
    bytes_sent_total: u64,
    batches_sent_total: u64,
    disconnects_total: u64,
    diverged_total: u64,
}

struct Shared {
    config: ReplicationConfig,
    tracker: RefCell<CommitTracker>,
    waiters: RefCell<VecDeque<CommitWaiter>>,
    counters: RefCell<Counters>,
    closed: Cell<bool>,
    /// The owner's retention watermark, forwarded to the peers.
    released_below: Cell<Lsn>,
}

impl Shared {
    /// Wakes waiters whose record is now committed, or all of them when the
    /// answer may have changed for everyone (a peer went down).
    fn wake_committed(&self, everyone: bool) {
        let commit = self.tracker.borrow().commit_lsn();
        let mut waiters = self.waiters.borrow_mut();
        if everyone {
            for w in waiters.drain(..) {
                w.waker.wake();
            }
            return;
        }
        while waiters.front().is_some_and(|w| w.lsn <= commit) {
            waiters.pop_front().expect("front exists").waker.wake();
        }
    }

    fn set_peer_state(&self, peer: usize, state: PeerState) {
        let changed = {
            let mut tracker = self.tracker.borrow_mut();
            let before = tracker.peer_state(peer);
            tracker.set_peer_state(peer, state);
            before != state
        };
        if changed {
            if state == PeerState::Down {
                self.counters.borrow_mut().peers[peer].disconnects_total += 1;
            }
            self.wake_committed(true);
        }
    }
}

/// A local log replicated to two peers; appends resolve when committed
/// (durable on two of three copies).
pub struct ReplicatedLog {
    log: Rc<Log>,
    shared: Rc<Shared>,
    _tasks: Vec<glommio::Task<()>>,
}

impl Drop for ReplicatedLog {
    fn drop(&mut self) {
        self.shared.closed.set(true);
        self.shared.wake_committed(true);
    }
}

impl ReplicatedLog {
    /// Opens the local log, catches up from the peers if it lost data (or
    /// simply lags them), then starts shipping. Must run on glommio.
    pub async fn open(
        dir: &Path,
        log_config: LogConfig,
        config: ReplicationConfig,
        fs: Rc<dyn FileSystem>,
    ) -> Result<(ReplicatedLog, RecoveryReport)> {
        // A shipped frame or a fetch reply carries at least one whole batch.
        let frame_needed = log_config.batch_bytes_max.max(config.ship_bytes_max) + FRAME_SLACK_BYTES;
        if config.frame_bytes_max < frame_needed {
            return Err(StorageError::Config(format!(
                "frame_bytes_max {} cannot carry a whole batch: at least {frame_needed} (batch_bytes_max {}, ship_bytes_max {})",
                config.frame_bytes_max, log_config.batch_bytes_max, config.ship_bytes_max
            )));
        }
        let policy =
            if config.repair_damage_from_peers { DamagePolicy::TruncateForPeerRepair } else { DamagePolicy::Refuse };
        let log = Rc::new(Log::open_with(dir, log_config, fs, policy).await?);
        let mut report = RecoveryReport {
            local_durable_lsn: log.durable_lsn(),
            local_data_lost: log.durable_lsn() == 0 || log.stats().damage_cuts_total > 0,
            ..RecoveryReport::default()
        };
        let limits = FetchLimits {
            io_timeout: config.peer_io_timeout,
            frame_bytes_max: config.frame_bytes_max,
            request_bytes_max: config.ship_bytes_max.min(u32::MAX as usize) as u32,
        };
        for peer in config.peers {
            match fetch_from_peer(peer, config.stream, &log, limits).await {
                Ok(_) => report.peers_reached += 1,
                Err(err) => log::warn!("{}: catch-up from {peer} failed: {err}", config.stream),
            }
        }
        report.durable_lsn = log.durable_lsn();
        report.records_fetched = report.durable_lsn - report.local_durable_lsn;
        // After losing data, a committed record may sit on only one peer:
        // both must answer before we serve, or we could reuse its LSN.
        if report.local_data_lost
            && report.peers_reached < 2
            && config.require_peer_after_data_loss
            && config.no_quorum == NoQuorumPolicy::FailFast
        {
            return Err(StorageError::NoQuorum { lsn: report.durable_lsn + 1 });
        }
        let shared = Rc::new(Shared {
            tracker: RefCell::new(CommitTracker::new(config.no_quorum, log.durable_lsn())),
            config,
            waiters: RefCell::new(VecDeque::new()),
            counters: RefCell::new(Counters::default()),
            closed: Cell::new(false),
            released_below: Cell::new(0),
        });
        let tasks = vec![
            glommio::spawn_local(ship_to_peer(shared.clone(), log.clone(), 0)),
            glommio::spawn_local(ship_to_peer(shared.clone(), log.clone(), 1)),
            glommio::spawn_local(timeout_ticker(shared.clone())),
        ];
        Ok((ReplicatedLog { log, shared, _tasks: tasks }, report))
    }

    /// Appends one record; resolves with its LSN once it is durable on two
    /// of the three copies (or per the no-quorum policy), or with a typed
    /// error: `NoQuorum` (both peers down, fail-fast), `CommitTimeout`, or
    /// a local log error.
    /// The payload is copied into the log's queue before this returns, so
    /// the future does not borrow it.
    pub fn append(&self, kind: RecordKind, payload: &[u8]) -> impl std::future::Future<Output = Result<Lsn>> + '_ {
        let started = Instant::now();
        let local = self.log.append(kind, payload);
        async move {
            let lsn = local.await?;
            self.shared.tracker.borrow_mut().local_durable(lsn);
            self.wait_commit(lsn, started).await
        }
    }

    /// Like [`append`](Self::append), but the future owns an `Rc` of the log
    /// instead of borrowing it, so it can be stored or spawned.
    pub fn append_rc(
        self: &Rc<Self>,
        kind: RecordKind,
        payload: &[u8],
    ) -> impl std::future::Future<Output = Result<Lsn>> + 'static {
        let started = Instant::now();
        let local = self.log.append(kind, payload);
        let this = self.clone();
        async move {
            let lsn = local.await?;
            this.shared.tracker.borrow_mut().local_durable(lsn);
            this.wait_commit(lsn, started).await
        }
    }

    /// Like [`Log::append_group`]: the records become durable locally
    /// together, the group is committed when its last record is, and the
    /// future resolves to the first record's LSN.
    pub fn append_group(
        &self,
        kind: RecordKind,
        payloads: &[&[u8]],
    ) -> impl std::future::Future<Output = Result<Lsn>> + '_ {
        let started = Instant::now();
        let local = self.log.append_group(kind, payloads);
        let last_offset = payloads.len().saturating_sub(1) as u64;
        async move {
            let first = local.await?;
            let last = first + last_offset;
            self.shared.tracker.borrow_mut().local_durable(last);
            self.wait_commit(last, started).await?;
            Ok(first)
        }
    }

    async fn wait_commit(&self, lsn: Lsn, started: Instant) -> Result<Lsn> {
        let shared = &self.shared;
        let timeout = shared.config.commit_timeout;
        std::future::poll_fn(|cx| {
            if shared.closed.get() {
                return Poll::Ready(Err(StorageError::Closed));
            }
            let verdict = shared.tracker.borrow().verdict(lsn);
            let mut counters = shared.counters.borrow_mut();
            match verdict {
                Verdict::Committed => {
                    counters.commits_total += 1;
                    counters.commit_latency_us.record(started.elapsed().as_micros() as u64);
                    Poll::Ready(Ok(lsn))
                }
                Verdict::CommittedLocalOnly => {
                    counters.local_only_commits_total += 1;
                    log::error!(
                        "{}: record {lsn} acknowledged on local durability only (both peers down)",
                        shared.config.stream
                    );
                    Poll::Ready(Ok(lsn))
                }
                Verdict::NoQuorum => {
                    counters.no_quorum_failures_total += 1;
                    Poll::Ready(Err(StorageError::NoQuorum { lsn }))
                }
                Verdict::Wait if started.elapsed() >= timeout => {
                    counters.commit_timeouts_total += 1;
                    Poll::Ready(Err(StorageError::CommitTimeout { lsn }))
                }
                Verdict::Wait => {
                    let mut waiters = shared.waiters.borrow_mut();
                    // Keep waiters sorted by LSN so commits wake a prefix.
                    let at = waiters.partition_point(|w| w.lsn <= lsn);
                    // A re-poll of the same append must not add a second
                    // waker clone (glommio counts them per task in 16 bits).
                    let already =
                        waiters.range(..at).rev().take_while(|w| w.lsn == lsn).any(|w| w.waker.will_wake(cx.waker()));
                    if already {
                        return Poll::Pending;
                    }
                    waiters.insert(at, CommitWaiter { lsn, started, waker: cx.waker().clone() });
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// The local log (reads, durable LSN, stats).
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Highest LSN durable on two of three copies.
    pub fn commit_lsn(&self) -> Lsn {
        self.shared.tracker.borrow().commit_lsn()
    }

    /// Releases records below `lsn` for retention, but never what a peer
    /// has not acknowledged yet (it needs them to catch up).
    /// The peers are told too (they apply their own size/age bounds).
    pub fn set_retention_watermark(&self, lsn: Lsn) {
        let tracker = self.shared.tracker.borrow();
        let peers_min = tracker.peer_acked_lsn(0).min(tracker.peer_acked_lsn(1));
        self.log.set_retention_watermark(lsn.min(peers_min + 1));
        let released = &self.shared.released_below;
        released.set(released.get().max(lsn));
    }

    /// A snapshot of the counters, gauges and histograms.
    pub fn metrics(&self) -> StorageMetrics {
        let tracker = self.shared.tracker.borrow();
        let counters = self.shared.counters.borrow();
        let local = self.log.durable_lsn();
        StorageMetrics {
            stream: self.shared.config.stream,
            log: self.log.stats(),
            local_durable_lsn: local,
            commit_lsn: tracker.commit_lsn(),
            commits_total: counters.commits_total,
            local_only_commits_total: counters.local_only_commits_total,
            no_quorum_failures_total: counters.no_quorum_failures_total,
            commit_timeouts_total: counters.commit_timeouts_total,
            commit_latency_us: counters.commit_latency_us.clone(),
            ship_batch_records: counters.ship_batch_records.clone(),
            peers: (0..2)
                .map(|i| PeerMetrics {
                    address: self.shared.config.peers[i].to_string(),
                    state: tracker.peer_state(i),
                    acked_lsn: tracker.peer_acked_lsn(i),
                    lag_records: local.saturating_sub(tracker.peer_acked_lsn(i)),
                    bytes_sent_total: counters.peers[i].bytes_sent_total,
                    batches_sent_total: counters.peers[i].batches_sent_total,
                    disconnects_total: counters.peers[i].disconnects_total,
                    diverged_total: counters.peers[i].diverged_total,
                })
                .collect(),
        }
    }

    /// Resets the latency histogram (benchmarks measure phases separately).
    pub fn reset_latency_histogram(&self) {
        self.shared.counters.borrow_mut().commit_latency_us.reset();
    }
}

/// Wakes waiters that have waited longer than the commit timeout so they
/// fail with `CommitTimeout`; one timer per stream instead of one per append.
async fn timeout_ticker(shared: Rc<Shared>) {
    let timeout = shared.config.commit_timeout;
    let period = (timeout / 4).clamp(Duration::from_millis(1), Duration::from_millis(100));
    loop {
        glommio::timer::sleep(period).await;
        let now = Instant::now();
        let mut waiters = shared.waiters.borrow_mut();
        let mut expired = Vec::new();
        waiters.retain(|w| {
            if now.duration_since(w.started) >= timeout {
                expired.push(w.waker.clone());
                false
            } else {
                true
            }
        });
        drop(waiters);
        for waker in expired {
            waker.wake();
        }
    }
}

/// Ships the log to peer `peer` forever, reconnecting with backoff.
async fn ship_to_peer(shared: Rc<Shared>, log: Rc<Log>, peer: usize) {
    let mut backoff = shared.config.reconnect_backoff_min;
    loop {
        shared.set_peer_state(peer, PeerState::Connecting);
        let reached_up = Cell::new(false);
        let outcome = ship_session(&shared, &log, peer, &reached_up).await;
        if let Err(err) = outcome {
            log::info!("{}: peer {} ({}) down: {err}", shared.config.stream, peer, shared.config.peers[peer]);
        }
        shared.set_peer_state(peer, PeerState::Down);
        if reached_up.get() {
            backoff = shared.config.reconnect_backoff_min;
        }
        glommio::timer::sleep(backoff).await;
        backoff = (backoff * 2).min(shared.config.reconnect_backoff_max);
    }
}

async fn ship_session(shared: &Rc<Shared>, log: &Rc<Log>, peer: usize, reached_up: &Cell<bool>) -> Result<()> {
    let config = &shared.config;
    let socket = TcpStream::connect_timeout(config.peers[peer], config.peer_io_timeout)
        .await
        .map_err(|e| StorageError::io("connect to peer", &std::io::Error::from(e)))?;
    let timeout = Some(config.peer_io_timeout);
    socket
        .set_read_timeout(timeout)
        .and_then(|_| socket.set_write_timeout(timeout))
        .map_err(|e| StorageError::io("set peer timeouts", &std::io::Error::from(e)))?;
    let _ = socket.set_nodelay(true);
    let mut framed = FramedStream::new(socket, config.frame_bytes_max);
    framed.send(&Message::Hello { stream: config.stream }).await?;
    let mut acked = match framed.recv().await? {
        Message::HelloAck { durable_lsn } => durable_lsn,
        other => return Err(StorageError::Protocol(format!("expected HelloAck, got {other:?}"))),
    };
    if acked > log.durable_lsn() {
        // The peer holds records we do not: our log lost data and was not
        // repaired. Shipping new records under reused LSNs would diverge.
        shared.counters.borrow_mut().peers[peer].diverged_total += 1;
        log::error!(
            "{}: peer {} holds up to {acked}, local log only {}; not shipping",
            config.stream,
            config.peers[peer],
            log.durable_lsn()
        );
        glommio::timer::sleep(config.reconnect_backoff_max).await;
        return Err(StorageError::LsnGap { expected: log.durable_lsn() + 1, got: acked + 1 });
    }
    shared.tracker.borrow_mut().peer_acked(peer, acked);
    shared.set_peer_state(peer, PeerState::Up);
    shared.wake_committed(false);
    reached_up.set(true);
    let mut released_sent = 0;
    loop {
        let released = shared.released_below.get();
        if released > released_sent {
            framed.send(&Message::Release { below_lsn: released }).await?;
            match framed.recv().await? {
                Message::Ack { durable_lsn } => acked = acked.max(durable_lsn),
                other => return Err(StorageError::Protocol(format!("expected Ack to Release, got {other:?}"))),
            }
            released_sent = released;
        }
        if acked >= log.durable_lsn() {
            let new_records = futures_lite::future::or(
                async {
                    log.wait_durable_beyond(acked).await;
                    true
                },
                async {
                    glommio::timer::sleep(config.peer_heartbeat_interval).await;
                    false
                },
            )
            .await;
            if shared.closed.get() {
                return Err(StorageError::Closed);
            }
            if !new_records {
                // Idle: an empty append is the heartbeat, so a dead peer is
                // noticed (and marked down) before the next write needs it.
                framed.send(&Message::Append { batches: Vec::new() }).await?;
                match framed.recv().await? {
                    Message::Ack { durable_lsn } => acked = acked.max(durable_lsn),
                    other => return Err(StorageError::Protocol(format!("expected heartbeat Ack, got {other:?}"))),
                }
                continue;
            }
        }
        let from = if acked == 0 { log.first_lsn() } else { acked + 1 };
        let batches = log.read_batches(from, config.ship_bytes_max).await?;
        if batches.is_empty() {
            continue;
        }
        let records: u64 = split_batches(&batches).0.iter().map(|b| b.record_count as u64).sum();
        let bytes = batches.len() as u64;
        framed.send(&Message::Append { batches }).await?;
        match framed.recv().await? {
            Message::Ack { durable_lsn } => {
                acked = acked.max(durable_lsn);
            }
            Message::Error { message } => return Err(StorageError::Protocol(message)),
            other => return Err(StorageError::Protocol(format!("expected Ack, got {other:?}"))),
        }
        {
            let mut counters = shared.counters.borrow_mut();
            counters.peers[peer].bytes_sent_total += bytes;
            counters.peers[peer].batches_sent_total += 1;
            counters.ship_batch_records.record(records);
        }
        {
            let mut tracker = shared.tracker.borrow_mut();
            tracker.local_durable(log.durable_lsn());
            tracker.peer_acked(peer, acked);
        }
        shared.wake_committed(false);
    }
}
