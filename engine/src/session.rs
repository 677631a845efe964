//! The per-connection protocol state machine (sans-IO).
//!
//! Bytes in, bytes out: [`Session::process`] takes the plaintext received so
//! far, answers every complete frame into one output buffer (so a pass's
//! responses leave in one write) and stops early only when the I/O driver must
//! act: a verified login (the session may have to move to its home core) or a
//! close. The driver in `shard::conn` owns sockets, TLS and timers; this module
//! owns the rules of the protocol and is tested without sockets.

use crate::auth::{TokenClaims, TokenError, TokenKeys};
use crate::metrics::{CoreMetrics, Outcome, PassKinds};
use crate::shard::state::{RainRequest, TimelineCall};
use redrain_net::frame::{FrameDecoder, FrameError, FrameRef};
use redrain_net::message::{Request, Response};
use redrain_net::{ErrorCode, MessageType, PROTOCOL_VERSION};

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Only `Hello` is accepted.
    AwaitHello,
    /// Hello done; only `Login` and `Ping` are accepted.
    AwaitLogin,
    /// Logged in as (user, device) on its home core.
    Active { user_id: u64, device_id: u32 },
    /// An error or logout ended the session; nothing more is processed.
    Closed,
}

/// Fixed per-node parameters the state machine needs.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub frame_bytes_max: u32,
    pub heartbeat_interval_ms: u32,
    pub idle_timeout_ms: u32,
}

/// What the driver must do after a processing pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// All complete frames were handled; wait for more bytes.
    NeedMore,
    /// A token verified: the driver registers the session on its home core and
    /// then calls [`Session::login_accepted`] (or answers an error itself).
    Login { claims: TokenClaims, request_id: u32 },
    /// Close the connection after flushing the output (the reason frame, if any,
    /// is already in the output).
    Close(ErrorCode),
    /// A domain request of the logged-in user (rain, or a timeline request): the driver
    /// hands it to the core's state machine (its answer goes into the output in request
    /// order), then processes on.
    Rain { user_id: u64, request_id: u32, request: RainRequest },
}

/// Time and keys for one pass.
pub struct Env<'a> {
    pub keys: &'a TokenKeys,
    pub limits: SessionLimits,
    pub now_unix_s: u64,
    pub now_unix_ms: u64,
    pub metrics: &'a CoreMetrics,
    /// Types of the frames handled in this pass, for latency recording.
    pub pass: &'a PassKinds,
}

impl Env<'_> {
    fn count(&self, kind: Option<MessageType>, outcome: Outcome) {
        self.metrics.frame(kind, outcome);
        self.pass.note(kind);
    }
}

