//! TLS costs on the node's side, in-process (no sockets): where an idle TLS
//! session's bytes go, memory per idle session for the buffered
//! `rustls::ServerConnection` (how the node held TLS before) and for the
//! engine's `TlsSession` (unbuffered API), and server CPU per full and per
//! resumed handshake with the node's real server configuration (P-256
//! certificate, rotating ticket keys).
//!
//! ```text
//! cargo run --release -p redrain-benches --bin tls_bench -- --sessions 10000 --handshakes 2000
//! ```
//!
//! Bytes are counted by a global allocator that wraps mimalloc (requested
//! sizes of live allocations, without the allocator's own rounding); only
//! server-side calls are counted (the in-memory clients are dropped first, or
//! their allocations happen outside the counted calls). CPU is the thread CPU
//! time spent inside the server's calls only.

use clap::Parser;
use redrain_engine::shard::tls::TlsSession;
use rustls::pki_types::ServerName;
use std::alloc::{GlobalAlloc, Layout};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// Counts live bytes, and while `TRACING` is on records each live allocation's size.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static TRACING: AtomicBool = AtomicBool::new(false);
/// Allocations traced at once at most (one session's are a few dozen).
const TRACE_SLOTS: usize = 1024;
static TRACE_PTR: [AtomicUsize; TRACE_SLOTS] = [const { AtomicUsize::new(0) }; TRACE_SLOTS];
static TRACE_SIZE: [AtomicUsize; TRACE_SLOTS] = [const { AtomicUsize::new(0) }; TRACE_SLOTS];

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to mimalloc.
        let p = unsafe { mimalloc::MiMalloc.alloc(layout) };
        LIVE_BYTES.fetch_add(layout.size(), Relaxed);
        if TRACING.load(Relaxed) && !p.is_null() {
            if let Some(i) = TRACE_PTR.iter().position(|s| s.load(Relaxed) == 0) {
                TRACE_PTR[i].store(p as usize, Relaxed);
                TRACE_SIZE[i].store(layout.size(), Relaxed);
            }
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Relaxed);
        if let Some(i) = TRACE_PTR.iter().position(|s| s.load(Relaxed) == ptr as usize) {
            TRACE_PTR[i].store(0, Relaxed);
        }
        // SAFETY: forwarded unchanged to mimalloc.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Parser, Debug)]
struct Args {
    /// Idle sessions held at once for the memory figure.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Handshakes of each kind (full, resumed) for the CPU figure.
    #[arg(long, default_value_t = 2_000)]
    handshakes: usize,
}

/// The server side of one connection, as the node drives it.
trait Server {
    /// Feeds ciphertext; returns the records to send back.
    fn feed(&mut self, ciphertext: &mut [u8], plaintext: &mut Vec<u8>) -> Vec<u8>;
    /// Encrypts `plaintext` (and pending handshake records).
    fn send(&mut self, plaintext: &[u8]) -> Vec<u8>;
    fn handshaking(&self) -> bool;
}

/// How the node held TLS before: the buffered `ServerConnection` (read_tls / write_tls).
impl Server for rustls::ServerConnection {
    fn feed(&mut self, mut ciphertext: &mut [u8], plaintext: &mut Vec<u8>) -> Vec<u8> {
        while !ciphertext.is_empty() {
            let mut rd: &[u8] = ciphertext;
            let n = self.read_tls(&mut rd).unwrap();
            ciphertext = &mut ciphertext[n..];
            self.process_new_packets().unwrap();
            let _ = self.reader().read_to_end(plaintext);
        }
        self.send(&[])
    }

    fn send(&mut self, plaintext: &[u8]) -> Vec<u8> {
        self.writer().write_all(plaintext).unwrap();
        let mut wire = Vec::new();
        while self.wants_write() {
            self.write_tls(&mut wire).unwrap();
        }
        wire
    }

    fn handshaking(&self) -> bool {
        self.is_handshaking()
    }
}

impl<S: Server> Server for Box<S> {
    fn feed(&mut self, ciphertext: &mut [u8], plaintext: &mut Vec<u8>) -> Vec<u8> {
        (**self).feed(ciphertext, plaintext)
    }

    fn send(&mut self, plaintext: &[u8]) -> Vec<u8> {
        (**self).send(plaintext)
    }

    fn handshaking(&self) -> bool {
        (**self).handshaking()
    }
}

impl Server for TlsSession {
    fn feed(&mut self, ciphertext: &mut [u8], plaintext: &mut Vec<u8>) -> Vec<u8> {
        let mut wire = Vec::new();
        self.absorb(ciphertext, plaintext, &mut wire, 1 << 20).unwrap();
        self.seal(&[], &mut wire).unwrap();
        wire
    }

