//! The hand-off's per-core figures: written by the core's consumer only (relaxed atomics,
//! single writer), read by the admin endpoint on core 0 for `/metrics` and `/handoff`.

use crate::metrics::{Histogram, LATENCY_BUCKETS_US};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// One core's hand-off figures.
#[derive(Debug, Default)]
pub struct HandoffMetrics {
    /// 1 once the core's consumer runs.
    pub running: AtomicU64,
    /// Last LSN the sink acknowledged.
    pub acknowledged_lsn: AtomicU64,
    /// Last durable LSN of the open queue, as the consumer last saw it.
    pub durable_lsn: AtomicU64,
    /// Open time (Unix ms, the rain's clock) of the oldest open handed to the sink and not
    /// yet acknowledged; 0 when caught up. Its age is the hand-off lag in seconds.
    pub oldest_pending_opened_ms: AtomicU64,
    pub batches_total: AtomicU64,
    pub records_total: AtomicU64,
    pub retries_total: AtomicU64,
    pub sink_errors_total: AtomicU64,
    pub instant_credit_total: AtomicU64,
    pub reconcile_later_total: AtomicU64,
    /// 1 while the last delivery attempt failed (the consumer is waiting to retry).
    pub stalled: AtomicU64,
    /// Time from an open's record to the sink's acknowledgement, per record.
    pub lag: Histogram,
    /// The last sink error (empty when none yet); written on failures only.
    pub last_error: Mutex<String>,
}

impl HandoffMetrics {
    /// Records not yet acknowledged by the sink.
    pub fn depth(&self) -> u64 {
        self.durable_lsn.load(Relaxed).saturating_sub(self.acknowledged_lsn.load(Relaxed))
    }

    /// Age (ms) of the oldest open the sink has not acknowledged at `now_ms`; 0 when caught up.
    pub fn lag_ms(&self, now_ms: u64) -> u64 {
        match self.oldest_pending_opened_ms.load(Relaxed) {
            0 => 0,
            t => now_ms.saturating_sub(t),
        }
    }

    pub fn set_last_error(&self, error: &str) {
        if let Ok(mut last) = self.last_error.lock() {
            last.clear();
            last.push_str(error);
        }
    }

