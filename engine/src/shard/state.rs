//! The per-core domain as a plain state machine.
//!
//! ```text
//!   request(conn, user, id, Shake|Open) --+                 +--> answer now (into the connection's output)
//!   completion(token, result) ------------+--> ShardState --+--> Respond(conn, slot, frame)   (deferred answers)
//!   tickets read(file, first, bytes) -----+                 +--> Append(stream, record, token)
//!   mail(RainMail) -----------------------+                 +--> Read(file, first, count)
//!   tick(clock) --------------------------+                 +--> Send(core, RainMail)
//! ```
//!
//! `ShardState` owns this core's rain: its dispenser (files, cursors, pacing), the
//! opened-packet set, the last shake time of its users and the table of requests waiting
//! for storage. It never touches a socket, a file or the clock: the driver
//! (`shard::conn`, `shard::storage`, `shard::mailbox`) passes the [`Clock`] in and carries
//! the [`Output`]s out. Tests drive it directly (see `engine/tests/shard_state.rs`).

use super::output::ConnOutput;
use super::sessions::{SessionTimeouts, Sessions};
use crate::metrics::{CoreMetrics, Outcome};
use crate::rain::dispenser::{Dispenser, DispenserIo, MovedTickets, NoWin};
use crate::rain::open::{verify, OpenSet, OpenState, OpenWaiter};
use crate::rain::records::{
    OpenRecord, KIND_CURSOR_EXACT, KIND_CURSOR_RESERVED, KIND_OPENED, OPEN_RECORD_INSTANT_CREDIT,
};
use crate::rain::RainShared;
use crate::timeline::{TimelineConfig, TimelineOutput, Timelines};
use redrain_net::message::{Response, OPEN_FLAG_INSTANT_CREDIT, OPEN_FLAG_REPEAT, SEALED_TICKET_BYTES};
use redrain_net::timeline::TimelineRequest;
use redrain_net::{ErrorCode, MessageType};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// A connection, as the state machine names it: unique per core for the process's life
/// (never reused, unlike a slab key).
pub type ConnId = u64;

/// The time, passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// Milliseconds since the node started (monotonic).
    pub mono_ms: u64,
    /// The rain's wall clock in Unix ms (with the configured offset).
    pub unix_ms: u64,
}

/// A domain request of a logged-in session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RainRequest {
    Shake,
    Open([u8; SEALED_TICKET_BYTES]),
    /// A timeline, group or lucky-packet request (its frame, parsed again by the
    /// timelines; see [`crate::timeline`]).
    Timeline(Box<TimelineCall>),
}

/// A timeline request as the session hands it over: its type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineCall {
    pub kind: MessageType,
    pub body: Vec<u8>,
}

/// This core's durable streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Issuance cursors.
    Cursors,
    /// The open queue.
    Opens,
}

/// Messages between cores about the rain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RainMail {
    /// Core `from` ran dry in `slot`.
    TicketsWanted { slot: u16, from: usize },
    /// Tickets for a core that ran dry.
    Tickets(MovedTickets),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A deferred answer for `conn`'s output slot `slot`.
    Respond { conn: ConnId, slot: u64, frame: Vec<u8> },
    /// Append a record to a stream; report the result with [`ShardState::on_appended`].
    Append { stream: Stream, kind: u8, payload: Vec<u8>, token: u64 },
    /// Read ticket records; report with [`ShardState::on_tickets_read`].
    Read { file: usize, first: u64, count: usize },
    /// Send a message to another core.
    Send { core: usize, mail: RainMail },
    /// Close a connection after telling it why (`Closing` push).
    Close { conn: ConnId, code: ErrorCode },
    /// Timelines: carried out by `timeline::storage::carry_out`.
    Timeline(TimelineOutput),
}

/// What an append was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Open { packet_id: u64 },
    Reserve { file: usize },
    Exact,
}

/// Who sent a request: the connection, its logged-in user and the request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub conn: ConnId,
    pub user: u64,
    pub request_id: u32,
}

/// How a request was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// The answer is in the connection's output.
    Now,
    /// The answer comes later as [`Output::Respond`] for this slot.
    Later { slot: u64 },
}

