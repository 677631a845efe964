//! One core's overload state ([`CoreOverload`], owned by the shard state machine) and
//! the narrow calls the glommio driver makes into it ([`Core`] methods below): admit a
//! request, run the tick (load sample, degrade level, switches), write a Backoff push.

use super::admission::{admit, AdmissionConfig, RejectReason, RequestKind, Steering, Verdict};
use super::backoff::{Advice, Backoff, BackoffConfig, LoadSample};
use super::switches::Switches;
use crate::metrics::CoreMetrics;
use crate::metrics::Outcome;
use crate::shard::Core;
use redrain_net::message::Response;
use redrain_net::{ErrorCode, MessageType};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

/// The overload settings a core runs with (from the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverloadConfig {
    pub queue_delay_max_us: u64,
    pub busy_retry_after_ms: u32,
    pub pipelined_requests_max: usize,
}

impl Default for OverloadConfig {
    fn default() -> Self {
        let c = crate::config::Config::default();
        Self::from_config(&c)
    }
}

impl OverloadConfig {
    pub fn from_config(c: &crate::config::Config) -> Self {
        Self {
            queue_delay_max_us: c.queue_delay_max_us,
            busy_retry_after_ms: c.busy_retry_after_ms,
            pipelined_requests_max: c.pipelined_requests_max,
        }
    }
}

/// One core's overload state: its degrade level, its copy of the switches, and what
/// admission needs. Plain data: the driver feeds it times and samples.
#[derive(Debug, Clone)]
pub struct CoreOverload {
    pub config: OverloadConfig,
    backoff: Backoff,
    steering: Steering,
    switches: Arc<Switches>,
    switch_version: u64,
    /// Bumped whenever the advice changes; a session whose last push is older gets one.
    advice_epoch: u32,
    /// Requests admitted since the last tick by how long they waited, in buckets of the
    /// bound: < 1/4, < 1/2, < 1, < 2, more.
    window_delays: [u64; 5],
    last_tick_us: Option<u64>,
    last_cpu_us: u64,
    /// The CPU share this core may use (cgroup quota over the cores; 1.0 = a whole CPU).
    cpu_share: f64,
}

impl Default for CoreOverload {
    fn default() -> Self {
        Self::new(OverloadConfig::default())
    }
}

impl CoreOverload {
    pub fn new(config: OverloadConfig) -> Self {
        let backoff = Backoff::new(BackoffConfig {
            queue_delay_max_us: config.queue_delay_max_us,
            shake_interval_ms: 1,
            retry_after_ms: config.busy_retry_after_ms,
        });
        let steering = Steering { retry_after_ms: config.busy_retry_after_ms, ..Steering::default() };
        Self {
            config,
            backoff,
            steering,
            switches: Arc::default(),
            switch_version: 0,
            advice_epoch: 0,
            window_delays: [0; 5],
            last_tick_us: None,
            last_cpu_us: 0,
            cpu_share: 1.0,
        }
    }

    /// Admission of one request whose bytes were read at `read_at_us` (counted when
    /// rejected).
    pub fn admit(&mut self, kind: RequestKind, read_at_us: u64, now_us: u64, metrics: &CoreMetrics) -> Verdict {
        let waited = now_us.saturating_sub(read_at_us);
        let bound = self.config.queue_delay_max_us.max(1);
        let bucket = if waited * 4 < bound {
            0
        } else if waited * 2 < bound {
            1
        } else if waited < bound {
            2
        } else if waited < bound * 2 {
            3
        } else {
            4
        };
        self.window_delays[bucket] += 1;
        let verdict = admit(
            &AdmissionConfig { queue_delay_max_us: self.config.queue_delay_max_us },
            &self.steering,
            kind,
            read_at_us,
            now_us,
        );
        if let Verdict::Reject { code, reason, .. } = verdict {
            metrics.overload.rejected(kind.priority(), reason);
            metrics.rejected(code);
        }
        verdict
    }

    /// `base_ms` (a shake interval) scaled to the current degrade level.
    pub fn scale(&self, base_ms: u32) -> u32 {
        base_ms.saturating_mul(1 << self.backoff.level())
    }

    /// Sets the CPU share this core may use (see [`cgroup_cpu_share`]).
    pub fn set_cpu_share(&mut self, share: f64) {
        self.cpu_share = share.clamp(0.01, 1.0);
    }

    pub fn level(&self) -> u8 {
        self.backoff.level()
    }

    pub fn retry_after_ms(&self) -> u32 {
        self.steering.retry_after_ms
    }

    pub fn switches(&self) -> &Switches {
        &self.switches
    }

    pub fn switch_version(&self) -> u64 {
        self.switch_version
    }

    pub fn advice_epoch(&self) -> u32 {
        self.advice_epoch
    }

    /// Takes new switches; returns whether the issuance quota changed.
    pub fn apply_switches(&mut self, version: u64, switches: Arc<Switches>) -> bool {
        let quota_changed = switches.quota_per_s != self.switches.quota_per_s;
        self.steering.paused = switches.paused;
        self.steering.draining = switches.draining;
        self.switches = switches;
        self.switch_version = version;
        quota_changed
    }

