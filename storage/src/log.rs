//! The local log: segmented append-only files of one core, group commit,
//! recovery on open, retention, and reads for shipping to peers.
//!
//! One writer task per log owns the file I/O. `append` encodes the record
//! into the pending batch it will be written in and returns a future; the
//! writer makes the queued batches durable with one write and one fdatasync
//! per group commit (one batch, or several up to `commit_bytes_max`), and
//! under load writes commit N+1 while commit N's fdatasync runs
//! (acknowledging strictly in LSN order). Appends that arrive meanwhile form
//! the next batches. LSNs are tentative until a batch is durable, so a failed batch
//! (disk full, I/O error) leaves no hole: the batches behind it take over its
//! LSNs, and the failed appends get a typed error.
//!
//! The log relies on: a single writer per directory (the owning core), and
//! fdatasync making a completed write durable, buffered or direct (see
//! docs/storage.md).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::SystemTime;

use crate::config::{DamagePolicy, LogConfig};
use crate::error::{DamageKind, StorageError};
use crate::file_io::{FileSystem, SegmentFile};
use crate::record::{
    pad_to_alignment, rebatch_from, split_batches, strip_padding, BatchBuilder, RecordKind, BATCH_HEADER_BYTES,
    RECORD_HEADER_BYTES,
};
use crate::recovery::scan_segment;
use crate::{Lsn, Result};

const SEGMENT_SUFFIX: &str = ".seg";

/// File name of the segment whose first record has `first_lsn`.
pub fn segment_file_name(first_lsn: Lsn) -> String {
    format!("{first_lsn:020}{SEGMENT_SUFFIX}")
}

fn parse_segment_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 {
        return None;
    }
    digits.parse().ok()
}

struct Segment {
    path: PathBuf,
    first_lsn: Lsn,
    /// `first_lsn - 1` while the segment is empty.
    last_lsn: Lsn,
    len: u64,
    /// (first LSN, offset) of every batch, for reads by LSN.
    batches: Vec<(Lsn, u64)>,
    file: Rc<dyn SegmentFile>,
    last_write: SystemTime,
}

/// Counters of one log (plain numbers; see `metrics` for rendering).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Group commits made durable (one write and one fdatasync each).
    pub commits_total: u64,
    /// Batches made durable (a group commit carries one or more).
    pub batches_total: u64,
    /// Records made durable.
    pub records_total: u64,
    /// Bytes written in durable batches, padding included.
    pub bytes_total: u64,
    /// Of those, padding written to keep direct-I/O writes block-aligned.
    pub pad_bytes_total: u64,
    /// Batches that failed (write, fdatasync or segment creation).
    pub batch_failures_total: u64,
    /// Appends rejected because the pending queue was full.
    pub overload_rejections_total: u64,
    /// Segments created.
    pub segments_created_total: u64,
    /// Segments deleted by retention.
    pub segments_deleted_total: u64,
    /// Largest batch (records) so far.
    pub batch_records_peak: u64,
    /// Bytes cut from a torn tail at open.
    pub torn_tail_bytes_truncated: u64,
    /// 1 when open cut the log at damage for a repair from a peer.
    pub damage_cuts_total: u64,
}

/// The outcome shared by every append of one batch (they become durable, or
/// fail, together): one allocation per group commit instead of one per
/// record. An append's LSN is the batch's first LSN plus its index.
struct BatchSlot {
    /// `Ok(first LSN)` once the batch is durable, or the batch's error.
    outcome: RefCell<Option<Result<Lsn>>>,
    /// Tasks waiting on the batch, each registered once (glommio counts the
    /// waker clones of a task in 16 bits).
    wakers: RefCell<Vec<Waker>>,
}

impl BatchSlot {
    fn new() -> Rc<Self> {
        Rc::new(Self { outcome: RefCell::new(None), wakers: RefCell::new(Vec::new()) })
    }

    fn resolve(&self, outcome: Result<Lsn>) {
        if self.outcome.borrow().is_some() {
            return;
        }
        *self.outcome.borrow_mut() = Some(outcome);
        for waker in self.wakers.take() {
            waker.wake();
        }
    }

    fn register(&self, waker: &Waker) {
        let mut wakers = self.wakers.borrow_mut();
        // The common waiters are one task awaiting its appends in turn, or a
        // few tasks interleaved: looking at the newest entries finds them.
        if !wakers.iter().rev().take(16).any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }
}

/// The slots of the batches of one group commit in flight (or of one
/// import), each with its batch's first LSN. If the writer is cancelled
/// mid-commit (the log was dropped), the guard answers `Closed` so no append
/// future waits forever.
struct InFlight(Vec<(Rc<BatchSlot>, Lsn)>);

impl InFlight {
    /// The commit is durable: each batch's appends get their LSNs.
    fn commit(&self) {
        for (slot, first_lsn) in &self.0 {
            slot.resolve(Ok(*first_lsn));
        }
    }

