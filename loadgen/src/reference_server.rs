//! A trivial server on one pinned core that answers `Hello`, `Login` (token
//! verified like the node does) and `Ping` with the protocol's own codec, using
//! the same runtime family as the generator (tokio-uring). It holds no
//! sessions, timers or metrics: what one core can do when serving pings costs
//! nothing but parsing and syscalls. Dividing the node's throughput by it gives
//! a ratio that survives a noisy machine better than the absolute number.

use redrain_net::frame::FrameDecoder;
use redrain_net::message::Request;
use redrain_net::token::TokenKeys;
use redrain_net::{ErrorCode, Response, PROTOCOL_VERSION};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Largest frame the reference server accepts.
const FRAME_BYTES_MAX: u32 = 64 * 1024;
/// Bytes of one socket read.
const READ_BYTES: usize = 64 * 1024;
/// Unparsed bytes one connection may hold (a frame never exceeds FRAME_BYTES_MAX).
const INBOUND_BYTES_MAX: usize = 2 * FRAME_BYTES_MAX as usize;

/// A running reference server; stopped and joined on drop.
pub struct ReferenceServer {
    pub addr: SocketAddr,
    /// Kernel thread id of the serving thread (for its CPU time).
    tid: i32,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ReferenceServer {
    /// Starts the server on a thread pinned to `cpu`, accepting tokens minted under `secret`.
    pub fn start(cpu: usize, secret: &[u8]) -> anyhow::Result<Self> {
        let keys = TokenKeys::new(secret, None)?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_thread = stop.clone();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name("reference-server".into()).spawn(move || {
            // SAFETY: gettid has no preconditions.
            let _ = tid_tx.send(unsafe { libc::gettid() });
            let _ = crate::system::pin_current_thread(cpu);
            tokio_uring::builder().entries(256).start(async move {
                let listener = tokio_uring::net::TcpListener::from_std(listener);
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    if stop_thread.load(Ordering::Acquire) {
                        break;
                    }
                    let _ = stream.set_nodelay(true);
                    tokio_uring::spawn(serve(stream, keys.clone()));
                }
            });
        })?;
        let tid = tid_rx.recv()?;
        Ok(Self { addr, tid, stop, thread: Some(thread) })
    }

    /// CPU seconds (user + system) the serving thread has used.
    pub fn cpu_seconds(&self) -> Option<f64> {
        crate::node_process::own_thread_cpu_seconds(self.tid)
    }
}

impl Drop for ReferenceServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(stream: tokio_uring::net::TcpStream, keys: TokenKeys) {
    let decoder = FrameDecoder::new(FRAME_BYTES_MAX);
    let mut inbound: Vec<u8> = Vec::with_capacity(READ_BYTES);
    let mut buf = vec![0u8; READ_BYTES];
    let mut out = Vec::with_capacity(READ_BYTES);
    let mut session_id = 0u64;
    loop {
        let (read, b) = stream.read(buf).await;
        buf = b;
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        inbound.extend_from_slice(&buf[..n]);
        let mut at = 0;
        loop {
            match decoder.decode(&inbound[at..]) {
                Ok(Some((frame, used))) => {
                    let id = frame.header.request_id;
                    match Request::parse(&frame) {
                        Ok(Request::Hello { .. }) => Response::HelloOk {
                            version: PROTOCOL_VERSION,
                            frame_bytes_max: FRAME_BYTES_MAX,
                            heartbeat_interval_ms: 30_000,
                            idle_timeout_ms: 90_000,
                            server_time_ms: 0,
                        }
                        .encode(id, &mut out),
                        Ok(Request::Login { token }) => match keys.verify(token, redrain_net::token::now_unix_s()) {
                            Ok(claims) => {
                                session_id += 1;
                                Response::LoginOk {
                                    user_id: claims.user_id,
                                    device_id: claims.device_id,
                                    home_core: 0,
                                    session_id,
                                }
                                .encode(id, &mut out)
                            }
                            Err(_) => error(id, ErrorCode::TokenSignature, &mut out),
                        },
                        Ok(Request::Ping { payload }) => Response::Pong { payload }.encode(id, &mut out),
                        Ok(_) => error(id, ErrorCode::NotServed, &mut out),
                        Err(e) => error(id, e.code(), &mut out),
                    }
                    at += used;
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        inbound.drain(..at);
        if inbound.len() > INBOUND_BYTES_MAX {
            return;
        }
        if !out.is_empty() {
            let (written, o) = stream.write_all(out).await;
            out = o;
            out.clear();
            if written.is_err() {
                return;
            }
        }
    }
}

fn error(id: u32, code: ErrorCode, out: &mut Vec<u8>) {
    Response::Error { code: code.as_u16(), retry_after_ms: 0, message: code.name() }.encode(id, out)
}
