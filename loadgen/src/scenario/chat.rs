//! `chat`: timelines as users use them. Every connection is one user's one device. A
//! request slot is a `Send` (to the connection's group when it is a member of one of
//! `--groups`, else to another connection of this process chosen at random) or, when the
//! device has something to fetch, a `Sync`: after every `Notify` newer than what it holds,
//! while a `SyncOk` says `more`, and every `--sync-every` requests regardless (the pull that
//! covers a lost push).
//!
//! Every delivery is checked across the whole run: a message's payload names its run, its
//! sender connection, a per-sender counter and its send time, so each entry a sync returns
//! is matched to the message it carries. When its schedule is over a device keeps syncing
//! (the driver's drain) until every acknowledged message addressed to it came back, or the
//! drain deadline. Then
//! - `missing`: acknowledged (`SendOk`), addressed to a device (the target, or every group
//!   member, and the sender itself: a send lands in the sender's inbox too) and never
//!   returned by that device's syncs;
//! - `duplicated`: returned twice to one device;
//! - `delivered`: distinct (device, message) pairs returned.
//!
//! Groups are created before the load by one plain client per group (`GroupCreate` by the
//! first member, naming the others). Client message ids carry a per-run nonce, so a second
//! run against the same node is never taken for a retry of the first, and entries from
//! earlier runs in an inbox are counted as `earlier_runs` and skipped.
//!
//! Refusals are obeyed unless `--ignore-backoff`: a request answered `Busy`, `RateLimited`
//! or `Paused` holds its connection until the answer's retry-after has passed (the closed
//! loop sleeps; the open loop leaves those slots out, counted as `backoff_skips`), so a
//! client under refusal does not spin. Refusals are counted by code (`busy`,
//! `rate_limited`, `paused`; they are in `send_errors`/`sync_errors` too).

