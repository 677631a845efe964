//! `shake`: the red-packet rain as a user plays it. A connection shakes; every won sealed
//! ticket is opened with its next request; every answer is checked (an `OpenOk` must carry
//! the packet of the ticket sent and an amount above zero).
//!
//! The node's minimum shake interval (from `ShakeOk`, or the `TooFast` retry-after) is
//! obeyed: a request slot that comes before the connection may shake again, with no ticket
//! to open, is sent as a `Ping` and counted as `interval_waits` (choose `--rate` at most
//! connections x 1000 / interval ms to avoid them). `--ignore-shake-interval` shakes
//! regardless (abuse tests: the node answers `TooFast`).
//!
//! `--no-open` shakes only (wins counted, never opened): the cost of a shake by itself.
//!
//! Server-driven backoff is obeyed unless `--ignore-backoff`: a `Backoff` push sets the
//! shake interval, and a shake answered `Busy` or `Paused` waits its retry-after. While the
//! node asks a connection to back off (a push above level 0, or a pending retry-after), its
//! open-loop slots before the next allowed shake are left out, not sent (`backoff_skips`):
//! that is the load the node shed by telling clients.
//!
//! Packet ids are in clear in the sealed ticket's header, so a packet won twice in one run
//! (on any connection of this process) is counted as `duplicate_packets`.

use super::{Check, Headline, LoadShape, Scenario, ScenarioConnection};
use redrain_net::message::{Request, SealedTicketHeader, OPEN_FLAG_REPEAT, SEALED_TICKET_BYTES};
use redrain_net::{ErrorCode, Response};
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counter slots of the shake scenario.
pub const SHAKE_COUNTERS: &[&str] = &[
    "shakes",
    "won",
    "lost",
    "too_fast",
    "opened",
    "open_errors",
    "duplicate_packets",
    "amount_fen_opened",
    "repeated_opens",
    "interval_waits",
    "wrong_response_type",
    "wrong_packet",
    "backoff_skips",
    "busy",
    "paused",
    "backoff_pushes",
];
const SHAKES: usize = 0;
const WON: usize = 1;
const LOST: usize = 2;
const TOO_FAST: usize = 3;
const OPENED: usize = 4;
const OPEN_ERRORS: usize = 5;
const DUPLICATE_PACKETS: usize = 6;
const AMOUNT_FEN_OPENED: usize = 7;
const REPEATED_OPENS: usize = 8;
const INTERVAL_WAITS: usize = 9;
const WRONG_RESPONSE_TYPE: usize = 10;
const WRONG_PACKET: usize = 11;
const BACKOFF_SKIPS: usize = 12;
const BUSY: usize = 13;
const PAUSED: usize = 14;
const BACKOFF_PUSHES: usize = 15;

/// Shards of the run-wide set of won packet ids (cuts lock contention between threads).
const WON_SHARDS: usize = 64;

#[derive(Debug, Clone)]
pub struct ShakeScenario {
    obey_interval: bool,
    open_wins: bool,
    obey_backoff: bool,
    won: Arc<Vec<Mutex<HashSet<u64>>>>,
}

impl ShakeScenario {
    /// `open_wins: false` shakes only (the cost of a shake alone; wins are counted, not opened).
    pub fn new(obey_interval: bool, open_wins: bool) -> Self {
        Self {
            obey_interval,
            open_wins,
            obey_backoff: obey_interval,
            won: Arc::new((0..WON_SHARDS).map(|_| Mutex::default()).collect()),
        }
    }

    /// `false`: ignore `Backoff` pushes and the retry-after of `Busy`/`Paused` (abuse tests).
    pub fn obey_backoff(mut self, obey: bool) -> Self {
        self.obey_backoff = obey;
        self
    }

    /// Records a won packet; false when it was won before in this run.
    fn first_win(&self, packet_id: u64) -> bool {
        let shard = &self.won[(packet_id % WON_SHARDS as u64) as usize];
        shard.lock().unwrap_or_else(|p| p.into_inner()).insert(packet_id)
    }
}

