//! One connection's life: connect, `Hello` + `Login` in one write, then the
//! load phase with a writer (schedule or closed loop) and a reader (match
//! responses by request id, check them, record latency) joined in one task.

use super::backend::Backend;
use super::pending::{Miss, Pending, PendingWindow};
use super::socket;
use super::thread::{ThreadCtx, Timeline};
use crate::config::LoadMode;
use crate::scenario::{Check, DrainWant, LoadShape, Scenario, ScenarioConnection};
use crate::schedule::{ramp_offset_ns, OpenLoopSchedule};
use crate::tls::TlsClient;
use redrain_net::client::ClientCodec;
use redrain_net::code::ErrorCode;
use redrain_net::message::Request;
use redrain_net::token::TokenClaims;
use redrain_net::{Response, PROTOCOL_VERSION};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use tokio::sync::Notify;

/// Bytes of one socket read during the load phase.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Bytes of one socket read during the handshake.
const HANDSHAKE_READ_BYTES: usize = 4 * 1024;
/// Shortest heartbeat interval honoured (a node advertising less is clamped).
const HEARTBEAT_INTERVAL_MS_MIN: u32 = 100;
/// How long a draining connection waits before asking its scenario again.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// Why a session could not be established (the key in `session_failures`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionFailure {
    Connect(String),
    Timeout,
    Closed,
    Protocol,
    Refused(u16),
    /// The TLS handshake or a record failed.
    Tls,
}

impl SessionFailure {
    pub fn key(&self) -> String {
        match self {
            SessionFailure::Connect(kind) => format!("connect:{kind}"),
            SessionFailure::Timeout => "timeout".into(),
            SessionFailure::Closed => "closed_by_node".into(),
            SessionFailure::Protocol => "protocol".into(),
            SessionFailure::Tls => "tls".into(),
            SessionFailure::Refused(code) => format!("refused:{}", code_name(*code)),
        }
    }
}

/// `name(code)` for known codes, the number otherwise.
pub fn code_name(code: u16) -> String {
    match ErrorCode::from_u16(code) {
        Some(c) => c.to_string(),
        None => format!("unknown({code})"),
    }
}

struct Established<T> {
    stream: T,
    codec: ClientCodec,
    heartbeat_interval_ms: u32,
    tls: Option<TlsClient>,
}

fn io_kind(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused".into(),
        Some(libc::EADDRNOTAVAIL) => "no_source_port".into(),
        Some(libc::EMFILE) | Some(libc::ENFILE) => "fd_limit".into(),
        Some(libc::ECONNRESET) => "reset".into(),
        _ => format!("{:?}", e.kind()).to_lowercase(),
    }
}

