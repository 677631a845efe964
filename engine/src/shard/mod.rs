//! One pinned core (shard) of the node and everything it owns.
//!
//! A [`Core`] owns its listeners' accept loops, its connections, the registry of
//! the sessions homed on it, its domain state machine ([`state::ShardState`]), its
//! storage facade ([`storage::CoreStorage`]), its read scratch buffer and its metrics
//! block. It is `!Send` and lives on one glommio executor; other cores reach it only
//! via the [`mailbox`]es. The node-wide, immutable or atomic state every core reads is
//! [`NodeShared`].
//!
//! The glommio edge is thin: connection tasks ([`conn`]) decode and hand rain requests to
//! the state machine; [`Core::dispatch`] carries its outputs out (deferred answers to
//! connections, appends to storage, ticket reads, mail to other cores).

pub mod accept;
pub mod conn;
pub mod handoff;
pub mod mailbox;
pub mod netring;
pub mod output;
pub mod sessions;
pub mod state;
pub mod storage;
pub mod tls;

use crate::auth::TokenKeys;
use crate::config::Config;
use crate::metrics::CoreMetrics;
use crate::rain::RainShared;
use crate::session::SessionLimits;
use glommio::channels::shared_channel::{ConnectedSender, SharedReceiver, SharedSender};
use mailbox::{Mail, Mailboxes};
use redrain_net::ErrorCode;
use slab::Slab;
use state::{Clock, ConnId, Output, ShardState};
use std::cell::OnceCell;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

/// Size of each core's read scratch buffer. Connections read into it and keep
/// only unprocessed bytes, so an idle connection holds no read buffer at all.
pub const READ_SCRATCH_BYTES: usize = 64 * 1024;
/// Housekeeping tick: idle sweeps and the shutdown check run this often.
pub const HOUSEKEEPING_TICK: Duration = Duration::from_millis(100);
/// Idle sweeps run every this many ticks.
pub const SWEEP_EVERY_TICKS: u32 = 10;

/// State every core reads; created before the executors start.
pub struct NodeShared {
    pub config: Config,
    pub cores: usize,
    pub keys: TokenKeys,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub metrics: Vec<CoreMetrics>,
    pub mailboxes: Mailboxes,
    /// The loaded event, when the node serves a rain.
    pub rain: Option<Arc<RainShared>>,
    pub shutdown: AtomicBool,
    pub started: Instant,
    pub fd_limit: u64,
    /// Connections one core may hold (configured, and capped by the fd limit).
    pub sessions_per_core_max: usize,
    /// The operator's switches (every core copies them on its tick).
    pub switches: Arc<crate::overload::switches::SwitchBoard>,
    /// Admin API tokens (replaced on SIGHUP) and counters.
    pub admin_tokens: Arc<redrain_net::admin::AdminTokens>,
    pub admin_counters: Arc<redrain_net::admin::AdminCounters>,
}

impl NodeShared {
    pub fn limits(&self) -> SessionLimits {
        SessionLimits {
            frame_bytes_max: self.config.frame_bytes_max,
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
            idle_timeout_ms: self.config.idle_timeout_ms,
        }
    }

    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// The time as the state machines see it: monotonic since start, and the rain's
    /// wall clock (with the configured offset).
    pub fn clock(&self) -> Clock {
        let unix_ms = redrain_net::time::now_unix_ms() as i64 + self.config.clock_offset_ms;
        Clock { mono_ms: self.started.elapsed().as_millis() as u64, unix_ms: unix_ms.max(0) as u64 }
    }
}

/// The slot of a delivered frame that is a push, not a deferred answer: it goes straight
/// into the connection's output.
pub const PUSH_SLOT: u64 = u64::MAX;

/// Bits of a [`ConnId`] that hold the connection's serial; the slab key sits above.
const CONN_SERIAL_BITS: u32 = 40;

/// The registry entry of one connection on its core; lets housekeeping and
/// newer logins close it from outside its task.
#[derive(Debug, Default)]
pub struct ConnCtl {
    close: Cell<Option<ErrorCode>>,
    waker: RefCell<Option<Waker>>,
    /// The state machine's name for this connection.
    pub id: Cell<ConnId>,
    /// Deferred answers (slot, frame) waiting for the connection's task.
    completions: RefCell<Vec<(u64, Vec<u8>)>>,
    /// Bytes of the frames in `completions` (bound: `conn_pushed_bytes_max`).
    completion_bytes: Cell<usize>,
    /// Where in `completions` the unsent Notify is: a newer one replaces it.
    notify_at: Cell<Option<usize>>,
    /// Set when the core wants the task to run a pass without input (a Backoff push).
    nudged: Cell<bool>,
}