    /// The wait that one in ten requests of the last tick reached (the lower edge of its
    /// bucket), and a new window. One stalled pass does not make an overload.
    fn request_delay_p90_us(&mut self) -> u64 {
        let counts = std::mem::take(&mut self.window_delays);
        let total: u64 = counts.iter().sum();
        let bound = self.config.queue_delay_max_us;
        let edges = [0, bound / 4, bound / 2, bound, bound * 2];
        let mut above = 0;
        for b in (0..counts.len()).rev() {
            above += counts[b];
            if total > 0 && above * 10 >= total {
                return edges[b];
            }
        }
        0
    }

    /// One tick: `now_us` since start, `cpu_us` the core thread's CPU time, `opens_fill` the
    /// open queue's pending share. Returns the new advice when the level changed.
    pub fn on_tick(
        &mut self,
        now_us: u64,
        cpu_us: u64,
        tick_us: u64,
        opens_fill: f64,
        metrics: &CoreMetrics,
    ) -> Option<Advice> {
        let (late_us, busy) = match self.last_tick_us {
            Some(last) => {
                let elapsed = now_us.saturating_sub(last).max(1);
                let busy = cpu_us.saturating_sub(self.last_cpu_us) as f64 / (elapsed as f64 * self.cpu_share);
                (elapsed.saturating_sub(tick_us), busy.min(1.0))
            }
            None => (0, 0.0),
        };
        self.last_tick_us = Some(now_us);
        self.last_cpu_us = cpu_us;
        let sample = LoadSample {
            queue_delay_us: late_us,
            request_delay_us: self.request_delay_p90_us(),
            cpu_busy: busy,
            opens_pending_fill: opens_fill,
        };
        metrics.overload.queue_delay_us.store(sample.queue_delay_us.max(sample.request_delay_us), Relaxed);
        metrics.overload.cpu_busy_permille.store((busy * 1000.0) as u64, Relaxed);
        let changed = self.backoff.update(&sample, self.switches.degrade_floor, now_us / 1000);
        if let Some(advice) = changed {
            self.steering.level = advice.level;
            self.steering.retry_after_ms = advice.retry_after_ms;
            self.advice_epoch = self.advice_epoch.wrapping_add(1);
            metrics.overload.degrade_level.store(u64::from(advice.level), Relaxed);
        }
        changed
    }
}

/// What the driver does with a request after [`Core::gate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Do its work.
    Pass,
    /// It was answered (rejected) already; go on with the next.
    Answered,
    /// It was answered and the connection closes (Draining).
    Close,
}

impl RequestKind {
    /// The kind of a rain request.
    pub fn of_rain(request: &crate::shard::state::RainRequest) -> Self {
        match request {
            crate::shard::state::RainRequest::Shake => RequestKind::Shake,
            crate::shard::state::RainRequest::Open(_) => RequestKind::Open,
            // Timelines: a sync is shed with logins, a read marker and a lucky-packet open
            // rank with opens (they redeem something already given), sends and group
            // changes with shakes (new work).
            crate::shard::state::RainRequest::Timeline(call) => match call.kind {
                MessageType::Sync => RequestKind::Sync,
                MessageType::SyncAck => RequestKind::SyncAck,
                MessageType::LuckyOpen => RequestKind::Open,
                _ => RequestKind::Send,
            },
        }
    }

    fn message_type(self) -> MessageType {
        match self {
            RequestKind::Hello => MessageType::Hello,
            RequestKind::Ping => MessageType::Ping,
            RequestKind::Logout => MessageType::Logout,
            RequestKind::Login => MessageType::Login,
            RequestKind::Shake => MessageType::Shake,
            RequestKind::Open => MessageType::Open,
            RequestKind::Send => MessageType::Send,
            RequestKind::Sync => MessageType::Sync,
            RequestKind::SyncAck => MessageType::SyncAck,
        }
    }
}

/// CPU time of the calling thread, us.
fn thread_cpu_us() -> u64 {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_THREAD) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as u64 * 1_000_000 + tv.tv_usec() as u64;
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => 0,
    }
}

