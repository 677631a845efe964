//! The runtimes a generator thread can run on. Everything above this layer
//! (connection logic, scenarios, stats, schedules, reports) is the same for
//! both; a backend supplies the executor, timers, task spawning and the
//! socket I/O.
//!
//! - [`TokioUring`]: one tokio-uring current-thread runtime; reads and writes
//!   are io_uring operations on owned buffers, connect readiness comes from
//!   the tokio reactor it runs next to the ring, and sleeps from a per-thread
//!   timerfd with nanosecond deadlines ([`super::precise_timer`]; tokio's own
//!   timer rounds up to whole milliseconds).
//! - [`Glommio`]: one glommio executor, as the node runs; reads and writes try
//!   the socket first and only arm an io_uring poll when it would block
//!   (glommio's non-buffered `TcpStream`), timers are io_uring timeouts.

use super::{precise_timer, socket};
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::time::{Duration, Instant};

/// Submission queue entries of each tokio-uring generator thread's ring (small:
/// rings count against the locked-memory limit on older kernels).
pub const RING_ENTRIES: u32 = 256;
/// Registered I/O memory per glommio generator executor (glommio registers it
/// in each of its 3 rings, all counted against RLIMIT_MEMLOCK).
pub const GLOMMIO_IO_MEMORY_BYTES: usize = 512 * 1024;
/// Smallest registered memory glommio accepts.
const GLOMMIO_IO_MEMORY_MIN: usize = 64 * 1024;

/// What the driver needs from a runtime. All methods run on the generator
/// thread that called [`Backend::block_on`].
pub trait Backend: 'static {
    /// A connected client socket.
    type Stream: 'static;

    /// Runs `f` to completion on a fresh runtime on the current thread, which
    /// is generator thread `thread` of `threads`.
    fn block_on<F: Future + 'static>(thread: usize, threads: usize, f: F) -> io::Result<F::Output>;

    /// Starts `f` as a task; the returned future resolves when it finished.
    fn spawn<F: Future<Output = ()> + 'static>(f: F) -> impl Future<Output = ()>;

    /// Resolves at `at` (at once if `at` has passed).
    fn sleep_until(at: Instant) -> impl Future<Output = ()>;

    /// Connects to `target`, from `source` if given.
    fn connect(target: SocketAddr, source: Option<Ipv4Addr>) -> impl Future<Output = io::Result<Self::Stream>>;

    /// Reads into `buf` (up to its length); the buffer comes back either way.
    fn read(stream: &Self::Stream, buf: Vec<u8>) -> impl Future<Output = (io::Result<usize>, Vec<u8>)>;

    /// Writes all of `buf`; the buffer comes back either way.
    fn write_all(stream: &Self::Stream, buf: Vec<u8>) -> impl Future<Output = (io::Result<()>, Vec<u8>)>;
}

/// tokio-uring: see the module documentation.
pub struct TokioUring;

impl Backend for TokioUring {
    type Stream = tokio_uring::net::TcpStream;

    fn block_on<F: Future + 'static>(_thread: usize, _threads: usize, f: F) -> io::Result<F::Output> {
        let mut builder = tokio_uring::builder();
        builder.entries(RING_ENTRIES);
        let runtime = tokio_uring::Runtime::new(&builder)?;
        let out = runtime.block_on(async {
            precise_timer::install()?;
            let out = f.await;
            precise_timer::uninstall();
            Ok::<_, io::Error>(out)
        })?;
        drop(runtime);
        Ok(out)
    }

    fn spawn<F: Future<Output = ()> + 'static>(f: F) -> impl Future<Output = ()> {
        let handle = tokio_uring::spawn(f);
        async move {
            let _ = handle.await;
        }
    }

    fn sleep_until(at: Instant) -> impl Future<Output = ()> {
        precise_timer::sleep_until(at)
    }

    fn connect(target: SocketAddr, source: Option<Ipv4Addr>) -> impl Future<Output = io::Result<Self::Stream>> {
        socket::connect(target, source)
    }

    fn read(stream: &Self::Stream, buf: Vec<u8>) -> impl Future<Output = (io::Result<usize>, Vec<u8>)> {
        stream.read(buf)
    }

    fn write_all(stream: &Self::Stream, buf: Vec<u8>) -> impl Future<Output = (io::Result<()>, Vec<u8>)> {
        stream.write_all(buf)
    }
}

