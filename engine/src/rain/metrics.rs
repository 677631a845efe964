//! The rain's per-core counters and its storage streams' figures, rendered next to the
//! node's other metrics. Each core is the only writer of its block (relaxed atomics); the
//! storage figures are copied from the core's logs on its housekeeping tick, because the
//! logs live on their core and the admin endpoint runs on core 0.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Figures of one durable stream of a core, copied from its log.
#[derive(Debug, Default)]
pub struct StreamFigures {
    pub records_total: AtomicU64,
    pub commits_total: AtomicU64,
    pub bytes_total: AtomicU64,
    pub failures_total: AtomicU64,
    pub overload_rejections_total: AtomicU64,
    pub pending_appends: AtomicU64,
    pub durable_lsn: AtomicU64,
    pub commit_p99_us: AtomicU64,
}

/// Rain counters of one core.
#[derive(Debug, Default)]
pub struct RainMetrics {
    pub shakes_total: AtomicU64,
    pub shakes_won_total: AtomicU64,
    pub shakes_too_fast_total: AtomicU64,
    pub shakes_paced_total: AtomicU64,
    pub shakes_sold_out_total: AtomicU64,
    pub shakes_no_slot_total: AtomicU64,
    pub shakes_not_ready_total: AtomicU64,
    pub opens_total: AtomicU64,
    pub opens_recorded_total: AtomicU64,
    pub opens_repeated_total: AtomicU64,
    pub opens_instant_credit_total: AtomicU64,
    pub open_record_failures_total: AtomicU64,
    /// Open records durable here that no peer confirmed in time (answered Busy).
    pub opens_unconfirmed_total: AtomicU64,
    pub opened_amount_fen_total: AtomicU64,
    /// Packets in the core's opened set (recovered and new).
    pub opened_packets: AtomicU64,
    /// Opens waiting for durability.
    pub opens_pending: AtomicU64,
    pub tickets_issued_total: AtomicU64,
    pub tickets_bad_records_total: AtomicU64,
    pub tickets_moved_out_total: AtomicU64,
    pub tickets_moved_in_total: AtomicU64,
    /// Upper bound of tickets skipped by restarts (reservation past the last exact cursor).
    pub tickets_skipped_at_start_max: AtomicU64,
    pub tickets_remaining_in_slot: AtomicU64,
    pub cursor_reservations_total: AtomicU64,
    pub ticket_move_requests_total: AtomicU64,
    pub mail_dropped_total: AtomicU64,
    pub cursors: StreamFigures,
    pub opens: StreamFigures,
}

impl RainMetrics {
    /// Copies a dispenser's counters (single writer: the owning core).
    pub fn set_dispenser(&self, s: &super::dispenser::DispenserStats, remaining_in_slot: u64) {
        self.tickets_issued_total.store(s.tickets_issued_total, Relaxed);
        self.tickets_bad_records_total.store(s.tickets_bad_records_total, Relaxed);
        self.tickets_moved_out_total.store(s.tickets_moved_out_total, Relaxed);
        self.tickets_moved_in_total.store(s.tickets_moved_in_total, Relaxed);
        self.tickets_skipped_at_start_max.store(s.tickets_skipped_at_start_max, Relaxed);
        self.cursor_reservations_total.store(s.cursor_reservations_total, Relaxed);
        self.ticket_move_requests_total.store(s.move_requests_total, Relaxed);
        self.tickets_remaining_in_slot.store(remaining_in_slot, Relaxed);
    }
}

