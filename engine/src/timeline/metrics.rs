//! The timelines' per-core figures in `/metrics`. Each core copies its
//! [`TimelineStats`](super::TimelineStats) into its block on the housekeeping tick (the
//! core is the only writer; relaxed atomics), and the admin endpoint on core 0 renders
//! every core's block, one family per figure with a `core` label.

use super::TimelineStats;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Timeline figures of one core.
#[derive(Debug, Default)]
pub struct TimelineMetrics {
    pub sends_acked_total: AtomicU64,
    pub entries_committed_total: AtomicU64,
    pub entries_failed_total: AtomicU64,
    pub group_changes_failed_total: AtomicU64,
    pub notifies_total: AtomicU64,
    pub notifies_gated_total: AtomicU64,
    pub syncs_total: AtomicU64,
    pub sync_log_reads_total: AtomicU64,
    pub lucky_opened_total: AtomicU64,
    pub inboxes: AtomicU64,
    pub groups: AtomicU64,
    pub fanout_pending: AtomicU64,
    pub fanout_pending_bytes: AtomicU64,
    pub sync_reads: AtomicU64,
    pub recent_bytes: AtomicU64,
    pub log_commits_total: AtomicU64,
    pub log_records_total: AtomicU64,
    pub log_bytes_total: AtomicU64,
    pub log_pending_appends: AtomicU64,
    pub refused_busy_total: AtomicU64,
    // Limits and flow control.
    pub rate_limited_messages_total: AtomicU64,
    pub rate_limited_syncs_total: AtomicU64,
    pub mail_retried_total: AtomicU64,
    pub mail_outbox: AtomicU64,
    pub refused_outbox_full_total: AtomicU64,
    /// Retention and compaction (see [`TimelineMetrics::set_retention`]).
    pub retention: RetentionMetrics,
}

/// Retention figures of one core's timeline log.
#[derive(Debug, Default)]
pub struct RetentionMetrics {
    pub log_bytes: AtomicU64,
    pub log_segments: AtomicU64,
    pub first_retained_lsn: AtomicU64,
    pub watermark_lsn: AtomicU64,
    pub checkpoints_total: AtomicU64,
    pub checkpoints_failed_total: AtomicU64,
    pub checkpoint_records_total: AtomicU64,
    pub segments_deleted_total: AtomicU64,
    pub syncs_expired_total: AtomicU64,
}

impl TimelineMetrics {
    /// Copies the figures of the core's timeline log (called by the core itself).
    pub fn set_log(&self, stats: &redrain_storage::LogStats, pending_appends: usize) {
        self.log_commits_total.store(stats.commits_total, Relaxed);
        self.log_records_total.store(stats.records_total, Relaxed);
        self.log_bytes_total.store(stats.bytes_total, Relaxed);
        self.log_pending_appends.store(pending_appends as u64, Relaxed);
    }

    /// Copies the core's figures (called by the core itself).
    pub fn set(&self, s: &TimelineStats) {
        self.sends_acked_total.store(s.sends_acked, Relaxed);
        self.entries_committed_total.store(s.entries_committed, Relaxed);
        self.entries_failed_total.store(s.entries_failed, Relaxed);
        self.group_changes_failed_total.store(s.group_changes_failed, Relaxed);
        self.notifies_total.store(s.notifies_pushed, Relaxed);
        self.notifies_gated_total.store(s.notifies_gated, Relaxed);
        self.syncs_total.store(s.syncs, Relaxed);
        self.sync_log_reads_total.store(s.sync_log_reads, Relaxed);
        self.lucky_opened_total.store(s.lucky_opened, Relaxed);
        self.inboxes.store(s.inboxes, Relaxed);
        self.groups.store(s.groups, Relaxed);
        self.fanout_pending.store(s.pending, Relaxed);
        self.fanout_pending_bytes.store(s.fanout_pending_bytes, Relaxed);
        self.sync_reads.store(s.sync_reads, Relaxed);
        self.recent_bytes.store(s.recent_bytes, Relaxed);
        self.refused_busy_total.store(s.refused_busy, Relaxed);
        self.rate_limited_messages_total.store(s.rate_limited_messages, Relaxed);
        self.rate_limited_syncs_total.store(s.rate_limited_syncs, Relaxed);
        self.mail_retried_total.store(s.mail_retried, Relaxed);
        self.mail_outbox.store(s.mail_outbox, Relaxed);
        self.refused_outbox_full_total.store(s.refused_outbox_full, Relaxed);
    }
}