    /// The commit failed: every append in it gets `err`.
    fn fail(&self, err: &StorageError) {
        for (slot, _) in &self.0 {
            slot.resolve(Err(err.clone()));
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.fail(&StorageError::Closed);
    }
}

/// Records queued for the writer: one ready-made batch and its slot.
struct PendingBatch {
    builder: BatchBuilder,
    slot: Rc<BatchSlot>,
}

struct PendingImport {
    bytes: Vec<u8>,
    slot: Rc<BatchSlot>,
}

struct State {
    segments: VecDeque<Segment>,
    next_lsn: Lsn,
    durable_lsn: Lsn,
    /// Appends waiting for the writer, already encoded as ready-made batches
    /// (each within `batch_records_max` / `batch_bytes_max`) with tentative
    /// LSNs: encoding happens in `append`, overlapping the disk work of the
    /// batch in flight, and the writer only seals the front batch's header -
    /// no copying. If a batch fails, its LSNs are handed back and these are
    /// renumbered.
    pending_batches: VecDeque<PendingBatch>,
    /// Records in `pending_batches`.
    pending_records: usize,
    /// Tentative LSN of the next append.
    pending_next_lsn: Lsn,
    /// Size of the largest batch of the last commit: the capacity to reserve for the next.
    batch_bytes_hint: usize,
    imports: VecDeque<PendingImport>,
    writer_waker: Option<Waker>,
    durable_wakers: Vec<Waker>,
    /// A failed write may have left bytes past the active segment's length;
    /// they are cut before the next write.
    tail_dirty: bool,
    retention_watermark: Lsn,
    closed: bool,
    stats: LogStats,
    /// Time of each successful batch write + fdatasync, in microseconds.
    batch_write_us: crate::metrics::ValueHistogram,
}

struct Inner {
    dir: PathBuf,
    config: LogConfig,
    fs: Rc<dyn FileSystem>,
    /// The file system's write alignment: every write starts and ends on a
    /// multiple of it (1 = no constraint).
    align: u64,
    state: RefCell<State>,
}

/// A segmented, group-committed, append-only log owned by one core.
///
/// ```no_run
/// # async fn demo() -> redrain_storage::Result<()> {
/// use std::rc::Rc;
/// use redrain_storage::{Log, LogConfig, GlommioFileSystem};
/// let log = Log::open("/var/lib/redrain/core0".as_ref(), LogConfig::default(),
///                     Rc::new(GlommioFileSystem)).await?;
/// let lsn = log.append(1, b"opened packet 42").await?; // durable when it resolves
/// # let _ = lsn; Ok(()) }
/// ```
pub struct Log {
    inner: Rc<Inner>,
    _writer: glommio::Task<()>,
}

impl Drop for Log {
    fn drop(&mut self) {
        let mut state = self.inner.state.borrow_mut();
        state.closed = true;
        state.pending_records = 0;
        for pending in state.pending_batches.drain(..) {
            pending.slot.resolve(Err(StorageError::Closed));
        }
        for import in state.imports.drain(..) {
            import.slot.resolve(Err(StorageError::Closed));
        }
        for waker in state.durable_wakers.drain(..) {
            waker.wake();
        }
    }
}

/// Future of one append; resolves to the record's LSN once it is durable.
/// Two words, so a core can hold hundreds of thousands in flight compactly.
pub struct AppendFuture(AppendState);

enum AppendState {
    /// Waiting for the batch holding the record, at `index` in it.
    Waiting { slot: Rc<BatchSlot>, index: u32 },
    /// Refused before it was queued (rare: boxed to keep the future small).
    Refused(Box<StorageError>),
    /// The outcome was returned.
    Done,
}

impl AppendFuture {
    fn waiting(slot: Rc<BatchSlot>, index: u32) -> Self {
        AppendFuture(AppendState::Waiting { slot, index })
    }
}

impl Future for AppendFuture {
    type Output = Result<Lsn>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match std::mem::replace(&mut self.0, AppendState::Done) {
            AppendState::Waiting { slot, index } => {
                let outcome = slot.outcome.borrow().as_ref().map(|outcome| match outcome {
                    Ok(first_lsn) => Ok(first_lsn + index as u64),
                    Err(err) => Err(err.clone()),
                });
                match outcome {
                    Some(ready) => Poll::Ready(ready),
                    None => {
                        slot.register(cx.waker());
                        self.0 = AppendState::Waiting { slot, index };
                        Poll::Pending
                    }
                }
            }
            AppendState::Refused(err) => Poll::Ready(Err(*err)),
            AppendState::Done => Poll::Ready(Err(StorageError::Closed)),
        }
    }
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering its state; damage
    /// before the tail is refused (see [`Log::open_with`]).
    pub async fn open(dir: &Path, config: LogConfig, fs: Rc<dyn FileSystem>) -> Result<Log> {
        Self::open_with(dir, config, fs, DamagePolicy::Refuse).await
    }