/// Connects, runs the TLS handshake when configured, and logs in.
async fn establish<S: Scenario, B: Backend>(
    ctx: &ThreadCtx<S>,
    index: u64,
    tls_config: Option<&std::sync::Arc<rustls::ClientConfig>>,
) -> Result<Established<B::Stream>, SessionFailure> {
    let cfg = &ctx.cfg;
    let source = socket::source_ip(index, cfg.source_ips);
    let stream = B::connect(cfg.target, source).await.map_err(|e| SessionFailure::Connect(io_kind(&e)))?;
    let mut tls = match (&cfg.tls, tls_config) {
        (Some(setup), Some(config)) => Some(setup.client(config).map_err(|_| SessionFailure::Tls)?),
        _ => None,
    };
    let mut codec = ClientCodec::new(cfg.frame_bytes_max);
    let mut out = Vec::with_capacity(128);
    let hello_id =
        codec.encode(&Request::Hello { version_min: PROTOCOL_VERSION, version_max: PROTOCOL_VERSION }, &mut out);
    let token = ctx.token_keys.mint(TokenClaims {
        user_id: cfg.user_id_base.wrapping_add(index),
        device_id: 1,
        expires_at_unix_s: redrain_net::token::now_unix_s() + cfg.token_ttl.as_secs(),
    });
    let login_id = codec.encode(&Request::Login { token: &token }, &mut out);
    // Over TLS, Hello + Login wait in the client session until the handshake is done.
    if let Some(tls) = tls.as_mut() {
        let mut wire = Vec::new();
        tls.seal(&out, &mut wire).map_err(|_| SessionFailure::Tls)?;
        out = wire;
    }
    let (written, _) = B::write_all(&stream, out).await;
    written.map_err(|e| SessionFailure::Connect(io_kind(&e)))?;
    let mut plain = Vec::new();

    let mut buf = vec![0u8; HANDSHAKE_READ_BYTES];
    let mut heartbeat_interval_ms = None;
    let mut logged_in = false;
    loop {
        let (read, b) = B::read(&stream, buf).await;
        buf = b;
        let n = read.map_err(|e| SessionFailure::Connect(io_kind(&e)))?;
        if n == 0 {
            return Err(SessionFailure::Closed);
        }
        match tls.as_mut() {
            None => codec.feed(&buf[..n]),
            Some(tls) => {
                plain.clear();
                tls.open(&buf[..n], &mut plain).map_err(|_| SessionFailure::Tls)?;
                codec.feed(&plain);
                // The handshake's last flight, and the frames it held back.
                let mut wire = Vec::new();
                tls.seal(&[], &mut wire).map_err(|_| SessionFailure::Tls)?;
                if !wire.is_empty() {
                    let (written, _) = B::write_all(&stream, wire).await;
                    written.map_err(|e| SessionFailure::Connect(io_kind(&e)))?;
                }
            }
        }
        let mut failure = None;
        codec
            .drain(|header, parsed| {
                let id = header.request_id;
                match parsed {
                    Ok(Response::HelloOk { heartbeat_interval_ms: hb, .. }) if id == hello_id => {
                        heartbeat_interval_ms = Some(hb)
                    }
                    Ok(Response::LoginOk { .. }) if id == login_id => logged_in = true,
                    Ok(Response::Error { code, .. }) | Ok(Response::Closing { code, .. }) => {
                        failure.get_or_insert(SessionFailure::Refused(code));
                    }
                    _ => {
                        failure.get_or_insert(SessionFailure::Protocol);
                    }
                }
            })
            .map_err(|_| SessionFailure::Protocol)?;
        if let Some(f) = failure {
            return Err(f);
        }
        if let (Some(hb), true) = (heartbeat_interval_ms, logged_in) {
            return Ok(Established { stream, codec, heartbeat_interval_ms: hb.max(HEARTBEAT_INTERVAL_MS_MIN), tls });
        }
    }
}

/// Runs connection `index` (of the whole run) from its ramp slot to the end.
pub async fn run_connection<S: Scenario, B: Backend>(ctx: Rc<ThreadCtx<S>>, index: u64) {
    let cfg = ctx.cfg.clone();
    let intended_ns = ctx.ramp_start_ns + ramp_offset_ns(index, cfg.connect_rate_per_s);
    B::sleep_until(ctx.instant(intended_ns)).await;
    let permit = ctx.connect_permits.acquire().await.ok();
    // With a connect rate the latency counts from the intended connect time;
    // without one, from when the attempt got its slot.
    let mut started_ns = if cfg.connect_rate_per_s.is_some() { intended_ns } else { ctx.now_ns() };
    ctx.stats.borrow_mut().counters.sessions_attempted += 1;
    let tls_config = cfg.tls.as_ref().map(|t| t.connection_config());
    let mut result = Ok(());
    if cfg.tls.as_ref().is_some_and(|t| t.resume) {
        // The first handshake only fetches a ticket: not measured, and closed at once.
        result = tokio::select! {
            r = establish::<S, B>(&ctx, index, tls_config.as_ref()) => r.map(drop),
            _ = B::sleep_until(std::time::Instant::now() + cfg.connect_timeout) => Err(SessionFailure::Timeout),
        };
        started_ns = ctx.now_ns();
    }
    let result = match result {
        Ok(()) => tokio::select! {
            r = establish::<S, B>(&ctx, index, tls_config.as_ref()) => r,
            _ = B::sleep_until(std::time::Instant::now() + cfg.connect_timeout) => Err(SessionFailure::Timeout),
        },
        Err(e) => Err(e),
    };
    drop(permit);
    let established = match result {
        Ok(e) => {
            let mut stats = ctx.stats.borrow_mut();
            stats.counters.sessions_established += 1;
            if let Some(tls) = &e.tls {
                stats.counters.tls_handshakes += 1;
                stats.counters.tls_resumed += u64::from(tls.is_resumed());
            }
            let ramp_ns = ctx.now_ns().saturating_sub(ctx.ramp_start_ns);
            stats.counters.ramp_ns_max = stats.counters.ramp_ns_max.max(ramp_ns);
            let latency_us = ctx.now_ns().saturating_sub(started_ns) / 1000;
            stats.session_latency_us.saturating_record(latency_us.max(1));
            Some(e)
        }
        Err(f) => {
            *ctx.stats.borrow_mut().counters.session_failures.entry(f.key()).or_insert(0) += 1;
            None
        }
    };
    ctx.handshake_finished();
    let Some(established) = established else { return };
    let timeline = ctx.timeline().await;
    run_load::<S, B>(&ctx, index, established, timeline).await;
}

