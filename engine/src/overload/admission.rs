//! Admission control of one core: which request is served, and which is answered at once
//! without doing its work.
//!
//! Order (highest first), and why:
//! 1. [`Priority::Redeem`]: the open of a won packet and the ack of a committed write. The
//!    user already holds something the node promised (a sealed ticket, a stored message);
//!    failing it is the worst experience and wastes the work already done. Rejected only
//!    when it waited [`REDEEM_DELAY_FACTOR`] times the bound (its caller has given up).
//! 2. [`Priority::Shake`]: new work; shed on the queueing-delay bound and on pause; the
//!    degrade level slows shakes down through the interval clients are told.
//! 3. [`Priority::Admit`]: logins and syncs. They are shed first (from degrade level
//!    [`LOGIN_SHED_LEVEL`], and on the same wait bound as shakes: a tighter one rejected
//!    logins for one OS preemption on a loaded host): a new session adds load, and a sync can be
//!    retried later without loss (the client keeps its highest seq).
//! 4. [`Priority::Control`]: Hello, Ping, Logout: a few bytes each, never shed, so sessions
//!    stay alive through an overload and pick up the backoff.

use redrain_net::ErrorCode;

/// An open (or ack) is shed only when it waited this many times the bound: by then its
/// caller has given up (5 s at the default bound). Until then it is served, whatever
/// else is being shed.
pub const REDEEM_DELAY_FACTOR: u64 = 100;
/// From this degrade level on, logins and syncs are shed.
pub const LOGIN_SHED_LEVEL: u8 = 3;

/// A request as admission control sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Hello,
    Ping,
    Logout,
    Login,
    Shake,
    Open,
    Send,
    Sync,
    SyncAck,
}

/// Service classes, highest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Control,
    Redeem,
    Shake,
    Admit,
}

impl RequestKind {
    pub fn priority(self) -> Priority {
        match self {
            RequestKind::Hello | RequestKind::Ping | RequestKind::Logout => Priority::Control,
            RequestKind::Open | RequestKind::SyncAck => Priority::Redeem,
            RequestKind::Shake | RequestKind::Send => Priority::Shake,
            RequestKind::Login | RequestKind::Sync => Priority::Admit,
        }
    }
}

/// Why a request was rejected without its work (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// It waited longer than its class's bound (fast reject).
    QueueDelay = 0,
    /// The degrade level sheds its class.
    Degraded = 1,
    /// The operator paused shaking.
    Paused = 2,
    /// The operator drains the node: no new logins.
    Draining = 3,
}

/// Every reason with its label, in index order.
pub const REJECT_REASONS: [(RejectReason, &str); 4] = [
    (RejectReason::QueueDelay, "queue_delay"),
    (RejectReason::Degraded, "degraded"),
    (RejectReason::Paused, "paused"),
    (RejectReason::Draining, "draining"),
];

/// Admission's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    Reject { code: ErrorCode, retry_after_ms: u32, reason: RejectReason },
}

/// The bounds admission works with (from the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// A shake that waited longer than this since its bytes were read is rejected.
    pub queue_delay_max_us: u64,
}

/// The core's current steering, refreshed each housekeeping tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Steering {
    /// Degrade level (0 = normal).
    pub level: u8,
    /// Retry-after to hand out now (from the backoff).
    pub retry_after_ms: u32,
    pub paused: bool,
    pub draining: bool,
}