    /// Opens the log, scanning every segment: CRCs are verified, a torn tail
    /// is truncated, and damage before the tail is reported as
    /// [`StorageError::Corruption`] unless `policy` says to cut the log there
    /// for a repair from a peer. Must run on a glommio executor.
    pub async fn open_with(dir: &Path, config: LogConfig, fs: Rc<dyn FileSystem>, policy: DamagePolicy) -> Result<Log> {
        config.validate()?;
        // Directories we create must be durable too, or a power loss could
        // drop the whole log: fsync the parent of each new directory.
        let mut created = Vec::new();
        let mut probe = Some(dir);
        while let Some(path) = probe.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
            created.push(path.to_path_buf());
            probe = path.parent();
        }
        std::fs::create_dir_all(dir).map_err(|e| StorageError::io("create log directory", &e))?;
        for path in created.iter().rev() {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs.sync_dir(parent).await.map_err(|e| StorageError::io("sync parent directory", &e))?;
            }
        }
        let mut names: Vec<(Lsn, PathBuf)> = std::fs::read_dir(dir)
            .map_err(|e| StorageError::io("list log directory", &e))?
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| {
                let name = entry.file_name();
                parse_segment_name(name.to_str()?).map(|lsn| (lsn, entry.path()))
            })
            .collect();
        names.sort_by_key(|(lsn, _)| *lsn);

        let align = fs.write_alignment();
        let mut segments = VecDeque::new();
        let mut expected: Option<Lsn> = None;
        let mut torn_bytes = 0u64;
        let count = names.len();
        let mut cut_at: Option<usize> = None;
        for (index, (first_lsn, path)) in names.iter().enumerate() {
            let is_last = index + 1 == count;
            let bytes = std::fs::read(path).map_err(|e| StorageError::io("read segment", &e))?;
            let scan = scan_segment(&bytes, Some(expected.unwrap_or(*first_lsn)));
            let mut damage = scan.damage;
            if damage.is_none() && expected.is_some_and(|want| want != *first_lsn) {
                // The file name says the segment starts elsewhere than where
                // the previous one ended: a segment is missing or misnamed.
                damage = Some(crate::recovery::Damage {
                    offset: 0,
                    kind: DamageKind::LsnDiscontinuity,
                    valid_batch_after: true,
                });
            }
            let mut valid_len = scan.valid_len;
            if let Some(damage) = damage {
                let torn_tail = is_last && !damage.valid_batch_after;
                if torn_tail {
                    torn_bytes = bytes.len() as u64 - scan.valid_len;
                    log::warn!(
                        "log {}: truncating torn tail of {} bytes at offset {} ({})",
                        path.display(),
                        torn_bytes,
                        damage.offset,
                        damage.kind
                    );
                } else if policy == DamagePolicy::Refuse {
                    return Err(StorageError::Corruption {
                        segment: path.clone(),
                        offset: damage.offset,
                        kind: damage.kind,
                    });
                } else {
                    log::error!(
                        "log {}: cutting at damage at offset {} ({}) for repair from a peer",
                        path.display(),
                        damage.offset,
                        damage.kind
                    );
                    let aside = path.with_extension("seg.damaged");
                    std::fs::copy(path, &aside).map_err(|e| StorageError::io("keep damaged segment", &e))?;
                    cut_at = Some(index);
                }
                valid_len = damage.offset.min(scan.valid_len);
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| StorageError::io("open segment for truncation", &e))?;
                file.set_len(valid_len)
                    .and_then(|_| file.sync_all())
                    .map_err(|e| StorageError::io("truncate segment", &e))?;
            }
            let batch_end = valid_len;
            if (is_last || cut_at == Some(index)) && !valid_len.is_multiple_of(align) {
                // The segment that takes the next write must end on a block
                // boundary (a tail written without alignment, or cut at
                // damage): pad it now rather than rewrite its last block.
                valid_len += pad_segment_tail(path, valid_len, align)?;
            }
            let last_write = std::fs::metadata(path).and_then(|m| m.modified()).unwrap_or_else(|_| SystemTime::now());
            let file = fs.open(path).await.map_err(|e| StorageError::io("open segment", &e))?;
            let batches: Vec<(Lsn, u64)> = scan
                .batches
                .iter()
                .filter(|b| b.offset + b.len <= batch_end)
                .map(|b| (b.first_lsn, b.offset))
                .collect();
            let last_lsn = scan
                .batches
                .iter()
                .rev()
                .find(|b| b.offset + b.len <= batch_end)
                .map(|b| b.last_lsn)
                .unwrap_or(first_lsn - 1);
            segments.push_back(Segment {
                path: path.clone(),
                first_lsn: *first_lsn,
                last_lsn,
                len: valid_len,
                batches,
                file,
                last_write,
            });
            expected = Some(last_lsn + 1);
            if cut_at.is_some() {
                break;
            }
        }
        if let Some(index) = cut_at {
            for (_, path) in names.iter().skip(index + 1) {
                let aside = path.with_extension("seg.damaged");
                std::fs::rename(path, &aside).map_err(|e| StorageError::io("move damaged segment aside", &e))?;
            }
            fs.sync_dir(dir).await.map_err(|e| StorageError::io("sync log directory", &e))?;
        }
        let next_lsn = segments.back().map(|s| s.last_lsn + 1).unwrap_or(1);
        let inner = Rc::new(Inner {
            dir: dir.to_path_buf(),
            config,
            fs,
            align,
            state: RefCell::new(State {
                segments,
                next_lsn,
                durable_lsn: next_lsn - 1,
                pending_records: 0,
                pending_batches: VecDeque::new(),
                pending_next_lsn: next_lsn,
                batch_bytes_hint: 0,
                imports: VecDeque::new(),
                writer_waker: None,
                durable_wakers: Vec::new(),
                tail_dirty: false,
                retention_watermark: 0,
                closed: false,
                batch_write_us: crate::metrics::ValueHistogram::default(),
                stats: LogStats {
                    torn_tail_bytes_truncated: torn_bytes,
                    damage_cuts_total: cut_at.is_some() as u64,
                    ..LogStats::default()
                },
            }),
        });
        let writer = glommio::spawn_local(writer_loop(inner.clone()));
        Ok(Log { inner, _writer: writer })
    }

    /// Queues one record; the future resolves with its LSN once the batch
    /// holding it is durable (one write + one fdatasync for its group
    /// commit), or with a typed error if that commit failed. The payload is copied now.
    pub fn append(&self, kind: RecordKind, payload: &[u8]) -> AppendFuture {
        self.enqueue(kind, std::slice::from_ref(&payload))
    }

    /// Queues `payloads` as one group: consecutive LSNs in one batch, so they
    /// become durable - or fail - together, and one future (resolving to the
    /// first record's LSN) stands for all of them. For callers that produce
    /// several records at once, such as write diffusion of one message into
    /// many inboxes. A group must fit one batch (`batch_records_max`,
    /// `batch_bytes_max`), else [`StorageError::BadGroup`].
    pub fn append_group(&self, kind: RecordKind, payloads: &[&[u8]]) -> AppendFuture {
        self.enqueue(kind, payloads)
    }

    fn enqueue(&self, kind: RecordKind, payloads: &[&[u8]]) -> AppendFuture {
        let mut state = self.inner.state.borrow_mut();
        let config = &self.inner.config;
        let count = payloads.len();
        let bytes: usize = payloads.iter().map(|payload| payload.len() + RECORD_HEADER_BYTES).sum();
        let early = if state.closed {
            Some(StorageError::Closed)
        } else if let Some(payload) = payloads.iter().find(|payload| payload.len() > config.record_payload_bytes_max) {
            Some(StorageError::RecordTooLarge { size: payload.len(), limit: config.record_payload_bytes_max })
        } else if count == 0 || count > config.batch_records_max || BATCH_HEADER_BYTES + bytes > config.batch_bytes_max
        {
            Some(StorageError::BadGroup {
                records: count,
                bytes,
                records_limit: config.batch_records_max,
                bytes_limit: config.batch_bytes_max.saturating_sub(BATCH_HEADER_BYTES),
            })
        } else if state.pending_records + count > config.appends_pending_max {
            state.stats.overload_rejections_total += 1;
            Some(StorageError::Overloaded { pending: state.pending_records, limit: config.appends_pending_max })
        } else {
            None
        };
        if let Some(err) = early {
            return AppendFuture(AppendState::Refused(Box::new(err)));
        }
        let full = state.pending_batches.back().is_none_or(|batch| {
            batch.builder.len() + count > config.batch_records_max
                || batch.builder.encoded_len() + bytes > config.batch_bytes_max
        });
        if full {
            // A quarter more than the last batch took, so a batch as big as
            // the last never regrows (and copies) itself while it fills;
            // never more than a full batch, which cannot grow past it.
            let hint = state.batch_bytes_hint;
            let capacity = (hint + hint / 4).max(4096).min(config.batch_bytes_max);
            let first = state.pending_next_lsn;
            state.pending_batches.push_back(PendingBatch {
                builder: BatchBuilder::with_capacity(first, capacity),
                slot: BatchSlot::new(),
            });
        }
        let batch = state.pending_batches.back_mut().expect("pushed above");
        let index = batch.builder.len() as u32;
        for payload in payloads {
            batch.builder.push(kind, payload);
        }
        let slot = batch.slot.clone();
        state.pending_next_lsn += count as u64;
        state.pending_records += count;
        if let Some(waker) = state.writer_waker.take() {
            waker.wake();
        }
        AppendFuture::waiting(slot, index)
    }

    /// Appends batches received from elsewhere (a replica stream, a repair
    /// from a peer), keeping their LSNs. Batches or records already present
    /// are skipped (duplicates are expected on resend); a gap is an error.
    /// Into an empty log the first batch may start at any LSN. Resolves to the
    /// log's durable LSN once the new records are durable.
    pub async fn import(&self, batches: Vec<u8>) -> Result<Lsn> {
        let slot = BatchSlot::new();
        {
            let mut state = self.inner.state.borrow_mut();
            if state.closed {
                return Err(StorageError::Closed);
            }
            state.imports.push_back(PendingImport { bytes: batches, slot: slot.clone() });
            if let Some(waker) = state.writer_waker.take() {
                waker.wake();
            }
        }
        AppendFuture::waiting(slot, 0).await
    }

    /// LSN of the last durable record (0 when the log is empty).
    pub fn durable_lsn(&self) -> Lsn {
        self.inner.state.borrow().durable_lsn
    }

    /// LSN of the oldest record still on disk (`durable_lsn + 1` if none).
    pub fn first_lsn(&self) -> Lsn {
        let state = self.inner.state.borrow();
        state.segments.iter().find(|s| s.last_lsn >= s.first_lsn).map(|s| s.first_lsn).unwrap_or(state.durable_lsn + 1)
    }

    /// Appends queued and not yet durable.
    pub fn pending_appends(&self) -> usize {
        self.inner.state.borrow().pending_records
    }

    /// Histogram of batch write + fdatasync times (microseconds): the disk
    /// part of commit latency.
    pub fn batch_write_histogram(&self) -> crate::metrics::ValueHistogram {
        self.inner.state.borrow().batch_write_us.clone()
    }

    /// A copy of the counters.
    pub fn stats(&self) -> LogStats {
        self.inner.state.borrow().stats.clone()
    }

    /// The directory of this log.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Bytes of every segment file (what retention bounds).
    pub fn bytes_on_disk(&self) -> u64 {
        self.inner.state.borrow().segments.iter().map(|s| s.len).sum()
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.inner.state.borrow().segments.len()
    }

    /// Resolves once `durable_lsn() > lsn` or the log closes.
    pub fn wait_durable_beyond(&self, lsn: Lsn) -> impl Future<Output = Lsn> + '_ {
        std::future::poll_fn(move |cx| {
            let mut state = self.inner.state.borrow_mut();
            if state.durable_lsn > lsn || state.closed {
                Poll::Ready(state.durable_lsn)
            } else {
                // One registration per task: glommio counts waker clones
                // per task in 16 bits.
                if !state.durable_wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    state.durable_wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        })
    }

    /// Tells the log that records below `lsn` are no longer needed by its
    /// owner; sealed segments wholly below it become eligible for deletion
    /// by the size/age retention bounds (checked at the next segment roll).
    pub fn set_retention_watermark(&self, lsn: Lsn) {
        let mut state = self.inner.state.borrow_mut();
        state.retention_watermark = state.retention_watermark.max(lsn);
    }

    /// Applies retention now (normally done at each segment roll).
    pub async fn enforce_retention(&self) -> Result<usize> {
        enforce_retention(&self.inner).await
    }

    /// Reads whole durable batches starting with the one that holds
    /// `from_lsn`, up to about `bytes_max` (at least one batch), from a
    /// single segment. Returns an empty buffer when `from_lsn` is beyond the
    /// durable end.
    pub async fn read_batches(&self, from_lsn: Lsn, bytes_max: usize) -> Result<Vec<u8>> {
        let (file, offset, len) = {
            let state = self.inner.state.borrow();
            if from_lsn > state.durable_lsn {
                return Ok(Vec::new());
            }
            let Some(segment) = state.segments.iter().find(|s| s.last_lsn >= s.first_lsn && from_lsn <= s.last_lsn)
            else {
                return Ok(Vec::new());
            };
            if from_lsn < segment.first_lsn {
                return Err(StorageError::NotRetained { requested: from_lsn, first_available: segment.first_lsn });
            }
            let index = segment.batches.partition_point(|(first, _)| *first <= from_lsn).saturating_sub(1);
            let start = segment.batches[index].1;
            // The longest run of whole batches within `bytes_max`, but at
            // least one batch.
            let mut end = segment.len;
            let mut previous_boundary = None;
            for &(_, boundary) in &segment.batches[index + 1..] {
                if boundary - start > bytes_max as u64 {
                    end = previous_boundary.unwrap_or(boundary);
                    break;
                }
                previous_boundary = Some(boundary);
            }
            if end == segment.len && end - start > bytes_max as u64 {
                end = previous_boundary.unwrap_or(end);
            }
            (segment.file.clone(), start, (end - start) as usize)
        };
        let bytes = file.read_at(offset, len).await.map_err(|e| StorageError::io("read segment", &e))?;
        if bytes.len() != len {
            return Err(StorageError::io(
                "read segment",
                &std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "short read"),
            ));
        }
        // Padding stays on this disk: peers and readers get whole batches.
        Ok(strip_padding(bytes))
    }

    /// Visits every durable record from `from_lsn` on, in LSN order.
    pub async fn for_each_record(
        &self,
        from_lsn: Lsn,
        mut visit: impl FnMut(crate::record::RecordView<'_>),
    ) -> Result<Lsn> {
        let mut next = from_lsn.max(self.first_lsn());
        let end = self.durable_lsn();
        while next <= end {
            let bytes = self.read_batches(next, 4 << 20).await?;
            if bytes.is_empty() {
                break;
            }
            let (batches, damage) = split_batches(&bytes);
            if let Some((offset, kind)) = damage {
                return Err(StorageError::Corruption { segment: self.inner.dir.clone(), offset: offset as u64, kind });
            }
            for batch in &batches {
                for record in batch.records().filter(|r| r.lsn >= next) {
                    visit(record);
                }
            }
            next = batches.last().map(|b| b.last_lsn() + 1).unwrap_or(end + 1);
        }
        Ok(end)
    }
}

