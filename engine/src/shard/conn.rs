//! The I/O driver of one client connection on its core.
//!
//! It reads into the core's shared scratch buffer (an idle connection holds no
//! read buffer), runs TLS when configured, feeds plaintext to the sans-IO
//! [`Session`], writes everything one pass produced in a single write (packet
//! merging), and carries out the session's steps: a verified login is
//! registered here when this is the user's home core, or the socket and its
//! TLS state are handed to the home core; a close flushes the reason first.

use super::handoff::{home_core, Handoff};
use super::mailbox::Mail;
use super::netring::{NetToken, RecvEvent};
use super::output::ConnOutput;
use super::state::{Caller, ConnAnswers, Handled, RainRequest};
use super::tls::TlsSession;
use super::{ConnCtl, Core};
use crate::auth::TokenClaims;
use crate::metrics::{CloseReason, Outcome, PassKinds};
use crate::overload::admission::RequestKind;
use crate::overload::core::Gate;
use crate::session::{Env, Session, Step};
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use redrain_net::message::Response;
use redrain_net::{ErrorCode, MessageType};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::{Duration, Instant};

/// Buffers above this capacity are released after use, so a burst does not
/// leave an idle session holding memory.
const IDLE_BUFFER_BYTES_MAX: usize = 1024;
/// Retry-after sent with Busy when a hand-off queue is full.
const HANDOFF_BUSY_RETRY_AFTER_MS: u32 = 200;
/// How long a closing connection may take to flush its last frames.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_millis(500);

enum ReadEvent {
    Data,
    /// Deferred answers arrived (no new input).
    Answers,
    Eof,
    Kicked(ErrorCode),
    Failed(CloseReason),
}

enum Start {
    Fresh,
    Resumed { claims: TokenClaims, login_request_id: u32, received_at: Instant },
}

struct Conn {
    core: Rc<Core>,
    stream: TcpStream,
    /// The socket's registration in the core's network ring (None: glommio reads it).
    net: Option<NetToken>,
    tls: Option<Box<TlsSession>>,
    ctl: Rc<ConnCtl>,
    key: usize,
    session: Session,
    /// Plaintext received but not yet processed (a partial frame, usually empty).
    inbound: Vec<u8>,
    /// Plaintext responses of the current pass (ready to leave).
    out: Vec<u8>,
    /// Answers held behind a deferred one (request order).
    held: ConnOutput,
    /// TLS records waiting to be written.
    wire: Vec<u8>,
    pass: PassKinds,
    /// The core's advice epoch this connection was last told (Backoff push).
    backoff_seen: u32,
}

/// Accepts and serves one fresh connection.
pub fn spawn_fresh(core: Rc<Core>, stream: TcpStream, tls: Option<Box<TlsSession>>) {
    glommio::spawn_local(run(core, stream, tls, Session::new(), Vec::new(), Start::Fresh)).detach();
}

/// Continues a session handed over by another core.
pub fn spawn_resumed(core: Rc<Core>, h: Handoff) {
    // SAFETY: the hand-off owns this duplicated socket fd exclusively.
    let stream = unsafe { TcpStream::from_raw_fd(h.fd.into_raw_fd()) };
    let start = Start::Resumed { claims: h.claims, login_request_id: h.login_request_id, received_at: h.received_at };
    glommio::spawn_local(run(core, stream, h.tls, Session::new(), h.inbound, start)).detach();
}

/// Answers a connection the core cannot take (per-core limit) and closes it.
/// `answer` is false on the TLS port, where the connection is just closed.
pub fn spawn_refusal(core: Rc<Core>, mut stream: TcpStream, answer: bool) {
    core.metrics().connections_refused_full_total.fetch_add(1, Relaxed);
    core.metrics().rejected(ErrorCode::SessionLimit);
    if !answer {
        return;
    }
    glommio::spawn_local(async move {
        let mut out = Vec::with_capacity(64);
        Response::error(ErrorCode::SessionLimit, 1_000, "this core is at its session limit").encode(0, &mut out);
        let _ = stream.set_write_timeout(Some(CLOSE_FLUSH_TIMEOUT));
        if stream.write_all(&out).await.is_ok() {
            linger_close(&mut stream).await;
        }
    })
    .detach();
}