/// Where a request's answer goes: the connection's ordered output.
pub struct ConnAnswers<'a> {
    pub held: &'a mut ConnOutput,
    pub ready: &'a mut Vec<u8>,
}

impl ConnAnswers<'_> {
    pub(crate) fn tail(&mut self) -> &mut Vec<u8> {
        self.held.tail(self.ready)
    }

    pub(crate) fn defer(&mut self, slot: u64) {
        self.held.defer(slot);
    }
}

/// Retry-after sent with Busy while an open's record waits for a peer's copy.
const UNCONFIRMED_RETRY_AFTER_MS: u32 = 500;

/// Retry-after sent with Busy when the pending table is full.
const BUSY_RETRY_AFTER_MS: u32 = 100;

/// One core's domain state.
pub struct ShardState {
    core: usize,
    cores: usize,
    sessions: Sessions,
    rain: Option<Arc<RainShared>>,
    dispenser: Option<Dispenser>,
    opens: OpenSet,
    /// Last shake per user, in `mono_ms`.
    last_shake_ms: HashMap<u64, u64>,
    pending: HashMap<u64, Pending>,
    open_waiters: usize,
    next_token: u64,
    outputs: Vec<Output>,
    io: Vec<DispenserIo>,
    timelines: Timelines,
    timeline_outputs: Vec<TimelineOutput>,
    /// Overload protection: degrade level, switches, admission (see `crate::overload`).
    pub overload: crate::overload::core::CoreOverload,
}

impl ShardState {
    /// A core's state; `rain` is `None` on a node without an event.
    pub fn new(core: usize, cores: usize, rain: Option<Arc<RainShared>>, dispenser: Option<Dispenser>) -> Self {
        Self {
            core,
            cores,
            sessions: Sessions::new(SessionTimeouts::default()),
            rain,
            dispenser,
            opens: OpenSet::default(),
            last_shake_ms: HashMap::new(),
            pending: HashMap::new(),
            open_waiters: 0,
            next_token: 1,
            outputs: Vec::new(),
            io: Vec::new(),
            timelines: Timelines::new(core, cores, 0, TimelineConfig::default(), 0),
            timeline_outputs: Vec::new(),
            overload: Default::default(),
        }
    }

    /// Takes the operator's switches (a new version from the board): pause, drain,
    /// degrade floor and refused keys act through `overload`; a quota change re-paces
    /// the dispenser (the node quota split over the cores; none: the configured one); the
    /// per-user message and sync rates go to the timelines.
    pub fn apply_switches(&mut self, version: u64, switches: Arc<crate::overload::switches::Switches>) {
        let quota = switches.quota_per_s;
        self.timelines.apply_rate_switches(switches.messages_per_user_per_s, switches.syncs_per_user_per_s);
        if self.overload.apply_switches(version, switches) {
            if let (Some(d), Some(rain)) = (self.dispenser.as_mut(), self.rain.as_ref()) {
                let per_core = match quota {
                    Some(q) => q as f64 / self.cores as f64,
                    None => rain.config.dispenser.quota_per_sec,
                };
                d.set_quota_per_sec(per_core);
            }
        }
    }

    /// Replaces the timelines (at start, with the node's config) before any connection.
    pub fn set_timelines(&mut self, timelines: Timelines) {
        self.timelines = timelines;
    }

    pub fn timelines(&self) -> &Timelines {
        &self.timelines
    }

    pub fn timelines_mut(&mut self) -> &mut Timelines {
        &mut self.timelines
    }

    pub fn core(&self) -> usize {
        self.core
    }

    /// Sets the session rules' timeouts (before any connection arrives).
    pub fn set_session_timeouts(&mut self, timeouts: SessionTimeouts) {
        self.sessions = Sessions::new(timeouts);
    }

    /// A connection arrived on this core (fresh, or handed over).
    pub fn on_connected(&mut self, conn: ConnId, clock: Clock) {
        self.sessions.connected(conn, clock.mono_ms);
    }