/// A batch written to the active segment whose fdatasync is in flight: the
/// writer writes the next batch meanwhile (a two-stage pipeline), and
/// commits this one - in LSN order - when its fdatasync returns.
struct Syncing {
    written: Written,
    slot: InFlight,
    sync: Pin<Box<dyn Future<Output = Result<()>>>>,
}

/// The writer task, forever (until the log is dropped). Local group commits
/// go through a two-stage pipeline: commit N+1 is written while commit N's
/// fdatasync runs, so the disk is never idle between group commits under
/// load; a lone append still costs exactly one write and one fdatasync.
/// Imports, segment rolls and failures drain the pipeline first.
async fn writer_loop(inner: Rc<Inner>) {
    let mut syncing: Option<Syncing> = None;
    loop {
        let had_to_wait = Cell::new(false);
        let in_flight = syncing.is_some();
        let open = std::future::poll_fn(|cx| {
            let mut state = inner.state.borrow_mut();
            if state.closed {
                return Poll::Ready(false);
            }
            if in_flight || !state.pending_batches.is_empty() || !state.imports.is_empty() {
                return Poll::Ready(true);
            }
            had_to_wait.set(true);
            state.writer_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        if !open {
            return;
        }
        let linger = inner.config.batch_linger;
        if !had_to_wait.get()
            && !in_flight
            && !linger.is_zero()
            && inner.state.borrow().pending_records < inner.config.batch_records_max / 2
        {
            // The disk is busy (appends queued while the last write ran):
            // wait a bounded moment to make the next batch bigger.
            glommio::timer::sleep(linger).await;
        }
        let (local_ready, import_ready) = {
            let state = inner.state.borrow();
            (!state.pending_batches.is_empty(), !state.imports.is_empty())
        };
        if local_ready && !import_ready {
            let behind = syncing.as_ref().map_or(0, |s| s.written.len);
            if behind > 0 && needs_new_segment(&inner, behind) {
                // A roll must not overtake the batch syncing in the old
                // segment. With the pipeline empty, retention runs too
                // (under steady load this is where it gets its turn).
                finish_sync(&inner, syncing.take()).await;
                if let Err(err) = enforce_retention(&inner).await {
                    log::warn!("log {}: retention failed: {err}", inner.dir.display());
                }
                continue;
            }
            syncing = write_local_batch(&inner, syncing.take()).await;
        } else if syncing.is_some() {
            finish_sync(&inner, syncing.take()).await;
            continue;
        } else if import_ready {
            let import = inner.state.borrow_mut().imports.pop_front().expect("checked above");
            let guard = InFlight(vec![(import.slot, 0)]);
            let outcome = write_import(&inner, import.bytes).await;
            guard.0[0].0.resolve(outcome);
        }
        if syncing.is_none() && inner.state.borrow().segments.len() > 1 {
            if let Err(err) = enforce_retention(&inner).await {
                log::warn!("log {}: retention failed: {err}", inner.dir.display());
            }
        }
    }
}

/// Gives the queued records consecutive LSNs from `first_lsn` (after a
/// failed batch handed its LSNs back, or an import moved the log on).
fn renumber_pending(state: &mut State, first_lsn: Lsn) {
    let mut next = first_lsn;
    for batch in state.pending_batches.iter_mut() {
        batch.builder.renumber(next);
        next += batch.builder.len() as u64;
    }
    state.pending_next_lsn = next;
}

/// Fails a batch (and everything queued behind it moves down to its LSNs,
/// keeping the sequence gap-free).
fn fail_batch(inner: &Rc<Inner>, slot: InFlight, first_lsn: Lsn, last_lsn: Lsn, err: StorageError) {
    {
        let mut state = inner.state.borrow_mut();
        state.stats.batch_failures_total += 1;
        renumber_pending(&mut state, first_lsn);
    }
    log::warn!("log {}: batch {first_lsn}..={last_lsn} failed: {err}", inner.dir.display());
    slot.fail(&err);
}

/// Waits for the batch in flight to be durable and commits it (or fails it).
async fn finish_sync(inner: &Rc<Inner>, syncing: Option<Syncing>) {
    let Some(Syncing { written, slot, sync }) = syncing else {
        return;
    };
    match sync.await {
        Ok(()) => commit_and_resolve(inner, written, slot),
        Err(err) => {
            cut_tail(inner, &written.file, written.pos).await;
            fail_batch(inner, slot, written.first_lsn, written.last_lsn, err);
        }
    }
}

/// Makes a durable commit part of the log and answers its appends.
fn commit_and_resolve(inner: &Rc<Inner>, written: Written, slot: InFlight) {
    commit_written(inner, written);
    slot.commit();
}

/// Writes the next group commit - the queued batches, up to
/// `commit_bytes_max` - behind the one in flight (whose fdatasync runs
/// meanwhile), commits that one, and returns the new one with its fdatasync
/// started.
async fn write_local_batch(inner: &Rc<Inner>, previous: Option<Syncing>) -> Option<Syncing> {
    let behind = previous.as_ref().map_or(0, |s| s.written.len);
    let (slot, pieces, offsets, first_lsn, records) = {
        let mut state = inner.state.borrow_mut();
        let state = &mut *state;
        let expected_lsn = previous.as_ref().map_or(state.next_lsn, |s| s.written.last_lsn + 1);
        let (mut slots, mut pieces, mut offsets) = (Vec::new(), Vec::new(), Vec::new());
        let (mut bytes, mut records, mut biggest) = (0usize, 0usize, 0usize);
        // The first batch always goes; more only while the commit stays
        // within its bound (each batch is already within `batch_bytes_max`).
        while let Some(next) = state.pending_batches.front() {
            if !pieces.is_empty() && bytes + next.builder.encoded_len() > inner.config.commit_bytes_max {
                break;
            }
            let PendingBatch { mut builder, slot } = state.pending_batches.pop_front().expect("checked above");
            debug_assert_eq!(builder.first_lsn(), expected_lsn + records as u64, "tentative LSNs continue the log");
            debug_assert!(!builder.is_empty() && builder.encoded_len() <= inner.config.batch_bytes_max);
            state.pending_records -= builder.len();
            // The largest batch of the commit: the last one taken may be
            // the partly filled tail of the queue.
            biggest = biggest.max(builder.encoded_len());
            builder.finish();
            slots.push((slot, builder.first_lsn()));
            offsets.push((builder.first_lsn(), bytes as u64));
            records += builder.len();
            let piece = builder.take();
            bytes += piece.len();
            pieces.push(piece);
        }
        if pieces.is_empty() {
            return previous;
        }
        state.batch_bytes_hint = biggest;
        (InFlight(slots), pieces, offsets, expected_lsn, records)
    };
    let last_lsn = first_lsn + records as u64 - 1;
    let write = write_at_tail(inner, pieces, offsets, first_lsn, last_lsn, behind);
    let (written, previous) = match previous {
        None => (write.await, None),
        Some(Syncing { written, slot, sync }) => {
            let (now, before) = futures_lite::future::zip(write, sync).await;
            (now, Some((written, slot, before)))
        }
    };
    if let Some((before, before_slot, synced)) = previous {
        match synced {
            Ok(()) => commit_and_resolve(inner, before, before_slot),
            Err(err) => {
                // The earlier batch is not durable: cut both (the new one
                // was written after it) and fail both.
                cut_tail(inner, &before.file, before.pos).await;
                fail_batch(inner, slot, first_lsn, last_lsn, err.clone());
                fail_batch(inner, before_slot, before.first_lsn, before.last_lsn, err);
                return None;
            }
        }
    }
    match written {
        Ok(written) => {
            let file = written.file.clone();
            let sync: Pin<Box<dyn Future<Output = Result<()>>>> =
                Box::pin(async move { file.fdatasync().await.map_err(|e| StorageError::io("fdatasync", &e)) });
            Some(Syncing { written, slot, sync })
        }
        Err(err) => {
            fail_batch(inner, slot, first_lsn, last_lsn, err);
            None
        }
    }
}

/// What to write for an import: the accepted bytes, each batch's (first LSN,
/// offset in `bytes`), and the LSN range they cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportPlan {
    /// Batches to append, overlaps already cut off.
    pub bytes: Vec<u8>,
    /// (first LSN, offset) of each batch in `bytes`.
    pub batch_offsets: Vec<(Lsn, u64)>,
    /// First LSN written.
    pub first_lsn: Lsn,
    /// Last LSN written.
    pub last_lsn: Lsn,
}

/// Decides what of `incoming` (concatenated batches) continues a log whose
/// next LSN is `next_lsn` (sans-IO; shared by the log and the simulation).
/// Records already held are dropped (resends are normal), a batch that
/// overlaps is cut, a gap is an error, and an empty log (`log_is_empty`)
/// accepts any first LSN. `Ok(None)` means nothing new.
pub fn plan_import(incoming: &[u8], next_lsn: Lsn, log_is_empty: bool) -> Result<Option<ImportPlan>> {
    let (batches, damage) = split_batches(incoming);
    if let Some((offset, kind)) = damage {
        return Err(StorageError::Protocol(format!("imported batch damaged at offset {offset}: {kind}")));
    }
    let mut next = next_lsn;
    let mut out = Vec::with_capacity(incoming.len());
    let mut offsets = Vec::new();
    let mut first_written = None;
    for batch in &batches {
        if batch.last_lsn() < next {
            continue; // duplicate from a resend
        }
        if batch.first_lsn > next {
            if log_is_empty && first_written.is_none() {
                next = batch.first_lsn;
            } else {
                return Err(StorageError::LsnGap { expected: next, got: batch.first_lsn });
            }
        }
        first_written.get_or_insert(next.max(batch.first_lsn));
        offsets.push((next.max(batch.first_lsn), out.len() as u64));
        if batch.first_lsn < next {
            let suffix = rebatch_from(batch, next).expect("overlap checked above");
            out.extend_from_slice(&suffix);
        } else {
            out.extend_from_slice(batch.bytes);
        }
        next = batch.last_lsn() + 1;
    }
    Ok(first_written.map(|first_lsn| ImportPlan { bytes: out, batch_offsets: offsets, first_lsn, last_lsn: next - 1 }))
}

async fn write_import(inner: &Rc<Inner>, bytes: Vec<u8>) -> Result<Lsn> {
    let (next, empty_log) = {
        let state = inner.state.borrow();
        (state.next_lsn, state.durable_lsn == 0)
    };
    let Some(plan) = plan_import(&bytes, next, empty_log)? else {
        return Ok(inner.state.borrow().durable_lsn);
    };
    if empty_log {
        inner.state.borrow_mut().next_lsn = plan.first_lsn;
    }
    let persisted = persist(inner, plan.bytes, plan.batch_offsets, plan.first_lsn, plan.last_lsn).await;
    if let Err(err) = persisted {
        if empty_log {
            inner.state.borrow_mut().next_lsn = next;
        }
        return Err(err);
    }
    // Local appends queued meanwhile (not expected on a replica, possible
    // during a repair) continue after the imported records.
    let mut state = inner.state.borrow_mut();
    let next = state.next_lsn;
    renumber_pending(&mut state, next);
    Ok(state.durable_lsn)
}

/// Writes one buffer of whole batches at the end of the active segment and
/// makes it durable (imports; local batches use the pipeline in
/// `writer_loop`); on failure the log's state is unchanged.
async fn persist(
    inner: &Rc<Inner>,
    bytes: Vec<u8>,
    batch_offsets: Vec<(Lsn, u64)>,
    first_lsn: Lsn,
    last_lsn: Lsn,
) -> Result<()> {
    let result = match write_at_tail(inner, vec![bytes], batch_offsets, first_lsn, last_lsn, 0).await {
        Ok(written) => match written.file.fdatasync().await {
            Ok(()) => {
                commit_written(inner, written);
                Ok(())
            }
            Err(e) => {
                cut_tail(inner, &written.file, written.pos).await;
                Err(StorageError::io("fdatasync", &e))
            }
        },
        Err(err) => Err(err),
    };
    if let Err(err) = &result {
        inner.state.borrow_mut().stats.batch_failures_total += 1;
        log::warn!("log {}: batch {first_lsn}..={last_lsn} failed: {err}", inner.dir.display());
    }
    result
}

/// Whole batches written to the active segment, not yet known durable.
struct Written {
    file: Rc<dyn SegmentFile>,
    /// Where they start in the segment.
    pos: u64,
    /// Bytes written, padding included.
    len: u64,
    pad: u64,
    /// (first LSN, offset from `pos`) of each batch.
    batch_offsets: Vec<(Lsn, u64)>,
    first_lsn: Lsn,
    last_lsn: Lsn,
    started: std::time::Instant,
}

/// True when a write behind `behind` bytes still in flight would have to go
/// to a new segment.
fn needs_new_segment(inner: &Rc<Inner>, behind: u64) -> bool {
    let state = inner.state.borrow();
    state.segments.back().is_none_or(|active| active.len + behind >= inner.config.segment_bytes_target)
}

/// Cuts the active segment back to `pos` after a failed write or fdatasync,
/// so the next batch starts on a clean tail; if even that fails, the cut is
/// retried before the next write.
async fn cut_tail(inner: &Rc<Inner>, file: &Rc<dyn SegmentFile>, pos: u64) {
    let cut = file.truncate(pos).await;
    inner.state.borrow_mut().tail_dirty = cut.is_err();
}

/// Writes `pieces` (whole batches back to back, padded here to the write
/// alignment) at the end of the active segment, `behind` bytes after its
/// durable end (the commit whose fdatasync is in flight). Rolls or creates
/// the segment only when nothing is in flight.
async fn write_at_tail(
    inner: &Rc<Inner>,
    mut pieces: Vec<Vec<u8>>,
    batch_offsets: Vec<(Lsn, u64)>,
    first_lsn: Lsn,
    last_lsn: Lsn,
    behind: u64,
) -> Result<Written> {
    debug_assert!(!batch_offsets.is_empty() && first_lsn <= last_lsn);
    let started = std::time::Instant::now();
    if behind == 0 {
        ensure_active_segment(inner, first_lsn).await?;
    }
    let (file, pos, dirty) = {
        let state = inner.state.borrow();
        let active = state.segments.back().expect("ensured above");
        (active.file.clone(), active.len + behind, state.tail_dirty)
    };
    if dirty {
        debug_assert_eq!(behind, 0, "a failure drains the pipeline");
        file.truncate(pos).await.map_err(|e| StorageError::io("truncate failed tail", &e))?;
        inner.state.borrow_mut().tail_dirty = false;
    }
    let before_last: usize = pieces.iter().rev().skip(1).map(Vec::len).sum();
    let last = pieces.last_mut().expect("at least one batch");
    let pad = pad_to_alignment(last, pos + before_last as u64, inner.align);
    let len = before_last + last.len();
    let failure = match file.write_all_at(pieces, pos).await {
        Ok(n) if n == len => None,
        Ok(_) => Some(StorageError::io("write", &std::io::Error::from_raw_os_error(libc::ENOSPC))),
        Err(e) => Some(StorageError::io("write", &e)),
    };
    if let Some(err) = failure {
        cut_tail(inner, &file, pos).await;
        return Err(err);
    }
    Ok(Written { file, pos, len: len as u64, pad: pad as u64, batch_offsets, first_lsn, last_lsn, started })
}

/// Records durable batches in the log's state (in LSN order).
fn commit_written(inner: &Rc<Inner>, written: Written) {
    let mut state = inner.state.borrow_mut();
    state.batch_write_us.record(written.started.elapsed().as_micros() as u64);
    let segment = state.segments.back_mut().expect("active segment exists");
    debug_assert_eq!(segment.len, written.pos, "batches commit in order");
    let base = segment.len;
    segment.batches.extend(written.batch_offsets.iter().map(|(lsn, off)| (*lsn, base + off)));
    segment.len += written.len;
    segment.last_lsn = written.last_lsn;
    segment.last_write = SystemTime::now();
    state.next_lsn = written.last_lsn + 1;
    state.durable_lsn = written.last_lsn;
    state.stats.commits_total += 1;
    state.stats.batches_total += written.batch_offsets.len() as u64;
    let records = written.last_lsn + 1 - written.first_lsn;
    state.stats.records_total += records;
    state.stats.bytes_total += written.len;
    state.stats.pad_bytes_total += written.pad;
    let ends = written.batch_offsets.iter().skip(1).map(|(lsn, _)| *lsn).chain([written.last_lsn + 1]);
    let largest = written.batch_offsets.iter().zip(ends).map(|((first, _), end)| end - first).max().unwrap_or(0);
    state.stats.batch_records_peak = state.stats.batch_records_peak.max(largest);
    for waker in state.durable_wakers.drain(..) {
        waker.wake();
    }
}

/// Pads the segment at `path` from `len` to the next multiple of `align`
/// (at start-up, before the segment is opened for writing); returns the pad
/// length.
fn pad_segment_tail(path: &Path, len: u64, align: u64) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut pad = Vec::new();
    pad_to_alignment(&mut pad, len, align);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| StorageError::io("open segment to pad its tail", &e))?;
    file.write_all_at(&pad, len)
        .and_then(|_| file.sync_data())
        .map_err(|e| StorageError::io("pad segment tail", &e))?;
    log::info!("log {}: padded the tail at {len} with {} bytes to a {align}-byte boundary", path.display(), pad.len());
    Ok(pad.len() as u64)
}

