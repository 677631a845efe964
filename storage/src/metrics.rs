//! Metrics of the storage layer: a plain snapshot struct (counters, gauges
//! and HdrHistograms) that the node renders in Prometheus text format.
//!
//! Recording happens on the owning core without locks; `snapshot` copies the
//! numbers out, so rendering never touches the hot path.

use std::fmt::Write;

use hdrhistogram::Histogram;

use crate::log::LogStats;
use crate::replication::commit::PeerState;
use crate::replication::wire::StreamId;
use crate::Lsn;

/// Highest latency the histograms track (60 s in microseconds); larger
/// values are clamped so recording never fails.
pub const LATENCY_US_MAX: u64 = 60_000_000;

/// A latency or size histogram with 3 significant digits.
#[derive(Debug, Clone)]
pub struct ValueHistogram(Histogram<u64>);

impl Default for ValueHistogram {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("static bounds are valid"))
    }
}

impl ValueHistogram {
    /// Records one value (clamped to the tracked range).
    pub fn record(&mut self, value: u64) {
        self.0.saturating_record(value.clamp(1, LATENCY_US_MAX));
    }

    /// Records `value` `count` times (clamped to the tracked range).
    pub fn record_n(&mut self, value: u64, count: u64) {
        self.0.saturating_record_n(value.clamp(1, LATENCY_US_MAX), count);
    }