    pub fn last_error(&self) -> String {
        self.last_error.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders every core's consumer of lucky packet shares (`redrain_handoff_lucky_*`).
pub fn render_lucky(cores: &[&HandoffMetrics], out: &mut String) {
    type Get = fn(&HandoffMetrics) -> u64;
    const FAMILIES: [(&str, &str, &str, Get); 6] = [
        ("redrain_handoff_lucky_running", "gauge", "1 once the core's lucky share consumer runs.", |m| {
            m.running.load(Relaxed)
        }),
        ("redrain_handoff_lucky_records_total", "counter", "Lucky packet shares the sink acknowledged.", |m| {
            m.records_total.load(Relaxed)
        }),
        ("redrain_handoff_lucky_acknowledged_lsn", "gauge", "Last timeline LSN the lucky sink acknowledged.", |m| {
            m.acknowledged_lsn.load(Relaxed)
        }),
        (
            "redrain_handoff_lucky_behind_records",
            "gauge",
            "Durable timeline records the lucky consumer has not passed.",
            |m| m.depth(),
        ),
        ("redrain_handoff_lucky_sink_errors_total", "counter", "Failed lucky delivery attempts.", |m| {
            m.sink_errors_total.load(Relaxed)
        }),
        ("redrain_handoff_lucky_stalled", "gauge", "1 while the last lucky delivery attempt failed.", |m| {
            m.stalled.load(Relaxed)
        }),
    ];
    for (name, kind, help, get) in FAMILIES {
        family(out, name, kind, help);
        for (i, m) in cores.iter().enumerate() {
            let _ = writeln!(out, "{name}{{core=\"{i}\"}} {}", get(m));
        }
    }
}

/// Renders every core's hand-off block (`redrain_handoff_*`, a `core` label each).
pub fn render(cores: &[&HandoffMetrics], sink: &str, now_ms: u64, out: &mut String) {
    family(out, "redrain_handoff_info", "gauge", "The configured hand-off sink.");
    let _ = writeln!(out, "redrain_handoff_info{{sink=\"{sink}\"}} 1");
    type Getter = fn(&HandoffMetrics) -> u64;
    const FAMILIES: [(&str, &str, &str, Getter); 11] = [
        ("redrain_handoff_queue_depth", "gauge", "Durable opens the sink has not acknowledged yet.", |m| m.depth()),
        ("redrain_handoff_lag_records", "gauge", "Same as queue depth: records behind the open queue's end.", |m| {
            m.depth()
        }),
        ("redrain_handoff_acknowledged_lsn", "gauge", "Last open-queue LSN the sink acknowledged.", |m| {
            m.acknowledged_lsn.load(Relaxed)
        }),
        ("redrain_handoff_batches_total", "counter", "Batches the sink acknowledged.", |m| {
            m.batches_total.load(Relaxed)
        }),
        ("redrain_handoff_records_total", "counter", "Opens the sink acknowledged.", |m| m.records_total.load(Relaxed)),
        ("redrain_handoff_retries_total", "counter", "Delivery attempts retried after a failure.", |m| {
            m.retries_total.load(Relaxed)
        }),
        ("redrain_handoff_sink_errors_total", "counter", "Failed delivery attempts (sink errors).", |m| {
            m.sink_errors_total.load(Relaxed)
        }),
        ("redrain_handoff_instant_credit_total", "counter", "Handed-off opens flagged for instant credit.", |m| {
            m.instant_credit_total.load(Relaxed)
        }),
        ("redrain_handoff_reconcile_later_total", "counter", "Handed-off opens credited after reconciliation.", |m| {
            m.reconcile_later_total.load(Relaxed)
        }),
        (
            "redrain_handoff_stalled",
            "gauge",
            "1 while the last delivery failed and the consumer waits to retry.",
            |m| m.stalled.load(Relaxed),
        ),
        ("redrain_handoff_running", "gauge", "1 once the core's consumer runs.", |m| m.running.load(Relaxed)),
    ];
    for (name, kind, help, get) in FAMILIES {
        family(out, name, kind, help);
        for (i, m) in cores.iter().enumerate() {
            let _ = writeln!(out, "{name}{{core=\"{i}\"}} {}", get(m));
        }
    }
    let name = "redrain_handoff_oldest_unacknowledged_age_seconds";
    family(out, name, "gauge", "Age of the oldest open the sink has not acknowledged (0: caught up).");
    for (i, m) in cores.iter().enumerate() {
        let _ = writeln!(out, "{name}{{core=\"{i}\"}} {}", m.lag_ms(now_ms) as f64 / 1e3);
    }
    let name = "redrain_handoff_lag_seconds";
    family(out, name, "histogram", "Time from an open's durable record to the sink's acknowledgement.");
    for (i, m) in cores.iter().enumerate() {
        let (buckets, sum_us) = m.lag.snapshot();
        let mut cumulative = 0;
        for (bound, n) in LATENCY_BUCKETS_US.iter().zip(buckets) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{core=\"{i}\",le=\"{}\"}} {cumulative}", *bound as f64 / 1e6);
        }
        let count = cumulative + buckets[LATENCY_BUCKETS_US.len()];
        let _ = writeln!(out, "{name}_bucket{{core=\"{i}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{core=\"{i}\"}} {}", sum_us as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{{core=\"{i}\"}} {count}");
    }
}

/// The `/handoff` status document: depth, lag and last error of every core's consumer of
/// the open queue (`events`, empty without a rain event) and of lucky shares (`lucky`).
pub fn status_json(events: &[&HandoffMetrics], lucky: &[&HandoffMetrics], sink: &str, now_ms: u64) -> String {
    let per_core = |cores: &[&HandoffMetrics], behind: &str| -> Vec<serde_json::Value> {
        cores
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut v = serde_json::json!({
                    "core": i,
                    "running": m.running.load(Relaxed) == 1,
                    "lag_ms": m.lag_ms(now_ms),
                    "acknowledged_lsn": m.acknowledged_lsn.load(Relaxed),
                    "durable_lsn": m.durable_lsn.load(Relaxed),
                    "records_total": m.records_total.load(Relaxed),
                    "batches_total": m.batches_total.load(Relaxed),
                    "retries_total": m.retries_total.load(Relaxed),
                    "sink_errors_total": m.sink_errors_total.load(Relaxed),
                    "stalled": m.stalled.load(Relaxed) == 1,
                    "last_error": m.last_error(),
                });
                v[behind] = m.depth().into();
                v
            })
            .collect()
    };
    let lag = |cores: &[&HandoffMetrics]| cores.iter().map(|m| m.lag_ms(now_ms)).max().unwrap_or(0);
    // The lucky consumer reads the timeline log, mostly messages: how far it is behind
    // counts log records, not shares.
    let doc = serde_json::json!({
        "sink": sink,
        "depth": events.iter().map(|m| m.depth()).sum::<u64>(),
        "lag_ms": lag(events),
        "cores": per_core(events, "depth"),
        "lucky": {
            "behind_records": lucky.iter().map(|m| m.depth()).sum::<u64>(),
            "lag_ms": lag(lucky),
            "stalled": lucky.iter().any(|m| m.stalled.load(Relaxed) == 1),
            "cores": per_core(lucky, "behind_records"),
        },
    });
    let mut text = serde_json::to_string_pretty(&doc).expect("json values serialize");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_durable_minus_acknowledged_and_the_status_carries_the_last_error() {
        let m = HandoffMetrics::default();
        m.durable_lsn.store(120, Relaxed);
        m.acknowledged_lsn.store(100, Relaxed);
        m.set_last_error("disk full");
        m.oldest_pending_opened_ms.store(10_000, Relaxed);
        assert_eq!(m.depth(), 20);
        let lucky = HandoffMetrics::default();
        lucky.durable_lsn.store(7, Relaxed);
        lucky.stalled.store(1, Relaxed);
        lucky.set_last_error("nats: no responders");
        let status: serde_json::Value = serde_json::from_str(&status_json(&[&m], &[&lucky], "file", 12_500)).unwrap();
        assert_eq!(status["depth"], 20);
        assert_eq!(status["lag_ms"], 2_500);
        assert_eq!(status["cores"][0]["last_error"], "disk full");
        assert_eq!(status["cores"][0]["depth"], 20);
        assert_eq!(status["lucky"]["behind_records"], 7);
        assert_eq!(status["lucky"]["stalled"], true);
        assert_eq!(status["lucky"]["cores"][0]["last_error"], "nats: no responders");
        let no_event: serde_json::Value = serde_json::from_str(&status_json(&[], &[&lucky], "nats", 1)).unwrap();
        assert_eq!((no_event["depth"].clone(), no_event["cores"].clone()), (0.into(), serde_json::json!([])));
        let mut text = String::new();
        m.lag.record_us(2_000_000);
        render(&[&m], "file", 12_500, &mut text);
        assert!(text.contains("redrain_handoff_oldest_unacknowledged_age_seconds{core=\"0\"} 2.5"), "{text}");
        assert!(text.contains("redrain_handoff_queue_depth{core=\"0\"} 20"), "{text}");
        assert!(text.contains("redrain_handoff_lag_seconds_bucket{core=\"0\",le=\"1\"} 0"), "{text}");
        assert!(text.contains("redrain_handoff_lag_seconds_bucket{core=\"0\",le=\"5\"} 1"), "{text}");
    }
}