    /// Inbound bytes on `conn` (keeps a logged-in session from the idle timeout).
    pub fn on_activity(&mut self, conn: ConnId, clock: Clock) {
        self.sessions.activity(conn, clock.mono_ms);
    }

    /// A verified login registered on its home core: replaces an older session of the same
    /// (user, device) with a `Close(Replaced)`. Returns the session id.
    pub fn on_login(&mut self, conn: ConnId, user_id: u64, device_id: u32, metrics: &CoreMetrics) -> u64 {
        let (seq, replaced) = self.sessions.login(conn, user_id, device_id);
        if let Some(old) = replaced {
            self.outputs.push(Output::Close { conn: old, code: ErrorCode::Replaced });
            metrics.sessions_replaced_total.fetch_add(1, Relaxed);
        }
        metrics.logins_total.fetch_add(1, Relaxed);
        metrics.sessions_active.store(self.sessions.logged_in() as u64, Relaxed);
        self.timelines.on_login(conn, user_id);
        ((self.core as u64) << 48) | (seq & ((1 << 48) - 1))
    }

    /// `conn` closed (its answers still waiting are dropped by the driver).
    pub fn on_closed(&mut self, conn: ConnId, metrics: &CoreMetrics) {
        self.sessions.closed(conn);
        self.timelines.on_closed(conn);
        metrics.sessions_active.store(self.sessions.logged_in() as u64, Relaxed);
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&mut self, code: ErrorCode) {
        let conns: Vec<ConnId> = self.sessions.all().collect();
        self.outputs.extend(conns.into_iter().map(|conn| Output::Close { conn, code }));
    }

    /// Connections on this core, logged in or not.
    pub fn connections(&self) -> usize {
        self.sessions.connections()
    }

    /// Marks a packet opened (start-up recovery of the open queue).
    pub fn recover_open(&mut self, packet_id: u64) {
        self.opens.recover(packet_id);
    }