    /// The value at `quantile` (0.0..=1.0).
    pub fn quantile(&self, quantile: f64) -> u64 {
        self.0.value_at_quantile(quantile)
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// Largest recorded value.
    pub fn max(&self) -> u64 {
        self.0.max()
    }

    /// Mean of recorded values.
    pub fn mean(&self) -> f64 {
        self.0.mean()
    }

    /// Adds all values of `other`.
    pub fn merge(&mut self, other: &ValueHistogram) {
        let _ = self.0.add(&other.0);
    }

    /// Forgets every value.
    pub fn reset(&mut self) {
        self.0.reset();
    }
}

/// What the origin knows about one peer.
#[derive(Debug, Clone)]
pub struct PeerMetrics {
    /// The peer's address.
    pub address: String,
    /// Connection state.
    pub state: PeerState,
    /// Highest LSN the peer acknowledged as durable.
    pub acked_lsn: Lsn,
    /// Records durable locally but not yet acknowledged by this peer.
    pub lag_records: u64,
    /// Bytes of batches shipped.
    pub bytes_sent_total: u64,
    /// Append frames shipped.
    pub batches_sent_total: u64,
    /// Connections lost or refused.
    pub disconnects_total: u64,
    /// Times the peer held more than the local log (local data was lost
    /// without repair); shipping to it stops until an operator repairs.
    pub diverged_total: u64,
}

/// A snapshot of one replicated stream.
#[derive(Debug, Clone)]
pub struct StorageMetrics {
    /// Which stream.
    pub stream: StreamId,
    /// The local log's counters.
    pub log: LogStats,
    /// Highest locally durable LSN.
    pub local_durable_lsn: Lsn,
    /// Highest LSN durable on two of three copies.
    pub commit_lsn: Lsn,
    /// Appends resolved as committed.
    pub commits_total: u64,
    /// Appends resolved on local durability alone (both peers down, policy
    /// `LocalOnly`). Alert on any increase.
    pub local_only_commits_total: u64,
    /// Appends failed with `NoQuorum`.
    pub no_quorum_failures_total: u64,
    /// Appends failed with `CommitTimeout`.
    pub commit_timeouts_total: u64,
    /// Append-to-commit latency in microseconds.
    pub commit_latency_us: ValueHistogram,
    /// Records per shipped append frame.
    pub ship_batch_records: ValueHistogram,
    /// The two peers.
    pub peers: Vec<PeerMetrics>,
}

impl StorageMetrics {
    /// Appends the Prometheus text exposition of this snapshot to `out`.
    pub fn render_prometheus(&self, out: &mut String) {
        let s = format!("origin_node=\"{}\",core=\"{}\"", self.stream.origin_node, self.stream.core);
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP redrain_storage_{name} {help}");
            let _ = writeln!(out, "# TYPE redrain_storage_{name} counter");
            let _ = writeln!(out, "redrain_storage_{name}{{{s}}} {value}");
        };
        counter(
            "log_group_commits_total",
            "Group commits made durable (one write and one fdatasync each).",
            self.log.commits_total,
        );
        counter(
            "log_batches_total",
            "Batches made durable (a group commit carries one or more).",
            self.log.batches_total,
        );
        counter("log_records_total", "Records made durable locally.", self.log.records_total);
        counter("log_bytes_total", "Bytes written in durable batches, padding included.", self.log.bytes_total);
        counter(
            "log_pad_bytes_total",
            "Padding written to keep direct-I/O writes block-aligned.",
            self.log.pad_bytes_total,
        );
        counter("log_batch_failures_total", "Group commits that failed.", self.log.batch_failures_total);
        counter(
            "log_overload_rejections_total",
            "Appends rejected because the pending queue was full.",
            self.log.overload_rejections_total,
        );
        counter("commits_total", "Appends committed on two of three copies.", self.commits_total);
        counter(
            "local_only_commits_total",
            "Appends acknowledged on local durability alone (both peers down).",
            self.local_only_commits_total,
        );
        counter(
            "no_quorum_failures_total",
            "Appends failed because both peers were down.",
            self.no_quorum_failures_total,
        );
        counter("commit_timeouts_total", "Appends failed waiting for a peer.", self.commit_timeouts_total);
        let _ = writeln!(out, "# TYPE redrain_storage_durable_lsn gauge");
        let _ = writeln!(out, "redrain_storage_durable_lsn{{{s}}} {}", self.local_durable_lsn);
        let _ = writeln!(out, "# TYPE redrain_storage_commit_lsn gauge");
        let _ = writeln!(out, "redrain_storage_commit_lsn{{{s}}} {}", self.commit_lsn);
        render_summary(out, "commit_latency_seconds", &s, &self.commit_latency_us, 1e-6);
        render_summary(out, "ship_batch_records", &s, &self.ship_batch_records, 1.0);
        let _ = writeln!(out, "# TYPE redrain_storage_peer_state gauge");
        let _ = writeln!(out, "# HELP redrain_storage_peer_state 0 down, 1 connecting, 2 up.");
        for (i, peer) in self.peers.iter().enumerate() {
            let p = format!("{s},peer=\"{i}\",address=\"{}\"", peer.address);
            let _ = writeln!(out, "redrain_storage_peer_state{{{p}}} {}", peer.state.gauge());
            let _ = writeln!(out, "redrain_storage_peer_acked_lsn{{{p}}} {}", peer.acked_lsn);
            let _ = writeln!(out, "redrain_storage_replication_lag_records{{{p}}} {}", peer.lag_records);
            let _ = writeln!(out, "redrain_storage_peer_bytes_sent_total{{{p}}} {}", peer.bytes_sent_total);
            let _ = writeln!(out, "redrain_storage_peer_batches_sent_total{{{p}}} {}", peer.batches_sent_total);
            let _ = writeln!(out, "redrain_storage_peer_disconnects_total{{{p}}} {}", peer.disconnects_total);
            let _ = writeln!(out, "redrain_storage_peer_diverged_total{{{p}}} {}", peer.diverged_total);
        }
    }
}

fn render_summary(out: &mut String, name: &str, labels: &str, h: &ValueHistogram, scale: f64) {
    let _ = writeln!(out, "# TYPE redrain_storage_{name} summary");
    for q in [0.5, 0.99, 0.999] {
        let _ = writeln!(out, "redrain_storage_{name}{{{labels},quantile=\"{q}\"}} {}", h.quantile(q) as f64 * scale);
    }
    let _ = writeln!(out, "redrain_storage_{name}_sum{{{labels}}} {}", h.mean() * h.count() as f64 * scale);
    let _ = writeln!(out, "redrain_storage_{name}_count{{{labels}}} {}", h.count());
}
