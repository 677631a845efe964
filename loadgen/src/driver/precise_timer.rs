//! Nanosecond-precise sleeps for the tokio-uring backend.
//!
//! tokio's timer wheel ticks in whole milliseconds, and a sleep is rounded up to
//! the next tick: an open-loop send due at t left at t + 0..1 ms (measured on
//! main: send lag p50 0.77 ms, p99 1.57 ms at 1,000/s). Every open-loop latency
//! counts from the intended time, so that lag was in every figure.
//!
//! This timer owns one `timerfd` (CLOCK_MONOTONIC, the clock of
//! [`std::time::Instant`] on Linux; an hrtimer, so no timer slack applies) per
//! generator thread, registered with the tokio reactor the tokio-uring runtime
//! runs, and a min-heap of the deadlines waited for. The fd is always armed at
//! the earliest deadline; one driver task wakes every due sleeper when it fires.
//! So a due send costs one wake-up of the thread, shared by every sleeper due
//! at the same time, and the thread sleeps in between (no spinning).
//!
//! Waking a sleeping CPU is itself slow on a VM (measured here: 20-40 us from
//! the timer firing to the send, with the generator alone on its core). So a
//! sleeper is woken [`spin lead`](set_spin_lead) before its deadline and then
//! yields to the runtime until the deadline passes: the thread keeps running
//! (other tasks, such as readers, and the I/O driver still run in between, so
//! responses are not held up), and the send leaves within about a microsecond.
//! The time spent so is counted ([`spin_ns_total`]) and not taken for load by
//! the generator-limited CPU rule. Spinning is budgeted to
//! [`SPIN_SHARE_MAX`] of the thread's time: at high rates, where the sends are
//! closer together than the lead, a thread that never slept would lose the
//! scheduler's wake-up preference on a shared core (and, under a real-time
//! policy, be throttled), so beyond the budget sleepers wake at their deadline.
//!
//! Lives on one thread: [`install`] it inside the runtime, then [`sleep_until`].

use std::cell::{Cell, RefCell};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;

/// Most sleepers one thread's heap holds before a registration is refused
/// (the sleeper then falls back to tokio's millisecond timer). One open-loop
/// writer waits on at most one deadline at a time, so this bounds connections
/// per thread far above the fd limit.
pub const SLEEPERS_MAX: usize = 4 * 1024 * 1024;

struct Entry {
    at: Instant,
    sequence: u64,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.sequence) == (other.at, other.sequence)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    /// Reversed: the earliest deadline is the heap's maximum.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.sequence).cmp(&(self.at, self.sequence))
    }
}

/// One thread's timer: the timerfd, the heap, and when the fd is armed for.
pub struct PreciseTimer {
    fd: AsyncFd<OwnedFd>,
    heap: RefCell<BinaryHeap<Entry>>,
    armed_at: Cell<Option<Instant>>,
    next_sequence: Cell<u64>,
}

/// Longest spin lead accepted.
pub const SPIN_LEAD_MAX: Duration = Duration::from_millis(1);
/// Largest share of a thread's wall time given to spinning.
pub const SPIN_SHARE_MAX: f64 = 0.25;
/// Most spin budget saved up (so an idle stretch does not buy a long spin burst).
const SPIN_BUDGET_NS_MAX: f64 = 2_000_000.0;

thread_local! {
    static TIMER: RefCell<Option<Rc<PreciseTimer>>> = const { RefCell::new(None) };
    static SPIN_LEAD: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    static SPIN_NS_TOTAL: Cell<u64> = const { Cell::new(0) };
    /// End of the last counted spin (so overlapping spins count once).
    static SPIN_COUNTED_UNTIL: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Spin budget left (ns) and when it was last topped up.
    static SPIN_BUDGET: Cell<(f64, Option<Instant>)> = const { Cell::new((0.0, None)) };
}

/// Whether a sleeper may take `lead` of spin now; takes it from the budget if so.
fn take_spin_budget(lead: Duration, now: Instant) -> bool {
    SPIN_BUDGET.with(|b| {
        let (mut budget, since) = b.get();
        let earned =
            since.map_or(SPIN_BUDGET_NS_MAX, |s| now.saturating_duration_since(s).as_nanos() as f64 * SPIN_SHARE_MAX);
        budget = (budget + earned).min(SPIN_BUDGET_NS_MAX);
        let lead_ns = lead.as_nanos() as f64;
        let granted = budget >= lead_ns;
        if granted {
            budget -= lead_ns;
        }
        b.set((budget, Some(now)));
        granted
    })
}

/// Sets how long before its deadline a sleeper on this thread is woken to
/// spin (zero: no spinning; clamped to [`SPIN_LEAD_MAX`]).
pub fn set_spin_lead(lead: Duration) {
    SPIN_LEAD.with(|l| l.set(lead.min(SPIN_LEAD_MAX)));
}

