//! Keyed tables: bitcask-style small tables for state such as issuance
//! cursors and sequence ceilings.
//!
//! A table is an in-memory index (key -> latest value and its LSN) over its
//! own [`Log`]. Every put/delete is a log record, durable when the call
//! resolves. Start-up loads the newest valid snapshot ("hint file": every
//! live entry, CRC-protected) and replays only the log after it.
//! [`Table::compact`] writes a new snapshot from the index while appends go
//! on, then releases the log segments the snapshot covers, so dead entries
//! (overwritten or deleted) disappear from disk.
//!
//! Record payload: `key_len u16 | key | value`. Kinds [`TABLE_PUT`] and
//! [`TABLE_DELETE`]. Snapshot file `snapshot-<lsn>.hint`:
//! `magic 8 | covered_lsn u64 | count u64 | (key_len u16 | value_len u32 |
//! key | value)* | crc32c u32`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::check::{check_log_dir, CheckReport, Finding};
use crate::config::LogConfig;
use crate::error::{DamageKind, StorageError};
use crate::file_io::FileSystem;
use crate::log::Log;
use crate::record::RecordKind;
use crate::{Lsn, Result};

/// Record kind of a put.
pub const TABLE_PUT: RecordKind = 0xF0;
/// Record kind of a delete.
pub const TABLE_DELETE: RecordKind = 0xF1;
const SNAPSHOT_MAGIC: &[u8; 8] = b"RDSNAP01";

/// Bounds of one table.
#[derive(Debug, Clone)]
pub struct TableConfig {
    /// Most live keys; puts of new keys beyond it are refused.
    pub entries_max: usize,
    /// Longest key.
    pub key_bytes_max: usize,
    /// Longest value.
    pub value_bytes_max: usize,
    /// The table's log. Its retention bytes default to 0: once a snapshot
    /// covers a segment, nothing in it is needed any more.
    pub log: LogConfig,
}

impl Default for TableConfig {
    fn default() -> Self {
        Self {
            entries_max: 1_000_000,
            key_bytes_max: 1024,
            value_bytes_max: 64 << 10,
            log: LogConfig {
                segment_bytes_target: 8 << 20,
                retention_bytes_max: 0,
                retention_age_max: std::time::Duration::ZERO,
                ..LogConfig::default()
            },
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    lsn: Lsn,
    /// `None` is a tombstone, kept until the next snapshot so an older put
    /// resolving late cannot resurrect a deleted key.
    value: Option<Vec<u8>>,
}

/// The in-memory index of a table: key -> newest durable value and its LSN.
/// Changes apply only if newer than what is held, so replaying a record
/// twice (snapshot overlap, compaction catch-up) is harmless.
#[derive(Debug, Default)]
pub struct TableIndex {
    map: HashMap<Vec<u8>, Entry>,
    live: usize,
    dead_records: u64,
}

impl TableIndex {
    /// Applies a durable put (`Some(value)`) or delete (`None`) at `lsn`.
    pub fn apply(&mut self, key: &[u8], lsn: Lsn, value: Option<&[u8]>) {
        let is_put = value.is_some();
        match self.map.get_mut(key) {
            Some(entry) if entry.lsn >= lsn => {
                // Older than what we hold: it is dead on arrival.
                self.dead_records += 1;
            }
            Some(entry) => {
                let was_live = entry.value.is_some();
                entry.lsn = lsn;
                match (&mut entry.value, value) {
                    // Reuse the allocation when overwriting a value.
                    (Some(old), Some(new)) => {
                        old.clear();
                        old.extend_from_slice(new);
                    }
                    (slot, new) => *slot = new.map(<[u8]>::to_vec),
                }
                self.dead_records += 1;
                match (was_live, is_put) {
                    (true, false) => self.live -= 1,
                    (false, true) => self.live += 1,
                    _ => {}
                }
            }
            None => {
                self.map.insert(key.to_vec(), Entry { lsn, value: value.map(<[u8]>::to_vec) });
                if is_put {
                    self.live += 1;
                }
            }
        }
    }

    /// The current value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).and_then(|e| e.value.as_deref())
    }

    /// Live keys.
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when no key is live.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Records superseded so far.
    pub fn dead_records(&self) -> u64 {
        self.dead_records
    }
}

/// A bitcask-style keyed table over its own log.
pub struct Table {
    dir: PathBuf,
    config: TableConfig,
    fs: Rc<dyn FileSystem>,
    log: Log,
    index: RefCell<TableIndex>,
    snapshot_lsn: Cell<Lsn>,
    compacting: Cell<bool>,
}

fn encode_put(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + key.len() + value.len());
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out
}

fn decode_payload(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u16::from_le_bytes(payload.get(0..2)?.try_into().ok()?) as usize;
    let key = payload.get(2..2 + len)?;
    Some((key, &payload[2 + len..]))
}

fn snapshot_name(lsn: Lsn) -> String {
    format!("snapshot-{lsn:020}.hint")
}

/// Snapshot files in `dir`, newest first.
fn snapshot_files(dir: &Path) -> Vec<(Lsn, PathBuf)> {
    let mut files: Vec<(Lsn, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let lsn = name.strip_prefix("snapshot-")?.strip_suffix(".hint")?.parse().ok()?;
            Some((lsn, e.path()))
        })
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    files
}