/// Makes sure the last segment can take a batch starting at `first_lsn`:
/// rolls when the active one is full, creates the first one, and replaces an
/// empty one whose name no longer matches (an import rebasing an empty log).
async fn ensure_active_segment(inner: &Rc<Inner>, first_lsn: Lsn) -> Result<()> {
    let (need_new, remove_empty) = {
        let state = inner.state.borrow();
        match state.segments.back() {
            None => (true, None),
            Some(active) if active.len == 0 && active.first_lsn != first_lsn => (true, Some(active.path.clone())),
            Some(active) => (active.len > 0 && active.len >= inner.config.segment_bytes_target, None),
        }
    };
    if !need_new {
        return Ok(());
    }
    if let Some(path) = remove_empty {
        inner.state.borrow_mut().segments.pop_back();
        std::fs::remove_file(&path).map_err(|e| StorageError::io("remove empty segment", &e))?;
    }
    let path = inner.dir.join(segment_file_name(first_lsn));
    let file = inner.fs.create(&path).await.map_err(|e| StorageError::io("create segment", &e))?;
    // The segment's existence must be durable before records in it are
    // acknowledged, or a crash could lose the whole file.
    if let Err(e) = inner.fs.sync_dir(&inner.dir).await {
        let _ = std::fs::remove_file(&path);
        return Err(StorageError::io("sync log directory", &e));
    }
    let mut state = inner.state.borrow_mut();
    state.stats.segments_created_total += 1;
    state.segments.push_back(Segment {
        path,
        first_lsn,
        last_lsn: first_lsn - 1,
        len: 0,
        batches: Vec::new(),
        file,
        last_write: SystemTime::now(),
    });
    Ok(())
}

async fn enforce_retention(inner: &Rc<Inner>) -> Result<usize> {
    let mut removed = Vec::new();
    {
        let mut state = inner.state.borrow_mut();
        let now = SystemTime::now();
        let mut total: u64 = state.segments.iter().map(|s| s.len).sum();
        while state.segments.len() > 1 {
            let oldest = state.segments.front().expect("len > 1");
            let unneeded = oldest.last_lsn < state.retention_watermark;
            let too_big = total > inner.config.retention_bytes_max;
            let too_old =
                now.duration_since(oldest.last_write).map(|age| age > inner.config.retention_age_max).unwrap_or(false);
            if !(unneeded && (too_big || too_old)) {
                break;
            }
            let oldest = state.segments.pop_front().expect("len > 1");
            total -= oldest.len;
            state.stats.segments_deleted_total += 1;
            removed.push(oldest.path);
        }
    }
    if removed.is_empty() {
        return Ok(0);
    }
    for path in &removed {
        std::fs::remove_file(path).map_err(|e| StorageError::io("remove segment", &e))?;
    }
    inner.fs.sync_dir(&inner.dir).await.map_err(|e| StorageError::io("sync log directory", &e))?;
    Ok(removed.len())
}