/// Upper bound of bytes read and discarded while lingering on close.
const LINGER_BYTES_MAX: usize = 64 * 1024;

/// Half-closes and reads what the client still sends, briefly, before the
/// socket is dropped: closing a socket with unread input makes the kernel send
/// a reset, which can destroy the error frame we just wrote before the client
/// reads it.
async fn linger_close(stream: &mut TcpStream) {
    use futures_lite::AsyncReadExt;
    if stream.shutdown(std::net::Shutdown::Write).await.is_err() {
        return;
    }
    let _ = stream.set_read_timeout(Some(CLOSE_FLUSH_TIMEOUT));
    let mut sink = [0u8; 512];
    let mut discarded = 0;
    while discarded < LINGER_BYTES_MAX {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => return,
            Ok(n) => discarded += n,
        }
    }
}

/// Sets the connection up at once and returns the future that serves it. Not an `async
/// fn`: an async fn keeps its arguments in the future for its whole life, next to the
/// `Conn` they were moved into; building `Conn` first keeps every idle connection's task
/// about 300 bytes smaller.
fn run(
    core: Rc<Core>,
    stream: TcpStream,
    tls: Option<Box<TlsSession>>,
    session: Session,
    inbound: Vec<u8>,
    start: Start,
) -> impl std::future::Future<Output = ()> {
    let _ = stream.set_nodelay(true);
    let (key, ctl) = core.register_conn();
    let net = core.net.get().map(|ring| ring.register(stream.as_raw_fd()));
    if matches!(start, Start::Fresh) {
        core.metrics().connections_accepted_total.fetch_add(1, Relaxed);
    }
    let mut conn = Conn {
        core,
        stream,
        net,
        tls,
        ctl,
        key,
        session,
        inbound,
        out: Vec::new(),
        held: ConnOutput::default(),
        wire: Vec::new(),
        pass: PassKinds::default(),
        backoff_seen: 0,
    };
    conn.backoff_seen = conn.core.advice_epoch();
    async move {
        let reason = conn.serve(start).await;
        Box::pin(conn.finish(reason)).await;
    }
}

/// How a processing pass over buffered plaintext ended.
enum PassEnd {
    /// Everything complete was answered; flush and read more.
    Continue,
    /// The output reached its bound; flush it and process the rest of the input.
    OutputFull,
    Close(CloseReason),
    /// A verified login whose home core is elsewhere.
    HandOff {
        home: usize,
        claims: TokenClaims,
        request_id: u32,
    },
}

impl Conn {
    async fn serve(&mut self, start: Start) -> Option<CloseReason> {
        if let Start::Resumed { claims, login_request_id, received_at } = start {
            // Cold path, boxed so the connection future stays small.
            if let Some(reason) = Box::pin(self.resume(claims, login_request_id, received_at)).await {
                return reason;
            }
        }
        loop {
            match self.read().await {
                ReadEvent::Data => self.take_answers(),
                ReadEvent::Answers => {
                    self.take_answers();
                    if let Err(e) = self.flush(Instant::now()).await {
                        return Some(write_error_reason(&e));
                    }
                    continue;
                }
                ReadEvent::Eof => return Some(CloseReason::PeerClosed),
                ReadEvent::Failed(reason) => return Some(reason),
                ReadEvent::Kicked(code) => {
                    self.core.metrics().rejected(code);
                    Response::Closing { code: code.as_u16(), message: closing_text(code) }.encode(0, &mut self.out);
                    self.session.close();
                    if code == ErrorCode::SlowReader {
                        return Some(CloseReason::SlowReader);
                    }
                    return Some(CloseReason::Error);
                }
            }
            let received_at = Instant::now();
            self.core.note_activity(self.ctl.id.get());
            if let Some(reason) = self.pass(received_at).await {
                return reason;
            }
        }
    }