/// A (key, value) pair stored in a snapshot.
type SnapshotEntry = (Vec<u8>, Vec<u8>);

/// Parses and verifies a snapshot; `None` if damaged.
fn parse_snapshot(bytes: &[u8]) -> Option<(Lsn, Vec<SnapshotEntry>)> {
    if bytes.len() < 28 || &bytes[0..8] != SNAPSHOT_MAGIC {
        return None;
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let covered = u64::from_le_bytes(body[8..16].try_into().ok()?);
    let count = u64::from_le_bytes(body[16..24].try_into().ok()?);
    let mut at = 24usize;
    let mut entries = Vec::new();
    for _ in 0..count {
        let key_len = u16::from_le_bytes(body.get(at..at + 2)?.try_into().ok()?) as usize;
        let value_len = u32::from_le_bytes(body.get(at + 2..at + 6)?.try_into().ok()?) as usize;
        at += 6;
        let key = body.get(at..at + key_len)?.to_vec();
        at += key_len;
        let value = body.get(at..at + value_len)?.to_vec();
        at += value_len;
        entries.push((key, value));
    }
    (at == body.len()).then_some((covered, entries))
}

impl Table {
    /// Opens the table in `dir`: newest valid snapshot, then the log after it.
    pub async fn open(dir: &Path, config: TableConfig, fs: Rc<dyn FileSystem>) -> Result<Table> {
        std::fs::create_dir_all(dir).map_err(|e| StorageError::io("create table directory", &e))?;
        let mut index = TableIndex::default();
        let mut snapshot_lsn = 0;
        for (lsn, path) in snapshot_files(dir) {
            let bytes = std::fs::read(&path).map_err(|e| StorageError::io("read snapshot", &e))?;
            match parse_snapshot(&bytes) {
                Some((covered, entries)) if covered == lsn => {
                    for (key, value) in entries {
                        index.apply(&key, covered, Some(&value));
                    }
                    snapshot_lsn = covered;
                    break;
                }
                _ => log::warn!("table {}: snapshot {} damaged, trying an older one", dir.display(), path.display()),
            }
        }
        let log = Log::open(&dir.join("log"), config.log.clone(), fs.clone()).await?;
        if log.durable_lsn() > snapshot_lsn && log.first_lsn() > snapshot_lsn + 1 {
            // Records between the snapshot and the log's start are gone.
            return Err(StorageError::NotRetained { requested: snapshot_lsn + 1, first_available: log.first_lsn() });
        }
        let table = Table {
            dir: dir.to_path_buf(),
            config,
            fs,
            log,
            index: RefCell::new(index),
            snapshot_lsn: Cell::new(snapshot_lsn),
            compacting: Cell::new(false),
        };
        table.replay_from(snapshot_lsn + 1).await?;
        Ok(table)
    }

    async fn replay_from(&self, from: Lsn) -> Result<()> {
        let mut damaged = None;
        self.log
            .for_each_record(from, |record| {
                let Some((key, value)) = decode_payload(record.payload) else {
                    damaged.get_or_insert(record.lsn);
                    return;
                };
                let value = match record.kind {
                    TABLE_PUT => Some(value.to_vec()),
                    TABLE_DELETE => None,
                    _ => {
                        damaged.get_or_insert(record.lsn);
                        return;
                    }
                };
                self.apply(key, record.lsn, value);
            })
            .await?;
        match damaged {
            None => Ok(()),
            Some(lsn) => Err(StorageError::Corruption {
                segment: self.dir.join("log"),
                offset: lsn,
                kind: DamageKind::BadLength,
            }),
        }
    }

    fn apply(&self, key: &[u8], lsn: Lsn, value: Option<Vec<u8>>) {
        self.index.borrow_mut().apply(key, lsn, value.as_deref());
    }

    /// Sets `key` to `value`; durable when it resolves.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<Lsn> {
        if key.len() > self.config.key_bytes_max.min(u16::MAX as usize) {
            return Err(StorageError::RecordTooLarge { size: key.len(), limit: self.config.key_bytes_max });
        }
        if value.len() > self.config.value_bytes_max {
            return Err(StorageError::RecordTooLarge { size: value.len(), limit: self.config.value_bytes_max });
        }
        let (is_new, live) = {
            let index = self.index.borrow();
            (index.get(key).is_none(), index.len())
        };
        if is_new && live >= self.config.entries_max {
            return Err(StorageError::Overloaded { pending: live, limit: self.config.entries_max });
        }
        let lsn = self.log.append(TABLE_PUT, &encode_put(key, value)).await?;
        self.apply(key, lsn, Some(value.to_vec()));
        Ok(lsn)
    }

    /// Removes `key`; durable when it resolves.
    pub async fn delete(&self, key: &[u8]) -> Result<Lsn> {
        if key.len() > self.config.key_bytes_max.min(u16::MAX as usize) {
            return Err(StorageError::RecordTooLarge { size: key.len(), limit: self.config.key_bytes_max });
        }
        let lsn = self.log.append(TABLE_DELETE, &encode_put(key, &[])).await?;
        self.apply(key, lsn, None);
        Ok(lsn)
    }

    /// Visits every live (key, value), in no particular order (start-up recovery).
    pub fn for_each(&self, mut visit: impl FnMut(&[u8], &[u8])) {
        for (key, entry) in &self.index.borrow().map {
            if let Some(value) = entry.value.as_deref() {
                visit(key, value);
            }
        }
    }

    /// The current value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.index.borrow().get(key).map(<[u8]>::to_vec)
    }

    /// Live keys.
    pub fn len(&self) -> usize {
        self.index.borrow().len()
    }

    /// True when no key is live.
    pub fn is_empty(&self) -> bool {
        self.index.borrow().is_empty()
    }

    /// Records superseded since open (a compaction trigger).
    pub fn dead_records(&self) -> u64 {
        self.index.borrow().dead_records()
    }

    /// LSN covered by the newest snapshot.
    pub fn snapshot_lsn(&self) -> Lsn {
        self.snapshot_lsn.get()
    }

    /// The table's log (stats, segment count).
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Writes a snapshot of every live entry and drops the log segments and
    /// older snapshots it makes unnecessary. Puts and deletes continue while
    /// it runs (the snapshot is built from a copy of the index). Returns the
    /// LSN the new snapshot covers.
    pub async fn compact(&self) -> Result<Lsn> {
        if self.compacting.replace(true) {
            return Ok(self.snapshot_lsn.get());
        }
        let result = self.compact_inner().await;
        self.compacting.set(false);
        result
    }

    async fn compact_inner(&self) -> Result<Lsn> {
        let covered = self.log.durable_lsn();
        // Replaying what is durable makes the index complete up to
        // `covered` even if a put's future was dropped before it applied.
        self.replay_from(self.snapshot_lsn.get() + 1).await?;
        let mut body = Vec::new();
        body.extend_from_slice(SNAPSHOT_MAGIC);
        body.extend_from_slice(&covered.to_le_bytes());
        body.extend_from_slice(&0u64.to_le_bytes());
        let mut count = 0u64;
        {
            let index = &mut self.index.borrow_mut().map;
            // Tombstones at or below `covered` are no longer needed: the
            // snapshot simply does not contain the key.
            index.retain(|_, e| e.value.is_some() || e.lsn > covered);
            for (key, entry) in index.iter() {
                // Entries newer than `covered` are in the log after the
                // snapshot; replay re-applies them, so the snapshot holds the
                // latest value at or below `covered` only when it has one.
                if entry.lsn > covered {
                    continue;
                }
                if let Some(value) = &entry.value {
                    body.extend_from_slice(&(key.len() as u16).to_le_bytes());
                    body.extend_from_slice(&(value.len() as u32).to_le_bytes());
                    body.extend_from_slice(key);
                    body.extend_from_slice(value);
                    count += 1;
                }
            }
        }
        body[16..24].copy_from_slice(&count.to_le_bytes());
        let crc = crc32c::crc32c(&body);
        body.extend_from_slice(&crc.to_le_bytes());

        let final_path = self.dir.join(snapshot_name(covered));
        let tmp_path = self.dir.join(format!("{}.tmp", snapshot_name(covered)));
        let _ = std::fs::remove_file(&tmp_path);
        let file = self.fs.create(&tmp_path).await.map_err(|e| StorageError::io("create snapshot", &e))?;
        let len = body.len();
        let written = file.write_at(body, 0).await.map_err(|e| StorageError::io("write snapshot", &e))?;
        if written != len {
            let _ = std::fs::remove_file(&tmp_path);
            return Err(StorageError::io("write snapshot", &std::io::Error::from_raw_os_error(libc::ENOSPC)));
        }
        file.fdatasync().await.map_err(|e| StorageError::io("sync snapshot", &e))?;
        std::fs::rename(&tmp_path, &final_path).map_err(|e| StorageError::io("publish snapshot", &e))?;
        self.fs.sync_dir(&self.dir).await.map_err(|e| StorageError::io("sync table directory", &e))?;
        self.snapshot_lsn.set(covered);
        for (lsn, path) in snapshot_files(&self.dir) {
            if lsn < covered {
                let _ = std::fs::remove_file(path);
            }
        }
        self.log.set_retention_watermark(covered + 1);
        self.log.enforce_retention().await?;
        Ok(covered)
    }

    /// Full-scan check of a table directory: every snapshot and every log
    /// segment. Reports damaged snapshots and log damage with file and offset.
    pub fn check_dir(dir: &Path) -> Result<CheckReport> {
        let mut report = check_log_dir(&dir.join("log"))?;
        for (_, path) in snapshot_files(dir) {
            let bytes = std::fs::read(&path).map_err(|e| StorageError::io("read snapshot", &e))?;
            if parse_snapshot(&bytes).is_some() {
                report.snapshots_valid += 1;
            } else {
                report.findings.push(Finding {
                    file: path,
                    offset: 0,
                    kind: DamageKind::BatchChecksum,
                    torn_tail: false,
                });
            }
        }
        Ok(report)
    }
}