use super::{Check, DrainWant, Headline, LoadShape, Scenario, ScenarioConnection};
use crate::config::RunConfig;
use crate::stats::new_latency_histogram;
use hdrhistogram::Histogram;
use redrain_net::client::{BlockingClient, ClientError};
use redrain_net::message::Request;
use redrain_net::timeline::{TimelineRequest, TimelineResponse, U64List, CONTENT_TEXT, TARGET_GROUP, TARGET_USER};
use redrain_net::token::{TokenClaims, TokenKeys};
use redrain_net::{ErrorCode, Response};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Counter slots of the chat scenario (all written by [`Scenario::finish`] from the
/// run-wide books, so warm-up and drain traffic count too).
pub const CHAT_COUNTERS: &[&str] = &[
    "sent",
    "acked",
    "send_errors",
    "delivered",
    "missing",
    "duplicated",
    "notifies",
    "syncs",
    "sync_errors",
    "earlier_runs",
    "wrong_response_type",
    "busy",
    "rate_limited",
    "paused",
    "backoff_skips",
    "offline_addressed",
];
const SENT: usize = 0;
const ACKED: usize = 1;
const SEND_ERRORS: usize = 2;
const DELIVERED: usize = 3;
const MISSING: usize = 4;
const DUPLICATED: usize = 5;
const NOTIFIES: usize = 6;
const SYNCS: usize = 7;
const SYNC_ERRORS: usize = 8;
const EARLIER_RUNS: usize = 9;
const WRONG_RESPONSE_TYPE: usize = 10;
const BUSY: usize = 11;
const RATE_LIMITED: usize = 12;
const PAUSED: usize = 13;
const BACKOFF_SKIPS: usize = 14;
const OFFLINE_ADDRESSED: usize = 15;

/// Bytes of a chat payload: nonce u32 | sender u32 | counter u32 | sent_at_us u64.
pub const CHAT_PAYLOAD_BYTES: usize = 20;
/// Entries one `Sync` asks for (the node clamps to its `sync_entries_max`).
const SYNC_LIMIT: u16 = 500;
/// Shards of the delivery books (cuts lock contention between generator threads).
const BOOK_SHARDS: usize = 64;
/// Shards of the latency histograms.
const HISTOGRAM_SHARDS: usize = 16;
/// While messages addressed to it are still unseen, a draining device syncs this often.
const DRAIN_RESYNC: Duration = Duration::from_millis(20);
/// Members of one group the node accepts by default (`timeline.group_members_max`).
pub const GROUP_SIZE_MAX: usize = 4096;

const FLAG_ACKED: u8 = 1;
const FLAG_SEEN: u8 = 2;

#[derive(Debug, Error)]
pub enum ChatError {
    #[error("--groups {groups} x --group-size {size} needs that many connections in this process (it has {local})")]
    TooFewConnections { groups: usize, size: usize, local: usize },
    #[error("--group-size must be within 2..={GROUP_SIZE_MAX}")]
    GroupSize,
    #[error("chat needs at least 2 connections in this process")]
    OneConnection,
    #[error("auth secret: {0}")]
    Secret(#[from] redrain_net::token::SecretError),
    #[error("creating group {group}: {source}")]
    CreateGroup { group: usize, source: ClientError },
    #[error("creating group {group}: unexpected answer {answer}")]
    CreateGroupAnswer { group: usize, answer: String },
}

/// The shape of a chat run (the `chat` subcommand's own flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatParams {
    /// Groups to create (0 = one-to-one messages only).
    pub groups: usize,
    /// Members of each group (its creator included).
    pub group_size: usize,
    /// Sync after this many requests even without a notify (0 = only on notify).
    pub sync_every: u64,
}

/// The connections of this process (global indices) and how a user id is made.
#[derive(Debug, Clone)]
struct Layout {
    /// Global connection index of local position `k`: `first + k * step`.
    first: u64,
    step: u64,
    local: usize,
    user_id_base: u64,
}

impl Layout {
    fn of(cfg: &RunConfig) -> Self {
        Self {
            first: u64::from(cfg.process_index),
            step: u64::from(cfg.process_count.max(1)),
            local: cfg.local_connection_count() as usize,
            user_id_base: cfg.user_id_base,
        }
    }
    fn global(&self, k: usize) -> u64 {
        self.first + k as u64 * self.step
    }
    fn local_of(&self, global: u64) -> usize {
        ((global - self.first) / self.step) as usize
    }
    fn user(&self, global: u64) -> u64 {
        self.user_id_base.wrapping_add(global)
    }
}

/// Creates `params.groups` groups over this process's connections: group `g` holds local
/// connections `g * size .. (g + 1) * size`, created by its first. Returns the group ids.
pub fn create_groups(cfg: &RunConfig, params: &ChatParams) -> Result<Vec<u64>, ChatError> {
    let layout = Layout::of(cfg);
    check_params(&layout, params)?;
    let keys = TokenKeys::new(&cfg.secret, None)?;
    let mut ids = Vec::with_capacity(params.groups);
    for g in 0..params.groups {
        let members: Vec<u64> =
            (g * params.group_size..(g + 1) * params.group_size).map(|k| layout.user(layout.global(k))).collect();
        let token = keys.mint(TokenClaims {
            user_id: members[0],
            device_id: 1,
            expires_at_unix_s: redrain_net::token::now_unix_s() + cfg.token_ttl.as_secs(),
        });
        let fail = |source| ChatError::CreateGroup { group: g, source };
        let mut client = BlockingClient::connect(cfg.target, cfg.connect_timeout).map_err(fail)?;
        client.login(&token).map_err(fail)?;
        let mut list = Vec::with_capacity(2 + 8 * members.len());
        U64List::write(&members[1..], &mut list);
        // `write` puts the count first; the request carries the values.
        let frame = client
            .call(&Request::Timeline(TimelineRequest::GroupCreate { members: U64List::from_bytes(&list[2..]) }))
            .map_err(fail)?;
        match frame.parse().map_err(|e| fail(e.into()))? {
            Response::Timeline(TimelineResponse::GroupCreateOk { group_id, .. }) => ids.push(group_id),
            other => return Err(ChatError::CreateGroupAnswer { group: g, answer: format!("{other:?}") }),
        }
    }
    Ok(ids)
}

fn check_params(layout: &Layout, params: &ChatParams) -> Result<(), ChatError> {
    if layout.local < 2 {
        return Err(ChatError::OneConnection);
    }
    if params.groups > 0 {
        if !(2..=GROUP_SIZE_MAX).contains(&params.group_size) {
            return Err(ChatError::GroupSize);
        }
        if params.groups.saturating_mul(params.group_size) > layout.local {
            return Err(ChatError::TooFewConnections {
                groups: params.groups,
                size: params.group_size,
                local: layout.local,
            });
        }
    }
    Ok(())
}

/// One shard of the delivery books: (device's connection, message key) -> flags, and per
/// device the acknowledged messages it has not seen yet.
#[derive(Debug, Default)]
struct BookShard {
    flags: HashMap<(u64, u64), u8>,
    owed: HashMap<u64, i64>,
    /// Devices whose session came up (a device that never logged in cannot sync: what
    /// was addressed to it counts as `offline_addressed`, not `missing`).
    online: std::collections::HashSet<u64>,
}

/// What the run shares: parameters, groups, books, histograms, counters.
#[derive(Debug)]
struct Shared {
    params: ChatParams,
    layout: Layout,
    /// Group `g`: id and members' global connection indices.
    groups: Vec<(u64, Vec<u64>)>,
    nonce: u32,
    base: Instant,
    books: Vec<Mutex<BookShard>>,
    send_to_notify_us: Vec<Mutex<Histogram<u64>>>,
    send_to_sync_us: Vec<Mutex<Histogram<u64>>>,
    counters: [AtomicU64; CHAT_COUNTERS.len()],
}

impl Shared {
    fn add(&self, slot: usize, n: u64) {
        self.counters[slot].fetch_add(n, Ordering::Relaxed);
    }
    fn get(&self, slot: usize) -> u64 {
        self.counters[slot].load(Ordering::Relaxed)
    }
    fn book(&self, device: u64) -> std::sync::MutexGuard<'_, BookShard> {
        self.books[(device % BOOK_SHARDS as u64) as usize].lock().unwrap_or_else(|p| p.into_inner())
    }
    fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }
    /// The devices a message lands on: the sender and its target(s).
    fn addressees(&self, sender: u64, target: Target) -> Vec<u64> {
        match target {
            Target::User(g) if g == sender => vec![sender],
            Target::User(g) => vec![sender, g],
            Target::Group(i) => self.groups[i].1.clone(),
        }
    }
    fn acked(&self, key: u64, devices: &[u64]) {
        for &d in devices {
            let mut shard = self.book(d);
            let flags = shard.flags.entry((d, key)).or_insert(0);
            if *flags & FLAG_ACKED == 0 {
                *flags |= FLAG_ACKED;
                if *flags & FLAG_SEEN == 0 {
                    *shard.owed.entry(d).or_insert(0) += 1;
                }
            }
        }
        self.add(ACKED, 1);
    }
    /// Records that `device` got message `key`; false when it had it already.
    fn seen(&self, device: u64, key: u64) -> bool {
        let mut shard = self.book(device);
        let flags = shard.flags.entry((device, key)).or_insert(0);
        if *flags & FLAG_SEEN != 0 {
            return false;
        }
        *flags |= FLAG_SEEN;
        if *flags & FLAG_ACKED != 0 {
            *shard.owed.entry(device).or_insert(0) -= 1;
        }
        true
    }
    fn owed(&self, device: u64) -> i64 {
        self.book(device).owed.get(&device).copied().unwrap_or(0)
    }
    fn sends_outstanding(&self) -> bool {
        self.get(SENT) > self.get(ACKED) + self.get(SEND_ERRORS)
    }
    fn record(&self, which: &[Mutex<Histogram<u64>>], device: u64, us: u64) {
        which[(device % HISTOGRAM_SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .saturating_record(us.max(1));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// A user: the global connection index of its device.
    User(u64),
    /// Group number `g` of the run.
    Group(usize),
}

#[derive(Debug, Clone)]
pub struct ChatScenario {
    shared: Arc<Shared>,
    obey_backoff: bool,
}

impl ChatScenario {
    /// `group_ids` from [`create_groups`] (empty when `params.groups` is 0).
    pub fn new(cfg: &RunConfig, params: ChatParams, group_ids: &[u64]) -> Result<Self, ChatError> {
        let layout = Layout::of(cfg);
        check_params(&layout, &params)?;
        let groups = group_ids
            .iter()
            .enumerate()
            .map(|(g, &id)| {
                (id, (g * params.group_size..(g + 1) * params.group_size).map(|k| layout.global(k)).collect())
            })
            .collect();
        let nonce = (redrain_net::time::now_unix_ms() as u32) ^ (std::process::id().rotate_left(16));
        let histograms = || (0..HISTOGRAM_SHARDS).map(|_| Mutex::new(new_latency_histogram())).collect();
        Ok(Self {
            shared: Arc::new(Shared {
                params,
                layout,
                groups,
                nonce,
                base: Instant::now(),
                books: (0..BOOK_SHARDS).map(|_| Mutex::default()).collect(),
                send_to_notify_us: histograms(),
                send_to_sync_us: histograms(),
                counters: std::array::from_fn(|_| AtomicU64::new(0)),
            }),
            obey_backoff: true,
        })
    }

    /// `false`: ignore the retry-after of `Busy`, `RateLimited` and `Paused` (abuse runs:
    /// a refused connection asks again at once).
    pub fn obey_backoff(mut self, obey: bool) -> Self {
        self.obey_backoff = obey;
        self
    }
}

impl Scenario for ChatScenario {
    type Connection = ChatConnection;

    fn name(&self) -> &'static str {
        "chat"
    }
    fn counter_names(&self) -> &'static [&'static str] {
        CHAT_COUNTERS
    }
    fn load_shape(&self) -> LoadShape {
        LoadShape::Requests
    }
    fn headline(&self) -> Headline {
        Headline::Requests
    }
    fn connection(&self, index: u64) -> ChatConnection {
        let s = &self.shared;
        s.book(index).online.insert(index);
        let local = s.layout.local_of(index);
        let group = if s.params.groups > 0 && local / s.params.group_size.max(1) < s.groups.len() {
            Some(local / s.params.group_size)
        } else {
            None
        };
        ChatConnection {
            shared: s.clone(),
            index,
            group,
            rng: index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            counter: 0,
            sent: VecDeque::new(),
            payload: [0; CHAT_PAYLOAD_BYTES],
            synced_seq: 0,
            known_latest: 0,
            notified_seq: 0,
            more: false,
            sync_in_flight: false,
            force_sync: false,
            requests_since_sync: 0,
            last_sync_at: Instant::now(),
            notifies: VecDeque::new(),
            obey_backoff: self.obey_backoff,
            hold_until: None,
        }
    }

    fn finish(&self, counters: &mut [u64]) -> Vec<(&'static str, Histogram<u64>)> {
        let s = &self.shared;
        let (mut missing, mut offline) = (0, 0);
        for shard in &s.books {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for ((device, _), f) in &shard.flags {
                if *f & (FLAG_ACKED | FLAG_SEEN) == FLAG_ACKED {
                    if shard.online.contains(device) {
                        missing += 1;
                    } else {
                        offline += 1;
                    }
                }
            }
        }
        for (slot, c) in counters.iter_mut().enumerate().take(CHAT_COUNTERS.len()) {
            *c = s.get(slot);
        }
        counters[MISSING] = missing;
        counters[OFFLINE_ADDRESSED] = offline;
        let merged = |which: &[Mutex<Histogram<u64>>]| {
            let mut h = new_latency_histogram();
            for part in which {
                let _ = h.add(&*part.lock().unwrap_or_else(|p| p.into_inner()));
            }
            h
        };
        vec![("send>notify", merged(&s.send_to_notify_us)), ("send>sync", merged(&s.send_to_sync_us))]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Send { key: u64, target: Target },
    Sync,
}

/// One device: what it sent and is waiting for, what it holds, what the node announced.
#[derive(Debug)]
pub struct ChatConnection {
    shared: Arc<Shared>,
    index: u64,
    group: Option<usize>,
    rng: u64,
    counter: u32,
    sent: VecDeque<(u64, Sent)>,
    /// The payload of the Send being encoded (the request borrows it).
    payload: [u8; CHAT_PAYLOAD_BYTES],
    /// Highest seq a sync returned.
    synced_seq: u64,
    /// The inbox's latest seq in the last complete (`more` = 0) sync answer.
    known_latest: u64,
    /// Highest seq a Notify announced.
    notified_seq: u64,
    more: bool,
    sync_in_flight: bool,
    force_sync: bool,
    requests_since_sync: u64,
    last_sync_at: Instant,
    /// Notifies not yet matched to entries: (latest seq, arrival).
    notifies: VecDeque<(u64, Instant)>,
    obey_backoff: bool,
    /// No request before this (the retry-after of the last refusal).
    hold_until: Option<Instant>,
}

impl ChatConnection {
    fn take_sent(&mut self, sequence: u64) -> Option<Sent> {
        while let Some((s, kind)) = self.sent.pop_front() {
            if s == sequence {
                return Some(kind);
            }
        }
        None
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: cheap, seeded per connection, good enough to pick targets.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Whether a refusal's retry-after still holds this connection.
    fn holding(&self) -> bool {
        self.hold_until.is_some_and(|at| Instant::now() < at)
    }

    fn wants_sync(&self) -> bool {
        if self.sync_in_flight {
            return false;
        }
        let every = self.shared.params.sync_every;
        self.force_sync
            || self.more
            || self.notified_seq > self.known_latest.max(self.synced_seq)
            || (every > 0 && self.requests_since_sync >= every)
    }

    fn pick_target(&mut self) -> Target {
        if let Some(g) = self.group {
            return Target::Group(g);
        }
        let local = self.shared.layout.local;
        let me = self.shared.layout.local_of(self.index);
        // Another connection of this process, uniformly.
        let other = (me + 1 + (self.next_random() % (local as u64 - 1)) as usize) % local;
        Target::User(self.shared.layout.global(other))
    }

    fn on_entries(&mut self, entries: redrain_net::timeline::SyncEntries<'_>) {
        let now = Instant::now();
        let now_us = self.shared.now_us();
        for e in entries.iter() {
            self.synced_seq = self.synced_seq.max(e.seq);
            let p = e.payload;
            if e.content_type != CONTENT_TEXT
                || p.len() != CHAT_PAYLOAD_BYTES
                || u32::from_be_bytes(p[0..4].try_into().unwrap_or_default()) != self.shared.nonce
            {
                self.shared.add(EARLIER_RUNS, 1);
                continue;
            }
            let sender = u64::from(u32::from_be_bytes(p[4..8].try_into().unwrap_or_default()));
            let counter = u64::from(u32::from_be_bytes(p[8..12].try_into().unwrap_or_default()));
            let sent_at_us = u64::from_be_bytes(p[12..20].try_into().unwrap_or_default());
            if !self.shared.seen(self.index, sender << 32 | counter) {
                self.shared.add(DUPLICATED, 1);
                continue;
            }
            self.shared.add(DELIVERED, 1);
            self.shared.record(&self.shared.send_to_sync_us, self.index, now_us.saturating_sub(sent_at_us));
            while self.notifies.front().is_some_and(|(latest, _)| *latest < e.seq) {
                self.notifies.pop_front();
            }
            if let Some((_, at)) = self.notifies.front() {
                let notified_us = now_us.saturating_sub(now.saturating_duration_since(*at).as_micros() as u64);
                self.shared.record(&self.shared.send_to_notify_us, self.index, notified_us.saturating_sub(sent_at_us));
            }
        }
    }
}

impl ScenarioConnection for ChatConnection {
    fn next_request(&mut self, sequence: u64) -> Request<'_> {
        if self.wants_sync() {
            self.force_sync = false;
            self.sync_in_flight = true;
            self.requests_since_sync = 0;
            self.last_sync_at = Instant::now();
            self.sent.push_back((sequence, Sent::Sync));
            return Request::Timeline(TimelineRequest::Sync { since_seq: self.synced_seq, limit: SYNC_LIMIT });
        }
        self.requests_since_sync += 1;
        self.counter = self.counter.wrapping_add(1);
        let target = self.pick_target();
        let key = self.index << 32 | u64::from(self.counter);
        self.payload[0..4].copy_from_slice(&self.shared.nonce.to_be_bytes());
        self.payload[4..8].copy_from_slice(&(self.index as u32).to_be_bytes());
        self.payload[8..12].copy_from_slice(&self.counter.to_be_bytes());
        self.payload[12..20].copy_from_slice(&self.shared.now_us().to_be_bytes());
        self.sent.push_back((sequence, Sent::Send { key, target }));
        self.shared.add(SENT, 1);
        let (target_kind, target) = match target {
            Target::User(g) => (TARGET_USER, self.shared.layout.user(g)),
            Target::Group(i) => (TARGET_GROUP, self.shared.groups[i].0),
        };
        Request::Timeline(TimelineRequest::Send {
            target_kind,
            target,
            // Unique across runs: a later run is never taken for a retry of this one.
            client_msg_id: u64::from(self.shared.nonce) << 32 | u64::from(self.counter),
            content_type: CONTENT_TEXT,
            payload: &self.payload,
        })
    }

    fn check(&mut self, sequence: u64, response: &Response<'_>, _counters: &mut [u64]) -> Check {
        match (self.take_sent(sequence), response) {
            (Some(Sent::Send { key, target }), Response::Timeline(TimelineResponse::SendOk { .. })) => {
                let devices = self.shared.addressees(self.index, target);
                self.shared.acked(key, &devices);
                Check::Ok
            }
            (Some(Sent::Sync), Response::Timeline(TimelineResponse::SyncOk { latest_seq, more, entries, .. })) => {
                self.shared.add(SYNCS, 1);
                self.sync_in_flight = false;
                self.more = *more;
                if !*more {
                    self.known_latest = self.known_latest.max(*latest_seq);
                }
                self.on_entries(*entries);
                Check::Ok
            }
            (sent, _) => {
                if sent == Some(Sent::Sync) {
                    self.sync_in_flight = false;
                }
                if matches!(sent, Some(Sent::Send { .. })) {
                    self.shared.add(SEND_ERRORS, 1);
                }
                self.shared.add(WRONG_RESPONSE_TYPE, 1);
                Check::Failed
            }
        }
    }

    fn on_error(&mut self, sequence: u64, code: u16, retry_after_ms: u32, _counters: &mut [u64]) {
        let refusal = match ErrorCode::from_u16(code) {
            Some(ErrorCode::Busy) => Some(BUSY),
            Some(ErrorCode::RateLimited) => Some(RATE_LIMITED),
            Some(ErrorCode::Paused) => Some(PAUSED),
            _ => None,
        };
        if let Some(slot) = refusal {
            self.shared.add(slot, 1);
            if self.obey_backoff {
                let at = Instant::now() + Duration::from_millis(u64::from(retry_after_ms));
                self.hold_until = Some(self.hold_until.map_or(at, |t| t.max(at)));
            }
        }
        match self.take_sent(sequence) {
            Some(Sent::Send { .. }) => self.shared.add(SEND_ERRORS, 1),
            Some(Sent::Sync) => {
                self.sync_in_flight = false;
                self.shared.add(SYNC_ERRORS, 1);
            }
            None => {}
        }
    }

    fn on_push(&mut self, response: &Response<'_>, _counters: &mut [u64]) -> bool {
        let Response::Timeline(TimelineResponse::Notify { latest_seq }) = response else { return false };
        self.shared.add(NOTIFIES, 1);
        if *latest_seq > self.notified_seq {
            self.notified_seq = *latest_seq;
            self.notifies.push_back((*latest_seq, Instant::now()));
        }
        true
    }

    fn skip(&mut self, _counters: &mut [u64]) -> bool {
        let skip = self.holding();
        if skip {
            self.shared.add(BACKOFF_SKIPS, 1);
        }
        skip
    }

    fn hold_until(&mut self) -> Option<Instant> {
        self.hold_until.filter(|_| self.holding())
    }

    fn drain_want(&mut self) -> DrainWant {
        if self.sync_in_flight || self.holding() {
            return DrainWant::Later;
        }
        if self.more || self.notified_seq > self.known_latest.max(self.synced_seq) {
            self.force_sync = true;
            return DrainWant::Now;
        }
        if self.shared.owed(self.index) > 0 {
            if self.last_sync_at.elapsed() >= DRAIN_RESYNC {
                self.force_sync = true;
                return DrainWant::Now;
            }
            return DrainWant::Later;
        }
        if self.shared.sends_outstanding() {
            return DrainWant::Later;
        }
        DrainWant::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redrain_net::timeline::{SyncEntries, SyncEntry};

    fn scenario(connections: u32, params: ChatParams, groups: &[u64]) -> ChatScenario {
        let mut cfg = RunConfig::with_defaults("127.0.0.1:1".parse().unwrap(), vec![7; 32]);
        cfg.connections = connections;
        ChatScenario::new(&cfg, params, groups).unwrap()
    }

    fn entry_bytes(s: &ChatScenario, seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        let _ = s;
        SyncEntry {
            seq,
            message_id: seq,
            from: 1,
            conv_kind: 0,
            conv_id: 0,
            sent_at_ms: 0,
            content_type: CONTENT_TEXT,
            payload,
        }
        .encode(&mut b);
        b
    }

    fn payload_of(req: &Request<'_>) -> Vec<u8> {
        match req {
            Request::Timeline(TimelineRequest::Send { payload, .. }) => payload.to_vec(),
            other => panic!("expected a send, got {other:?}"),
        }
    }

    const ONE_TO_ONE: ChatParams = ChatParams { groups: 0, group_size: 0, sync_every: 0 };

    #[test]
    fn an_acknowledged_message_never_synced_is_missing_and_one_synced_twice_is_duplicated() {
        let s = scenario(2, ONE_TO_ONE, &[]);
        let mut a = s.connection(0);
        let mut b = s.connection(1);
        let mut counters = [0u64; CHAT_COUNTERS.len()];
        let first = payload_of(&a.next_request(0));
        a.check(0, &Response::Timeline(TimelineResponse::SendOk { message_id: 1, seq: 1 }), &mut counters);
        let _ = a.next_request(1);
        a.check(1, &Response::Timeline(TimelineResponse::SendOk { message_id: 2, seq: 2 }), &mut counters);
        // b is notified and syncs; the node returns the first message twice (two pages).
        assert!(b.on_push(&Response::Timeline(TimelineResponse::Notify { latest_seq: 2 }), &mut counters));
        assert!(matches!(b.next_request(0), Request::Timeline(TimelineRequest::Sync { since_seq: 0, .. })));
        let mut bytes = entry_bytes(&s, 1, &first);
        bytes.extend(entry_bytes(&s, 2, &first));
        let entries = SyncEntries::from_encoded(2, &bytes);
        let ok = Response::Timeline(TimelineResponse::SyncOk { latest_seq: 2, more: false, expired: false, entries });
        assert_eq!(b.check(0, &ok, &mut counters), Check::Ok);
        s.finish(&mut counters);
        assert_eq!((counters[SENT], counters[ACKED], counters[DELIVERED]), (2, 2, 1));
        assert_eq!(counters[DUPLICATED], 1);
        // Each message is owed to the sender and the target: 4 pairs, 1 seen.
        assert_eq!(counters[MISSING], 3);
    }

    #[test]
    fn what_is_addressed_to_a_device_whose_session_never_came_up_is_offline_not_missing() {
        let s = scenario(2, ONE_TO_ONE, &[]);
        // Only connection 0 logs in; connection 1's session was refused.
        let mut a = s.connection(0);
        let mut counters = [0u64; CHAT_COUNTERS.len()];
        let _ = a.next_request(0);
        a.check(0, &Response::Timeline(TimelineResponse::SendOk { message_id: 1, seq: 1 }), &mut counters);
        s.finish(&mut counters);
        assert_eq!(counters[MISSING], 1, "the sender's own copy, never synced");
        assert_eq!(counters[OFFLINE_ADDRESSED], 1, "the target could not sync");
    }

    #[test]
    fn a_device_syncs_after_a_notify_and_drains_until_nothing_is_owed() {
        let s = scenario(2, ChatParams { groups: 0, group_size: 0, sync_every: 3 }, &[]);
        let mut a = s.connection(0);
        let mut counters = [0u64; CHAT_COUNTERS.len()];
        let mine = payload_of(&a.next_request(0));
        assert_eq!(a.drain_want(), DrainWant::Later, "its own send is not answered yet");
        a.check(0, &Response::Timeline(TimelineResponse::SendOk { message_id: 1, seq: 5 }), &mut counters);
        // Acknowledged and owed to a itself: the drain syncs.
        a.last_sync_at = Instant::now() - DRAIN_RESYNC;
        assert_eq!(a.drain_want(), DrainWant::Now);
        assert!(matches!(a.next_request(1), Request::Timeline(TimelineRequest::Sync { .. })));
        let bytes = entry_bytes(&s, 5, &mine);
        let ok = Response::Timeline(TimelineResponse::SyncOk {
            latest_seq: 5,
            more: false,
            expired: false,
            entries: SyncEntries::from_encoded(1, &bytes),
        });
        a.check(1, &ok, &mut counters);
        assert_eq!(s.shared.owed(0), 0);
        // b still owes the message: a has nothing more to do, b has.
        assert_eq!(a.drain_want(), DrainWant::Done);
        let mut b = s.connection(1);
        b.last_sync_at = Instant::now() - DRAIN_RESYNC;
        assert_eq!(b.drain_want(), DrainWant::Now);
        // Without notifies, every third request is a sync.
        let mut kinds = Vec::new();
        for seq in 2..8 {
            let is_sync = matches!(a.next_request(seq), Request::Timeline(TimelineRequest::Sync { .. }));
            if is_sync {
                a.sync_in_flight = false;
            }
            kinds.push(is_sync);
        }
        assert_eq!(kinds, [false, false, false, true, false, false]);
    }

    #[test]
    fn a_group_message_is_owed_to_every_member_and_entries_of_earlier_runs_are_skipped() {
        let s = scenario(4, ChatParams { groups: 1, group_size: 3, sync_every: 0 }, &[42]);
        let mut a = s.connection(0);
        let mut counters = [0u64; CHAT_COUNTERS.len()];
        match a.next_request(0) {
            Request::Timeline(TimelineRequest::Send { target_kind, target, .. }) => {
                assert_eq!((target_kind, target), (TARGET_GROUP, 42))
            }
            other => panic!("{other:?}"),
        }
        a.check(0, &Response::Timeline(TimelineResponse::SendOk { message_id: 1, seq: 1 }), &mut counters);
        // Connection 3 is in no group: it sends one-to-one.
        let mut d = s.connection(3);
        assert!(matches!(d.next_request(0), Request::Timeline(TimelineRequest::Send { target_kind: TARGET_USER, .. })));
        let mut old = vec![0u8; CHAT_PAYLOAD_BYTES];
        old[0..4].copy_from_slice(&s.shared.nonce.wrapping_add(1).to_be_bytes());
        let bytes = entry_bytes(&s, 1, &old);
        let mut b = s.connection(1);
        let _c = s.connection(2); // the third member is online too
        b.force_sync = true;
        let _ = b.next_request(0);
        let ok = Response::Timeline(TimelineResponse::SyncOk {
            latest_seq: 1,
            more: false,
            expired: false,
            entries: SyncEntries::from_encoded(1, &bytes),
        });
        b.check(0, &ok, &mut counters);
        s.finish(&mut counters);
        assert_eq!(counters[EARLIER_RUNS], 1);
        assert_eq!(counters[MISSING], 3, "three members, none synced it");
    }

    #[test]
    fn a_refusal_holds_the_connection_for_its_retry_after_unless_backoff_is_ignored() {
        let s = scenario(2, ONE_TO_ONE, &[]);
        let mut a = s.connection(0);
        let mut counters = [0u64; CHAT_COUNTERS.len()];
        let _ = a.next_request(0);
        a.on_error(0, ErrorCode::RateLimited.as_u16(), 60_000, &mut counters);
        assert!(a.hold_until().is_some_and(|at| at > Instant::now() + Duration::from_secs(59)));
        assert!(a.skip(&mut counters), "open-loop slots within the retry-after are left out");
        assert_eq!(a.drain_want(), DrainWant::Later, "the drain waits too");
        let _ = a.next_request(1);
        a.on_error(1, ErrorCode::Busy.as_u16(), 10, &mut counters);
        assert!(a.hold_until().is_some_and(|at| at > Instant::now() + Duration::from_secs(59)), "the later end holds");
        let mut abuse = s.clone().obey_backoff(false).connection(1);
        let _ = abuse.next_request(0);
        abuse.on_error(0, ErrorCode::RateLimited.as_u16(), 60_000, &mut counters);
        assert_eq!(abuse.hold_until(), None);
        assert!(!abuse.skip(&mut counters));
        s.finish(&mut counters);
        assert_eq!((counters[RATE_LIMITED], counters[BUSY], counters[PAUSED]), (2, 1, 0));
        assert_eq!(counters[BACKOFF_SKIPS], 1);
        assert_eq!(counters[SEND_ERRORS], 3);
    }
}
