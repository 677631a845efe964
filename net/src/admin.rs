//! The admin HTTP endpoint: hyper (HTTP/1.1) on its own small thread with a
//! current-thread tokio runtime, off the shard cores.
//!
//! `GET`/`HEAD` of any path go to the handler; `POST` only to `/admin/...`; other
//! methods are answered 405 with an `Allow` header. Every `/admin/...` path needs an
//! admin token (`Authorization: Bearer <hex>`), compared in constant time with the
//! current and the previous token (rotation); a missing token is 401, a wrong one 403,
//! and both are counted. `/metrics`, `/healthz` and the other read-only paths stay open.
//! Connections are bounded ([`CONNECTIONS_MAX`]), one request each, and a client that
//! does not send its request head within [`REQUEST_TIMEOUT`] is dropped.

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use subtle::ConstantTimeEq;

/// A client that does not finish its request head within this time is dropped.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin connections served at once; more are closed immediately.
pub const CONNECTIONS_MAX: usize = 64;
/// Path prefix of the endpoints that need the admin token.
pub const PROTECTED_PREFIX: &str = "/admin/";

/// The request method as the handler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminMethod {
    /// GET or HEAD (hyper leaves the body out of a HEAD answer).
    Read,
    /// POST: a change.
    Change,
}

/// Which admin token a request presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSlot {
    Current,
    Previous,
}

impl TokenSlot {
    pub fn name(self) -> &'static str {
        match self {
            TokenSlot::Current => "current",
            TokenSlot::Previous => "previous",
        }
    }
}

/// One request, as the handler gets it.
#[derive(Debug, Clone)]
pub struct AdminRequest {
    pub method: AdminMethod,
    /// Path without the query.
    pub path: String,
    pub query: Option<String>,
    pub peer: SocketAddr,
    /// The token that authorized it (always set on `/admin/...` paths).
    pub token: Option<TokenSlot>,
    /// The `X-Operator` header, if sent (who, in the audit log).
    pub operator: Option<String>,
}

/// What a handler returns.
pub struct AdminResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl AdminResponse {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self { status, content_type: "text/plain", body: body.into() }
    }
}

/// The handler: called on a blocking thread, so it may wait (bounded) for the cores.
pub type AdminHandler = Arc<dyn Fn(&AdminRequest) -> AdminResponse + Send + Sync>;

/// The admin tokens (current and previous), replaceable at run time (SIGHUP).
#[derive(Default)]
pub struct AdminTokens {
    tokens: RwLock<(Vec<u8>, Option<Vec<u8>>)>,
}

impl AdminTokens {
    pub fn new(current: Vec<u8>, previous: Option<Vec<u8>>) -> Self {
        Self { tokens: RwLock::new((current, previous)) }
    }

    pub fn replace(&self, current: Vec<u8>, previous: Option<Vec<u8>>) {
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = (current, previous);
    }

    /// Which token `presented` is. Both tokens are always compared, each in constant
    /// time, so the answer's timing tells nothing about either.
    pub fn check(&self, presented: &[u8]) -> Option<TokenSlot> {
        let g = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        let current = !g.0.is_empty() && bool::from(g.0.as_slice().ct_eq(presented));
        let previous = g.1.as_ref().is_some_and(|p| !p.is_empty() && bool::from(p.as_slice().ct_eq(presented)));
        if current {
            Some(TokenSlot::Current)
        } else if previous {
            Some(TokenSlot::Previous)
        } else {
            None
        }
    }
}

/// Counters of the admin endpoint (rendered by the node's /metrics).
#[derive(Debug, Default)]
pub struct AdminCounters {
    pub requests_total: AtomicU64,
    /// `/admin/...` requests without a token.
    pub unauthenticated_total: AtomicU64,
    /// `/admin/...` requests with a wrong token.
    pub wrong_token_total: AtomicU64,
    /// Connections closed at once because [`CONNECTIONS_MAX`] were open.
    pub connections_refused_total: AtomicU64,
}

/// Everything the server thread shares with the node.
pub struct AdminServerState {
    pub handler: AdminHandler,
    pub tokens: Arc<AdminTokens>,
    pub counters: Arc<AdminCounters>,
}