    /// First pass on the home core after a hand-off: register, answer LoginOk,
    /// serve the requests that came along.
    async fn resume(
        &mut self,
        claims: TokenClaims,
        login_request_id: u32,
        received_at: Instant,
    ) -> Option<Option<CloseReason>> {
        if self.core.is_full_for_resume() {
            self.core.metrics().rejected(ErrorCode::SessionLimit);
            self.core.metrics().frame(Some(MessageType::Login), Outcome::System);
            Response::error(ErrorCode::SessionLimit, 1_000, "home core is at its session limit")
                .encode(login_request_id, &mut self.out);
            return Some(Some(CloseReason::Error));
        }
        self.accept_login(claims, login_request_id);
        self.pass(received_at).await
    }

    /// Processes buffered plaintext and flushes the answers in one write.
    /// `Some(None)`: the session moved to another core; `Some(Some(r))`: close.
    async fn pass(&mut self, received_at: Instant) -> Option<Option<CloseReason>> {
        loop {
            match self.process(received_at) {
                PassEnd::Continue => break,
                // Bounded output: write what this pass produced, then go on with its input.
                PassEnd::OutputFull => {
                    if let Err(e) = self.flush(received_at).await {
                        return Some(Some(write_error_reason(&e)));
                    }
                }
                PassEnd::Close(reason) => return Some(Some(reason)),
                PassEnd::HandOff { home, claims, request_id } => {
                    match Box::pin(self.hand_off(home, claims, request_id, received_at)).await {
                        Ok(()) => return Some(None),
                        Err(Some(reason)) => return Some(Some(reason)),
                        // Queue full: Busy was answered; keep serving here.
                        Err(None) => continue,
                    }
                }
            }
        }
        if let Err(e) = self.flush(received_at).await {
            return Some(Some(write_error_reason(&e)));
        }
        None
    }

    /// Moves deferred answers that arrived into the output, in request order.
    fn take_answers(&mut self) {
        for (slot, frame) in self.ctl.take_completions() {
            if slot == super::PUSH_SLOT {
                self.out.extend_from_slice(&frame);
            } else {
                self.held.complete(slot, frame, &mut self.out);
            }
        }
        if matches!(self.session.phase(), crate::session::Phase::Active { .. }) {
            self.core.backoff_push(&mut self.backoff_seen, &mut self.out);
        }
    }

    /// Runs the session state machine over buffered plaintext (no I/O).
    fn process(&mut self, received_at: Instant) -> PassEnd {
        // One clock read per pass, shared by every frame in it.
        let now_unix_ms = redrain_net::time::now_unix_ms();
        loop {
            let node = &self.core.node;
            let env = Env {
                keys: &node.keys,
                limits: node.limits(),
                now_unix_s: now_unix_ms / 1000,
                now_unix_ms,
                metrics: &node.metrics[self.core.id],
                pass: &self.pass,
            };
            let (used, step) = self.session.process(&self.inbound, &env, self.held.tail(&mut self.out));
            self.inbound.drain(..used);
            match step {
                Step::NeedMore => {
                    if self.inbound.is_empty() && self.inbound.capacity() > IDLE_BUFFER_BYTES_MAX {
                        self.inbound = Vec::new();
                    }
                    return PassEnd::Continue;
                }
                Step::Close(_) => return PassEnd::Close(CloseReason::Error),
                Step::Rain { user_id, request_id, request } => {
                    let core = &self.core;
                    let deferred = self.held.deferred();
                    let out = self.held.tail(&mut self.out);
                    match core.gate(RequestKind::of_rain(&request), received_at, deferred, request_id, out) {
                        Gate::Pass => {}
                        Gate::Answered => continue,
                        Gate::Close => return PassEnd::Close(CloseReason::Error),
                    }
                    let handled = core.state.borrow_mut().on_request(
                        Caller { conn: self.ctl.id.get(), user: user_id, request_id },
                        &request,
                        node.clock(),
                        &mut ConnAnswers { held: &mut self.held, ready: &mut self.out },
                        core.metrics(),
                    );
                    match handled {
                        Handled::Now if matches!(request, RainRequest::Open(_)) => {
                            self.pass.note(Some(MessageType::Open))
                        }
                        Handled::Now => {}
                        // An open waiting for storage: not part of this pass's latency.
                        Handled::Later { .. } => core.dispatch(),
                    }
                    if self.out.len() >= core.node.config.conn_output_bytes_max {
                        return PassEnd::OutputFull;
                    }
                }
                Step::Login { claims, request_id } => {
                    let out = self.held.tail(&mut self.out);
                    match self.core.gate(RequestKind::Login, received_at, 0, request_id, out) {
                        Gate::Pass => {}
                        Gate::Answered => continue,
                        Gate::Close => return PassEnd::Close(CloseReason::Error),
                    }
                    let home = home_core(claims.user_id, node.cores);
                    if home != self.core.id {
                        return PassEnd::HandOff { home, claims, request_id };
                    }
                    self.accept_login(claims, request_id);
                }
            }
        }
    }