/// One connection's protocol state. Small on purpose: an idle session costs
/// only this plus the socket.
#[derive(Debug, Clone)]
pub struct Session {
    phase: Phase,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    pub fn new() -> Self {
        Self { phase: Phase::AwaitHello }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Handles every complete frame in `input` and returns (bytes consumed, step).
    /// Unconsumed bytes are a partial frame (on `NeedMore`) or belong after the
    /// login / close the step reports.
    pub fn process(&mut self, input: &[u8], env: &Env<'_>, out: &mut Vec<u8>) -> (usize, Step) {
        let decoder = FrameDecoder::new(env.limits.frame_bytes_max);
        let mut used = 0;
        while self.phase != Phase::Closed {
            match decoder.decode(&input[used..]) {
                Ok(None) => {
                    env.metrics.overload.set_attempt(0);
                    return (used, Step::NeedMore);
                }
                Ok(Some((frame, n))) => {
                    used += n;
                    let step = self.on_frame(&frame, env, out);
                    if step != Step::NeedMore {
                        return (used, step);
                    }
                }
                Err(e) => return (used, self.on_frame_error(e, env, out)),
            }
        }
        (used, Step::Close(ErrorCode::LoggedOut))
    }

    fn on_frame_error(&mut self, err: FrameError, env: &Env<'_>, out: &mut Vec<u8>) -> Step {
        let code = match err {
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            FrameError::TooShort { .. } | FrameError::ReservedFlags { .. } => ErrorCode::MalformedFrame,
        };
        env.count(None, Outcome::ClientFault);
        self.fail(0, code, &err.to_string(), env, out)
    }

    /// Answers an error; closes when the code requires it.
    fn fail(&mut self, request_id: u32, code: ErrorCode, text: &str, env: &Env<'_>, out: &mut Vec<u8>) -> Step {
        env.metrics.rejected(code);
        Response::error(code, 0, text).encode(request_id, out);
        if code.closes_connection() {
            self.phase = Phase::Closed;
            Step::Close(code)
        } else {
            Step::NeedMore
        }
    }

    fn on_frame(&mut self, frame: &FrameRef<'_>, env: &Env<'_>, out: &mut Vec<u8>) -> Step {
        let rid = frame.header.request_id;
        let kind = MessageType::from_u8(frame.header.kind);
        // The retry marks of this frame, for the outcome counters (reset at the pass's end).
        env.metrics.overload.set_attempt(frame.header.flags);
        let request = match Request::parse(frame) {
            Ok(r) => r,
            Err(e) => {
                let code = e.code();
                env.count(kind, Outcome::from(code));
                let step = self.fail(rid, code, &e.to_string(), env, out);
                // Before a successful Hello every error closes: the peer has
                // not shown it speaks this protocol.
                if self.phase == Phase::AwaitHello {
                    self.phase = Phase::Closed;
                    return Step::Close(code);
                }
                return step;
            }
        };
        let outcome_step = match (self.phase, request) {
            (Phase::AwaitHello, Request::Hello { version_min, version_max }) => {
                if !(version_min..=version_max).contains(&PROTOCOL_VERSION) {
                    Err((ErrorCode::UnsupportedVersion, "this node speaks protocol version 1 only"))
                } else {
                    Response::HelloOk {
                        version: PROTOCOL_VERSION,
                        frame_bytes_max: env.limits.frame_bytes_max,
                        heartbeat_interval_ms: env.limits.heartbeat_interval_ms,
                        idle_timeout_ms: env.limits.idle_timeout_ms,
                        server_time_ms: env.now_unix_ms,
                    }
                    .encode(rid, out);
                    self.phase = Phase::AwaitLogin;
                    Ok(Step::NeedMore)
                }
            }
            (Phase::AwaitHello, _) => Err((ErrorCode::HandshakeRequired, "the first frame must be Hello")),
            (_, Request::Hello { .. }) => Err((ErrorCode::OutOfOrder, "Hello was already done")),
            (_, Request::Ping { payload }) => {
                Response::Pong { payload }.encode(rid, out);
                Ok(Step::NeedMore)
            }
            (Phase::AwaitLogin, Request::Login { token }) => match env.keys.verify(token, env.now_unix_s) {
                // Counted as ok by the driver once the home core accepted it.
                Ok(claims) => return Step::Login { claims, request_id: rid },
                Err(TokenError::Expired { .. }) => Err((ErrorCode::TokenExpired, "token expired")),
                Err(TokenError::Signature) => Err((ErrorCode::TokenSignature, "token signature invalid")),
                Err(TokenError::Version(_)) => Err((ErrorCode::BadToken, "token version unsupported")),
            },
            (Phase::Active { .. }, Request::Login { .. }) => Err((ErrorCode::OutOfOrder, "already logged in")),
            (Phase::AwaitLogin, _) => Err((ErrorCode::LoginRequired, "log in first")),
            (Phase::Active { .. }, Request::Logout) => {
                Response::LogoutOk.encode(rid, out);
                self.phase = Phase::Closed;
                env.count(kind, Outcome::Ok);
                return Step::Close(ErrorCode::LoggedOut);
            }
            // Counted by the state machine, which knows the outcome.
            (Phase::Active { user_id, .. }, Request::Shake) => {
                env.pass.note(kind);
                return Step::Rain { user_id, request_id: rid, request: RainRequest::Shake };
            }
            (Phase::Active { user_id, .. }, Request::Open { sealed }) => {
                return Step::Rain { user_id, request_id: rid, request: RainRequest::Open(*sealed) };
            }
            (Phase::Active { user_id, .. }, Request::Timeline(t)) => {
                let call = TimelineCall { kind: t.kind(), body: frame.body.to_vec() };
                return Step::Rain { user_id, request_id: rid, request: RainRequest::Timeline(Box::new(call)) };
            }
            (Phase::Active { .. }, Request::Reserved { .. }) => {
                Err((ErrorCode::NotServed, "message type reserved but not served by this node"))
            }
            (Phase::Closed, _) => Err((ErrorCode::OutOfOrder, "the session is closed")),
        };
        match outcome_step {
            Ok(step) => {
                env.count(kind, Outcome::Ok);
                step
            }
            Err((code, text)) => {
                env.count(kind, Outcome::from(code));
                self.fail(rid, code, text, env, out)
            }
        }
    }

    /// Called by the driver once the home core registered the session.
    pub fn login_accepted(&mut self, claims: TokenClaims) {
        self.phase = Phase::Active { user_id: claims.user_id, device_id: claims.device_id };
    }

    /// Marks the session closed (kicked, timed out, shutting down).
    pub fn close(&mut self) {
        self.phase = Phase::Closed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redrain_net::client::ClientCodec;
    use redrain_net::message::TOKEN_BYTES;

    const SECRET: &[u8] = b"session-test-secret-0123456789";

    fn env<'a>(keys: &'a TokenKeys, metrics: &'a CoreMetrics) -> Env<'a> {
        let pass: &'static PassKinds = Box::leak(Box::default());
        Env {
            pass,
            keys,
            limits: SessionLimits { frame_bytes_max: 1024, heartbeat_interval_ms: 1000, idle_timeout_ms: 3000 },
            now_unix_s: 1_000,
            now_unix_ms: 1_000_000,
            metrics,
        }
    }

    fn token(keys: &TokenKeys, expires: u64) -> [u8; TOKEN_BYTES] {
        keys.mint(TokenClaims { user_id: 5, device_id: 1, expires_at_unix_s: expires })
    }

    fn responses(bytes: &[u8]) -> Vec<(u32, u8, Option<u16>)> {
        let mut c = ClientCodec::new(1 << 20);
        c.feed(bytes);
        let mut v = Vec::new();
        c.drain(|h, r| {
            let code = match r {
                Ok(Response::Error { code, .. }) => Some(code),
                _ => None,
            };
            v.push((h.request_id, h.kind, code))
        })
        .unwrap();
        v
    }

    /// A session after Hello and an accepted Login of user 5, device 1.
    fn active_session(keys: &TokenKeys, metrics: &CoreMetrics) -> Session {
        let mut input = Vec::new();
        Request::Hello { version_min: 1, version_max: 1 }.encode(1, &mut input);
        let t = token(keys, 2_000);
        Request::Login { token: &t }.encode(2, &mut input);
        let mut s = Session::new();
        let (used, step) = s.process(&input, &env(keys, metrics), &mut Vec::new());
        assert_eq!(used, input.len());
        let Step::Login { claims, .. } = step else { panic!("login expected, got {step:?}") };
        s.login_accepted(claims);
        assert_eq!(s.phase(), Phase::Active { user_id: 5, device_id: 1 });
        s
    }

    #[test]
    fn an_unknown_type_before_hello_is_answered_unknown_type_and_closes() {
        let keys = TokenKeys::new(SECRET, None).unwrap();
        let metrics = CoreMetrics::default();
        let mut input = Vec::new();
        redrain_net::frame::encode_frame(&mut input, 0x7e, 9, |_| {});
        Request::Hello { version_min: 1, version_max: 1 }.encode(10, &mut input);
        let mut out = Vec::new();
        let mut s = Session::new();
        let (_, step) = s.process(&input, &env(&keys, &metrics), &mut out);
        assert_eq!(step, Step::Close(ErrorCode::UnknownType));
        assert_eq!(s.phase(), Phase::Closed);
        assert_eq!(responses(&out), vec![(9, 0xff, Some(ErrorCode::UnknownType.as_u16()))]);
    }

    #[test]
    fn reserved_server_to_client_types_sent_by_a_client_are_out_of_order() {
        let keys = TokenKeys::new(SECRET, None).unwrap();
        let metrics = CoreMetrics::default();
        // Reserved responses and pushes, and an assigned one, after login: answered, not closed.
        let kinds = [0x90u8, 0x91, 0xa0, 0xb3, 0xc1, 0xe0, 0xe2, 0x81, 0xff];
        let mut input = Vec::new();
        for (i, kind) in kinds.iter().enumerate() {
            redrain_net::frame::encode_frame(&mut input, *kind, 20 + i as u32, |b| b.push(0));
        }
        let mut out = Vec::new();
        let mut s = active_session(&keys, &metrics);
        let (used, step) = s.process(&input, &env(&keys, &metrics), &mut out);
        assert_eq!((used, step), (input.len(), Step::NeedMore));
        let want: Vec<_> =
            (0..kinds.len() as u32).map(|i| (20 + i, 0xff, Some(ErrorCode::OutOfOrder.as_u16()))).collect();
        assert_eq!(responses(&out), want);
        // Before Hello the same error closes.
        let mut input = Vec::new();
        redrain_net::frame::encode_frame(&mut input, 0xe0, 30, |_| {});
        let mut out = Vec::new();
        let (_, step) = Session::new().process(&input, &env(&keys, &metrics), &mut out);
        assert_eq!(step, Step::Close(ErrorCode::OutOfOrder));
        assert_eq!(responses(&out), vec![(30, 0xff, Some(ErrorCode::OutOfOrder.as_u16()))]);
    }

    #[test]
    fn pipelined_hello_ping_login_stops_at_login_and_answers_in_order() {
        let keys = TokenKeys::new(SECRET, None).unwrap();
        let metrics = CoreMetrics::default();
        let mut input = Vec::new();
        Request::Hello { version_min: 1, version_max: 1 }.encode(1, &mut input);
        Request::Ping { payload: b"x" }.encode(2, &mut input);
        let t = token(&keys, 2_000);
        Request::Login { token: &t }.encode(3, &mut input);
        Request::Ping { payload: b"y" }.encode(4, &mut input);
        let mut s = Session::new();
        let mut out = Vec::new();
        let (used, step) = s.process(&input, &env(&keys, &metrics), &mut out);
        assert!(matches!(step, Step::Login { request_id: 3, claims } if claims.user_id == 5));
        assert_eq!(responses(&out), vec![(1, 0x81, None), (2, 0x83, None)]);
        s.login_accepted(TokenClaims { user_id: 5, device_id: 1, expires_at_unix_s: 2_000 });
        out.clear();
        let (rest, step) = s.process(&input[used..], &env(&keys, &metrics), &mut out);
        assert_eq!((used + rest, step), (input.len(), Step::NeedMore));
        assert_eq!(responses(&out), vec![(4, 0x83, None)]);
    }

    #[test]
    fn first_frame_must_be_hello() {
        let keys = TokenKeys::new(SECRET, None).unwrap();
        let metrics = CoreMetrics::default();
        let mut input = Vec::new();
        Request::Ping { payload: b"" }.encode(9, &mut input);
        let mut out = Vec::new();
        let (_, step) = Session::new().process(&input, &env(&keys, &metrics), &mut out);
        assert_eq!(step, Step::Close(ErrorCode::HandshakeRequired));
        assert_eq!(responses(&out), vec![(9, 0xff, Some(ErrorCode::HandshakeRequired.as_u16()))]);
        assert_eq!(metrics.rejected_count(ErrorCode::HandshakeRequired), 1);
    }

    #[test]
    fn requests_before_login_and_bad_tokens_get_typed_errors_without_closing() {
        let keys = TokenKeys::new(SECRET, None).unwrap();
        let other = TokenKeys::new(b"some-other-secret-0123456789", None).unwrap();
        let metrics = CoreMetrics::default();
        let mut input = Vec::new();
        Request::Hello { version_min: 1, version_max: 1 }.encode(1, &mut input);
        Request::Logout.encode(2, &mut input);
        let expired = token(&keys, 999);
        Request::Login { token: &expired }.encode(3, &mut input);
        let forged = token(&other, 2_000);
        Request::Login { token: &forged }.encode(4, &mut input);
        Request::Shake.encode(5, &mut input);
        redrain_net::frame::encode_frame(&mut input, 0x7e, 6, |_| {});
        Request::Hello { version_min: 1, version_max: 1 }.encode(7, &mut input);
        let mut out = Vec::new();
        let mut s = Session::new();
        let (used, step) = s.process(&input, &env(&keys, &metrics), &mut out);
        assert_eq!((used, step), (input.len(), Step::NeedMore));
        let codes: Vec<_> = responses(&out).into_iter().map(|(id, _, c)| (id, c)).collect();
        assert_eq!(
            codes,
            vec![
                (1, None),
                (2, Some(ErrorCode::LoginRequired.as_u16())),
                (3, Some(ErrorCode::TokenExpired.as_u16())),
                (4, Some(ErrorCode::TokenSignature.as_u16())),
                (5, Some(ErrorCode::LoginRequired.as_u16())),
                (6, Some(ErrorCode::UnknownType.as_u16())),
                (7, Some(ErrorCode::OutOfOrder.as_u16())),
            ]
        );
        assert_eq!(s.phase(), Phase::AwaitLogin);
    }

    #[test]
    fn oversized_frame_closes_with_frame_too_large() {
        let keys = TokenKeys::new(SECRET, None).unwrap();
        let metrics = CoreMetrics::default();
        let mut out = Vec::new();
        let (_, step) = Session::new().process(&[0, 0, 0x10, 0, 1, 0], &env(&keys, &metrics), &mut out);
        assert_eq!(step, Step::Close(ErrorCode::FrameTooLarge));
        assert_eq!(responses(&out)[0].2, Some(ErrorCode::FrameTooLarge.as_u16()));
    }

    #[test]
    fn logout_answers_then_closes_and_reserved_types_are_not_served() {
        let keys = TokenKeys::new(SECRET, None).unwrap();
        let metrics = CoreMetrics::default();
        let mut input = Vec::new();
        Request::Reserved { kind: MessageType::AdminSwitch, body: b"abc" }.encode(1, &mut input);
        Request::Logout.encode(2, &mut input);
        Request::Ping { payload: b"" }.encode(3, &mut input);
        let mut out = Vec::new();
        let mut s = active_session(&keys, &metrics);
        let (used, step) = s.process(&input, &env(&keys, &metrics), &mut out);
        assert_eq!(step, Step::Close(ErrorCode::LoggedOut));
        assert!(used < input.len(), "frames after logout are not processed");
        assert_eq!(responses(&out), vec![(1, 0xff, Some(ErrorCode::NotServed.as_u16())), (2, 0x84, None)]);
    }
}