/// Decides, for one request, whether the core does its work.
///
/// ```
/// use redrain_engine::overload::admission::*;
/// let config = AdmissionConfig { queue_delay_max_us: 2_000 };
/// let steering = Steering { retry_after_ms: 250, ..Steering::default() };
/// assert_eq!(admit(&config, &steering, RequestKind::Shake, 1_000, 1_500), Verdict::Admit);
/// assert!(matches!(admit(&config, &steering, RequestKind::Shake, 1_000, 4_000), Verdict::Reject { .. }));
/// assert_eq!(admit(&config, &steering, RequestKind::Open, 1_000, 4_000), Verdict::Admit);
/// ```
pub fn admit(
    config: &AdmissionConfig,
    steering: &Steering,
    kind: RequestKind,
    read_at_us: u64,
    now_us: u64,
) -> Verdict {
    let waited_us = now_us.saturating_sub(read_at_us);
    let bound = config.queue_delay_max_us;
    let reject = |code, reason| Verdict::Reject { code, retry_after_ms: steering.retry_after_ms, reason };
    match kind.priority() {
        Priority::Control => Verdict::Admit,
        Priority::Redeem => {
            if waited_us > bound.saturating_mul(REDEEM_DELAY_FACTOR) {
                reject(ErrorCode::Busy, RejectReason::QueueDelay)
            } else {
                Verdict::Admit
            }
        }
        Priority::Shake => {
            if steering.paused && kind == RequestKind::Shake {
                reject(ErrorCode::Paused, RejectReason::Paused)
            } else if waited_us > bound {
                reject(ErrorCode::Busy, RejectReason::QueueDelay)
            } else {
                // Never shed by the level alone (a run that shed every shake at the top
                // level left the node idle while clients waited): the level slows clients
                // down through the shake interval they are told instead.
                Verdict::Admit
            }
        }
        Priority::Admit => {
            if steering.draining && kind == RequestKind::Login {
                reject(ErrorCode::Draining, RejectReason::Draining)
            } else if waited_us > bound {
                reject(ErrorCode::Busy, RejectReason::QueueDelay)
            } else if steering.level >= LOGIN_SHED_LEVEL {
                reject(ErrorCode::Busy, RejectReason::Degraded)
            } else {
                Verdict::Admit
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: AdmissionConfig = AdmissionConfig { queue_delay_max_us: 2_000 };

    fn verdict_reason(v: Verdict) -> Option<RejectReason> {
        match v {
            Verdict::Admit => None,
            Verdict::Reject { reason, .. } => Some(reason),
        }
    }

    #[test]
    fn a_shake_that_waited_past_the_bound_is_rejected_busy_with_the_current_retry_after() {
        let steering = Steering { retry_after_ms: 400, ..Steering::default() };
        assert_eq!(admit(&CONFIG, &steering, RequestKind::Shake, 10_000, 12_000), Verdict::Admit);
        assert_eq!(
            admit(&CONFIG, &steering, RequestKind::Shake, 10_000, 12_001),
            Verdict::Reject { code: ErrorCode::Busy, retry_after_ms: 400, reason: RejectReason::QueueDelay }
        );
    }

    #[test]
    fn opens_outlast_shakes_and_logins_are_shed_first_at_every_delay() {
        let steering = Steering::default();
        for waited in (0..400_000).step_by(250) {
            let shed = |k| verdict_reason(admit(&CONFIG, &steering, k, 0, waited)).is_some();
            // Whenever an open is shed, shakes and logins are shed too; whenever a shake is
            // shed, logins are.
            if shed(RequestKind::Open) {
                assert!(shed(RequestKind::Shake) && shed(RequestKind::Login), "waited {waited}");
            }
            if shed(RequestKind::Shake) {
                assert!(shed(RequestKind::Login) && shed(RequestKind::Sync), "waited {waited}");
            }
            assert!(!shed(RequestKind::Ping), "pings are never shed");
        }
        assert!(verdict_reason(admit(&CONFIG, &steering, RequestKind::Login, 0, 2_001)).is_some());
        assert!(verdict_reason(admit(&CONFIG, &steering, RequestKind::Login, 0, 2_000)).is_none());
        assert!(verdict_reason(admit(&CONFIG, &steering, RequestKind::Open, 0, 200_000)).is_none());
        assert!(verdict_reason(admit(&CONFIG, &steering, RequestKind::Open, 0, 200_001)).is_some());
    }

    #[test]
    fn degrade_levels_shed_logins_and_never_shakes_or_opens() {
        for level in 0..=crate::overload::backoff::LEVEL_MAX {
            let steering = Steering { level, ..Steering::default() };
            let shed = |k| verdict_reason(admit(&CONFIG, &steering, k, 0, 0));
            assert_eq!(shed(RequestKind::Open), None);
            assert_eq!(shed(RequestKind::Login).is_some(), level >= LOGIN_SHED_LEVEL, "level {level}");
            assert_eq!(shed(RequestKind::Shake), None, "level {level}");
        }
    }

    #[test]
    fn pause_refuses_shakes_but_serves_opens_and_drain_refuses_only_logins() {
        let paused = Steering { paused: true, retry_after_ms: 1_000, ..Steering::default() };
        assert_eq!(
            admit(&CONFIG, &paused, RequestKind::Shake, 0, 0),
            Verdict::Reject { code: ErrorCode::Paused, retry_after_ms: 1_000, reason: RejectReason::Paused }
        );
        assert_eq!(admit(&CONFIG, &paused, RequestKind::Open, 0, 0), Verdict::Admit);
        let draining = Steering { draining: true, ..Steering::default() };
        assert!(matches!(
            admit(&CONFIG, &draining, RequestKind::Login, 0, 0),
            Verdict::Reject { code: ErrorCode::Draining, .. }
        ));
        assert_eq!(admit(&CONFIG, &draining, RequestKind::Shake, 0, 0), Verdict::Admit);
        assert_eq!(admit(&CONFIG, &draining, RequestKind::Sync, 0, 0), Verdict::Admit);
    }
}