struct ConnState<C> {
    codec: ClientCodec,
    /// The TLS client session, when the run speaks TLS.
    tls: Option<TlsClient>,
    scenario: C,
    pending: PendingWindow,
    next_sequence: u64,
    /// Set when the connection can no longer be used.
    closed: bool,
    /// Whether the node closed it (or it broke) before the run's end.
    lost: bool,
}

async fn run_load<S: Scenario, B: Backend>(ctx: &ThreadCtx<S>, index: u64, est: Established<B::Stream>, tl: Timeline) {
    let cfg = &ctx.cfg;
    let stream = est.stream;
    let state = RefCell::new(ConnState {
        codec: est.codec,
        tls: est.tls,
        scenario: ctx.scenario.connection(index),
        pending: PendingWindow::new(),
        next_sequence: 0,
        closed: false,
        lost: false,
    });
    let room = Notify::new();
    let stop_reader = Notify::new();
    let closed_notify = Notify::new();
    let writer_done = Cell::new(false);
    let connections = u64::from(cfg.connections);
    let writer = async {
        match (ctx.scenario.load_shape(), cfg.mode) {
            (LoadShape::Heartbeat, _) | (LoadShape::Requests, LoadMode::Heartbeat) => {
                let rate = connections as f64 * 1000.0 / f64::from(est.heartbeat_interval_ms);
                let sched = OpenLoopSchedule::new(tl.load_start_ns, tl.measure_end_ns, rate, connections, index);
                open_loop_writer::<S, B>(ctx, &stream, &state, &room, sched, cfg.pipeline_depth as usize, &tl).await
            }
            (LoadShape::Requests, LoadMode::OpenLoop { rate_per_s }) => {
                let sched = OpenLoopSchedule::new(tl.load_start_ns, tl.measure_end_ns, rate_per_s, connections, index);
                open_loop_writer::<S, B>(ctx, &stream, &state, &room, sched, cfg.pipeline_depth as usize, &tl).await
            }
            (LoadShape::Requests, LoadMode::ClosedLoop { in_flight_per_connection }) => {
                closed_loop_writer::<S, B>(ctx, &stream, &state, &room, in_flight_per_connection as usize, &tl).await
            }
        }
        // Sessions are held for the whole window even when the schedule has
        // nothing more to send (heartbeats are sparse).
        if !state.borrow().closed {
            let end = ctx.instant(tl.measure_end_ns);
            tokio::select! {
                _ = B::sleep_until(end) => {}
                _ = closed_notify.notified() => {}
            }
        }
        drain_requests::<S, B>(ctx, &stream, &state, &room, &tl).await;
        writer_done.set(true);
        if state.borrow().pending.outstanding() == 0 {
            stop_reader.notify_one();
        }
    };
    let reader = async {
        reader::<S, B>(ctx, &stream, &state, &room, &stop_reader, &writer_done, &tl).await;
        closed_notify.notify_one();
    };
    tokio::join!(writer, reader);

    let mut st = state.borrow_mut();
    let mut stats = ctx.stats.borrow_mut();
    let unanswered = st.pending.drain_outstanding().filter(|p| p.measured).count() as u64;
    stats.counters.unanswered += unanswered;
    if st.lost {
        stats.counters.connections_lost += 1;
    }
}

