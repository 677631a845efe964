//! The per-core storage facade: owns this core's durable streams and its ticket files,
//! carries out the state machine's appends and reads, and turns their completions back
//! into state-machine inputs.
//!
//! Streams: `core-<n>/cursors` (issuance cursors) and `core-<n>/opens` (the open queue),
//! each a `redrain-storage` [`Log`] with group commit. With peers configured the open
//! queue is a [`ReplicatedLog`]: an open is answered when its record is on 2 of 3 copies. Appends of one log resolve in LSN
//! order, so one pump task per stream awaits them front to back and reports each to the
//! core; a group commit of thousands of opens wakes the pump once and drains in one pass.
//! Ticket files are read with glommio's buffered file I/O on the core's ring, never with a
//! blocking read.

use super::state::Stream;
use super::Core;
use crate::rain::export::stream_dir;
use glommio::channels::local_channel::{self, LocalSender};
use glommio::io::BufferedFile;
use redrain_storage::{
    GlommioFileSystem, Log, LogConfig, Lsn, ReplicatedLog, ReplicationConfig, StorageError, StreamId,
};
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;

/// An append in flight: resolves when durable (locally, or on 2 of 3 copies).
type Append = Pin<Box<dyn Future<Output = redrain_storage::Result<Lsn>>>>;

/// The open queue: a local log, or a log replicated to the node's two peers.
enum OpenQueue {
    Local(Log),
    Replicated(Rc<ReplicatedLog>),
}

/// The two peers (in the other parks) that hold copies of every core's open queue.
#[derive(Debug, Clone, Copy)]
pub struct OpenQueuePeers {
    pub node_id: u16,
    pub peers: [std::net::SocketAddr; 2],
    pub commit_timeout: std::time::Duration,
}

/// How an append ended, as the state machine needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Durable (on 2 of 3 copies when replicated).
    Durable,
    /// Not written.
    Failed,
    /// Durable here, but no peer confirmed it in time: the record is in the queue.
    Unconfirmed(Lsn),
}

/// One core's streams and files.
pub struct CoreStorage {
    pub cursors: Log,
    opens: OpenQueue,
    cursor_pump: LocalSender<(u64, Append)>,
    open_pump: LocalSender<(u64, Append)>,
    files: Vec<PathBuf>,
    open_files: RefCell<HashMap<usize, Rc<BufferedFile>>>,
}