    fn accept_login(&mut self, claims: TokenClaims, request_id: u32) {
        let session_id = self.core.register_session(self.ctl.id.get(), claims.user_id, claims.device_id);
        self.session.login_accepted(claims);
        self.core.metrics().frame(Some(MessageType::Login), Outcome::Ok);
        self.pass.note(Some(MessageType::Login));
        Response::LoginOk {
            user_id: claims.user_id,
            device_id: claims.device_id,
            home_core: self.core.id as u16,
            session_id,
        }
        .encode(request_id, &mut self.out);
    }

    /// Moves the session to its home core. `Err(None)`: the queue was full and
    /// Busy was answered; `Err(Some(_))`: the connection must close.
    async fn hand_off(
        &mut self,
        home: usize,
        claims: TokenClaims,
        request_id: u32,
        received_at: Instant,
    ) -> Result<(), Option<CloseReason>> {
        // This core's ring must stop receiving before the socket moves; what it got
        // meanwhile moves with the session (TLS records it answers leave with the flush below).
        if let (Some(token), Some(ring)) = (self.net.take(), self.core.net.get()) {
            let mut rest = ring.stop(token).await;
            let bound = self.core.node.config.frame_bytes_max as usize + super::READ_SCRATCH_BYTES;
            match self.tls.as_mut() {
                Some(tls) => tls
                    .absorb(&mut rest, &mut self.inbound, &mut self.wire, bound)
                    .map_err(|_| Some(CloseReason::Tls))?,
                None => self.inbound.extend_from_slice(&rest),
            }
        }
        // Responses to frames before the Login (e.g. HelloOk) must reach the
        // client before anything the home core sends.
        self.flush(received_at).await.map_err(|e| Some(write_error_reason(&e)))?;
        // SAFETY: the fd is open for as long as `self.stream` lives.
        let fd = unsafe { BorrowedFd::borrow_raw(self.stream.as_raw_fd()) }
            .try_clone_to_owned()
            .map_err(|_| Some(CloseReason::Io))?;
        let h = Box::new(Handoff {
            fd,
            tls: self.tls.take(),
            claims,
            login_request_id: request_id,
            inbound: std::mem::take(&mut self.inbound),
            received_at,
        });
        let metrics = self.core.metrics();
        match self.core.node.mailboxes.queue(self.core.id, home).push(Mail::Handoff(h)) {
            Ok(()) => {
                self.core.ring(home);
                metrics.handoffs_sent_total.fetch_add(1, Relaxed);
                Ok(())
            }
            Err(mail) => {
                if let Mail::Handoff(h) = mail {
                    self.tls = h.tls;
                    self.inbound = h.inbound;
                }
                self.net = self.core.net.get().map(|ring| ring.register(self.stream.as_raw_fd()));
                metrics.handoff_queue_full_total.fetch_add(1, Relaxed);
                metrics.frame(Some(MessageType::Login), Outcome::System);
                metrics.rejected(ErrorCode::Busy);
                Response::error(ErrorCode::Busy, HANDOFF_BUSY_RETRY_AFTER_MS, "home core hand-off queue full")
                    .encode(request_id, &mut self.out);
                Err(None)
            }
        }
    }