/// Encodes the next request of the scenario and registers it as pending.
fn encode_next<C: ScenarioConnection>(
    st: &mut ConnState<C>,
    intended_ns: u64,
    sent_ns: u64,
    measured: bool,
    out: &mut Vec<u8>,
) {
    let sequence = st.next_sequence;
    st.next_sequence += 1;
    let ConnState { codec, scenario, pending, .. } = st;
    let request = scenario.next_request(sequence);
    let id = codec.encode(&request, out);
    pending.push(id, Pending { sequence, intended_ns, sent_ns, measured });
}

/// After the schedule: more requests while the scenario wants them (a final sync), one
/// per ask and within the pipeline depth, until it is done with nothing outstanding or
/// the drain deadline. An answer that never comes (lost by the node) does not stop the
/// scenario's other requests. These requests are not measured.
async fn drain_requests<S: Scenario, B: Backend>(
    ctx: &ThreadCtx<S>,
    stream: &B::Stream,
    state: &RefCell<ConnState<S::Connection>>,
    room: &Notify,
    tl: &Timeline,
) {
    let mut out = Vec::with_capacity(256);
    let deadline = ctx.instant(tl.drain_end_ns);
    let depth = ctx.cfg.pipeline_depth.max(1) as usize;
    loop {
        let now_ns = ctx.now_ns();
        if now_ns >= tl.drain_end_ns || state.borrow().closed {
            return;
        }
        let outstanding = state.borrow().pending.outstanding();
        let want = if outstanding < depth { state.borrow_mut().scenario.drain_want() } else { DrainWant::Later };
        match want {
            DrainWant::Done if outstanding == 0 => return,
            DrainWant::Now => {
                encode_next(&mut state.borrow_mut(), now_ns, now_ns, false, &mut out);
                ctx.stats.borrow_mut().counters.warmup_requests_sent += 1;
                out = write_batch::<B, _>(stream, state, out).await;
            }
            DrainWant::Done | DrainWant::Later => {
                tokio::select! {
                    _ = room.notified() => {}
                    _ = B::sleep_until(std::time::Instant::now() + DRAIN_POLL) => {}
                    _ = B::sleep_until(deadline) => return,
                }
            }
        }
    }
}

async fn write_batch<B: Backend, C>(stream: &B::Stream, state: &RefCell<ConnState<C>>, out: Vec<u8>) -> Vec<u8> {
    let sealed = match state.borrow_mut().tls.as_mut() {
        None => Ok(None),
        Some(tls) => {
            let mut wire = Vec::with_capacity(out.len() + 64);
            tls.seal(&out, &mut wire).map(|()| Some(wire))
        }
    };
    let (written, mut out) = match sealed {
        Ok(None) => B::write_all(stream, out).await,
        Ok(Some(wire)) => (B::write_all(stream, wire).await.0, out),
        Err(e) => (Err(e), out),
    };
    if written.is_err() {
        let mut st = state.borrow_mut();
        st.lost |= !st.closed;
        st.closed = true;
    }
    out.clear();
    out
}