impl CoreStorage {
    /// Opens (or creates) the core's logs under `data_dir` and starts their pumps.
    pub async fn open(
        core: &Rc<Core>,
        data_dir: &Path,
        config: LogConfig,
        files: Vec<PathBuf>,
        peers: Option<OpenQueuePeers>,
    ) -> anyhow::Result<CoreStorage> {
        let fs = Rc::new(GlommioFileSystem);
        let open_log = |stream: &'static str| {
            let dir = stream_dir(data_dir, core.id, stream);
            let config = config.clone();
            let fs = fs.clone();
            async move {
                Log::open(&dir, config, fs).await.map_err(|e| {
                    anyhow::anyhow!("core {}: opening the {stream} log in {}: {e}", core.id, dir.display())
                })
            }
        };
        let cursors = open_log("cursors").await?;
        let opens = match peers {
            None => OpenQueue::Local(open_log("opens").await?),
            Some(p) => {
                let dir = stream_dir(data_dir, core.id, "opens");
                let stream = StreamId { origin_node: u32::from(p.node_id), core: core.id as u16 };
                let mut replication = ReplicationConfig::new(stream, p.peers);
                replication.commit_timeout = p.commit_timeout;
                let (log, report) =
                    ReplicatedLog::open(&dir, config.clone(), replication, fs.clone()).await.map_err(|e| {
                        anyhow::anyhow!(
                            "core {}: opening the replicated open queue in {} (peers {:?}): {e}",
                            core.id,
                            dir.display(),
                            p.peers
                        )
                    })?;
                log::info!("core {}: open queue replicated to {:?}: {report:?}", core.id, p.peers);
                OpenQueue::Replicated(Rc::new(log))
            }
        };
        let cursor_pump = spawn_pump(core.clone());
        let open_pump = spawn_pump(core.clone());
        Ok(CoreStorage { cursors, opens, cursor_pump, open_pump, files, open_files: RefCell::new(HashMap::new()) })
    }

    /// The open queue's local log (replicated or not).
    pub fn opens(&self) -> &Log {
        match &self.opens {
            OpenQueue::Local(log) => log,
            OpenQueue::Replicated(r) => r.log(),
        }
    }

    /// The highest LSN of the open queue on 2 of 3 copies (the local durable LSN when
    /// the queue is not replicated).
    pub fn opens_commit_lsn(&self) -> Lsn {
        match &self.opens {
            OpenQueue::Local(log) => log.durable_lsn(),
            OpenQueue::Replicated(r) => r.commit_lsn(),
        }
    }

    /// Queues an append; its completion reaches the state machine in LSN order.
    pub fn append(&self, stream: Stream, kind: u8, payload: &[u8], token: u64) {
        // The pump's queue holds at most the log's pending bound: appends beyond it are
        // refused at once (a ready future) by the log itself.
        let (append, pump): (Append, _) = match (stream, &self.opens) {
            (Stream::Cursors, _) => (Box::pin(self.cursors.append(kind, payload)), &self.cursor_pump),
            (Stream::Opens, OpenQueue::Local(log)) => (Box::pin(log.append(kind, payload)), &self.open_pump),
            (Stream::Opens, OpenQueue::Replicated(r)) => (Box::pin(r.append_rc(kind, payload)), &self.open_pump),
        };
        if pump.try_send((token, append)).is_err() {
            log::error!("storage pump closed; append {token} dropped");
        }
    }

    /// Reads `count` records of ticket file `file` from record `first`.
    pub async fn read_tickets(&self, file: usize, first: u64, count: usize) -> Result<Vec<u8>, String> {
        use crate::tickets::format::RECORD_BYTES;
        let path = self.files.get(file).ok_or_else(|| format!("no ticket file {file}"))?;
        let handle = {
            let cached = self.open_files.borrow().get(&file).cloned();
            match cached {
                Some(h) => h,
                None => {
                    let h = Rc::new(BufferedFile::open(path).await.map_err(|e| format!("{}: {e}", path.display()))?);
                    self.open_files.borrow_mut().insert(file, h.clone());
                    h
                }
            }
        };
        let bytes = count * RECORD_BYTES;
        let mut out = Vec::with_capacity(bytes);
        let mut pos = first * RECORD_BYTES as u64;
        while out.len() < bytes {
            let chunk = handle.read_at(pos, bytes - out.len()).await.map_err(|e| format!("{}: {e}", path.display()))?;
            if chunk.is_empty() {
                return Err(format!(
                    "{}: ends at byte {pos}, {} records short",
                    path.display(),
                    (bytes - out.len()) / RECORD_BYTES
                ));
            }
            pos += chunk.len() as u64;
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

fn spawn_pump(core: Rc<Core>) -> LocalSender<(u64, Append)> {
    let (tx, rx) = local_channel::new_unbounded::<(u64, Append)>();
    glommio::spawn_local(async move {
        // Failures are counted per stream in /metrics; the log gets one line per second.
        let mut last_warned: Option<std::time::Instant> = None;
        while let Some((token, append)) = rx.recv().await {
            let outcome = match append.await {
                Ok(_) => Appended::Durable,
                Err(e) => {
                    if last_warned.is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(1)) {
                        log::warn!("core {}: append failed: {e}", core.id);
                        last_warned = Some(std::time::Instant::now());
                    }
                    match e {
                        // Raised only after the record was durable here.
                        StorageError::NoQuorum { lsn } | StorageError::CommitTimeout { lsn } => {
                            Appended::Unconfirmed(lsn)
                        }
                        _ => Appended::Failed,
                    }
                }
            };
            core.on_appended(token, outcome);
        }
    })
    .detach();
    tx
}