    fn send(&mut self, plaintext: &[u8]) -> Vec<u8> {
        let mut wire = Vec::new();
        self.seal(plaintext, &mut wire).unwrap();
        wire
    }

    fn handshaking(&self) -> bool {
        self.is_handshaking()
    }
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Server CPU spent inside `f`, added to `cpu_ns`.
fn timed<T>(cpu_ns: &mut u64, f: impl FnOnce() -> T) -> T {
    let t0 = thread_cpu_ns();
    let out = f();
    *cpu_ns += thread_cpu_ns() - t0;
    out
}

fn client_wire(client: &mut rustls::ClientConnection) -> Vec<u8> {
    let mut wire = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut wire).unwrap();
    }
    wire
}

fn to_client(client: &mut rustls::ClientConnection, mut wire: &[u8]) -> Vec<u8> {
    let mut plain = Vec::new();
    while !wire.is_empty() {
        client.read_tls(&mut wire).unwrap();
        client.process_new_packets().unwrap();
        let _ = client.reader().read_to_end(&mut plain);
    }
    plain
}

/// Handshake, then one 40-byte request and answer (a login-sized exchange).
/// Returns whether the handshake resumed a session.
fn establish<S: Server>(server: &mut S, client_config: &Arc<rustls::ClientConfig>, cpu_ns: &mut u64) -> bool {
    let mut client =
        rustls::ClientConnection::new(client_config.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut plain = Vec::new();
    while client.is_handshaking() || server.handshaking() {
        let mut wire = client_wire(&mut client);
        let back = timed(cpu_ns, || server.feed(&mut wire, &mut plain));
        to_client(&mut client, &back);
    }
    client.writer().write_all(&[1u8; 40]).unwrap();
    let mut wire = client_wire(&mut client);
    let back = timed(cpu_ns, || {
        server.feed(&mut wire, &mut plain);
        server.send(&[2u8; 40])
    });
    assert_eq!(plain, [1u8; 40]);
    assert_eq!(to_client(&mut client, &back), [2u8; 40]);
    client.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
}

/// The roots the bench's client trusts (the one self-signed certificate).
static ROOTS: std::sync::OnceLock<rustls::RootCertStore> = std::sync::OnceLock::new();

fn client_config_roots(_: &rustls::ClientConfig) -> rustls::RootCertStore {
    ROOTS.get().expect("configs() ran").clone()
}

fn configs(dir: &std::path::Path) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let server = redrain_net::tls::server_config_with_resumption(&cert_path, &key_path, Some(3_600)).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(cert.cert.der().to_vec())).unwrap();
    let _ = ROOTS.set(roots.clone());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (server, Arc::new(client))
}

/// Bytes held per idle session, over `n` sessions held at once.
fn bytes_per_idle_session<S: Server>(
    n: usize,
    new: impl Fn() -> S,
    client_config: &Arc<rustls::ClientConfig>,
) -> (f64, Vec<S>) {
    let before = LIVE_BYTES.load(Relaxed);
    let mut held = Vec::with_capacity(n);
    let reserved = LIVE_BYTES.load(Relaxed) - before;
    let mut cpu = 0;
    for _ in 0..n {
        let mut s = new();
        establish(&mut s, client_config, &mut cpu);
        held.push(s);
    }
    let after = LIVE_BYTES.load(Relaxed);
    // Plus the pointer the holder keeps (the node's connection task holds an `Option<Box<_>>`).
    ((after - before - reserved) as f64 / n as f64 + std::mem::size_of::<S>() as f64, held)
}