async fn open_loop_writer<S: Scenario, B: Backend>(
    ctx: &ThreadCtx<S>,
    stream: &B::Stream,
    state: &RefCell<ConnState<S::Connection>>,
    room: &Notify,
    mut sched: OpenLoopSchedule,
    pipeline_depth: usize,
    tl: &Timeline,
) {
    let mut out = Vec::with_capacity(4096);
    let mut warmup_skips = vec![0u64; ctx.scenario.counter_names().len()];
    while let Some(next_ns) = sched.peek() {
        if ctx.now_ns() < next_ns {
            B::sleep_until(ctx.instant(next_ns)).await;
        }
        // The node's backlog: wait for room in the pipeline. That wait is part
        // of the requests' latency but not the generator's lag.
        let mut room_since_ns = 0;
        while !state.borrow().closed && state.borrow().pending.outstanding() >= pipeline_depth {
            room.notified().await;
            room_since_ns = ctx.now_ns();
        }
        if state.borrow().closed {
            return;
        }
        let now_ns = ctx.now_ns();
        {
            let mut st = state.borrow_mut();
            let mut stats = ctx.stats.borrow_mut();
            while let Some(t) = sched.peek() {
                if t > now_ns || st.pending.outstanding() >= pipeline_depth {
                    break;
                }
                let measured = t >= tl.measure_start_ns;
                // A slot the node told this client to leave out (server-driven backoff):
                // nothing is sent; the scenario counts it.
                let counters = if measured { &mut stats.scenario_counters[..] } else { &mut warmup_skips[..] };
                if st.scenario.skip(counters) {
                    sched.advance();
                    continue;
                }
                encode_next(&mut st, t, now_ns, measured, &mut out);
                if measured {
                    stats.counters.requests_sent += 1;
                    let lag_ns = now_ns.saturating_sub(t.max(room_since_ns));
                    stats.send_lag_us.saturating_record(lag_ns / 1000);
                } else {
                    stats.counters.warmup_requests_sent += 1;
                }
                sched.advance();
            }
        }
        out = write_batch::<B, _>(stream, state, out).await;
    }
}

