//! What overload protection counts, per core (single writer), and its Prometheus text.

use super::admission::{Priority, RejectReason, REJECT_REASONS};
use crate::metrics::Outcome;
use redrain_net::frame::{FLAG_LAST_ATTEMPT, FLAG_RETRY_MASK};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};

/// Priority classes in label order.
pub const PRIORITIES: [(Priority, &str); 4] = [
    (Priority::Control, "control"),
    (Priority::Redeem, "redeem"),
    (Priority::Shake, "shake"),
    (Priority::Admit, "admit"),
];

/// One core's overload counters.
#[derive(Debug, Default)]
pub struct OverloadMetrics {
    /// Requests rejected without their work, by (priority, reason).
    pub rejected_total: [[AtomicU64; REJECT_REASONS.len()]; PRIORITIES.len()],
    /// Requests answered PipelineFull.
    pub pipeline_full_total: AtomicU64,
    /// The core's degrade level now.
    pub degrade_level: AtomicU64,
    /// Backoff pushes written to sessions.
    pub backoff_pushes_total: AtomicU64,
    /// The switch version this core runs with.
    pub switch_version: AtomicU64,
    /// Worst queueing delay in the last tick, us.
    pub queue_delay_us: AtomicU64,
    /// Share of the last tick the core's thread ran, in per mille.
    pub cpu_busy_permille: AtomicU64,
    /// Shakes that drew a ticket of a refused key (not issued).
    pub key_refused_draws_total: AtomicU64,
    /// Flags of the frame being handled (its retry marks).
    attempt_flags: AtomicU8,
    /// Responses by outcome (ok, logical, system) and retry attempt (0..=3).
    pub outcomes_by_attempt: [[AtomicU64; 4]; 3],
    /// System failures answered to a request its client marked as the last attempt.
    pub final_system_failures_total: AtomicU64,
}

impl OverloadMetrics {
    pub fn rejected(&self, priority: Priority, reason: RejectReason) {
        let p = PRIORITIES.iter().position(|(q, _)| *q == priority).unwrap_or(0);
        self.rejected_total[p][reason as usize].fetch_add(1, Relaxed);
    }

    pub fn rejected_count(&self, priority: Priority, reason: RejectReason) -> u64 {
        let p = PRIORITIES.iter().position(|(q, _)| *q == priority).unwrap_or(0);
        self.rejected_total[p][reason as usize].load(Relaxed)
    }

    /// The frame being handled carries these flags (retry marks).
    pub fn set_attempt(&self, flags: u8) {
        self.attempt_flags.store(flags, Relaxed);
    }

    /// Counts one answer's outcome under the current frame's retry attempt.
    pub fn outcome(&self, outcome: Outcome) {
        let flags = self.attempt_flags.load(Relaxed);
        let attempt = usize::from(flags & FLAG_RETRY_MASK);
        let row = match outcome {
            Outcome::Ok => 0,
            Outcome::Logical => 1,
            Outcome::System => 2,
            Outcome::ClientFault => return,
        };
        self.outcomes_by_attempt[row][attempt].fetch_add(1, Relaxed);
        if outcome == Outcome::System && flags & FLAG_LAST_ATTEMPT != 0 {
            self.final_system_failures_total.fetch_add(1, Relaxed);
        }
    }
}

/// Configured limits rendered as `redrain_limit{name=...}`.
pub fn render_limits(limits: &[(&str, f64)], out: &mut String) {
    out.push_str(
        "# HELP redrain_limit Configured bounds and quotas in force (switches included).\n# TYPE redrain_limit gauge\n",
    );
    for (name, v) in limits {
        let _ = writeln!(out, "redrain_limit{{name=\"{name}\"}} {v}");
    }
}

/// Renders every core's overload block.
pub fn render(cores: &[&OverloadMetrics], out: &mut String) {
    out.push_str("# HELP redrain_admission_rejected_total Requests answered at once without their work, by class and reason.\n# TYPE redrain_admission_rejected_total counter\n");
    for (core, m) in cores.iter().enumerate() {
        for (p, (_, pname)) in PRIORITIES.iter().enumerate() {
            for (r, (_, rname)) in REJECT_REASONS.iter().enumerate() {
                let v = m.rejected_total[p][r].load(Relaxed);
                let _ = writeln!(
                    out,
                    "redrain_admission_rejected_total{{core=\"{core}\",class=\"{pname}\",reason=\"{rname}\"}} {v}"
                );
            }
        }
    }
    type Getter = fn(&OverloadMetrics) -> &AtomicU64;
    const SCALED: [(&str, &str, Getter, f64); 2] = [
        (
            "redrain_queue_delay_seconds",
            "Queueing delay of the last tick (timer lateness, or the wait one in ten requests reached).",
            |m| &m.queue_delay_us,
            1e-6,
        ),
        (
            "redrain_core_busy_ratio",
            "Share of the last tick the core's thread ran, of the CPU it may use.",
            |m| &m.cpu_busy_permille,
            1e-3,
        ),
    ];
    for (name, help, get, scale) in SCALED {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (core, m) in cores.iter().enumerate() {
            let _ = writeln!(out, "{name}{{core=\"{core}\"}} {}", get(m).load(Relaxed) as f64 * scale);
        }
    }
    const SIMPLE: [(&str, &str, &str, Getter); 6] = [
        ("redrain_pipeline_full_total", "counter", "Requests answered PipelineFull.", |m| &m.pipeline_full_total),
        ("redrain_degrade_level", "gauge", "Degrade level of each core (0 = normal).", |m| &m.degrade_level),
        ("redrain_backoff_pushes_total", "counter", "Backoff pushes written to sessions.", |m| &m.backoff_pushes_total),
        ("redrain_switch_version", "gauge", "Version of the operator switches each core runs with.", |m| {
            &m.switch_version
        }),
        ("redrain_key_refused_draws_total", "counter", "Tickets drawn under a refused key, not issued.", |m| {
            &m.key_refused_draws_total
        }),
        (
            "redrain_final_system_failures_total",
            "counter",
            "System failures answered to a request marked as the client's last attempt.",
            |m| &m.final_system_failures_total,
        ),
    ];
    for (name, kind, help, get) in SIMPLE {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (core, m) in cores.iter().enumerate() {
            let _ = writeln!(out, "{name}{{core=\"{core}\"}} {}", get(m).load(Relaxed));
        }
    }
    out.push_str("# HELP redrain_responses_by_attempt_total Answers by outcome and the client's retry attempt (3 = third retry or later).\n# TYPE redrain_responses_by_attempt_total counter\n");
    for (core, m) in cores.iter().enumerate() {
        for (row, outcome) in ["ok", "logical_failure", "system_failure"].iter().enumerate() {
            for attempt in 0..4 {
                let v = m.outcomes_by_attempt[row][attempt].load(Relaxed);
                let _ = writeln!(
                    out,
                    "redrain_responses_by_attempt_total{{core=\"{core}\",outcome=\"{outcome}\",attempt=\"{attempt}\"}} {v}"
                );
            }
        }
    }
}