    pub fn opened_len(&self) -> usize {
        self.opens.opened_len()
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    pub fn dispenser(&self) -> Option<&Dispenser> {
        self.dispenser.as_ref()
    }

    pub fn dispenser_mut(&mut self) -> Option<&mut Dispenser> {
        self.dispenser.as_mut()
    }

    /// Takes the outputs produced so far.
    pub fn drain_outputs(&mut self, into: &mut Vec<Output>) {
        into.append(&mut self.outputs);
        self.timelines.drain(&mut self.timeline_outputs);
        into.extend(self.timeline_outputs.drain(..).map(Output::Timeline));
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    /// Handles a Shake or Open of `user` on connection `conn`.
    pub fn on_request(
        &mut self,
        caller: Caller,
        request: &RainRequest,
        clock: Clock,
        out: &mut ConnAnswers<'_>,
        metrics: &CoreMetrics,
    ) -> Handled {
        let Caller { conn, user, request_id } = caller;
        if let RainRequest::Timeline(call) = request {
            return self.on_timeline_request(caller, call, clock, out, metrics);
        }
        let Some(rain) = self.rain.clone() else {
            metrics.rejected(ErrorCode::NotServed);
            Response::error(ErrorCode::NotServed, 0, "no red-packet event is loaded on this node")
                .encode(request_id, out.tail());
            return Handled::Now;
        };
        match request {
            RainRequest::Shake => {
                self.shake(&rain, user, request_id, clock, out, metrics);
                Handled::Now
            }
            RainRequest::Open(sealed) => self.open(&rain, conn, user, request_id, sealed, clock, out, metrics),
            RainRequest::Timeline(_) => unreachable!("handled above"),
        }
    }

    /// A timeline request (its body was checked by the session; parsed again here).
    fn on_timeline_request(
        &mut self,
        caller: Caller,
        call: &TimelineCall,
        clock: Clock,
        out: &mut ConnAnswers<'_>,
        metrics: &CoreMetrics,
    ) -> Handled {
        let request = match TimelineRequest::parse(call.kind, &call.body) {
            Ok(r) => r,
            Err(e) => {
                metrics.rejected(e.code());
                metrics.frame(Some(call.kind), Outcome::from(e.code()));
                Response::error(e.code(), 0, "malformed timeline body").encode(caller.request_id, out.tail());
                return Handled::Now;
            }
        };
        match self.timelines.on_request(caller, &request, clock, out) {
            Ok(handled) => {
                metrics.frame(Some(call.kind), Outcome::Ok);
                handled
            }
            Err(code) => {
                metrics.rejected(code);
                metrics.frame(Some(call.kind), Outcome::from(code));
                Handled::Now
            }
        }
    }

    fn shake(
        &mut self,
        rain: &RainShared,
        user: u64,
        request_id: u32,
        clock: Clock,
        out: &mut ConnAnswers<'_>,
        metrics: &CoreMetrics,
    ) {
        // The interval clients are told (and held to) grows with the degrade level.
        let shake_interval_ms = self.overload.scale(rain.config.shake_interval_ms);
        let interval_ms = u64::from(shake_interval_ms);
        metrics.rain.shakes_total.fetch_add(1, Relaxed);
        if let Some(last) = self.last_shake_ms.get(&user) {
            let since = clock.mono_ms.saturating_sub(*last);
            if since < interval_ms {
                metrics.rain.shakes_too_fast_total.fetch_add(1, Relaxed);
                metrics.rejected(ErrorCode::TooFast);
                metrics.frame(Some(MessageType::Shake), Outcome::Logical);
                Response::error(ErrorCode::TooFast, (interval_ms - since) as u32, "shake interval not yet passed")
                    .encode(request_id, out.tail());
                return;
            }
        } else if self.last_shake_ms.len() >= rain.config.shake_users_max {
            self.forget_old_shakes(clock, interval_ms);
            if self.last_shake_ms.len() >= rain.config.shake_users_max {
                metrics.rejected(ErrorCode::Busy);
                metrics.frame(Some(MessageType::Shake), Outcome::System);
                Response::error(ErrorCode::Busy, shake_interval_ms, "too many users shaking on this core")
                    .encode(request_id, out.tail());
                return;
            }
        }
        self.last_shake_ms.insert(user, clock.mono_ms);
        metrics.frame(Some(MessageType::Shake), Outcome::Ok);
        let Some(dispenser) = self.dispenser.as_mut() else { return };
        dispenser.advance(rain.event.slot_at(clock.unix_ms), clock.unix_ms);
        let mut drawn = dispenser.draw(&rain.event.decryptor);
        if let Ok(d) = &drawn {
            // A key the operator refused: the ticket is not issued (its packet is given up).
            if self.overload.switches().key_refused(d.ticket.key_id) {
                metrics.overload.key_refused_draws_total.fetch_add(1, Relaxed);
                drawn = Err(NoWin::NotReady);
            }
        }
        match drawn {
            Ok(drawn) => {
                metrics.rain.shakes_won_total.fetch_add(1, Relaxed);
                let sealed = rain.seal.seal(
                    user,
                    drawn.ticket.packet_id,
                    (clock.unix_ms / 1000) as u32,
                    &drawn.ciphertext,
                    drawn.ticket.key_id,
                );
                Response::ShakeOk {
                    shake_interval_ms,
                    page_id: rain.event.page_of_batch(drawn.ticket.batch_id),
                    sealed: Some(&sealed),
                }
                .encode(request_id, out.tail());
            }
            Err(why) => {
                let counter = match why {
                    NoWin::NoSlot => &metrics.rain.shakes_no_slot_total,
                    NoWin::Paced => &metrics.rain.shakes_paced_total,
                    NoWin::SoldOut => &metrics.rain.shakes_sold_out_total,
                    NoWin::NotReady => &metrics.rain.shakes_not_ready_total,
                };
                counter.fetch_add(1, Relaxed);
                let page_id = dispenser.next_page(&rain.event);
                Response::ShakeOk { shake_interval_ms, page_id, sealed: None }.encode(request_id, out.tail());
            }
        }
        self.poll_dispenser_io();
    }

    fn forget_old_shakes(&mut self, clock: Clock, interval_ms: u64) {
        self.last_shake_ms.retain(|_, at| clock.mono_ms.saturating_sub(*at) < interval_ms);
    }

    #[allow(clippy::too_many_arguments)]
    fn open(
        &mut self,
        rain: &RainShared,
        conn: ConnId,
        user: u64,
        request_id: u32,
        sealed: &[u8; SEALED_TICKET_BYTES],
        clock: Clock,
        out: &mut ConnAnswers<'_>,
        metrics: &CoreMetrics,
    ) -> Handled {
        metrics.rain.opens_total.fetch_add(1, Relaxed);
        let verified = match verify(
            &rain.seal,
            &rain.event,
            sealed,
            user,
            clock.unix_ms / 1000,
            rain.config.sealed_ticket_ttl_s,
        ) {
            Ok(v) => v,
            Err(code) => {
                metrics.rejected(code);
                metrics.frame(Some(MessageType::Open), Outcome::from(code));
                Response::error(code, 0, open_error_text(code)).encode(request_id, out.tail());
                return Handled::Now;
            }
        };
        let ticket = verified.ticket;
        if self.overload.switches().key_refused(ticket.key_id) {
            let code = ErrorCode::TicketKeyRefused;
            metrics.rejected(code);
            metrics.frame(Some(MessageType::Open), Outcome::from(code));
            Response::error(code, 0, open_error_text(code)).encode(request_id, out.tail());
            return Handled::Now;
        }
        let instant = rain.event.instant_credit(ticket.amount_fen);
        let flags = if instant { OPEN_FLAG_INSTANT_CREDIT } else { 0 };
        match self.opens.state(ticket.packet_id) {
            OpenState::Unconfirmed => {
                // Its record is in the queue; the answer waits for a peer's copy.
                metrics.rejected(ErrorCode::Busy);
                metrics.frame(Some(MessageType::Open), Outcome::System);
                Response::error(ErrorCode::Busy, UNCONFIRMED_RETRY_AFTER_MS, "open recorded; waiting for a peer copy")
                    .encode(request_id, out.tail());
                Handled::Now
            }
            OpenState::Opened => {
                metrics.rain.opens_repeated_total.fetch_add(1, Relaxed);
                metrics.frame(Some(MessageType::Open), Outcome::Ok);
                Response::OpenOk {
                    packet_id: ticket.packet_id,
                    amount_fen: ticket.amount_fen,
                    batch_id: ticket.batch_id,
                    flags: flags | OPEN_FLAG_REPEAT,
                }
                .encode(request_id, out.tail());
                Handled::Now
            }
            state => {
                if self.open_waiters >= rain.config.opens_pending_max {
                    metrics.rejected(ErrorCode::Busy);
                    metrics.frame(Some(MessageType::Open), Outcome::System);
                    Response::error(ErrorCode::Busy, BUSY_RETRY_AFTER_MS, "too many opens waiting for storage")
                        .encode(request_id, out.tail());
                    return Handled::Now;
                }
                let slot = self.token();
                out.defer(slot);
                self.open_waiters += 1;
                if state == OpenState::InFlight {
                    let waiter = OpenWaiter { conn, request_id, slot, repeat: true };
                    let joined = self.opens.join(ticket.packet_id, waiter);
                    debug_assert!(joined);
                    return Handled::Later { slot };
                }
                self.opens.begin(ticket, OpenWaiter { conn, request_id, slot, repeat: false });
                let record = OpenRecord {
                    packet_id: ticket.packet_id,
                    user_id: user,
                    amount_fen: ticket.amount_fen,
                    key_id: ticket.key_id,
                    batch_id: ticket.batch_id,
                    node: rain.config.node_id,
                    core: self.core as u16,
                    opened_at_ms: clock.unix_ms,
                    flags: if instant { OPEN_RECORD_INSTANT_CREDIT } else { 0 },
                };
                let token = self.token();
                self.pending.insert(token, Pending::Open { packet_id: ticket.packet_id });
                self.outputs.push(Output::Append {
                    stream: Stream::Opens,
                    kind: KIND_OPENED,
                    payload: record.encode().to_vec(),
                    token,
                });
                Handled::Later { slot }
            }
        }
    }

    /// An append finished (`ok`: durable).
    pub fn on_appended(&mut self, token: u64, ok: bool, metrics: &CoreMetrics) {
        let Some(pending) = self.pending.remove(&token) else { return };
        match pending {
            Pending::Open { packet_id } => {
                let Some((ticket, waiters)) = self.opens.finish(packet_id, ok) else { return };
                self.open_waiters -= waiters.len().min(self.open_waiters);
                let instant = self.rain.as_ref().is_some_and(|r| r.event.instant_credit(ticket.amount_fen));
                if ok {
                    metrics.rain.opens_recorded_total.fetch_add(1, Relaxed);
                    metrics.rain.opened_amount_fen_total.fetch_add(u64::from(ticket.amount_fen), Relaxed);
                    if instant {
                        metrics.rain.opens_instant_credit_total.fetch_add(1, Relaxed);
                    }
                } else {
                    metrics.rain.open_record_failures_total.fetch_add(1, Relaxed);
                }
                for w in waiters {
                    let mut frame = Vec::with_capacity(32);
                    metrics.frame(Some(MessageType::Open), if ok { Outcome::Ok } else { Outcome::System });
                    if ok {
                        let mut flags = if instant { OPEN_FLAG_INSTANT_CREDIT } else { 0 };
                        if w.repeat {
                            flags |= OPEN_FLAG_REPEAT;
                            metrics.rain.opens_repeated_total.fetch_add(1, Relaxed);
                        }
                        Response::OpenOk {
                            packet_id: ticket.packet_id,
                            amount_fen: ticket.amount_fen,
                            batch_id: ticket.batch_id,
                            flags,
                        }
                        .encode(w.request_id, &mut frame);
                    } else {
                        metrics.rejected(ErrorCode::Internal);
                        Response::error(
                            ErrorCode::Internal,
                            BUSY_RETRY_AFTER_MS,
                            "the open could not be recorded; retry",
                        )
                        .encode(w.request_id, &mut frame);
                    }
                    self.outputs.push(Output::Respond { conn: w.conn, slot: w.slot, frame });
                }
            }
            Pending::Reserve { file } => {
                if let Some(d) = self.dispenser.as_mut() {
                    d.on_reserved(file, ok);
                }
                self.poll_dispenser_io();
            }
            Pending::Exact => {}
        }
    }

    /// An append is durable here but no peer confirmed it in time (replicated open queue
    /// with its peers away). An open's record is in the queue and is never appended again:
    /// its waiters hear Busy, and the packet opens when `on_committed` passes its LSN.
    pub fn on_append_unconfirmed(&mut self, token: u64, lsn: u64, metrics: &CoreMetrics) {
        let Some(pending) = self.pending.remove(&token) else { return };
        match pending {
            Pending::Open { packet_id } => {
                let Some((_, waiters)) = self.opens.finish_unconfirmed(packet_id, lsn) else { return };
                self.open_waiters -= waiters.len().min(self.open_waiters);
                metrics.rain.opens_unconfirmed_total.fetch_add(1, Relaxed);
                for w in waiters {
                    let mut frame = Vec::with_capacity(64);
                    metrics.rejected(ErrorCode::Busy);
                    metrics.frame(Some(MessageType::Open), Outcome::System);
                    Response::error(
                        ErrorCode::Busy,
                        UNCONFIRMED_RETRY_AFTER_MS,
                        "open recorded; waiting for a peer copy",
                    )
                    .encode(w.request_id, &mut frame);
                    self.outputs.push(Output::Respond { conn: w.conn, slot: w.slot, frame });
                }
            }
            // Cursor records only need this disk.
            Pending::Reserve { .. } | Pending::Exact => {
                self.pending.insert(token, pending);
                self.on_appended(token, true, metrics);
            }
        }
    }

    /// The open queue is on 2 of 3 copies up to `commit_lsn`: unconfirmed opens are opened.
    pub fn on_committed(&mut self, commit_lsn: u64, metrics: &CoreMetrics) {
        let confirmed = self.opens.confirm_up_to(commit_lsn);
        if confirmed > 0 {
            metrics.rain.opens_recorded_total.fetch_add(confirmed as u64, Relaxed);
        }
    }

    /// Ticket records read for the dispenser.
    pub fn on_tickets_read(&mut self, file: usize, first: u64, bytes: Result<Vec<u8>, String>) {
        if let Some(d) = self.dispenser.as_mut() {
            d.on_read(file, first, bytes);
        }
        self.poll_dispenser_io();
    }

    /// A message from another core.
    pub fn on_mail(&mut self, mail: RainMail, clock: Clock) {
        let (Some(rain), Some(d)) = (self.rain.clone(), self.dispenser.as_mut()) else { return };
        d.advance(rain.event.slot_at(clock.unix_ms), clock.unix_ms);
        match mail {
            RainMail::TicketsWanted { slot, from } => {
                if let Some(moved) = d.give(slot, clock.unix_ms) {
                    self.outputs.push(Output::Send { core: from, mail: RainMail::Tickets(moved) });
                }
            }
            RainMail::Tickets(moved) => d.take(moved),
        }
        self.poll_dispenser_io();
    }

    /// Housekeeping: slot changes, prefetch, cursors, imbalance, forgetting old shakes.
    /// `persist_exact` (once a second, and on a clean stop) also asks for exact cursors and
    /// sweeps the session timeouts.
    pub fn on_tick(&mut self, clock: Clock, persist_exact: bool) {
        if persist_exact {
            let mut expired = Vec::new();
            self.sessions.expired(clock.mono_ms, &mut expired);
            self.outputs.extend(expired.into_iter().map(|(conn, code)| Output::Close { conn, code }));
        }
        let Some(rain) = self.rain.clone() else { return };
        let interval_ms = u64::from(rain.config.shake_interval_ms);
        if self.last_shake_ms.len() > 1024 {
            self.forget_old_shakes(clock, interval_ms);
        }
        let Some(d) = self.dispenser.as_mut() else { return };
        let slot = rain.event.slot_at(clock.unix_ms);
        d.advance(slot, clock.unix_ms);
        if let Some((_, left_ms)) = slot {
            if let Some(wanted) = d.wants_tickets(clock.unix_ms, left_ms) {
                for core in (0..self.cores).filter(|c| *c != self.core) {
                    self.outputs
                        .push(Output::Send { core, mail: RainMail::TicketsWanted { slot: wanted, from: self.core } });
                }
            }
        }
        if persist_exact {
            d.poll_exact(&mut self.io);
        }
        self.poll_dispenser_io();
    }

    fn poll_dispenser_io(&mut self) {
        let Some(d) = self.dispenser.as_mut() else { return };
        d.poll_io(&mut self.io);
        let mut io = std::mem::take(&mut self.io);
        for item in io.drain(..) {
            match item {
                DispenserIo::Read { file, first, count } => self.outputs.push(Output::Read { file, first, count }),
                DispenserIo::Reserve { file, record } => {
                    let token = self.token();
                    self.pending.insert(token, Pending::Reserve { file });
                    self.outputs.push(Output::Append {
                        stream: Stream::Cursors,
                        kind: KIND_CURSOR_RESERVED,
                        payload: record.encode().to_vec(),
                        token,
                    });
                }
                DispenserIo::Exact { record } => {
                    let token = self.token();
                    self.pending.insert(token, Pending::Exact);
                    self.outputs.push(Output::Append {
                        stream: Stream::Cursors,
                        kind: KIND_CURSOR_EXACT,
                        payload: record.encode().to_vec(),
                        token,
                    });
                }
            }
        }
        self.io = io;
    }
}

fn open_error_text(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::TicketMalformed => "sealed ticket version not supported",
        ErrorCode::TicketTampered => "sealed ticket does not authenticate",
        ErrorCode::TicketForged => "sealed ticket holds no valid packet",
        ErrorCode::TicketExpired => "sealed ticket expired",
        ErrorCode::TicketOtherUser => "sealed ticket belongs to another user",
        ErrorCode::TicketKeyRefused => "the ticket's key is refused on this node",
        ErrorCode::TicketUnknownBatch => "the ticket's batch is not part of this event",
        ErrorCode::TicketOtherNode => "sealed ticket was issued by another node",
        _ => "open refused",
    }
}