impl Scenario for ShakeScenario {
    type Connection = ShakeConnection;

    fn name(&self) -> &'static str {
        "shake"
    }
    fn counter_names(&self) -> &'static [&'static str] {
        SHAKE_COUNTERS
    }
    fn load_shape(&self) -> LoadShape {
        LoadShape::Requests
    }
    fn headline(&self) -> Headline {
        Headline::Requests
    }
    fn connection(&self, _index: u64) -> ShakeConnection {
        ShakeConnection {
            scenario: self.clone(),
            tickets: VecDeque::new(),
            sent: VecDeque::new(),
            next_shake_at: None,
            interval: Duration::ZERO,
            ticket: [0; SEALED_TICKET_BYTES],
            backing_off: false,
            pushed_interval: None,
            pushes_seen: 0,
            pushed_level: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Shake,
    Open { packet_id: u64 },
    Wait,
}

/// One connection: tickets won and not yet opened, requests in flight (in order).
#[derive(Debug)]
pub struct ShakeConnection {
    scenario: ShakeScenario,
    tickets: VecDeque<[u8; SEALED_TICKET_BYTES]>,
    sent: VecDeque<(u64, Sent)>,
    next_shake_at: Option<Instant>,
    interval: Duration,
    /// The ticket of the Open being encoded (the request borrows it).
    ticket: [u8; SEALED_TICKET_BYTES],
    /// The node asked this connection to back off (push above level 0, or a retry-after).
    backing_off: bool,
    /// The shake interval of the last Backoff push.
    pushed_interval: Option<Duration>,
    /// Backoff pushes since the last slot (counted at the next slot).
    pushes_seen: u64,
    /// The level of the last Backoff push.
    pushed_level: u8,
}

impl ShakeConnection {
    /// What request number `sequence` was (responses come in request order).
    fn take_sent(&mut self, sequence: u64) -> Option<Sent> {
        while let Some((s, kind)) = self.sent.pop_front() {
            if s == sequence {
                return Some(kind);
            }
        }
        None
    }
}

impl ScenarioConnection for ShakeConnection {
    fn next_request(&mut self, sequence: u64) -> Request<'_> {
        if let Some(ticket) = self.tickets.pop_front() {
            self.ticket = ticket;
            let packet_id = SealedTicketHeader::parse(&ticket).packet_id;
            self.sent.push_back((sequence, Sent::Open { packet_id }));
            return Request::Open { sealed: &self.ticket };
        }
        let now = Instant::now();
        if self.scenario.obey_interval && self.next_shake_at.is_some_and(|at| now < at) {
            self.sent.push_back((sequence, Sent::Wait));
            return Request::Ping { payload: b"" };
        }
        self.next_shake_at = Some(now + self.interval);
        self.sent.push_back((sequence, Sent::Shake));
        Request::Shake
    }

    fn check(&mut self, sequence: u64, response: &Response<'_>, counters: &mut [u64]) -> Check {
        match (self.take_sent(sequence), response) {
            (Some(Sent::Shake), Response::ShakeOk { shake_interval_ms, sealed, .. }) => {
                counters[SHAKES] += 1;
                self.interval = Duration::from_millis(u64::from(*shake_interval_ms));
                if let Some(pushed) = self.pushed_interval.filter(|_| self.scenario.obey_backoff) {
                    self.interval = self.interval.max(pushed);
                }
                // A served shake ends a retry-after; a pushed level above 0 still holds.
                self.backing_off = self.pushed_level > 0 && self.scenario.obey_backoff;
                // The node counts the interval from when it handled the shake, which is
                // before this answer arrived: counting from now is always late enough.
                let earliest = Instant::now() + self.interval;
                self.next_shake_at = Some(self.next_shake_at.map_or(earliest, |at| at.max(earliest)));
                if let Some(sealed) = sealed {
                    counters[WON] += 1;
                    if !self.scenario.first_win(SealedTicketHeader::parse(sealed).packet_id) {
                        counters[DUPLICATE_PACKETS] += 1;
                    }
                    if self.scenario.open_wins {
                        self.tickets.push_back(**sealed);
                    }
                } else {
                    counters[LOST] += 1;
                }
                Check::Ok
            }
            (Some(Sent::Open { packet_id }), Response::OpenOk { packet_id: got, amount_fen, flags, .. }) => {
                if *got != packet_id || *amount_fen == 0 {
                    counters[WRONG_PACKET] += 1;
                    return Check::Failed;
                }
                if flags & OPEN_FLAG_REPEAT != 0 {
                    counters[REPEATED_OPENS] += 1;
                } else {
                    counters[OPENED] += 1;
                    counters[AMOUNT_FEN_OPENED] += u64::from(*amount_fen);
                }
                Check::Ok
            }
            (Some(Sent::Wait), Response::Pong { .. }) => {
                counters[INTERVAL_WAITS] += 1;
                Check::Ok
            }
            _ => {
                counters[WRONG_RESPONSE_TYPE] += 1;
                Check::Failed
            }
        }
    }

    fn on_error(&mut self, sequence: u64, code: u16, retry_after_ms: u32, counters: &mut [u64]) {
        match self.take_sent(sequence) {
            Some(Sent::Shake) => {
                counters[SHAKES] += 1;
                let retry_after = Duration::from_millis(u64::from(retry_after_ms));
                if code == ErrorCode::TooFast.as_u16() {
                    counters[TOO_FAST] += 1;
                    self.next_shake_at = Some(Instant::now() + retry_after);
                } else if code == ErrorCode::Busy.as_u16() || code == ErrorCode::Paused.as_u16() {
                    counters[if code == ErrorCode::Busy.as_u16() { BUSY } else { PAUSED }] += 1;
                    if self.scenario.obey_backoff {
                        self.backing_off = true;
                        let at = Instant::now() + retry_after;
                        self.next_shake_at = Some(self.next_shake_at.map_or(at, |t| t.max(at)));
                    }
                }
            }
            Some(Sent::Open { .. }) => counters[OPEN_ERRORS] += 1,
            _ => {}
        }
    }

    fn on_push(&mut self, push: &Response<'_>, _counters: &mut [u64]) -> bool {
        let Response::Backoff { level, shake_interval_ms, .. } = push else { return false };
        self.pushes_seen += 1;
        if self.scenario.obey_backoff {
            self.backing_off = *level > 0;
            self.pushed_level = *level;
            let pushed = Duration::from_millis(u64::from(*shake_interval_ms));
            self.pushed_interval = Some(pushed);
            self.interval = pushed;
        }
        true
    }

    fn skip(&mut self, counters: &mut [u64]) -> bool {
        counters[BACKOFF_PUSHES] += std::mem::take(&mut self.pushes_seen);
        let wait = self.tickets.is_empty()
            && self.backing_off
            && self.scenario.obey_backoff
            && self.next_shake_at.is_some_and(|at| Instant::now() < at);
        if wait {
            counters[BACKOFF_SKIPS] += 1;
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(packet_id: u64) -> [u8; SEALED_TICKET_BYTES] {
        let mut s = [0; SEALED_TICKET_BYTES];
        let header = SealedTicketHeader { version: 1, node_id: 0, issued_at_unix_s: 1, user_id: 5, packet_id };
        header.write((&mut s[..23]).try_into().unwrap());
        s
    }

    #[test]
    fn a_win_is_opened_next_and_every_answer_is_checked() {
        let scenario = ShakeScenario::new(true, true);
        let mut c = scenario.connection(0);
        let mut counters = [0u64; SHAKE_COUNTERS.len()];
        assert_eq!(c.next_request(0), Request::Shake);
        let ticket = sealed(77);
        let won = Response::ShakeOk { shake_interval_ms: 0, page_id: 1, sealed: Some(&ticket) };
        assert_eq!(c.check(0, &won, &mut counters), Check::Ok);
        assert_eq!(c.next_request(1), Request::Open { sealed: &ticket });
        let ok = Response::OpenOk { packet_id: 77, amount_fen: 500, batch_id: 0, flags: 0 };
        assert_eq!(c.check(1, &ok, &mut counters), Check::Ok);
        assert_eq!((counters[WON], counters[OPENED], counters[AMOUNT_FEN_OPENED]), (1, 1, 500));
        // A wrong packet in the answer fails the check.
        c.tickets.push_back(sealed(78));
        let _ = c.next_request(2);
        let wrong = Response::OpenOk { packet_id: 79, amount_fen: 500, batch_id: 0, flags: 0 };
        assert_eq!(c.check(2, &wrong, &mut counters), Check::Failed);
        assert_eq!(counters[WRONG_PACKET], 1);
        // The same packet won on another connection of the run is a duplicate.
        let mut other = scenario.connection(1);
        let _ = other.next_request(0);
        other.check(0, &won, &mut counters);
        assert_eq!(counters[DUPLICATE_PACKETS], 1);
    }

    #[test]
    fn the_interval_is_obeyed_unless_ignored_and_too_fast_is_counted() {
        let mut counters = [0u64; SHAKE_COUNTERS.len()];
        let mut c = ShakeScenario::new(true, true).connection(0);
        assert_eq!(c.next_request(0), Request::Shake);
        c.check(0, &Response::ShakeOk { shake_interval_ms: 60_000, page_id: 0, sealed: None }, &mut counters);
        assert!(matches!(c.next_request(1), Request::Ping { .. }), "too early: a ping instead");
        let mut abuse = ShakeScenario::new(false, true).connection(0);
        let _ = abuse.next_request(0);
        abuse.check(0, &Response::ShakeOk { shake_interval_ms: 60_000, page_id: 0, sealed: None }, &mut counters);
        assert_eq!(abuse.next_request(1), Request::Shake);
        assert_eq!(abuse.next_request(2), Request::Shake);
        abuse.on_error(1, ErrorCode::TooFast.as_u16(), 500, &mut counters);
        assert_eq!(counters[TOO_FAST], 1);
    }

    #[test]
    fn busy_and_backoff_pushes_make_slots_skipped_unless_backoff_is_ignored() {
        let mut counters = [0u64; SHAKE_COUNTERS.len()];
        let mut c = ShakeScenario::new(true, true).connection(0);
        assert!(!c.skip(&mut counters), "nothing asked yet");
        assert_eq!(c.next_request(0), Request::Shake);
        c.on_error(0, ErrorCode::Busy.as_u16(), 60_000, &mut counters);
        assert!(c.skip(&mut counters), "a Busy retry-after leaves slots out");
        assert_eq!((counters[BUSY], counters[BACKOFF_SKIPS]), (1, 1));
        // A push at level 2 raises the interval over the one ShakeOk said.
        let mut d = ShakeScenario::new(true, true).connection(1);
        assert!(
            d.on_push(&Response::Backoff { level: 2, shake_interval_ms: 40_000, retry_after_ms: 400 }, &mut counters)
        );
        let _ = d.next_request(0);
        d.check(0, &Response::ShakeOk { shake_interval_ms: 10_000, page_id: 0, sealed: None }, &mut counters);
        assert!(d.skip(&mut counters));
        assert_eq!(d.interval, Duration::from_millis(40_000));
        assert_eq!(counters[BACKOFF_PUSHES], 1);
        // Abuse mode: the same answers change nothing.
        let mut e = ShakeScenario::new(true, true).obey_backoff(false).connection(2);
        let _ = e.next_request(0);
        e.on_error(0, ErrorCode::Busy.as_u16(), 60_000, &mut counters);
        assert!(
            e.on_push(&Response::Backoff { level: 4, shake_interval_ms: 40_000, retry_after_ms: 400 }, &mut counters)
        );
        assert!(!e.skip(&mut counters));
        assert_eq!(e.next_request(1), Request::Shake);
    }
}
