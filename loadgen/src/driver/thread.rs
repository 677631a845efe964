//! One generator thread: pinned to a CPU, one runtime (a [`Backend`]), a share of the
//! connections (those with `index % threads == thread`), and its own stats.
//!
//! Threads agree on one timeline: each reports when all its handshakes have
//! finished; the last one to do so fixes the load start for everyone.

use super::backend::Backend;
use super::connection::run_connection;
use super::precise_timer;
use crate::config::RunConfig;
use crate::scenario::Scenario;
use crate::stats::ThreadStats;
use crate::system;
use redrain_net::token::TokenKeys;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify, Semaphore};

/// Handshakes one thread runs at once when no connect rate is given.
pub const CONNECTS_IN_FLIGHT_PER_THREAD_MAX: usize = 64;
/// Delay between the last thread finishing its ramp and the load starting.
const LOAD_START_MARGIN: Duration = Duration::from_millis(20);
/// How often a ramped thread looks whether the others are done.
const RAMP_POLL: Duration = Duration::from_millis(1);
const UNSET: u64 = u64::MAX;

/// The run's phases, in ns since the run base instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeline {
    pub load_start_ns: u64,
    pub measure_start_ns: u64,
    pub measure_end_ns: u64,
    pub drain_end_ns: u64,
    pub interval_ns: u64,
    pub intervals: usize,
}

impl Timeline {
    pub fn new(cfg: &RunConfig, load_start_ns: u64) -> Self {
        let measure_start_ns = load_start_ns + cfg.warmup.as_nanos() as u64;
        let measure_end_ns = measure_start_ns + cfg.duration.as_nanos() as u64;
        Self {
            load_start_ns,
            measure_start_ns,
            measure_end_ns,
            drain_end_ns: measure_end_ns + cfg.drain_timeout.as_nanos() as u64,
            interval_ns: cfg.interval.as_nanos() as u64,
            intervals: cfg.interval_count(),
        }
    }

    /// The over-time interval a completion at `now_ns` belongs to.
    pub fn interval_of(&self, now_ns: u64) -> usize {
        let i = now_ns.saturating_sub(self.measure_start_ns) / self.interval_ns.max(1);
        (i as usize).min(self.intervals - 1)
    }
}

/// State all threads share.
#[derive(Debug)]
pub struct RunShared {
    pub base: Instant,
    /// Earliest load start (ns since base) another process asked for.
    start_at_ns: Option<u64>,
    pub threads: usize,
    threads_ramped: AtomicUsize,
    load_start_ns: AtomicU64,
}

impl RunShared {
    pub fn new(threads: usize, start_at_unix_ms: Option<u64>) -> Self {
        let base = Instant::now();
        let base_unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self {
            base,
            start_at_ns: start_at_unix_ms.map(|ms| (ms * 1_000_000).saturating_sub(base_unix_ns)),
            threads,
            threads_ramped: AtomicUsize::new(0),
            load_start_ns: AtomicU64::new(UNSET),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// The load start, once every thread has ramped.
    pub fn load_start_ns(&self) -> Option<u64> {
        let v = self.load_start_ns.load(Ordering::Acquire);
        (v != UNSET).then_some(v)
    }

    fn thread_ramped(&self) {
        if self.threads_ramped.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            let start = (self.now_ns() + LOAD_START_MARGIN.as_nanos() as u64).max(self.start_at_ns.unwrap_or(0));
            self.load_start_ns.store(start, Ordering::Release);
        }
    }
}

/// What a thread's connection tasks share (single-threaded: `Rc`/`RefCell`).
pub struct ThreadCtx<S: Scenario> {
    pub cfg: Arc<RunConfig>,
    pub scenario: Arc<S>,
    pub shared: Arc<RunShared>,
    pub stats: RefCell<ThreadStats>,
    pub token_keys: TokenKeys,
    pub connect_permits: Semaphore,
    pub ramp_start_ns: u64,
    handshakes_left: Cell<u64>,
    ramp_done: Notify,
    timeline_rx: watch::Receiver<Option<Timeline>>,
}

impl<S: Scenario> ThreadCtx<S> {
    pub fn now_ns(&self) -> u64 {
        self.shared.now_ns()
    }