impl TimelineMetrics {
    /// Copies the retention figures of the state machine and of the log.
    pub fn set_retention(&self, s: &super::checkpoint::RetentionStats, log: &redrain_storage::Log) {
        let r = &self.retention;
        r.log_bytes.store(log.bytes_on_disk(), Relaxed);
        r.log_segments.store(log.segment_count() as u64, Relaxed);
        r.first_retained_lsn.store(log.first_lsn(), Relaxed);
        r.watermark_lsn.store(s.watermark_lsn, Relaxed);
        r.checkpoints_total.store(s.checkpoints_total, Relaxed);
        r.checkpoints_failed_total.store(s.checkpoints_failed_total, Relaxed);
        r.checkpoint_records_total.store(s.checkpoint_records_total, Relaxed);
        r.segments_deleted_total.store(log.stats().segments_deleted_total, Relaxed);
        r.syncs_expired_total.store(s.syncs_expired_total, Relaxed);
    }
}

/// Renders the retention families of every core's timeline block.
pub fn render_retention(cores: &[&TimelineMetrics], out: &mut String) {
    type Getter = fn(&RetentionMetrics) -> &AtomicU64;
    const FAMILIES: [(&str, &str, &str, Getter); 9] = [
        ("redrain_timeline_log_bytes", "gauge", "Bytes of the timeline log's segment files.", |m| &m.log_bytes),
        ("redrain_timeline_log_segments", "gauge", "Segment files of the timeline log.", |m| &m.log_segments),
        ("redrain_timeline_log_first_lsn", "gauge", "LSN of the oldest record still in the timeline log.", |m| {
            &m.first_retained_lsn
        }),
        (
            "redrain_timeline_retention_watermark_lsn",
            "gauge",
            "Records below this LSN are covered by a checkpoint and may be deleted.",
            |m| &m.watermark_lsn,
        ),
        ("redrain_timeline_checkpoints_total", "counter", "Checkpoints written whole (the watermark moved).", |m| {
            &m.checkpoints_total
        }),
        (
            "redrain_timeline_checkpoints_failed_total",
            "counter",
            "Checkpoints abandoned because a record failed (retried at the next interval).",
            |m| &m.checkpoints_failed_total,
        ),
        ("redrain_timeline_checkpoint_records_total", "counter", "Checkpoint records appended.", |m| {
            &m.checkpoint_records_total
        }),
        ("redrain_timeline_segments_deleted_total", "counter", "Timeline log segments deleted by retention.", |m| {
            &m.segments_deleted_total
        }),
        (
            "redrain_timeline_syncs_expired_total",
            "counter",
            "Syncs from below the retained entries (answered with the expired flag).",
            |m| &m.syncs_expired_total,
        ),
    ];
    for (name, kind, help, get) in FAMILIES {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (core, m) in cores.iter().enumerate() {
            let _ = writeln!(out, "{name}{{core=\"{core}\"}} {}", get(&m.retention).load(Relaxed));
        }
    }
}