async fn closed_loop_writer<S: Scenario, B: Backend>(
    ctx: &ThreadCtx<S>,
    stream: &B::Stream,
    state: &RefCell<ConnState<S::Connection>>,
    room: &Notify,
    in_flight: usize,
    tl: &Timeline,
) {
    let mut out = Vec::with_capacity(4096);
    B::sleep_until(ctx.instant(tl.load_start_ns)).await;
    // One timer for the whole loop, not one per batch.
    let end = B::sleep_until(ctx.instant(tl.measure_end_ns));
    tokio::pin!(end);
    loop {
        let now_ns = ctx.now_ns();
        if now_ns >= tl.measure_end_ns || state.borrow().closed {
            return;
        }
        // A refusal's retry-after: this connection sends nothing before it.
        let mut hold = None;
        {
            let mut st = state.borrow_mut();
            let mut stats = ctx.stats.borrow_mut();
            while st.pending.outstanding() < in_flight {
                if let Some(at) = st.scenario.hold_until().filter(|at| *at > std::time::Instant::now()) {
                    hold = Some(at);
                    break;
                }
                let measured = now_ns >= tl.measure_start_ns;
                encode_next(&mut st, now_ns, now_ns, measured, &mut out);
                if measured {
                    stats.counters.requests_sent += 1;
                } else {
                    stats.counters.warmup_requests_sent += 1;
                }
            }
        }
        if !out.is_empty() {
            out = write_batch::<B, _>(stream, state, out).await;
        }
        let held = async {
            match hold {
                Some(at) => B::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = room.notified() => {}
            _ = held => {}
            _ = &mut end => return,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn reader<S: Scenario, B: Backend>(
    ctx: &ThreadCtx<S>,
    stream: &B::Stream,
    state: &RefCell<ConnState<S::Connection>>,
    room: &Notify,
    stop: &Notify,
    writer_done: &Cell<bool>,
    tl: &Timeline,
) {
    // One timer for the whole loop, not one per read.
    let drain_end = B::sleep_until(ctx.instant(tl.drain_end_ns));
    tokio::pin!(drain_end);
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    // Plaintext of one read, over TLS.
    let mut plain = Vec::new();
    // Where answers to warm-up requests count (discarded): the run's counters cover its window.
    let mut warmup_counters: Vec<u64> = Vec::new();
    loop {
        // A read is cancelled only when nothing more is expected (or at the
        // drain deadline): a cancelled tokio-uring read may swallow bytes.
        let n = tokio::select! {
            (read, b) = B::read(stream, buf) => {
                buf = b;
                // A read error ends the connection like an orderly close.
                read.unwrap_or_default()
            }
            _ = stop.notified() => break,
            _ = &mut drain_end => break,
        };
        let now_ns = ctx.now_ns();
        {
            let mut st = state.borrow_mut();
            if n == 0 {
                st.lost |= !(writer_done.get() && st.pending.outstanding() == 0);
                st.closed = true;
                room.notify_one();
                break;
            }
            let mut stats = ctx.stats.borrow_mut();
            let interval = tl.interval_of(now_ns);
            let ConnState { codec, scenario, pending, closed, lost, tls, .. } = &mut *st;
            match tls.as_mut() {
                None => codec.feed(&buf[..n]),
                Some(tls) => {
                    plain.clear();
                    if tls.open(&buf[..n], &mut plain).is_err() {
                        stats.counters.framing_errors += 1;
                        *lost = true;
                        *closed = true;
                    }
                    codec.feed(&plain);
                }
            }
            let stats = &mut *stats;
            if warmup_counters.len() != stats.scenario_counters.len() {
                warmup_counters.resize(stats.scenario_counters.len(), 0);
            }
            let drained = codec.drain(|header, parsed| {
                if header.request_id == 0 {
                    match parsed {
                        Ok(Response::Closing { code, .. }) => {
                            *stats.counters.closings_by_code.entry(code).or_insert(0) += 1;
                            *lost = true;
                            *closed = true;
                        }
                        Ok(push) => {
                            if !scenario.on_push(&push, &mut stats.scenario_counters[..]) {
                                stats.counters.other_pushes += 1;
                            }
                        }
                        Err(_) => stats.counters.malformed_responses += 1,
                    }
                    return;
                }
                let p = match pending.take(header.request_id) {
                    Ok(p) => p,
                    Err(Miss::Duplicate) => {
                        stats.counters.duplicated_responses += 1;
                        return;
                    }
                    Err(Miss::Unexpected) => {
                        stats.counters.unexpected_responses += 1;
                        return;
                    }
                };
                if p.measured {
                    stats.counters.responses_matched += 1;
                }
                match parsed {
                    Err(_) => {
                        if p.measured {
                            stats.counters.malformed_responses += 1;
                        }
                    }
                    Ok(Response::Error { code, retry_after_ms, .. }) => {
                        // Warm-up answers update the scenario's state but not its counters.
                        let counters =
                            if p.measured { &mut stats.scenario_counters[..] } else { &mut warmup_counters[..] };
                        scenario.on_error(p.sequence, code, retry_after_ms, counters);
                        if p.measured {
                            stats.record_error(code, interval);
                        }
                        if ErrorCode::from_u16(code).is_some_and(|c| c.closes_connection()) {
                            *lost = true;
                            *closed = true;
                        }
                    }
                    Ok(response) => {
                        let counters =
                            if p.measured { &mut stats.scenario_counters[..] } else { &mut warmup_counters[..] };
                        let verdict = scenario.check(p.sequence, &response, counters);
                        if p.measured {
                            match verdict {
                                Check::Ok => stats.record_ok(
                                    now_ns.saturating_sub(p.intended_ns) / 1000,
                                    now_ns.saturating_sub(p.sent_ns) / 1000,
                                    interval,
                                ),
                                Check::Failed => stats.counters.check_failures += 1,
                            }
                        }
                    }
                }
            });
            if drained.is_err() {
                stats.counters.framing_errors += 1;
                *lost = true;
                *closed = true;
            }
            room.notify_one();
            if st.closed || (writer_done.get() && st.pending.outstanding() == 0) {
                break;
            }
        }
    }
    let mut st = state.borrow_mut();
    st.closed = true;
    room.notify_one();
}