/// A running admin server; dropping it does not stop it, [`AdminServer::stop`] does.
pub struct AdminServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminServer {
    /// Stops accepting and joins the thread (within a poll interval).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How often the accept loop looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

/// Starts the admin server on its own thread (`redrain-admin`).
pub fn spawn(listener: std::net::TcpListener, state: AdminServerState) -> std::io::Result<AdminServer> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_flag = stop.clone();
    let thread = std::thread::Builder::new().name("redrain-admin".into()).spawn(move || {
        runtime.block_on(accept_loop(listener, Arc::new(state), stop_flag));
        // Requests still running are cut at shutdown.
        runtime.shutdown_timeout(Duration::from_millis(100));
    })?;
    Ok(AdminServer { stop, thread: Some(thread) })
}

async fn accept_loop(listener: std::net::TcpListener, state: Arc<AdminServerState>, stop: Arc<AtomicBool>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return log::error!("admin endpoint: {e}"),
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    while !stop.load(Ordering::Relaxed) {
        let (stream, peer) = match tokio::time::timeout(STOP_POLL, listener.accept()).await {
            Err(_) => continue,
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                log::warn!("admin accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            state.counters.connections_refused_total.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&state, req, peer).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .keep_alive(false)
                .serve_connection(io, service)
                .await;
            if let Err(e) = served {
                log::debug!("admin connection from {peer}: {e}");
            }
            drop(permit);
        });
    }
}

fn respond(status: u16, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// The bearer token of a request, decoded from hex (None: no usable header).
fn bearer(req: &Request<Incoming>) -> Option<Vec<u8>> {
    let v = req.headers().get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    let token = v.strip_prefix("Bearer ")?.trim();
    hex::decode(token).ok()
}

async fn answer(state: &AdminServerState, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    state.counters.requests_total.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_owned();
    let protected = path.starts_with(PROTECTED_PREFIX);
    let method = match *req.method() {
        Method::GET | Method::HEAD => AdminMethod::Read,
        Method::POST if protected => AdminMethod::Change,
        _ => {
            let allow = if protected { "GET, HEAD, POST" } else { "GET, HEAD" };
            let mut r = respond(405, "text/plain", format!("method not allowed; allowed: {allow}\n"));
            r.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static(allow));
            return r;
        }
    };
    let token = if protected {
        let Some(presented) = bearer(&req) else {
            state.counters.unauthenticated_total.fetch_add(1, Ordering::Relaxed);
            let mut r = respond(401, "text/plain", "admin token required (Authorization: Bearer <hex>)\n".into());
            r.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("Bearer"));
            return r;
        };
        match state.tokens.check(&presented) {
            Some(slot) => Some(slot),
            None => {
                state.counters.wrong_token_total.fetch_add(1, Ordering::Relaxed);
                log::warn!("admin: wrong token from {peer} for {path}");
                return respond(403, "text/plain", "wrong admin token\n".into());
            }
        }
    } else {
        None
    };
    let operator = req
        .headers()
        .get("x-operator")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().filter(|c| !c.is_control()).take(64).collect());
    let request = AdminRequest { method, path, query: req.uri().query().map(str::to_owned), peer, token, operator };
    let handler = state.handler.clone();
    match tokio::task::spawn_blocking(move || handler(&request)).await {
        Ok(r) => respond(r.status, r.content_type, r.body),
        Err(e) => respond(500, "text/plain", format!("handler failed: {e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_current_or_previous_and_nothing_else() {
        let tokens = AdminTokens::new(vec![1; 16], Some(vec![2; 16]));
        assert_eq!(tokens.check(&[1; 16]), Some(TokenSlot::Current));
        assert_eq!(tokens.check(&[2; 16]), Some(TokenSlot::Previous));
        assert_eq!(tokens.check(&[3; 16]), None);
        assert_eq!(tokens.check(&[1; 15]), None, "a prefix is not the token");
        assert_eq!(tokens.check(&[]), None);
        tokens.replace(vec![3; 16], None);
        assert_eq!(tokens.check(&[3; 16]), Some(TokenSlot::Current));
        assert_eq!(tokens.check(&[2; 16]), None, "a rotated-out token is refused");
    }
}