/// Renders every core's timeline block.
pub fn render(cores: &[&TimelineMetrics], out: &mut String) {
    type Getter = fn(&TimelineMetrics) -> &AtomicU64;
    const FAMILIES: [(&str, &str, &str, Getter); 20] = [
        ("redrain_timeline_sends_total", "counter", "Sends acknowledged to their sender (SendOk).", |m| {
            &m.sends_acked_total
        }),
        ("redrain_timeline_entries_committed_total", "counter", "Inbox entries made durable on this core.", |m| {
            &m.entries_committed_total
        }),
        ("redrain_timeline_entries_failed_total", "counter", "Inbox entries whose write failed.", |m| {
            &m.entries_failed_total
        }),
        (
            "redrain_timeline_group_changes_failed_total",
            "counter",
            "Group changes whose record failed (answered Internal, undone).",
            |m| &m.group_changes_failed_total,
        ),
        ("redrain_timeline_notifies_total", "counter", "Notify pushes written to devices.", |m| &m.notifies_total),
        (
            "redrain_timeline_notifies_gated_total",
            "counter",
            "Notifies not written: the device had not synced since its previous one.",
            |m| &m.notifies_gated_total,
        ),
        ("redrain_timeline_syncs_total", "counter", "Sync requests answered.", |m| &m.syncs_total),
        ("redrain_timeline_sync_log_reads_total", "counter", "Syncs that read older entries from the log.", |m| {
            &m.sync_log_reads_total
        }),
        ("redrain_timeline_lucky_opens_total", "counter", "Lucky packet shares drawn.", |m| &m.lucky_opened_total),
        ("redrain_timeline_inboxes", "gauge", "Inboxes held by this core.", |m| &m.inboxes),
        ("redrain_timeline_groups", "gauge", "Groups homed on this core.", |m| &m.groups),
        (
            "redrain_timeline_fanout_pending",
            "gauge",
            "Sends and deliveries waiting for storage or other cores (bound: timeline.fanout_pending_max).",
            |m| &m.fanout_pending,
        ),
        (
            "redrain_timeline_fanout_pending_bytes",
            "gauge",
            "Bytes of entries in flight of the sends this core coordinates (bound: timeline.fanout_pending_bytes_max).",
            |m| &m.fanout_pending_bytes,
        ),
        (
            "redrain_timeline_sync_reads",
            "gauge",
            "Syncs reading older entries from the log (bound: timeline.sync_reads_max).",
            |m| &m.sync_reads,
        ),
        (
            "redrain_timeline_recent_bytes",
            "gauge",
            "Bytes of the newest durable entries held in memory (bound: timeline.recent_bytes_max).",
            |m| &m.recent_bytes,
        ),
        (
            "redrain_timeline_log_commits_total",
            "counter",
            "Group commits of the timeline log (one write and one fdatasync each).",
            |m| &m.log_commits_total,
        ),
        ("redrain_timeline_log_records_total", "counter", "Records made durable in the timeline log.", |m| {
            &m.log_records_total
        }),
        ("redrain_timeline_log_bytes_total", "counter", "Bytes written to the timeline log.", |m| &m.log_bytes_total),
        (
            "redrain_timeline_log_pending_appends",
            "gauge",
            "Appends waiting for their group commit in the timeline log.",
            |m| &m.log_pending_appends,
        ),
        (
            "redrain_timeline_refused_busy_total",
            "counter",
            "Sends and syncs refused Busy by fanout_pending_bytes_max or sync_reads_max.",
            |m| &m.refused_busy_total,
        ),
    ];
    // Limits and flow control (per-user rates, the outbox of refused cross-core answers).
    const FLOW_FAMILIES: [(&str, &str, &str, Getter); 5] = [
        (
            "redrain_timeline_rate_limited_messages_total",
            "counter",
            "Sends, lucky packets and read markers refused by messages_per_user_per_s (RateLimited).",
            |m| &m.rate_limited_messages_total,
        ),
        (
            "redrain_timeline_rate_limited_syncs_total",
            "counter",
            "Syncs refused by syncs_per_user_per_s (RateLimited).",
            |m| &m.rate_limited_syncs_total,
        ),
        (
            "redrain_timeline_mail_retried_total",
            "counter",
            "Cross-core answers (Delivered, Answer) pushed again after a full mailbox refused them.",
            |m| &m.mail_retried_total,
        ),
        (
            "redrain_timeline_mail_outbox",
            "gauge",
            "Cross-core answers waiting for room in a full mailbox (bound: timeline.mail_outbox_max).",
            |m| &m.mail_outbox,
        ),
        (
            "redrain_timeline_refused_outbox_full_total",
            "counter",
            "New sends refused Busy while the outbox held timeline.mail_outbox_max answers.",
            |m| &m.refused_outbox_full_total,
        ),
    ];
    for (name, kind, help, get) in FAMILIES.into_iter().chain(FLOW_FAMILIES) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (core, m) in cores.iter().enumerate() {
            let _ = writeln!(out, "{name}{{core=\"{core}\"}} {}", get(m).load(Relaxed));
        }
    }
    render_retention(cores, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_core_renders_each_figure_it_copied() {
        let (a, b) = (TimelineMetrics::default(), TimelineMetrics::default());
        b.set(&TimelineStats {
            entries_committed: 7,
            pending: 3,
            fanout_pending_bytes: 4096,
            ..TimelineStats::default()
        });
        let mut out = String::new();
        render(&[&a, &b], &mut out);
        assert!(out.contains("redrain_timeline_entries_committed_total{core=\"1\"} 7\n"), "{out}");
        assert!(out.contains("redrain_timeline_fanout_pending{core=\"1\"} 3\n"), "{out}");
        assert!(out.contains("redrain_timeline_fanout_pending_bytes{core=\"1\"} 4096\n"), "{out}");
        assert!(out.contains("redrain_timeline_syncs_total{core=\"0\"} 0\n"), "{out}");
        let (c, d) = (TimelineMetrics::default(), TimelineMetrics::default());
        d.set(&TimelineStats { rate_limited_syncs: 4, mail_outbox: 2, mail_retried: 9, ..TimelineStats::default() });
        let mut out = String::new();
        render(&[&c, &d], &mut out);
        assert!(out.contains("redrain_timeline_rate_limited_syncs_total{core=\"1\"} 4\n"), "{out}");
        assert!(out.contains("redrain_timeline_mail_outbox{core=\"1\"} 2\n"), "{out}");
        assert!(out.contains("redrain_timeline_mail_retried_total{core=\"1\"} 9\n"), "{out}");
    }
}
