//! The per-core storage facade: owns this core's durable streams and its ticket files,
//! carries out the state machine's appends and reads, and turns their completions back
//! into state-machine inputs.
//!
//! Streams: `core-<n>/cursors` (issuance cursors) and `core-<n>/opens` (the open queue),
//! each a `redrain-storage` [`Log`] with group commit. Appends of one log resolve in LSN
//! order, so one pump task per stream awaits them front to back and reports each to the
//! core; a group commit of thousands of opens wakes the pump once and drains in one pass.
//! Ticket files are read with glommio's buffered file I/O on the core's ring, never with a
//! blocking read.

use super::state::Stream;
use super::Core;
use crate::rain::export::stream_dir;
use glommio::channels::local_channel::{self, LocalSender};
use glommio::io::BufferedFile;
use redrain_storage::{AppendFuture, GlommioFileSystem, Log, LogConfig};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// One core's streams and files.
pub struct CoreStorage {
    pub cursors: Log,
    pub opens: Log,
    cursor_pump: LocalSender<(u64, AppendFuture)>,
    open_pump: LocalSender<(u64, AppendFuture)>,
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
        let opens = open_log("opens").await?;
        let cursor_pump = spawn_pump(core.clone());
        let open_pump = spawn_pump(core.clone());
        Ok(CoreStorage { cursors, opens, cursor_pump, open_pump, files, open_files: RefCell::new(HashMap::new()) })
    }

    /// Queues an append; its completion reaches the state machine in LSN order.
    pub fn append(&self, stream: Stream, kind: u8, payload: &[u8], token: u64) {
        let (log, pump) = match stream {
            Stream::Cursors => (&self.cursors, &self.cursor_pump),
            Stream::Opens => (&self.opens, &self.open_pump),
        };
        // The pump's queue holds at most the log's pending bound: appends beyond it are
        // refused at once (a ready future) by the log itself.
        if pump.try_send((token, log.append(kind, payload))).is_err() {
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

fn spawn_pump(core: Rc<Core>) -> LocalSender<(u64, AppendFuture)> {
    let (tx, rx) = local_channel::new_unbounded::<(u64, AppendFuture)>();
    glommio::spawn_local(async move {
        // Failures are counted per stream in /metrics; the log gets one line per second.
        let mut last_warned: Option<std::time::Instant> = None;
        while let Some((token, append)) = rx.recv().await {
            let ok = match append.await {
                Ok(_) => true,
                Err(e) => {
                    if last_warned.is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(1)) {
                        log::warn!("core {}: append failed: {e}", core.id);
                        last_warned = Some(std::time::Instant::now());
                    }
                    false
                }
            };
            core.on_appended(token, ok);
        }
    })
    .detach();
    tx
}
