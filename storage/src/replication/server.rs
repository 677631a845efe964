//! The peer side: accepts shipping streams from origins, appends them to one
//! replica log per (origin node, core), fdatasyncs (group commit of the
//! replica log) and acknowledges the highest durable LSN; serves fetches of
//! those replicas for repair and takeover.
//!
//! Duplicates from resends are dropped by `Log::import`, so an origin may
//! always resend from its last acknowledged LSN.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use glommio::net::{TcpListener, TcpStream};

use super::io::FramedStream;
use super::wire::{Message, StreamId};
use crate::config::LogConfig;
use crate::error::StorageError;
use crate::file_io::FileSystem;
use crate::log::Log;
use crate::Result;

/// Configuration of a replica server.
#[derive(Debug, Clone)]
pub struct ReplicaServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Replica logs live in `data_dir/replicas/<origin>-<core>/`.
    pub data_dir: PathBuf,
    /// Configuration of each replica log.
    pub log: LogConfig,
    /// Largest frame accepted.
    pub frame_bytes_max: usize,
    /// Most bytes of batches per fetch reply.
    pub fetch_bytes_max: usize,
    /// Most connections served at once; more are closed at accept.
    pub connections_max: usize,
    /// Idle bound on a connection's reads and writes.
    pub io_timeout: Duration,
}

impl ReplicaServerConfig {
    /// Defaults for `listen` and `data_dir`.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
            log: LogConfig::default(),
            frame_bytes_max: 8 << 20,
            fetch_bytes_max: 4 << 20,
            connections_max: 256,
            io_timeout: Duration::from_secs(30),
        }
    }
}

/// Directory of the replica of `stream` under `data_dir`.
pub fn replica_dir(data_dir: &std::path::Path, stream: StreamId) -> PathBuf {
    data_dir.join("replicas").join(format!("{}-{}", stream.origin_node, stream.core))
}