    /// Waits for inbound bytes (decrypting TLS into `inbound`) or a kick.
    async fn read(&mut self) -> ReadEvent {
        let Conn { core, stream, net, tls, ctl, inbound, wire, .. } = self;
        let frame_bytes_max = core.node.config.frame_bytes_max as usize;
        futures_lite::future::poll_fn(|cx| {
            if let Some(code) = ctl.close_requested() {
                return Poll::Ready(ReadEvent::Kicked(code));
            }
            ctl.park(cx.waker());
            if ctl.has_completions() || ctl.take_nudge() {
                return Poll::Ready(ReadEvent::Answers);
            }
            if let (Some(token), Some(ring)) = (*net, core.net.get()) {
                return match ring.poll_recv(token, cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(RecvEvent::Eof) => Poll::Ready(ReadEvent::Eof),
                    Poll::Ready(RecvEvent::Failed(_)) => Poll::Ready(ReadEvent::Failed(CloseReason::Io)),
                    Poll::Ready(RecvEvent::Data(mut data)) => {
                        core.metrics().bytes_received_total.fetch_add(data.len() as u64, Relaxed);
                        match tls {
                            None if inbound.is_empty() => *inbound = data,
                            None => inbound.extend_from_slice(&data),
                            Some(tls) => {
                                let bound = frame_bytes_max + super::READ_SCRATCH_BYTES;
                                if tls.absorb(&mut data, inbound, wire, bound).is_err() {
                                    return Poll::Ready(ReadEvent::Failed(CloseReason::Tls));
                                }
                            }
                        }
                        Poll::Ready(ReadEvent::Data)
                    }
                };
            }
            let mut scratch = core.scratch.borrow_mut();
            match Pin::new(&mut *stream).poll_read(cx, &mut scratch[..]) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(0)) => Poll::Ready(ReadEvent::Eof),
                Poll::Ready(Ok(n)) => {
                    core.metrics().bytes_received_total.fetch_add(n as u64, Relaxed);
                    match tls {
                        None => inbound.extend_from_slice(&scratch[..n]),
                        Some(tls) => {
                            let inbound_bytes_max = frame_bytes_max + super::READ_SCRATCH_BYTES;
                            if tls.absorb(&mut scratch[..n], inbound, wire, inbound_bytes_max).is_err() {
                                return Poll::Ready(ReadEvent::Failed(CloseReason::Tls));
                            }
                        }
                    }
                    Poll::Ready(ReadEvent::Data)
                }
                Poll::Ready(Err(_)) => Poll::Ready(ReadEvent::Failed(CloseReason::Io)),
            }
        })
        .await
    }

    /// Writes everything produced in this pass in one socket write, within
    /// the write timeout for all of it.
    async fn flush(&mut self, received_at: Instant) -> std::io::Result<()> {
        let write_timeout = Duration::from_millis(u64::from(self.core.node.config.write_timeout_ms));
        self.write_out(received_at, Instant::now() + write_timeout, false).await
    }

    /// Writes the pending output; with `close_notify` (TLS) the alert goes into
    /// the session only after every plaintext byte, so the records that carry
    /// the last frames leave before it (a TLS client discards data that
    /// follows a close_notify).
    ///
    /// `deadline` bounds the whole output, not each write call: a client that
    /// takes a few bytes now and then cannot keep a stalled connection open,
    /// and no input is read while output is pending.
    async fn write_out(&mut self, received_at: Instant, deadline: Instant, close_notify: bool) -> std::io::Result<()> {
        let plain_bytes = self.out.len();
        if let Some(tls) = self.tls.as_mut() {
            tls.count_handshake(self.core.metrics());
            tls.seal(&self.out, &mut self.wire)?;
            if close_notify {
                tls.close_notify(&mut self.wire)?;
            }
            if !self.wire.is_empty() {
                write_all_before(&mut self.stream, &self.wire, deadline).await?;
                self.core.metrics().writes_total.fetch_add(1, Relaxed);
                self.wire.clear();
            }
        } else if !self.out.is_empty() {
            write_all_before(&mut self.stream, &self.out, deadline).await?;
            self.core.metrics().writes_total.fetch_add(1, Relaxed);
        }
        self.out.clear();
        if self.out.capacity() > IDLE_BUFFER_BYTES_MAX {
            self.out = Vec::new();
        }
        // TLS records exist only between sealing and the write: an idle TLS session keeps none.
        if self.wire.capacity() > 0 {
            self.wire = Vec::new();
        }
        if plain_bytes > 0 {
            self.core.metrics().bytes_sent_total.fetch_add(plain_bytes as u64, Relaxed);
            self.pass.record_and_reset(self.core.metrics(), received_at.elapsed().as_micros() as u64);
        }
        Ok(())
    }

    /// Flushes the last frames (bounded in time), unregisters, and closes.
    async fn finish(mut self, reason: Option<CloseReason>) {
        let mut linger = false;
        match reason {
            None => self.core.metrics().closed(CloseReason::HandedOff),
            Some(reason) => {
                self.core.metrics().closed(reason);
                if matches!(reason, CloseReason::Error | CloseReason::Tls) {
                    let now = Instant::now();
                    linger = self.write_out(now, now + CLOSE_FLUSH_TIMEOUT, true).await.is_ok()
                        && reason == CloseReason::Error;
                }
            }
        }
        self.core.unregister_conn(self.key);
        if let (Some(token), Some(ring)) = (self.net.take(), self.core.net.get()) {
            ring.release(token);
        }
        if linger {
            linger_close(&mut self.stream).await;
        }
    }
}

