//! Typed errors of redrain-storage.
//!
//! Every failure a caller can see is one variant here. Errors are `Clone`
//! because one failed group-commit batch resolves many waiting appends with the
//! same outcome, and `Send + Sync` so a binary can wrap them in `anyhow`.

use std::io;
use std::path::PathBuf;

use crate::Lsn;

/// A failed I/O call, kept as plain data so it can be cloned to every waiter
/// of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoFailure {
    /// What the storage layer was doing (`"write"`, `"fdatasync"`, ...).
    pub op: &'static str,
    /// The OS error kind.
    pub kind: io::ErrorKind,
    /// The raw errno, when the OS reported one.
    pub errno: Option<i32>,
    /// The error's text.
    pub message: String,
}

impl IoFailure {
    /// Captures `err` raised while doing `op`.
    pub fn new(op: &'static str, err: &io::Error) -> Self {
        Self { op, kind: err.kind(), errno: err.raw_os_error(), message: err.to_string() }
    }

    /// True when the device ran out of space (ENOSPC or EDQUOT).
    pub fn is_disk_full(&self) -> bool {
        matches!(self.errno, Some(libc::ENOSPC) | Some(libc::EDQUOT)) || self.kind == io::ErrorKind::StorageFull
    }
}

impl std::fmt::Display for IoFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.op, self.message)
    }
}

/// Why a batch or record on disk was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageKind {
    /// The batch header's magic number is wrong.
    BadMagic,
    /// A length field is out of bounds.
    BadLength,
    /// The batch checksum does not match its contents.
    BatchChecksum,
    /// A record checksum does not match its contents.
    RecordChecksum,
    /// The record count or LSN sequence inside a batch is inconsistent.
    BadRecordSequence,
    /// A batch's LSN does not follow the previous batch's.
    LsnDiscontinuity,
    /// The file ends in the middle of a batch.
    Truncated,
}

impl std::fmt::Display for DamageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            DamageKind::BadMagic => "bad batch magic",
            DamageKind::BadLength => "length out of bounds",
            DamageKind::BatchChecksum => "batch checksum mismatch",
            DamageKind::RecordChecksum => "record checksum mismatch",
            DamageKind::BadRecordSequence => "record count or LSN sequence inconsistent",
            DamageKind::LsnDiscontinuity => "LSN does not follow the previous batch",
            DamageKind::Truncated => "file ends inside a batch",
        };
        f.write_str(text)
    }
}

/// Every error redrain-storage returns.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// An I/O call failed; the log is still consistent and later appends may
    /// succeed (for example once disk space returns).
    #[error("I/O error: {0}")]
    Io(IoFailure),
    /// The device is full; the log is still consistent.
    #[error("disk full: {0}")]
    DiskFull(IoFailure),
    /// Damage found before the tail of the log. Open refuses to continue unless
    /// asked to repair from a peer.
    #[error("corruption in {segment:?} at offset {offset}: {kind}")]
    Corruption {
        /// The damaged segment file.
        segment: PathBuf,
        /// Byte offset of the first damaged batch in that segment.
        offset: u64,
        /// What was wrong.
        kind: DamageKind,
    },
    /// More appends are waiting than `appends_pending_max` allows.
    #[error("overloaded: {pending} appends pending, limit {limit}")]
    Overloaded {
        /// Appends waiting.
        pending: usize,
        /// The configured bound.
        limit: usize,
    },
    /// A record payload exceeds `record_payload_bytes_max`.
    #[error("record of {size} bytes exceeds limit {limit}")]
    RecordTooLarge {
        /// Payload size.
        size: usize,
        /// The configured bound.
        limit: usize,
    },
    /// A group of records for one batch is empty or does not fit one batch.
    #[error("a group of {records} records ({bytes} bytes) does not fit one batch: 1 to {records_limit} records, at most {bytes_limit} bytes")]
    BadGroup {
        /// Records in the group.
        records: usize,
        /// Encoded bytes of the group.
        bytes: usize,
        /// Most records per batch.
        records_limit: usize,
        /// Most encoded record bytes per batch.
        bytes_limit: usize,
    },
    /// The log (or replication stream) was shut down.
    #[error("closed")]
    Closed,
    /// Imported records do not continue the log.
    #[error("LSN gap: expected {expected}, got {got}")]
    LsnGap {
        /// The next LSN the log expected.
        expected: Lsn,
        /// The LSN that arrived.
        got: Lsn,
    },
    /// The requested LSN was removed by retention (or never existed).
    #[error("LSN {requested} not retained; first available is {first_available}")]
    NotRetained {
        /// What was asked for.
        requested: Lsn,
        /// The oldest LSN still on disk.
        first_available: Lsn,
    },
    /// The record is durable locally but neither peer is reachable, and the
    /// stream is configured to fail fast. The record may still become
    /// committed later when a peer returns.
    #[error("no quorum: record {lsn} durable locally only, both peers down")]
    NoQuorum {
        /// The record's LSN.
        lsn: Lsn,
    },
    /// The commit did not reach a quorum within `commit_timeout`.
    #[error("commit of {lsn} timed out waiting for a peer")]
    CommitTimeout {
        /// The record's LSN.
        lsn: Lsn,
    },
    /// A peer sent a malformed frame.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl StorageError {
    /// Wraps an I/O error raised while doing `op`, classifying disk-full.
    pub fn io(op: &'static str, err: &io::Error) -> Self {
        let failure = IoFailure::new(op, err);
        if failure.is_disk_full() {
            StorageError::DiskFull(failure)
        } else {
            StorageError::Io(failure)
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