/// glommio: see the module documentation.
pub struct Glommio;

/// A glommio stream shared by a connection's reader and writer (one task, so
/// the `RefCell` is only borrowed inside a single poll; reads and writes wait
/// on separate readiness sources).
pub struct GlommioStream(RefCell<glommio::net::TcpStream>);

/// Registered memory per glommio executor that fits `threads` executors' rings
/// under the locked-memory limit.
fn glommio_io_memory(threads: usize) -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    let memlock = if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } == 0 { lim.rlim_cur } else { 0 };
    redrain_tuning::process::io_memory_per_core(GLOMMIO_IO_MEMORY_BYTES, memlock, threads).max(GLOMMIO_IO_MEMORY_MIN)
}

impl Backend for Glommio {
    type Stream = GlommioStream;

    fn block_on<F: Future + 'static>(thread: usize, threads: usize, f: F) -> io::Result<F::Output> {
        // The thread pinned itself already; the executor leaves placement alone.
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .name(&format!("loadgen-{thread}"))
            .io_memory(glommio_io_memory(threads))
            .make()
            .map_err(|e| io::Error::other(format!("glommio executor (io_uring setup failed?): {e}")))?;
        let out = executor.run(f);
        drop(executor);
        Ok(out)
    }

    fn spawn<F: Future<Output = ()> + 'static>(f: F) -> impl Future<Output = ()> {
        glommio::spawn_local(f)
    }

    fn sleep_until(at: Instant) -> impl Future<Output = ()> {
        let wait = at.saturating_duration_since(Instant::now());
        async move {
            if !wait.is_zero() {
                glommio::timer::sleep(wait).await;
            }
        }
    }

    async fn connect(target: SocketAddr, source: Option<Ipv4Addr>) -> io::Result<Self::Stream> {
        let (socket, in_progress) = socket::start_connect(target, source)?;
        if in_progress {
            // glommio has no public readiness wait for a bare fd: poll it,
            // backing off. On loopback the handshake has usually finished
            // by the first look.
            let mut backoff = Duration::from_micros(50);
            while !socket::writable_now(&socket)? {
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(5));
            }
            if let Some(e) = socket.take_error()? {
                return Err(e);
            }
        }
        let socket = socket::finish_connect(socket)?;
        // (glommio's `From<socket2::Socket>` is for its own socket2 version.)
        // SAFETY: the fd comes from a connected socket we own and give up here.
        let stream = unsafe { glommio::net::TcpStream::from_raw_fd(socket.into_raw_fd()) };
        Ok(GlommioStream(RefCell::new(stream)))
    }

    async fn read(stream: &Self::Stream, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let r = std::future::poll_fn(|cx| {
            let mut s = stream.0.borrow_mut();
            futures_lite::AsyncRead::poll_read(Pin::new(&mut *s), cx, &mut buf[..])
        })
        .await;
        (r, buf)
    }

    async fn write_all(stream: &Self::Stream, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let mut done = 0;
        while done < buf.len() {
            let r = std::future::poll_fn(|cx| {
                let mut s = stream.0.borrow_mut();
                futures_lite::AsyncWrite::poll_write(Pin::new(&mut *s), cx, &buf[done..])
            })
            .await;
            match r {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => done += n,
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn glommio_connects_from_a_chosen_loopback_address_reads_writes_and_refusal_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        Glommio::block_on(0, 1, async move {
            let s = Glommio::connect(addr, Some(Ipv4Addr::new(127, 0, 0, 3))).await.unwrap();
            let (mut peer, from) = listener.accept().unwrap();
            assert_eq!(from.ip().to_string(), "127.0.0.3");
            peer.write_all(b"ping").unwrap();
            let (n, buf) = Glommio::read(&s, vec![0; 16]).await;
            assert_eq!(&buf[..n.unwrap()], b"ping");
            let (w, _) = Glommio::write_all(&s, b"pong".to_vec()).await;
            w.unwrap();
            let mut got = [0u8; 4];
            peer.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"pong");
            drop(peer);
            let (n, _) = Glommio::read(&s, vec![0; 16]).await;
            assert_eq!(n.unwrap(), 0, "peer closed");
            drop(listener);
            assert!(Glommio::connect(addr, None).await.is_err());
        })
        .unwrap();
    }
}