/// Wall time this thread's sleepers spent spinning before their deadlines, ns.
pub fn spin_ns_total() -> u64 {
    SPIN_NS_TOTAL.with(|t| t.get())
}

/// Counts the spin `[start, end]`, minus any part already counted.
fn count_spin(start: Instant, end: Instant) {
    let from = SPIN_COUNTED_UNTIL.with(|u| u.get()).map_or(start, |u| u.max(start));
    if end > from {
        SPIN_NS_TOTAL.with(|t| t.set(t.get() + (end - from).as_nanos() as u64));
        SPIN_COUNTED_UNTIL.with(|u| u.set(Some(end)));
    }
}

impl PreciseTimer {
    fn new() -> io::Result<Self> {
        // SAFETY: timerfd_create has no memory preconditions; the fd is checked.
        let raw = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd this value now owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the `OwnedFd` moves into the `AsyncFd`, so the fd stays open
        // and the same for the `AsyncFd`'s whole life.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(Self { fd, heap: RefCell::new(BinaryHeap::new()), armed_at: Cell::new(None), next_sequence: Cell::new(0) })
    }

    /// Arms the fd to fire at `at` (relative to now: `Instant` has no public
    /// absolute value; the error is the few ns between the two clock reads).
    fn arm(&self, at: Instant) {
        let wait = at.saturating_duration_since(Instant::now()).max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec { tv_sec: wait.as_secs() as libc::time_t, tv_nsec: wait.subsec_nanos() as _ },
        };
        // SAFETY: valid fd and a valid itimerspec; the old value is not asked for.
        let rc = unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        debug_assert_eq!(rc, 0, "timerfd_settime on our own fd");
        self.armed_at.set(Some(at));
    }

    /// Registers `waker` for `at`; false when the heap is full.
    fn register(&self, at: Instant, waker: Waker) -> bool {
        let mut heap = self.heap.borrow_mut();
        if heap.len() >= SLEEPERS_MAX {
            return false;
        }
        let sequence = self.next_sequence.get();
        self.next_sequence.set(sequence + 1);
        heap.push(Entry { at, sequence, waker });
        if self.armed_at.get().is_none_or(|armed| at < armed) {
            self.arm(at);
        }
        true
    }

    /// Wakes every sleeper due by now and re-arms for the next one.
    fn fire(&self) {
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut heap = self.heap.borrow_mut();
            while heap.peek().is_some_and(|e| e.at <= now) {
                due.push(heap.pop().expect("peeked").waker);
            }
            match heap.peek() {
                Some(next) => {
                    let at = next.at;
                    drop(heap);
                    self.arm(at);
                }
                None => self.armed_at.set(None),
            }
        }
        for w in due {
            w.wake();
        }
    }

    /// The driver: waits for the fd and fires. Runs until the runtime drops it.
    async fn drive(self: Rc<Self>) {
        loop {
            let Ok(mut guard) = self.fd.readable().await else { return };
            let mut expirations = [0u8; 8];
            // SAFETY: reads at most 8 bytes into an 8-byte buffer from our fd.
            let _ = unsafe { libc::read(self.fd.as_raw_fd(), expirations.as_mut_ptr().cast(), 8) };
            // Edge-triggered: an expiration after this read is a new event
            // (tokio's readiness tick keeps it from being cleared here).
            guard.clear_ready();
            self.fire();
        }
    }
}

/// Creates this thread's timer and spawns its driver; call once inside the
/// tokio-uring runtime, before any [`sleep_until`].
pub fn install() -> io::Result<()> {
    let timer = Rc::new(PreciseTimer::new()?);
    TIMER.with(|t| *t.borrow_mut() = Some(timer.clone()));
    tokio_uring::spawn(timer.drive());
    Ok(())
}

/// Forgets this thread's timer (its driver task ends with the runtime).
pub fn uninstall() {
    TIMER.with(|t| *t.borrow_mut() = None);
}

/// A sleep until `at` with nanosecond resolution (tokio's millisecond timer
/// when no timer is installed on this thread or its heap is full).
pub fn sleep_until(at: Instant) -> PreciseSleep {
    PreciseSleep { at, registered: false, fallback: None, spin_since: None, spin_lead: None }
}

/// The future of [`sleep_until`].
pub struct PreciseSleep {
    at: Instant,
    registered: bool,
    fallback: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When this sleeper started spinning towards its deadline.
    spin_since: Option<Instant>,
    /// The lead this sleeper was granted (decided at its first poll).
    spin_lead: Option<Duration>,
}