/// Sizes of the allocations one idle session keeps.
fn live_allocations_of_one<S: Server>(new: impl Fn() -> S, client_config: &Arc<rustls::ClientConfig>) -> Vec<usize> {
    let mut s = new();
    TRACING.store(true, Relaxed);
    for slot in &TRACE_PTR {
        slot.store(0, Relaxed);
    }
    let mut client =
        rustls::ClientConnection::new(client_config.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    TRACING.store(false, Relaxed);
    // Only the server's calls are traced.
    let mut plain = Vec::new();
    while client.is_handshaking() || s.handshaking() {
        let mut wire = client_wire(&mut client);
        TRACING.store(true, Relaxed);
        let back = s.feed(&mut wire, &mut plain);
        TRACING.store(false, Relaxed);
        to_client(&mut client, &back);
    }
    client.writer().write_all(&[1u8; 40]).unwrap();
    let mut wire = client_wire(&mut client);
    TRACING.store(true, Relaxed);
    s.feed(&mut wire, &mut plain);
    let back = s.send(&[2u8; 40]);
    TRACING.store(false, Relaxed);
    drop((back, plain, wire, client));
    let mut sizes: Vec<usize> =
        TRACE_PTR.iter().zip(&TRACE_SIZE).filter(|(p, _)| p.load(Relaxed) != 0).map(|(_, s)| s.load(Relaxed)).collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    std::hint::black_box(&s);
    sizes
}

fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir().unwrap();
    let (server_config, client_config) = configs(dir.path());
    // Clients that never resume (a clone would share the session store).
    let mut no_resume = (*client_config).clone();
    no_resume.resumption = rustls::client::Resumption::disabled();
    let no_resume = Arc::new(no_resume);

    println!("# Allocation profile of one idle session (after handshake + one 40-byte exchange)");
    let buffered =
        live_allocations_of_one(|| rustls::ServerConnection::new(server_config.clone()).unwrap(), &no_resume);
    println!(
        "buffered rustls::ServerConnection: struct {} B (boxed), live heap allocations {:?} = {} B",
        std::mem::size_of::<rustls::ServerConnection>(),
        buffered,
        buffered.iter().sum::<usize>()
    );
    let session = live_allocations_of_one(|| TlsSession::new(server_config.clone()).unwrap(), &no_resume);
    println!(
        "engine TlsSession (unbuffered):    struct {} B (boxed), live heap allocations {:?} = {} B",
        std::mem::size_of::<TlsSession>(),
        session,
        session.iter().sum::<usize>()
    );

    println!("\n# Bytes per idle session, {} sessions held at once", args.sessions);
    let (buffered_bytes, held) = bytes_per_idle_session(
        args.sessions,
        || Box::new(rustls::ServerConnection::new(server_config.clone()).unwrap()),
        &no_resume,
    );
    drop(held);
    let (session_bytes, held) =
        bytes_per_idle_session(args.sessions, || Box::new(TlsSession::new(server_config.clone()).unwrap()), &no_resume);
    drop(held);
    println!("buffered rustls::ServerConnection: {buffered_bytes:.0} B per session");
    println!(
        "engine TlsSession:                 {session_bytes:.0} B per session ({:.2}x less)",
        buffered_bytes / session_bytes
    );

    for (name, version) in [("TLS 1.3", &rustls::version::TLS13), ("TLS 1.2", &rustls::version::TLS12)] {
        handshake_cpu(name, version, &server_config, &client_config, args.handshakes);
    }
}

/// Prints server CPU per full and per resumed handshake at one protocol version.
fn handshake_cpu(
    name: &str,
    version: &'static rustls::SupportedProtocolVersion,
    server_config: &Arc<rustls::ServerConfig>,
    client_config: &rustls::ClientConfig,
    handshakes: usize,
) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut resuming = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(client_config_roots(client_config))
        .with_no_client_auth();
    let mut fresh = resuming.clone();
    fresh.resumption = rustls::client::Resumption::disabled();
    resuming.resumption = rustls::client::Resumption::in_memory_sessions(16);
    let (fresh, resuming) = (Arc::new(fresh), Arc::new(resuming));
    println!("\n# {name}: server CPU per handshake (+ one exchange), {handshakes} of each, P-256 certificate");
    let mut full_cpu = 0;
    for _ in 0..handshakes {
        let mut s = TlsSession::new(server_config.clone()).unwrap();
        assert!(!establish(&mut s, &fresh, &mut full_cpu));
    }
    let mut resumed_cpu = 0;
    let mut resumed = 0;
    establish(&mut TlsSession::new(server_config.clone()).unwrap(), &resuming, &mut 0);
    for _ in 0..handshakes {
        let mut s = TlsSession::new(server_config.clone()).unwrap();
        resumed += usize::from(establish(&mut s, &resuming, &mut resumed_cpu));
    }
    assert_eq!(resumed, handshakes, "every reconnect with a ticket resumed");
    let full_us = full_cpu as f64 / handshakes as f64 / 1000.0;
    let resumed_us = resumed_cpu as f64 / handshakes as f64 / 1000.0;
    println!("full:    {full_us:.1} us server CPU per handshake = {:.0} per CPU-second", 1e6 / full_us);
    println!("resumed: {resumed_us:.1} us server CPU per handshake = {:.0} per CPU-second", 1e6 / resumed_us);
    println!("resumed handshakes are {:.2}x cheaper", full_us / resumed_us);
}