impl StreamFigures {
    /// Copies a log's figures.
    pub fn set(&self, log: &redrain_storage::Log) {
        let s = log.stats();
        self.records_total.store(s.records_total, Relaxed);
        self.commits_total.store(s.commits_total, Relaxed);
        self.bytes_total.store(s.bytes_total, Relaxed);
        self.failures_total.store(s.batch_failures_total, Relaxed);
        self.overload_rejections_total.store(s.overload_rejections_total, Relaxed);
        self.pending_appends.store(log.pending_appends() as u64, Relaxed);
        self.durable_lsn.store(log.durable_lsn(), Relaxed);
        let h = log.batch_write_histogram();
        self.commit_p99_us.store(if h.count() > 0 { h.quantile(0.99) } else { 0 }, Relaxed);
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders every core's rain block (one family per metric, a `core` label each).
pub fn render(cores: &[&RainMetrics], out: &mut String) {
    type Getter = fn(&RainMetrics) -> &AtomicU64;
    const FAMILIES: [(&str, &str, &str, Getter); 25] = [
        ("redrain_rain_shakes_total", "counter", "Shakes answered (any outcome).", |m| &m.shakes_total),
        ("redrain_rain_shakes_won_total", "counter", "Shakes that won a sealed ticket.", |m| &m.shakes_won_total),
        ("redrain_rain_shakes_too_fast_total", "counter", "Shakes refused by the per-user interval.", |m| {
            &m.shakes_too_fast_total
        }),
        ("redrain_rain_shakes_paced_total", "counter", "Shakes lost to pacing or the issuance quota.", |m| {
            &m.shakes_paced_total
        }),
        ("redrain_rain_shakes_sold_out_total", "counter", "Shakes lost because the slot's tickets were gone.", |m| {
            &m.shakes_sold_out_total
        }),
        ("redrain_rain_shakes_no_slot_total", "counter", "Shakes outside every slot.", |m| &m.shakes_no_slot_total),
        (
            "redrain_rain_shakes_not_ready_total",
            "counter",
            "Shakes lost because tickets were not yet read or reserved (disk behind).",
            |m| &m.shakes_not_ready_total,
        ),
        ("redrain_rain_opens_total", "counter", "Open requests (any outcome).", |m| &m.opens_total),
        ("redrain_rain_opens_recorded_total", "counter", "Packets opened: open records made durable.", |m| {
            &m.opens_recorded_total
        }),
        ("redrain_rain_opens_repeated_total", "counter", "Opens of an already opened packet (same amount).", |m| {
            &m.opens_repeated_total
        }),
        ("redrain_rain_opens_instant_credit_total", "counter", "Opened packets flagged for instant credit.", |m| {
            &m.opens_instant_credit_total
        }),
        ("redrain_rain_open_record_failures_total", "counter", "Open records that failed to become durable.", |m| {
            &m.open_record_failures_total
        }),
        (
            "redrain_rain_opens_unconfirmed_total",
            "counter",
            "Open records durable here that no peer confirmed in time (answered Busy, confirmed later).",
            |m| &m.opens_unconfirmed_total,
        ),
        ("redrain_rain_opened_amount_fen_total", "counter", "Money in opened packets (fen).", |m| {
            &m.opened_amount_fen_total
        }),
        ("redrain_rain_opened_packets", "gauge", "Packets in the core's opened set.", |m| &m.opened_packets),
        ("redrain_rain_opens_pending", "gauge", "Opens waiting for their record to be durable.", |m| &m.opens_pending),
        ("redrain_rain_tickets_issued_total", "counter", "Tickets issued by winning shakes.", |m| {
            &m.tickets_issued_total
        }),
        ("redrain_rain_tickets_bad_records_total", "counter", "Ticket records skipped as damaged or refused.", |m| {
            &m.tickets_bad_records_total
        }),
        ("redrain_rain_tickets_moved_out_total", "counter", "Tickets given to cores that ran dry.", |m| {
            &m.tickets_moved_out_total
        }),
        ("redrain_rain_tickets_moved_in_total", "counter", "Tickets received from other cores.", |m| {
            &m.tickets_moved_in_total
        }),
        (
            "redrain_rain_tickets_skipped_at_start_max",
            "gauge",
            "Upper bound of tickets a restart skipped (never issued).",
            |m| &m.tickets_skipped_at_start_max,
        ),
        ("redrain_rain_tickets_remaining_in_slot", "gauge", "Tickets this core still holds for the slot.", |m| {
            &m.tickets_remaining_in_slot
        }),
        ("redrain_rain_cursor_reservations_total", "counter", "Issuance cursor reservations made durable.", |m| {
            &m.cursor_reservations_total
        }),
        ("redrain_rain_ticket_move_requests_total", "counter", "Requests for tickets from other cores.", |m| {
            &m.ticket_move_requests_total
        }),
        ("redrain_rain_mail_dropped_total", "counter", "Rain messages dropped at a full mailbox.", |m| {
            &m.mail_dropped_total
        }),
    ];
    for (name, kind, help, get) in FAMILIES {
        family(out, name, kind, help);
        for (i, m) in cores.iter().enumerate() {
            let _ = writeln!(out, "{name}{{core=\"{i}\"}} {}", get(m).load(Relaxed));
        }
    }
    type StreamGetter = fn(&StreamFigures) -> &AtomicU64;
    const STREAM: [(&str, &str, &str, StreamGetter); 8] = [
        ("redrain_stream_records_total", "counter", "Records made durable in a core's stream.", |s| &s.records_total),
        ("redrain_stream_group_commits_total", "counter", "Group commits (write + fdatasync).", |s| &s.commits_total),
        ("redrain_stream_bytes_total", "counter", "Bytes written durably.", |s| &s.bytes_total),
        ("redrain_stream_failures_total", "counter", "Failed batches.", |s| &s.failures_total),
        ("redrain_stream_overload_rejections_total", "counter", "Appends refused at the pending bound.", |s| {
            &s.overload_rejections_total
        }),
        ("redrain_stream_pending_appends", "gauge", "Appends waiting for durability.", |s| &s.pending_appends),
        ("redrain_stream_durable_lsn", "gauge", "Highest durable LSN.", |s| &s.durable_lsn),
        ("redrain_stream_commit_p99_seconds", "gauge", "p99 of a group commit's write + fdatasync.", |s| {
            &s.commit_p99_us
        }),
    ];
    for (name, kind, help, get) in STREAM {
        family(out, name, kind, help);
        for (i, m) in cores.iter().enumerate() {
            for (stream, figures) in [("cursors", &m.cursors), ("opens", &m.opens)] {
                let v = get(figures).load(Relaxed);
                if name.ends_with("_seconds") {
                    let _ = writeln!(out, "{name}{{core=\"{i}\",stream=\"{stream}\"}} {}", v as f64 / 1e6);
                } else {
                    let _ = writeln!(out, "{name}{{core=\"{i}\",stream=\"{stream}\"}} {v}");
                }
            }
        }
    }
}