impl Future for PreciseSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let now = Instant::now();
        if now >= self.at {
            if let Some(since) = self.spin_since.take() {
                count_spin(since, now);
            }
            return Poll::Ready(());
        }
        if let Some(f) = self.fallback.as_mut() {
            return f.as_mut().poll(cx);
        }
        let lead = match self.spin_lead {
            Some(l) => l,
            None => {
                let wanted = SPIN_LEAD.with(|l| l.get());
                // Only a sleep longer than the lead spins (and only within budget).
                let granted = !wanted.is_zero() && self.at - now > wanted && take_spin_budget(wanted, now);
                let l = if granted { wanted } else { Duration::ZERO };
                self.spin_lead = Some(l);
                l
            }
        };
        let wake_at = self.at.checked_sub(lead).unwrap_or(self.at);
        if !lead.is_zero() && now >= wake_at {
            // Within the lead: yield to the runtime and look again at once.
            self.spin_since.get_or_insert(now);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if !self.registered {
            let ok =
                TIMER.with(|t| t.borrow().as_ref().is_some_and(|timer| timer.register(wake_at, cx.waker().clone())));
            if ok {
                self.registered = true;
            } else {
                let mut f = Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(self.at)));
                let poll = f.as_mut().poll(cx);
                self.fallback = Some(f);
                return poll;
            }
        }
        // Re-polled before the deadline (e.g. by a sibling branch of a join):
        // the registered waker is the task's, so nothing more to do.
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleepers_wake_in_deadline_order_and_never_early() {
        tokio_uring::start(async {
            install().unwrap();
            let base = Instant::now();
            let order = Rc::new(RefCell::new(Vec::new()));
            let mut tasks = Vec::new();
            for (i, us) in [3000u64, 1000, 2000, 1000].into_iter().enumerate() {
                let (order, at) = (order.clone(), base + Duration::from_micros(us));
                tasks.push(tokio_uring::spawn(async move {
                    sleep_until(at).await;
                    assert!(Instant::now() >= at, "woke before its deadline");
                    order.borrow_mut().push(i);
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let order = order.borrow().clone();
            assert_eq!(order.len(), 4);
            assert_eq!(order[3], 0, "the 3 ms sleeper wakes last: {order:?}");
            assert_eq!(order[2], 2, "the 2 ms sleeper wakes after both 1 ms ones: {order:?}");
            uninstall();
        });
    }

    #[test]
    fn with_a_spin_lead_sleepers_still_never_wake_early_and_the_spin_is_counted() {
        tokio_uring::start(async {
            install().unwrap();
            set_spin_lead(Duration::from_micros(200));
            let spun_before = spin_ns_total();
            for _ in 0..20 {
                let at = Instant::now() + Duration::from_micros(500);
                sleep_until(at).await;
                assert!(Instant::now() >= at, "woke before its deadline");
            }
            let spun = spin_ns_total() - spun_before;
            assert!(spun > 0, "the last part of each sleep was spun");
            assert!(spun <= 20 * 500_000, "never more than the sleeps themselves: {spun} ns");
            set_spin_lead(Duration::ZERO);
            uninstall();
        });
    }

    #[test]
    fn spinning_is_granted_within_a_quarter_of_the_time_only() {
        let t0 = Instant::now();
        SPIN_BUDGET.with(|b| b.set((0.0, Some(t0))));
        let lead = Duration::from_micros(50);
        // 100 us later a quarter is 25 us: not enough for 50 us of spin.
        assert!(!take_spin_budget(lead, t0 + Duration::from_micros(100)));
        // 100 us more: 50 us saved, granted, and spent.
        assert!(take_spin_budget(lead, t0 + Duration::from_micros(200)));
        assert!(!take_spin_budget(lead, t0 + Duration::from_micros(200)));
        // A long idle stretch saves at most the cap.
        assert!(take_spin_budget(lead, t0 + Duration::from_secs(100)));
        let (left, _) = SPIN_BUDGET.with(|b| b.get());
        assert!(left <= SPIN_BUDGET_NS_MAX - 50_000.0);
    }

    #[test]
    fn overlapping_spins_count_once() {
        let t0 = Instant::now();
        let before = spin_ns_total();
        count_spin(t0, t0 + Duration::from_micros(10));
        count_spin(t0 + Duration::from_micros(5), t0 + Duration::from_micros(12));
        count_spin(t0 + Duration::from_micros(2), t0 + Duration::from_micros(8));
        assert_eq!(spin_ns_total() - before, 12_000);
    }

    #[test]
    fn without_an_installed_timer_the_sleep_still_ends_at_its_deadline() {
        tokio_uring::start(async {
            let at = Instant::now() + Duration::from_millis(2);
            sleep_until(at).await;
            assert!(Instant::now() >= at);
        });
    }
}