impl Core {
    /// Microseconds since the node started (the clock admission works in).
    pub fn mono_us(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.node.started).as_micros() as u64
    }

    /// Admission of one request whose bytes were read at `read_at`.
    pub fn admit(&self, kind: RequestKind, read_at: Instant) -> Verdict {
        let now = self.mono_us(Instant::now());
        let read = self.mono_us(read_at);
        self.state.borrow_mut().overload.admit(kind, read, now, self.metrics())
    }

    /// The gate every request of a logged-in session (and every login) passes: with
    /// `deferred` answers of its connection outstanding, the pipelining bound first, then
    /// admission. A rejection is answered into `out` (in request order) and counted.
    pub fn gate(
        &self,
        kind: RequestKind,
        read_at: Instant,
        deferred: usize,
        request_id: u32,
        out: &mut Vec<u8>,
    ) -> Gate {
        let metrics = self.metrics();
        if deferred >= self.node.config.pipelined_requests_max {
            metrics.overload.pipeline_full_total.fetch_add(1, Relaxed);
            metrics.rejected(ErrorCode::PipelineFull);
            metrics.frame(Some(kind.message_type()), Outcome::from(ErrorCode::PipelineFull));
            let retry_after_ms = self.state.borrow().overload.retry_after_ms();
            Response::error(ErrorCode::PipelineFull, retry_after_ms, "too many requests of this connection in flight")
                .encode(request_id, out);
            return Gate::Answered;
        }
        match self.admit(kind, read_at) {
            Verdict::Admit => Gate::Pass,
            Verdict::Reject { code, retry_after_ms, reason } => {
                metrics.frame(Some(kind.message_type()), Outcome::from(code));
                let text = match reason {
                    RejectReason::QueueDelay => "waited too long in the node's queue; retry later",
                    RejectReason::Degraded => "the node is shedding this kind of request; retry later",
                    RejectReason::Paused => "shaking is paused by the operator",
                    RejectReason::Draining => "this node is draining; log in elsewhere",
                };
                Response::error(code, retry_after_ms, text).encode(request_id, out);
                if code.closes_connection() {
                    Gate::Close
                } else {
                    Gate::Answered
                }
            }
        }
    }

    /// Writes a Backoff push into `out` when the advice changed since `seen` (a
    /// connection's last epoch), and updates `seen`.
    pub fn backoff_push(&self, seen: &mut u32, out: &mut Vec<u8>) {
        let state = self.state.borrow();
        let epoch = state.overload.advice_epoch();
        if *seen == epoch {
            return;
        }
        *seen = epoch;
        let base = self.node.config.shake_interval_ms;
        Response::Backoff {
            level: state.overload.level(),
            shake_interval_ms: state.overload.scale(base),
            retry_after_ms: state.overload.retry_after_ms(),
        }
        .encode(0, out);
        self.metrics().overload.backoff_pushes_total.fetch_add(1, Relaxed);
    }

    /// The current advice epoch (a new connection starts from it: no push on connect).
    pub fn advice_epoch(&self) -> u32 {
        self.state.borrow().overload.advice_epoch()
    }

    /// The overload part of the housekeeping tick: new switches, load sample, degrade
    /// level; on a level change every connection is woken to take its Backoff push.
    pub fn overload_tick(self: &Rc<Self>) {
        let board = &self.node.switches;
        let now_us = self.mono_us(Instant::now());
        let tick_us = crate::shard::HOUSEKEEPING_TICK.as_micros() as u64;
        let changed = {
            let mut state = self.state.borrow_mut();
            if board.version() != state.overload.switch_version() {
                let (version, switches) = board.snapshot();
                state.apply_switches(version, switches);
                board.mark_applied(self.id, version);
                self.metrics().overload.switch_version.store(version, Relaxed);
            }
            let opens_fill = state.pending_len() as f64 / self.node.config.opens_pending_max.max(1) as f64;
            state.overload.on_tick(now_us, thread_cpu_us(), tick_us, opens_fill, self.metrics()).is_some()
        };
        if changed {
            self.nudge_all();
        }
        if self.id == 0 {
            super::persist::persist_if_changed(self);
        }
    }
}

/// The CPU share one core of this process may use, from its cgroup's CPU quota (v2
/// `cpu.max`, v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`) spread over `cores`; 1.0 when
/// unlimited or unknown. A core's busy share is measured against it, so a node in a
/// container with a CPU limit sees its overload as one without.
pub fn cgroup_cpu_share(cores: usize) -> f64 {
    let Ok(cgroups) = std::fs::read_to_string("/proc/self/cgroup") else { return 1.0 };
    let mut quota = None;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if controllers.is_empty() {
            let text = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/cpu.max")).unwrap_or_default();
            quota = quota.or(parse_cpu_max(&text));
        } else if controllers.split(',').any(|c| c == "cpu") {
            let read = |f: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/cpu{path}/{f}")).unwrap_or_default();
            let text = format!("{} {}", read("cpu.cfs_quota_us").trim(), read("cpu.cfs_period_us").trim());
            quota = parse_cpu_max(&text).or(quota);
        }
    }
    quota.map(|cpus| (cpus / cores.max(1) as f64).clamp(0.01, 1.0)).unwrap_or(1.0)
}

/// CPUs a quota line allows: `"max 100000"` or `"-1 100000"` = unlimited (None),
/// `"25000 100000"` = 0.25.
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut it = text.split_whitespace();
    let quota: f64 = it.next()?.parse().ok().filter(|q: &f64| *q > 0.0)?;
    let period: f64 = it.next()?.parse().ok().filter(|p: &f64| *p > 0.0)?;
    Some(quota / period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quota_lines_give_the_cpus_allowed_and_unlimited_gives_none() {
        assert_eq!(parse_cpu_max("max 100000"), None);
        assert_eq!(parse_cpu_max("-1 100000"), None);
        assert_eq!(parse_cpu_max("25000 100000"), Some(0.25));
        assert_eq!(parse_cpu_max("200000 100000\n"), Some(2.0));
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(parse_cpu_max("garbage"), None);
    }
}