struct Shared {
    config: ReplicaServerConfig,
    fs: Rc<dyn FileSystem>,
    replicas: RefCell<HashMap<StreamId, Rc<Log>>>,
    opening: RefCell<HashSet<StreamId>>,
    connections: Cell<usize>,
    paused: Cell<bool>,
    shut_down: Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

/// Registers `waker` unless the same task is already registered: glommio
/// counts waker clones per task in 16 bits, so a waker must never be cloned
/// once per poll into a list that is drained only rarely.
fn register(wakers: &RefCell<Vec<Waker>>, waker: &Waker) {
    let mut wakers = wakers.borrow_mut();
    if !wakers.iter().any(|w| w.will_wake(waker)) {
        wakers.push(waker.clone());
    }
}

impl Shared {
    fn wake_all(&self) {
        for waker in self.wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// Resolves once the server is not paused; `false` if it shut down.
    async fn until_running(&self) -> bool {
        std::future::poll_fn(|cx| {
            if self.shut_down.get() {
                Poll::Ready(false)
            } else if self.paused.get() {
                register(&self.wakers, cx.waker());
                Poll::Pending
            } else {
                Poll::Ready(true)
            }
        })
        .await
    }

    async fn until_shut_down(&self) {
        std::future::poll_fn(|cx| {
            if self.shut_down.get() {
                Poll::Ready(())
            } else {
                register(&self.wakers, cx.waker());
                Poll::Pending
            }
        })
        .await
    }

    /// The replica log of `stream`, opened once and shared by connections.
    async fn replica(&self, stream: StreamId, create: bool) -> Result<Option<Rc<Log>>> {
        loop {
            if let Some(log) = self.replicas.borrow().get(&stream) {
                return Ok(Some(log.clone()));
            }
            if !self.opening.borrow().contains(&stream) {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        let dir = replica_dir(&self.config.data_dir, stream);
        if !create && !dir.exists() {
            return Ok(None);
        }
        self.opening.borrow_mut().insert(stream);
        let opened = Log::open(&dir, self.config.log.clone(), self.fs.clone()).await;
        self.opening.borrow_mut().remove(&stream);
        let log = Rc::new(opened?);
        self.replicas.borrow_mut().insert(stream, log.clone());
        Ok(Some(log))
    }
}

/// A running replica server; dropping it closes the listener and every
/// connection (this is how tests kill a peer).
pub struct ReplicaServer {
    shared: Rc<Shared>,
    local_addr: SocketAddr,
    _accept: glommio::Task<()>,
}

impl Drop for ReplicaServer {
    fn drop(&mut self) {
        self.shared.shut_down.set(true);
        self.shared.wake_all();
        self.shared.replicas.borrow_mut().clear();
    }
}

impl ReplicaServer {
    /// Binds and starts serving on the current glommio executor.
    pub fn start(config: ReplicaServerConfig, fs: Rc<dyn FileSystem>) -> Result<ReplicaServer> {
        // Shipped frames carry whole batches of the origin's size (its
        // replica logs use the same bounds) and fetch replies at least one.
        let frame_needed = config.log.batch_bytes_max.max(config.fetch_bytes_max) + super::FRAME_SLACK_BYTES;
        if config.frame_bytes_max < frame_needed {
            return Err(StorageError::Config(format!(
                "replica server frame_bytes_max {} cannot carry a whole batch: at least {frame_needed}",
                config.frame_bytes_max
            )));
        }
        config.log.validate()?;
        let listener = TcpListener::bind(config.listen)
            .map_err(|e| StorageError::io("bind replica server", &std::io::Error::from(e)))?;
        let local_addr =
            listener.local_addr().map_err(|e| StorageError::io("replica server address", &std::io::Error::from(e)))?;
        let shared = Rc::new(Shared {
            config,
            fs,
            replicas: RefCell::new(HashMap::new()),
            opening: RefCell::new(HashSet::new()),
            connections: Cell::new(0),
            paused: Cell::new(false),
            shut_down: Cell::new(false),
            wakers: RefCell::new(Vec::new()),
        });
        let accept = glommio::spawn_local(accept_loop(shared.clone(), listener));
        Ok(ReplicaServer { shared, local_addr, _accept: accept })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops (or resumes) reading from every connection: a network
    /// partition as the origin sees it (its sends stall, acks stop).
    pub fn set_paused(&self, paused: bool) {
        self.shared.paused.set(paused);
        self.shared.wake_all();
    }

    /// Highest durable LSN of the replica of `stream` held here (0 if none).
    pub async fn replica_durable_lsn(&self, stream: StreamId) -> Result<u64> {
        Ok(self.shared.replica(stream, false).await?.map(|log| log.durable_lsn()).unwrap_or(0))
    }

    /// Connections being served.
    pub fn connections(&self) -> usize {
        self.shared.connections.get()
    }
}

async fn accept_loop(shared: Rc<Shared>, listener: TcpListener) {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shared.until_shut_down().await;
            None
        })
        .await;
        let stream = match accepted {
            None => return,
            Some(Ok(stream)) => stream,
            Some(Err(err)) => {
                log::warn!("replica server: accept failed: {err}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shared.connections.get() >= shared.config.connections_max {
            log::warn!("replica server: connection limit reached, refusing");
            drop(stream);
            continue;
        }
        shared.connections.set(shared.connections.get() + 1);
        let conn_shared = shared.clone();
        glommio::spawn_local(async move {
            let served = futures_lite::future::or(async { serve_connection(&conn_shared, stream).await }, async {
                conn_shared.until_shut_down().await;
                Ok(())
            })
            .await;
            if let Err(err) = served {
                log::debug!("replica server: connection ended: {err}");
            }
            conn_shared.connections.set(conn_shared.connections.get() - 1);
        })
        .detach();
    }
}

async fn serve_connection(shared: &Rc<Shared>, stream: TcpStream) -> Result<()> {
    let timeout = Some(shared.config.io_timeout);
    stream
        .set_read_timeout(timeout)
        .and_then(|_| stream.set_write_timeout(timeout))
        .map_err(|e| StorageError::io("set connection timeouts", &std::io::Error::from(e)))?;
    let _ = stream.set_nodelay(true);
    let mut framed = FramedStream::new(stream, shared.config.frame_bytes_max);
    let mut shipping: Option<Rc<Log>> = None;
    loop {
        if !shared.until_running().await {
            return Ok(());
        }
        let message = framed.recv().await?;
        if !shared.until_running().await {
            return Ok(());
        }
        let reply = match message {
            Message::Hello { stream } => {
                let log = shared.replica(stream, true).await?.expect("created on demand");
                let durable_lsn = log.durable_lsn();
                shipping = Some(log);
                Message::HelloAck { durable_lsn }
            }
            Message::Append { batches } => match &shipping {
                None => Message::Error { message: "append before hello".into() },
                Some(log) => match log.import(batches).await {
                    Ok(durable_lsn) => Message::Ack { durable_lsn },
                    Err(err) => Message::Error { message: err.to_string() },
                },
            },
            Message::Release { below_lsn } => match &shipping {
                None => Message::Error { message: "release before hello".into() },
                Some(log) => {
                    log.set_retention_watermark(below_lsn);
                    match log.enforce_retention().await {
                        Ok(_) => Message::Ack { durable_lsn: log.durable_lsn() },
                        Err(err) => Message::Error { message: err.to_string() },
                    }
                }
            },
            Message::Fetch { stream, from_lsn, bytes_max } => match shared.replica(stream, false).await? {
                None => Message::FetchReply { durable_lsn: 0, batches: Vec::new() },
                Some(log) => {
                    // A fetch from before what we hold gets what we hold:
                    // the importer accepts a new base only into an empty log.
                    let from = from_lsn.max(log.first_lsn());
                    let bytes_max = (bytes_max as usize).min(shared.config.fetch_bytes_max);
                    match log.read_batches(from, bytes_max).await {
                        Ok(batches) => Message::FetchReply { durable_lsn: log.durable_lsn(), batches },
                        Err(err) => Message::Error { message: err.to_string() },
                    }
                }
            },
            other => Message::Error { message: format!("unexpected message {other:?}") },
        };
        framed.send(&reply).await?;
    }
}
