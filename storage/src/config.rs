//! Configuration of the local log. Every queue, batch and buffer of the log
//! has its bound here, with the reason for its default.

use std::time::Duration;

/// Bounds and policies of one local log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Roll to a new segment once the active one reaches this size. 64 MiB
    /// keeps the segment count (and open fds) small and retention coarse
    /// enough to be cheap.
    pub segment_bytes_target: u64,
    /// Most bytes one group commit writes. 4 MiB at ~280 MiB/s is ~15 ms of
    /// disk time: large enough to reach bandwidth, small enough to bound the
    /// latency of the appends queued behind it.
    pub batch_bytes_max: usize,
    /// Most bytes one group commit (one write and one fdatasync) carries:
    /// when more than a batch is queued, the writer takes several queued
    /// batches at once. Each fdatasync of an extending write costs a journal
    /// commit and a device flush. On the test machine, disk-bound, commits
    /// of up to 16 MiB took two cores from 4.49 to 5.39 M records/s (100-byte
    /// records, medians of interleaved runs; docs/storage.md). Batches stay
    /// at `batch_bytes_max` for shipping and reading back; below saturation
    /// one batch is queued and goes alone.
    pub commit_bytes_max: usize,
    /// Most records one group commit carries.
    pub batch_records_max: usize,
    /// Extra wait to gather a bigger batch, applied only when appends are
    /// already queued behind a write (the disk is busy). Zero by default: a
    /// lone append on an idle disk is never delayed by a timer.
    pub batch_linger: Duration,
    /// Most appends waiting for durability; more are rejected with
    /// `Overloaded` (fast reject instead of an unbounded queue).
    pub appends_pending_max: usize,
    /// Largest accepted payload.
    pub record_payload_bytes_max: usize,
    /// Segments wholly below the owner's watermark are deleted while the log
    /// holds more than this many bytes...
    pub retention_bytes_max: u64,
    /// ...or while their newest record is older than this.
    pub retention_age_max: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes_target: 64 << 20,
            batch_bytes_max: 4 << 20,
            commit_bytes_max: 16 << 20,
            batch_records_max: 65_536,
            batch_linger: Duration::ZERO,
            appends_pending_max: 262_144,
            record_payload_bytes_max: 1 << 20,
            retention_bytes_max: 1 << 30,
            retention_age_max: Duration::from_secs(24 * 3600),
        }
    }
}

impl LogConfig {
    /// Checks that the bounds are coherent.
    pub fn validate(&self) -> crate::Result<()> {
        let fail = |m: &str| Err(crate::StorageError::Config(m.to_string()));
        if self.segment_bytes_target < 4096 {
            return fail("segment_bytes_target must be at least 4096");
        }
        if self.batch_records_max == 0 || self.appends_pending_max == 0 {
            return fail("batch_records_max and appends_pending_max must be positive");
        }
        if self.batch_bytes_max > crate::record::BATCH_BODY_BYTES_LIMIT {
            return fail("batch_bytes_max exceeds the format limit (64 MiB)");
        }
        if self.commit_bytes_max < self.batch_bytes_max {
            return fail("commit_bytes_max must be at least batch_bytes_max");
        }
        if self.record_payload_bytes_max + 64 > self.batch_bytes_max {
            return fail("record_payload_bytes_max must fit in one batch");
        }
        Ok(())
    }
}

/// What `Log::open` does when it finds damage before the tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DamagePolicy {
    /// Refuse to open and return `StorageError::Corruption` (default).
    #[default]
    Refuse,
    /// Cut the log at the damage (damaged files are kept aside with a
    /// `.damaged` suffix) so the caller can refetch the rest from a peer.
    TruncateForPeerRepair,
}