/// Writes all of `buf` or fails with `TimedOut` once `deadline` passes. The
/// deadline wins over a write that would still make progress at that moment
/// (the kernel takes bytes before it signals writability), so a client that
/// does not read is closed at the timeout, not at a later expiry. The timer is
/// armed only when a write has to wait: the usual write costs no timer.
async fn write_all_before(stream: &mut TcpStream, mut buf: &[u8], deadline: Instant) -> std::io::Result<()> {
    use std::future::Future;
    use std::io::{Error, ErrorKind};
    let mut timer: Option<glommio::timer::Timer> = None;
    while !buf.is_empty() {
        let n = futures_lite::future::poll_fn(|cx| {
            if let Some(timer) = timer.as_mut() {
                if Pin::new(timer).poll(cx).is_ready() {
                    return Poll::Ready(Err(Error::from(ErrorKind::TimedOut)));
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Poll::Ready(Err(Error::from(ErrorKind::TimedOut)));
            }
            match Pin::new(&mut *stream).poll_write(cx, buf) {
                Poll::Pending if timer.is_none() => {
                    let mut armed = glommio::timer::Timer::new(remaining);
                    if Pin::new(&mut armed).poll(cx).is_ready() {
                        return Poll::Ready(Err(Error::from(ErrorKind::TimedOut)));
                    }
                    timer = Some(armed);
                    Poll::Pending
                }
                other => other,
            }
        })
        .await?;
        if n == 0 {
            return Err(Error::from(ErrorKind::WriteZero));
        }
        buf = &buf[n..];
    }
    Ok(())
}

/// Why a connection whose write failed is closed.
fn write_error_reason(e: &std::io::Error) -> CloseReason {
    if e.kind() == std::io::ErrorKind::TimedOut {
        CloseReason::WriteTimeout
    } else {
        CloseReason::Io
    }
}

fn closing_text(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Replaced => "a newer login of this device replaced this session",
        ErrorCode::IdleTimeout => "no frame within the idle timeout",
        ErrorCode::ShuttingDown => "node shutting down; reconnect",
        ErrorCode::SlowReader => "pushed output not read: past conn_pushed_bytes_max",
        _ => "closing",
    }
}