impl ConnCtl {
    /// Asks the connection's task to send `Closing(code)` and close.
    pub fn kick(&self, code: ErrorCode) {
        if self.close.get().is_none() {
            self.close.set(Some(code));
        }
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    pub fn close_requested(&self) -> Option<ErrorCode> {
        self.close.get()
    }

    /// Hands a deferred answer to the connection's task and wakes it.
    pub fn deliver(&self, slot: u64, frame: Vec<u8>) {
        self.completions.borrow_mut().push((slot, frame));
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Takes the deferred answers delivered so far.
    pub fn take_completions(&self) -> Vec<(u64, Vec<u8>)> {
        self.completion_bytes.set(0);
        self.notify_at.set(None);
        std::mem::take(&mut *self.completions.borrow_mut())
    }

    /// Hands a deferred answer (`slot`) or a push ([`PUSH_SLOT`]) to the connection's task
    /// unless the frames waiting would pass `bytes_max`: then the connection is closed once
    /// as a slow reader (`Closing(SlowReader)`) and what waited for it is dropped at once,
    /// so its memory does not outlive the decision. A connection asked to close takes
    /// nothing more (its task sends `Closing` and ends without reading them).
    pub fn deliver_within(&self, slot: u64, frame: Vec<u8>, bytes_max: usize) -> Delivery {
        if self.close.get().is_some() {
            return Delivery::Closing;
        }
        let bytes = self.completion_bytes.get() + frame.len();
        if bytes > bytes_max {
            return self.close_slow_reader();
        }
        self.completion_bytes.set(bytes);
        self.deliver(slot, frame);
        Delivery::Queued
    }

    /// Hands a Notify push to the task: it replaces an unsent older one (only the latest
    /// seq matters), so a connection that does not read holds one Notify at most.
    pub fn push_latest(&self, frame: Vec<u8>, bytes_max: usize) -> Delivery {
        if self.close.get().is_some() {
            return Delivery::Closing;
        }
        if let Some(at) = self.notify_at.get() {
            let mut completions = self.completions.borrow_mut();
            if let Some((PUSH_SLOT, old)) = completions.get_mut(at) {
                let bytes = self.completion_bytes.get() - old.len() + frame.len();
                if bytes > bytes_max {
                    drop(completions);
                    return self.close_slow_reader();
                }
                self.completion_bytes.set(bytes);
                *old = frame;
                return Delivery::Coalesced;
            }
        }
        let at = self.completions.borrow().len();
        let delivered = self.deliver_within(PUSH_SLOT, frame, bytes_max);
        if delivered == Delivery::Queued {
            self.notify_at.set(Some(at));
        }
        delivered
    }

    fn close_slow_reader(&self) -> Delivery {
        self.kick(ErrorCode::SlowReader);
        self.take_completions();
        Delivery::OverBound
    }

    /// Bytes of frames waiting for the connection's task.
    pub fn pending_bytes(&self) -> usize {
        self.completion_bytes.get()
    }

    pub fn has_completions(&self) -> bool {
        !self.completions.borrow().is_empty()
    }

    /// Wakes the connection's task to flush what the core has for it (a push).
    pub fn nudge(&self) {
        self.nudged.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Whether the core nudged the connection since the last call.
    pub fn take_nudge(&self) -> bool {
        self.nudged.replace(false)
    }

    fn park(&self, waker: &Waker) {
        let mut slot = self.waker.borrow_mut();
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }
}

/// What became of a frame handed to a connection ([`ConnCtl::deliver_within`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// A Notify that replaced an unsent older one.
    Coalesced,
    /// It would pass `conn_pushed_bytes_max`: not queued; the connection closes as a slow
    /// reader.
    OverBound,
    /// The connection is closing: not queued.
    Closing,
}

/// Per-core state.
pub struct Core {
    pub id: usize,
    pub node: Arc<NodeShared>,
    conns: RefCell<Slab<Rc<ConnCtl>>>,
    scratch: RefCell<Box<[u8]>>,
    doorbells: RefCell<Vec<Option<ConnectedSender<()>>>>,
    next_conn_serial: Cell<u64>,
    /// The core's domain state machine.
    pub state: RefCell<ShardState>,
    /// The core's streams and ticket files (set once at start, before accepting).
    pub storage: OnceCell<storage::CoreStorage>,
    /// The core's timeline log and groups table (set once at start, before accepting).
    pub timeline_storage: OnceCell<crate::timeline::storage::TimelineStorage>,
    outputs: RefCell<Vec<Output>>,
    /// The core's own network ring (`net_driver = ring`), set at start.
    pub net: OnceCell<Rc<netring::NetRing>>,
}

impl Core {
    pub fn new(id: usize, node: Arc<NodeShared>, mut state: ShardState) -> Self {
        state.overload =
            crate::overload::core::CoreOverload::new(crate::overload::core::OverloadConfig::from_config(&node.config));
        state.overload.set_cpu_share(crate::overload::core::cgroup_cpu_share(node.cores));
        state.set_session_timeouts(sessions::SessionTimeouts {
            idle_ms: u64::from(node.config.idle_timeout_ms),
            login_ms: u64::from(node.config.login_timeout_ms),
        });
        Self {
            id,
            node,
            conns: RefCell::new(Slab::new()),
            scratch: RefCell::new(vec![0u8; READ_SCRATCH_BYTES].into_boxed_slice()),
            doorbells: RefCell::new(Vec::new()),
            next_conn_serial: Cell::new(1),
            state: RefCell::new(state),
            storage: OnceCell::new(),
            timeline_storage: OnceCell::new(),
            outputs: RefCell::new(Vec::new()),
            net: OnceCell::new(),
        }
    }

    /// Carries out everything the state machine asked for since the last call.
    pub fn dispatch(self: &Rc<Self>) {
        let mut outputs = std::mem::take(&mut *self.outputs.borrow_mut());
        self.state.borrow_mut().drain_outputs(&mut outputs);
        for output in outputs.drain(..) {
            match output {
                Output::Respond { conn, slot, frame } => self.deliver(conn, slot, frame),
                Output::Append { stream, kind, payload, token } => match self.storage.get() {
                    Some(storage) => storage.append(stream, kind, &payload, token),
                    None => self.state.borrow_mut().on_appended(token, false, self.metrics()),
                },
                Output::Read { file, first, count } => {
                    let core = self.clone();
                    glommio::spawn_local(async move {
                        let bytes = match core.storage.get() {
                            Some(storage) => storage.read_tickets(file, first, count).await,
                            None => Err("no storage on this core".into()),
                        };
                        core.state.borrow_mut().on_tickets_read(file, first, bytes);
                        core.dispatch();
                    })
                    .detach();
                }
                Output::Close { conn, code } => {
                    if let Some(ctl) = self.ctl(conn) {
                        ctl.kick(code);
                    }
                }
                Output::Timeline(output) => crate::timeline::storage::carry_out(self, output),
                Output::Send { core, mail } => {
                    if self.node.mailboxes.queue(self.id, core).push(Mail::Rain(mail)).is_ok() {
                        self.ring(core);
                    } else {
                        self.metrics().rain.mail_dropped_total.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        // Keep the vector's capacity for the next dispatch.
        let mut slot = self.outputs.borrow_mut();
        if slot.is_empty() {
            *slot = outputs;
        }
    }

    /// The housekeeping tick of the state machine (slots, prefetch, cursors, imbalance)
    /// and the copy of its figures into the metrics block. `every_second`: also persist
    /// exact cursors and refresh the storage figures.
    pub fn housekeeping(self: &Rc<Self>, every_second: bool) {
        self.overload_tick();
        let clock = self.node.clock();
        {
            let mut state = self.state.borrow_mut();
            if let Some(storage) = self.storage.get() {
                state.on_committed(storage.opens_commit_lsn(), self.metrics());
            }
            state.on_tick(clock, every_second);
            let first_lsn = self.timeline_storage.get().map_or(0, |t| t.log().first_lsn());
            state.timelines_mut().on_tick(clock, first_lsn);
            self.metrics().timeline.set(&state.timelines().stats);
            if let Some(t) = self.timeline_storage.get() {
                self.metrics().timeline.set_log(&t.log().stats(), t.log().pending_appends());
                t.retain_from(self, state.timelines().retention_watermark());
                self.metrics().timeline.set_retention(&state.timelines().retention_stats(), t.log());
            }
            let m = &self.metrics().rain;
            m.opened_packets.store(state.opened_len() as u64, Ordering::Relaxed);
            m.opens_pending.store(state.pending_len() as u64, Ordering::Relaxed);
            if let (Some(d), Some(rain)) = (state.dispenser(), self.node.rain.as_ref()) {
                let remaining = rain.event.slot_at(clock.unix_ms).map(|(s, _)| d.remaining_in_slot(s)).unwrap_or(0);
                m.set_dispenser(&d.stats(), remaining);
            }
        }
        if let Some(storage) = self.storage.get() {
            // The hand-off's depth grows while its consumer waits on a stalled sink.
            self.metrics().handoff.durable_lsn.store(storage.opens().durable_lsn(), Ordering::Relaxed);
        }
        if let Some(t) = self.timeline_storage.get() {
            // Likewise the lucky consumer's records behind (the log grows with every message).
            self.metrics().handoff_lucky.durable_lsn.store(t.log().durable_lsn(), Ordering::Relaxed);
        }
        if let Some(ring) = self.net.get() {
            self.metrics().net.set(ring.stats());
        }
        if every_second {
            if let Some(storage) = self.storage.get() {
                self.metrics().rain.cursors.set(&storage.cursors);
                self.metrics().rain.opens.set(storage.opens());
            }
        }
        self.dispatch();
    }

    /// An append of the storage facade finished.
    pub fn on_appended(self: &Rc<Self>, token: u64, outcome: storage::Appended) {
        match outcome {
            storage::Appended::Durable => self.state.borrow_mut().on_appended(token, true, self.metrics()),
            storage::Appended::Failed => self.state.borrow_mut().on_appended(token, false, self.metrics()),
            storage::Appended::Unconfirmed(lsn) => {
                self.state.borrow_mut().on_append_unconfirmed(token, lsn, self.metrics())
            }
        }
        self.dispatch();
    }

    /// The control block of a live connection (None once it closed, even if its slab slot
    /// was reused).
    fn ctl(&self, conn: ConnId) -> Option<Rc<ConnCtl>> {
        let key = (conn >> CONN_SERIAL_BITS) as usize;
        self.conns.borrow().get(key).filter(|ctl| ctl.id.get() == conn).cloned()
    }

    /// Routes a deferred answer to its connection (dropped if it closed meanwhile).
    pub(crate) fn deliver_answer(&self, conn: ConnId, slot: u64, frame: Vec<u8>) {
        self.deliver(conn, slot, frame)
    }

    /// Puts a push (Notify) into a connection's output, replacing an unsent older one.
    pub(crate) fn push_to(&self, conn: ConnId, frame: Vec<u8>) {
        if let Some(ctl) = self.ctl(conn) {
            ctl.push_latest(frame, self.node.config.conn_pushed_bytes_max);
        }
    }

    /// Routes a deferred answer to its connection (dropped if it closed meanwhile).
    fn deliver(&self, conn: ConnId, slot: u64, frame: Vec<u8>) {
        if let Some(ctl) = self.ctl(conn) {
            ctl.deliver_within(slot, frame, self.node.config.conn_pushed_bytes_max);
        }
    }

    pub fn metrics(&self) -> &CoreMetrics {
        &self.node.metrics[self.id]
    }

    pub fn now_ms(&self) -> u64 {
        self.node.started.elapsed().as_millis() as u64
    }

    pub fn connections(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Wakes every connection of this core (a Backoff push is due).
    pub fn nudge_all(&self) {
        for (_, ctl) in self.conns.borrow().iter() {
            ctl.nudge();
        }
    }

    pub fn is_full(&self) -> bool {
        self.connections() >= self.node.sessions_per_core_max
    }

    /// A session arriving by hand-off is already registered here, so the core
    /// is over its limit only when it holds more than the maximum.
    pub fn is_full_for_resume(&self) -> bool {
        self.connections() > self.node.sessions_per_core_max
    }

    /// Adds a connection to the registry; returns its key and control block.
    pub fn register_conn(&self) -> (usize, Rc<ConnCtl>) {
        let ctl = Rc::new(ConnCtl::default());
        let key = self.conns.borrow_mut().insert(ctl.clone());
        let serial = self.next_conn_serial.get();
        self.next_conn_serial.set(serial + 1);
        ctl.id.set(((key as u64) << CONN_SERIAL_BITS) | (serial & ((1 << CONN_SERIAL_BITS) - 1)));
        self.state.borrow_mut().on_connected(ctl.id.get(), self.node.clock());
        self.metrics().connections_open.store(self.connections() as u64, Ordering::Relaxed);
        (key, ctl)
    }

    /// Removes a connection (and its session, if it still owns the device).
    pub fn unregister_conn(&self, key: usize) {
        if let Some(ctl) = self.conns.borrow_mut().try_remove(key) {
            self.state.borrow_mut().on_closed(ctl.id.get(), self.metrics());
        }
        self.metrics().connections_open.store(self.connections() as u64, Ordering::Relaxed);
    }

    /// Registers a logged-in session on this (its home) core; an older session of the
    /// same (user, device) is closed with `Replaced`. Returns the new session id.
    pub fn register_session(self: &Rc<Self>, conn: ConnId, user_id: u64, device_id: u32) -> u64 {
        let id = self.state.borrow_mut().on_login(conn, user_id, device_id, self.metrics());
        self.dispatch();
        id
    }

    /// Inbound bytes on a connection.
    pub fn note_activity(&self, conn: ConnId) {
        self.state.borrow_mut().on_activity(conn, self.node.clock());
    }

    /// Tells every connection to close (shutdown).
    pub fn kick_all(self: &Rc<Self>, code: ErrorCode) {
        self.state.borrow_mut().close_all(code);
        self.dispatch();
    }

    /// Wakes core `to` after a hand-off was pushed to its queue.
    pub fn ring(&self, to: usize) {
        if let Some(Some(bell)) = self.doorbells.borrow().get(to) {
            // A full doorbell means a wake-up is already pending.
            let _ = bell.try_send(());
        }
    }

    /// Connects this core's doorbell senders (one per other core).
    pub async fn connect_doorbells(&self, senders: Vec<Option<SharedSender<()>>>) {
        let connected = futures::future::join_all(senders.into_iter().map(|s| async move {
            match s {
                Some(s) => Some(s.connect().await),
                None => None,
            }
        }))
        .await;
        *self.doorbells.borrow_mut() = connected;
    }

    /// Spawns one task per source core that drains its mailbox when rung.
    pub fn spawn_handoff_receivers(self: &Rc<Self>, receivers: Vec<(usize, SharedReceiver<()>)>) {
        for (from, rx) in receivers {
            let core = self.clone();
            glommio::spawn_local(async move {
                let rx = rx.connect().await;
                while rx.recv().await.is_some() {
                    core.drain_mailbox(from).await;
                }
            })
            .detach();
        }
    }

    async fn drain_mailbox(self: &Rc<Self>, from: usize) {
        let batch_max = self.node.config.handoff_batch_max;
        let queue = self.node.mailboxes.queue(from, self.id);
        loop {
            let mut taken = 0;
            while taken < batch_max {
                let Some(mail) = queue.pop() else {
                    self.dispatch();
                    return;
                };
                taken += 1;
                match mail {
                    Mail::Handoff(h) => {
                        self.metrics().handoffs_received_total.fetch_add(1, Ordering::Relaxed);
                        conn::spawn_resumed(self.clone(), *h);
                    }
                    Mail::Rain(mail) => self.state.borrow_mut().on_mail(mail, self.node.clock()),
                    Mail::Timeline(mail) => self.state.borrow_mut().timelines_mut().on_mail(mail),
                }
            }
            self.dispatch();
            glommio::yield_if_needed().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notify(seq: u8) -> Vec<u8> {
        vec![seq; 17]
    }

    #[test]
    fn a_newer_notify_replaces_an_unsent_older_one_and_answers_keep_their_order() {
        let ctl = ConnCtl::default();
        assert_eq!(ctl.push_latest(notify(1), 1_000), Delivery::Queued);
        assert_eq!(ctl.deliver_within(7, vec![0; 30], 1_000), Delivery::Queued);
        for seq in 2..100 {
            assert_eq!(ctl.push_latest(notify(seq), 1_000), Delivery::Coalesced);
        }
        assert_eq!(ctl.pending_bytes(), 17 + 30);
        let taken = ctl.take_completions();
        assert_eq!(taken, vec![(PUSH_SLOT, notify(99)), (7, vec![0; 30])]);
        assert_eq!(ctl.pending_bytes(), 0);
        // After the task took them, the next Notify waits again (nothing to replace).
        assert_eq!(ctl.push_latest(notify(100), 1_000), Delivery::Queued);
        assert_eq!(ctl.close_requested(), None);
    }

    #[test]
    fn answers_past_the_byte_bound_close_the_connection_once_as_a_slow_reader_and_free_what_waited() {
        let ctl = ConnCtl::default();
        for slot in 0..10 {
            assert_eq!(ctl.deliver_within(slot, vec![1; 100], 1_000), Delivery::Queued);
        }
        assert_eq!(ctl.pending_bytes(), 1_000);
        assert_eq!(ctl.deliver_within(10, vec![1; 1], 1_000), Delivery::OverBound);
        assert_eq!(ctl.close_requested(), Some(ErrorCode::SlowReader));
        assert_eq!(ctl.pending_bytes(), 0);
        assert!(!ctl.has_completions(), "what waited for a slow reader is dropped");
        // Closing: nothing more is taken, and the close reason stays the first one.
        assert_eq!(ctl.deliver_within(11, vec![1; 1], 1_000), Delivery::Closing);
        assert_eq!(ctl.push_latest(notify(1), 1_000), Delivery::Closing);
        assert!(!ctl.has_completions());
        assert_eq!(ctl.close_requested(), Some(ErrorCode::SlowReader));
    }
}