    pub fn instant(&self, ns: u64) -> Instant {
        self.shared.base + Duration::from_nanos(ns)
    }

    pub fn handshake_finished(&self) {
        let left = self.handshakes_left.get();
        debug_assert!(left > 0);
        self.handshakes_left.set(left.saturating_sub(1));
        if left == 1 {
            self.ramp_done.notify_one();
        }
    }

    /// Waits until the load start is known.
    pub async fn timeline(&self) -> Timeline {
        let mut rx = self.timeline_rx.clone();
        let seen = rx.wait_for(|t| t.is_some()).await.ok().and_then(|t| *t);
        // The sender lives as long as the thread's main future, so `None` is
        // only possible while the runtime shuts down.
        seen.unwrap_or_else(|| Timeline::new(&self.cfg, self.now_ns()))
    }
}

/// Body of generator thread `thread` on runtime `B`; returns its stats.
pub fn thread_main<S: Scenario, B: Backend>(
    thread: usize,
    cpu: usize,
    cfg: Arc<RunConfig>,
    scenario: Arc<S>,
    shared: Arc<RunShared>,
    token_keys: TokenKeys,
) -> std::io::Result<ThreadStats> {
    let pinned = system::pin_current_thread(cpu).is_ok();
    let stats =
        ThreadStats::new(scenario.counter_names().len(), cfg.interval_count(), if pinned { cpu } else { usize::MAX });
    let mine: Vec<u64> = cfg.local_connections().skip(thread).step_by(shared.threads).collect();
    let permits =
        if cfg.connect_rate_per_s.is_some() { Semaphore::MAX_PERMITS } else { CONNECTS_IN_FLIGHT_PER_THREAD_MAX };
    let (timeline_tx, timeline_rx) = watch::channel(None);
    let ctx = Rc::new(ThreadCtx {
        ramp_start_ns: shared.now_ns(),
        cfg: cfg.clone(),
        scenario,
        shared: shared.clone(),
        stats: RefCell::new(stats),
        token_keys,
        connect_permits: Semaphore::new(permits),
        handshakes_left: Cell::new(mine.len() as u64),
        ramp_done: Notify::new(),
        timeline_rx,
    });
    let body = {
        let (ctx, shared, cfg) = (ctx.clone(), shared.clone(), cfg.clone());
        async move {
            let tasks: Vec<_> = mine.iter().map(|i| B::spawn(run_connection::<S, B>(ctx.clone(), *i))).collect();
            if !mine.is_empty() {
                ctx.ramp_done.notified().await;
            }
            shared.thread_ramped();
            let load_start_ns = loop {
                if let Some(s) = shared.load_start_ns() {
                    break s;
                }
                B::sleep_until(Instant::now() + RAMP_POLL).await;
            };
            let timeline = Timeline::new(&cfg, load_start_ns);
            let _ = timeline_tx.send(Some(timeline));
            // Self-check: this thread's CPU time over the measured window.
            B::sleep_until(ctx.instant(timeline.measure_start_ns)).await;
            let core0 = if pinned { system::cpu_jiffies(cpu) } else { None };
            let (cpu0, wall0, spin0) = (system::thread_cpu_ns(), ctx.now_ns(), precise_timer::spin_ns_total());
            B::sleep_until(ctx.instant(timeline.measure_end_ns)).await;
            let (cpu1, wall1, spin1) = (system::thread_cpu_ns(), ctx.now_ns(), precise_timer::spin_ns_total());
            let core1 = if pinned { system::cpu_jiffies(cpu) } else { None };
            {
                let mut s = ctx.stats.borrow_mut();
                s.cpu_ns = cpu1.saturating_sub(cpu0);
                s.spin_ns = spin1.saturating_sub(spin0);
                s.wall_ns = wall1.saturating_sub(wall0);
                s.core_busy = core0.zip(core1).and_then(|(a, b)| system::busy_fraction(a, b));
            }
            for t in tasks {
                t.await;
            }
        }
    };
    precise_timer::set_spin_lead(cfg.spin_before_send);
    B::block_on(thread, shared.threads, body)?;
    let ctx = Rc::try_unwrap(ctx).map_err(|_| std::io::Error::other("connection tasks outlived the runtime"))?;
    Ok(ctx.stats.into_inner())
}
