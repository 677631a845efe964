//! The core's own io_uring for reading client sockets.
//!
//! glommio reads a socket by arming a one-shot poll per read and, on every executor
//! wake-up, cancels and re-arms its own timers and ring links; the kernel finds a
//! poll to cancel by walking a hash bucket that holds every armed poll of the ring,
//! so the cost of a request grew with the number of idle connections (docs/design.md,
//! "The connection driver's cost"). Here each connection has one multishot receive
//! armed for its whole life, filling buffers from a provided-buffer ring: no
//! per-request submission, no cancellation, no receive syscall.
//!
//! The ring signals an eventfd when work arrives. The core's reaper task waits for it
//! through glommio (interrupt mode); when the arrival rate says a window will hold
//! several events it reaps every `batch_window` instead (polling mode, as NAPI does for
//! a NIC), so at moderate load one executor wake-up serves several requests; a tick that
//! finds nothing, or a rate that falls, returns it to the eventfd. Writes stay on glommio's stream (a direct `send` that nearly always
//! succeeds at once).
//!
//! A receive completion is copied out of its ring buffer into the connection's slot
//! at once and the buffer goes back to the ring, so an idle connection holds no
//! buffer and a slow connection cannot starve the others.

use glommio::io::BufferedFile;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use slab::Slab;
use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// The provided-buffer group every receive of this ring selects from.
const BUFFER_GROUP: u16 = 1;
const IORING_ENTER_GETEVENTS: u32 = 1;
/// user_data layout: kind in the top 2 bits, slot generation in the next 30, slot index in the low 32.
const KIND_SHIFT: u32 = 62;
const KIND_RECV: u64 = 1;
const KIND_CANCEL: u64 = 2;
const GEN_MASK: u64 = (1 << 30) - 1;

/// Sizes of a core's network ring.
#[derive(Debug, Clone, Copy)]
pub struct NetRingConfig {
    /// Submission queue entries (the completion queue gets four times as many).
    pub entries: u32,
    /// Receive buffers in the provided-buffer ring (a power of two, at most 32,768).
    pub buffers: u16,
    /// Bytes per receive buffer.
    pub buffer_bytes: u32,
    /// While events keep coming, reap this often instead of waking per event
    /// (zero: reap again as soon as the executor is idle).
    pub batch_window: Duration,
}

/// What a connection's receive produced.
#[derive(Debug)]
pub enum RecvEvent {
    Data(Vec<u8>),
    Eof,
    Failed(i32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Armed {
    /// A multishot receive is in the kernel.
    Yes,
    /// The receive ended for want of buffers; re-armed at the end of the reap.
    Rearm,
    /// No receive in the kernel (ended by EOF or an error, or stopped).
    No,
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    fd: RawFd,
    data: Vec<u8>,
    /// How the receive ended: 0 not yet, 1 end of stream, else the errno + 1.
    end: i32,
    waker: Option<Waker>,
    armed: Armed,
    /// A stop was asked: a cancel is in the kernel; the slot is kept until the receive ends.
    stopping: bool,
    /// The connection is gone; the slot is freed when the receive ends.
    orphan: bool,
}

/// A connection's registration in the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetToken {
    index: u32,
    generation: u32,
}

impl NetToken {
    fn user_data(self, kind: u64) -> u64 {
        kind << KIND_SHIFT | u64::from(self.generation) << 32 | u64::from(self.index)
    }
}

/// Figures of the ring for /metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct NetRingStats {
    pub reaps: u64,
    pub completions: u64,
    pub wakeups: u64,
    pub buffer_shortages: u64,
    pub eventfd_waits: u64,
}

/// The ring's figures in /metrics (copied from [`NetRingStats`] by the housekeeping tick).
#[derive(Debug, Default)]
pub struct NetRingMetrics {
    pub reaps: AtomicU64,
    pub completions: AtomicU64,
    pub wakeups: AtomicU64,
    pub buffer_shortages: AtomicU64,
    pub eventfd_waits: AtomicU64,
}

impl NetRingMetrics {
    pub fn set(&self, s: NetRingStats) {
        self.reaps.store(s.reaps, Ordering::Relaxed);
        self.completions.store(s.completions, Ordering::Relaxed);
        self.wakeups.store(s.wakeups, Ordering::Relaxed);
        self.buffer_shortages.store(s.buffer_shortages, Ordering::Relaxed);
        self.eventfd_waits.store(s.eventfd_waits, Ordering::Relaxed);
    }
}

/// Renders the network rings' figures, one series per core.
pub fn render_metrics(cores: &[&NetRingMetrics], out: &mut String) {
    use std::fmt::Write;
    type Getter = fn(&NetRingMetrics) -> &AtomicU64;
    const FAMILIES: [(&str, &str, Getter); 5] = [
        ("redrain_net_ring_reaps_total", "Reaps of the core's network ring (one per batch).", |m| &m.reaps),
        ("redrain_net_ring_completions_total", "Completions reaped from the network ring.", |m| &m.completions),
        ("redrain_net_ring_wakeups_total", "Connection tasks woken by received data.", |m| &m.wakeups),
        (
            "redrain_net_ring_buffer_shortages_total",
            "Receives that ended for want of a provided buffer and were re-armed.",
            |m| &m.buffer_shortages,
        ),
        (
            "redrain_net_ring_eventfd_waits_total",
            "Times the reaper went back to waiting on the ring's eventfd (the core was quiet).",
            |m| &m.eventfd_waits,
        ),
    ];
    for (name, help, get) in FAMILIES {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (i, m) in cores.iter().enumerate() {
            let _ = writeln!(out, "{name}{{core=\"{i}\"}} {}", get(m).load(Ordering::Relaxed));
        }
    }
}

/// The provided-buffer ring: entries shared with the kernel, and the buffers.
struct BufRing {
    entries: *mut types::BufRingEntry,
    entries_layout: std::alloc::Layout,
    buffers: Box<[u8]>,
    count: u16,
    buffer_bytes: usize,
    tail: Cell<u16>,
}

impl BufRing {
    fn new(count: u16, buffer_bytes: usize) -> std::io::Result<Self> {
        if !count.is_power_of_two() || count > 32_768 || buffer_bytes == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "receive buffers must be a power of two up to 32768, of at least one byte",
            ));
        }
        let size = usize::from(count) * std::mem::size_of::<types::BufRingEntry>();
        let entries_layout = std::alloc::Layout::from_size_align(size, 4096)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size.
        let entries = unsafe { std::alloc::alloc_zeroed(entries_layout) } as *mut types::BufRingEntry;
        if entries.is_null() {
            return Err(std::io::Error::from(std::io::ErrorKind::OutOfMemory));
        }
        let mut buffers = vec![0u8; usize::from(count) * buffer_bytes].into_boxed_slice();
        // Touch every page now: the pool is resident from the start (no page faults on
        // the request path, and the RSS per session is not inflated by its first use).
        for page in buffers.chunks_mut(4096) {
            // SAFETY: a valid, exclusively borrowed byte.
            unsafe { std::ptr::write_volatile(page.as_mut_ptr(), 0) };
        }
        let ring = Self { entries, entries_layout, buffers, count, buffer_bytes, tail: Cell::new(0) };
        for bid in 0..count {
            ring.put(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// Queues buffer `bid` for the kernel (visible after [`BufRing::publish`]).
    fn put(&self, bid: u16) {
        let tail = self.tail.get();
        let index = usize::from(tail & (self.count - 1));
        let addr = self.buffers.as_ptr() as u64 + u64::from(bid) * self.buffer_bytes as u64;
        // SAFETY: `index` < count entries; the kernel reads an entry only below the published tail,
        // and this entry's slot was consumed by the kernel before the tail came round to it again.
        let entry = unsafe { &mut *self.entries.add(index) };
        entry.set_addr(addr);
        entry.set_len(self.buffer_bytes as u32);
        entry.set_bid(bid);
        self.tail.set(tail.wrapping_add(1));
    }

    fn publish(&self) {
        // SAFETY: the tail field lives inside the first entry, which we own; the kernel reads it.
        let tail = unsafe { &*(types::BufRingEntry::tail(self.entries) as *const AtomicU16) };
        tail.store(self.tail.get(), Ordering::Release);
    }

    fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * self.buffer_bytes;
        &self.buffers[start..start + len.min(self.buffer_bytes)]
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the ring that used it is closed first
        // (field order of `NetRing`).
        unsafe { std::alloc::dealloc(self.entries as *mut u8, self.entries_layout) };
    }
}

/// One core's network ring. `!Send`: it lives on its core.
pub struct NetRing {
    ring: RefCell<IoUring>,
    bufs: BufRing,
    slots: RefCell<Slab<Slot>>,
    rearm: RefCell<Vec<u32>>,
    eventfd: OwnedFd,
    next_generation: Cell<u32>,
    batch_window: Duration,
    stats: Cell<NetRingStats>,
    reaped: RefCell<Vec<(u64, i32, u32)>>,
}

impl NetRing {
    /// Sets the ring up on the calling thread (it must be the core's thread: the ring
    /// accepts submissions from its creator only).
    pub fn new(config: NetRingConfig) -> std::io::Result<Self> {
        // Not DEFER_TASKRUN: with it the kernel does not signal the eventfd as completions
        // become ready (measured: replies waited for an unrelated wake-up, ~10 ms), so a
        // quiet core would sleep through its traffic. COOP_TASKRUN: completion work runs
        // when the core next enters the kernel instead of interrupting it; the TASKRUN
        // flag tells the reaper when such work is waiting.
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(config.entries.saturating_mul(4))
            .build(config.entries)?;
        let bufs = BufRing::new(config.buffers, config.buffer_bytes as usize)?;
        // SAFETY: the entries stay allocated until after the ring is closed (field order).
        unsafe {
            ring.submitter().register_buf_ring(bufs.entries as u64, bufs.count, BUFFER_GROUP)?;
        }
        // SAFETY: plain eventfd creation; the result is checked.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `efd` is a fresh descriptor owned by nobody else.
        let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        Ok(Self {
            ring: RefCell::new(ring),
            bufs,
            slots: RefCell::new(Slab::new()),
            rearm: RefCell::new(Vec::new()),
            eventfd,
            next_generation: Cell::new(1),
            batch_window: config.batch_window,
            stats: Cell::new(NetRingStats::default()),
            reaped: RefCell::new(Vec::with_capacity(256)),
        })
    }

    pub fn stats(&self) -> NetRingStats {
        self.stats.get()
    }

    /// Starts receiving on `fd` (a connected, nonblocking socket the caller keeps open
    /// until [`NetRing::release`] or a finished [`NetRing::stop`]).
    pub fn register(&self, fd: RawFd) -> NetToken {
        let generation = self.next_generation.get();
        self.next_generation.set(if u64::from(generation) >= GEN_MASK { 1 } else { generation + 1 });
        let index = self.slots.borrow_mut().insert(Slot {
            generation,
            fd,
            data: Vec::new(),
            end: 0,
            waker: None,
            armed: Armed::Yes,
            stopping: false,
            orphan: false,
        });
        let token = NetToken { index: index as u32, generation };
        self.arm(token, fd);
        self.flush();
        token
    }

    fn arm(&self, token: NetToken, fd: RawFd) {
        let sqe = opcode::RecvMulti::new(types::Fd(fd), BUFFER_GROUP).build().user_data(token.user_data(KIND_RECV));
        self.push(sqe);
    }

    fn push(&self, sqe: squeue::Entry) {
        let mut ring = self.ring.borrow_mut();
        // SAFETY: the entry refers to no memory of ours but the registered buffer ring.
        while unsafe { ring.submission().push(&sqe) }.is_err() {
            // Submission queue full: hand what is there to the kernel first.
            if let Err(e) = ring.submit() {
                log::warn!("network ring: submit failed: {e}");
                break;
            }
        }
    }

    /// Hands queued submissions to the kernel now (connection set-up and tear-down must
    /// not wait for the next reap, which may be far off on a quiet core).
    fn flush(&self) {
        let mut ring = self.ring.borrow_mut();
        if !ring.submission().is_empty() {
            if let Err(e) = ring.submit() {
                log::warn!("network ring: submit failed: {e}");
            }
        }
    }

    fn slot_mut(slots: &mut Slab<Slot>, token: NetToken) -> Option<&mut Slot> {
        slots.get_mut(token.index as usize).filter(|s| s.generation == token.generation)
    }

    /// Takes what arrived for `token`, or parks `cx` until something does.
    pub fn poll_recv(&self, token: NetToken, cx: &mut Context<'_>) -> Poll<RecvEvent> {
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = Self::slot_mut(&mut slots, token) else {
            return Poll::Ready(RecvEvent::Failed(libc::EBADF));
        };
        if !slot.data.is_empty() {
            return Poll::Ready(RecvEvent::Data(std::mem::take(&mut slot.data)));
        }
        match slot.end {
            0 => {}
            1 => return Poll::Ready(RecvEvent::Eof),
            e => return Poll::Ready(RecvEvent::Failed(e - 1)),
        }
        if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            slot.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Stops receiving on `token` (before its socket moves to another core) and returns
    /// the bytes that arrived and were not taken yet. The slot is freed.
    pub async fn stop(&self, token: NetToken) -> Vec<u8> {
        let armed = {
            let mut slots = self.slots.borrow_mut();
            match Self::slot_mut(&mut slots, token) {
                Some(slot) if slot.armed != Armed::No => {
                    slot.stopping = true;
                    true
                }
                Some(_) => false,
                None => return Vec::new(),
            }
        };
        if armed {
            self.push(
                opcode::AsyncCancel::new(token.user_data(KIND_RECV)).build().user_data(token.user_data(KIND_CANCEL)),
            );
            self.flush();
            futures_lite::future::poll_fn(|cx| {
                let mut slots = self.slots.borrow_mut();
                match Self::slot_mut(&mut slots, token) {
                    Some(slot) if slot.armed != Armed::No => {
                        slot.waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                    _ => Poll::Ready(()),
                }
            })
            .await;
        }
        let mut slots = self.slots.borrow_mut();
        match Self::slot_mut(&mut slots, token) {
            Some(_) => slots.remove(token.index as usize).data,
            None => Vec::new(),
        }
    }

    /// Forgets `token` (its connection is closing). A receive still in the kernel is
    /// cancelled; the slot is freed when it ends.
    pub fn release(&self, token: NetToken) {
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = Self::slot_mut(&mut slots, token) else { return };
        match slot.armed {
            Armed::No | Armed::Rearm => {
                slots.remove(token.index as usize);
            }
            Armed::Yes => {
                slot.orphan = true;
                slot.data = Vec::new();
                slot.waker = None;
                drop(slots);
                self.push(
                    opcode::AsyncCancel::new(token.user_data(KIND_RECV))
                        .build()
                        .user_data(token.user_data(KIND_CANCEL)),
                );
                self.flush();
            }
        }
    }

    /// Submits what is queued, runs the ring's deferred work and handles every completion.
    /// Returns the number of completions.
    pub fn reap(&self) -> usize {
        let mut reaped = self.reaped.borrow_mut();
        reaped.clear();
        {
            let mut ring = self.ring.borrow_mut();
            let pending = ring.submission().len();
            if pending > 0 || ring.submission().taskrun() || !ring.completion().is_empty() {
                // SAFETY: no extended argument is passed.
                let entered = unsafe {
                    ring.submitter().enter::<libc::sigset_t>(pending as u32, 0, IORING_ENTER_GETEVENTS, None)
                };
                if let Err(e) = entered {
                    if e.raw_os_error() != Some(libc::EINTR) && e.raw_os_error() != Some(libc::EBUSY) {
                        log::warn!("network ring: enter failed: {e}");
                    }
                }
            }
            reaped.extend(ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
        }
        let mut stats = self.stats.get();
        stats.reaps += 1;
        stats.completions += reaped.len() as u64;
        let mut returned = false;
        for &(user_data, result, flags) in reaped.iter() {
            if user_data >> KIND_SHIFT != KIND_RECV {
                continue;
            }
            let token = NetToken { index: user_data as u32, generation: ((user_data >> 32) & GEN_MASK) as u32 };
            let bid = cqueue::buffer_select(flags);
            let mut slots = self.slots.borrow_mut();
            let mut slot = Self::slot_mut(&mut slots, token);
            if let Some(bid) = bid {
                if let Some(slot) = slot.as_deref_mut().filter(|s| !s.orphan && result > 0) {
                    slot.data.extend_from_slice(self.bufs.buffer(bid, result as usize));
                }
                self.bufs.put(bid);
                returned = true;
            }
            let Some(slot) = slot else { continue };
            if !cqueue::more(flags) {
                // The multishot receive ended.
                if slot.orphan {
                    slots.remove(token.index as usize);
                    continue;
                }
                if slot.stopping {
                    slot.armed = Armed::No;
                } else if result == -libc::ENOBUFS {
                    slot.armed = Armed::Rearm;
                    stats.buffer_shortages += 1;
                    self.rearm.borrow_mut().push(token.index);
                } else if result == 0 {
                    slot.armed = Armed::No;
                    slot.end = 1;
                } else if result < 0 {
                    slot.armed = Armed::No;
                    slot.end = 1 - result;
                } else {
                    // Ended with data (e.g. the completion queue overflowed): receive again.
                    slot.armed = Armed::Rearm;
                    self.rearm.borrow_mut().push(token.index);
                }
            }
            if let Some(w) = slot.waker.take() {
                stats.wakeups += 1;
                w.wake();
            }
        }
        if returned {
            self.bufs.publish();
        }
        let rearm = std::mem::take(&mut *self.rearm.borrow_mut());
        for index in rearm {
            let target = {
                let mut slots = self.slots.borrow_mut();
                match slots.get_mut(index as usize) {
                    Some(s) if s.armed == Armed::Rearm && !s.stopping && !s.orphan => {
                        s.armed = Armed::Yes;
                        Some((NetToken { index, generation: s.generation }, s.fd))
                    }
                    _ => None,
                }
            };
            if let Some((token, fd)) = target {
                self.arm(token, fd);
            }
        }
        self.flush();
        self.stats.set(stats);
        reaped.len()
    }

    /// The core's reaper: waits on the ring's eventfd while the core is quiet, and reaps
    /// every batch window while events keep coming. Runs for the core's life.
    pub async fn run(self: Rc<Self>) {
        // SAFETY: a duplicate of our eventfd, owned by the glommio file from here on.
        let dup = unsafe { libc::dup(self.eventfd.as_raw_fd()) };
        if dup < 0 {
            log::error!("network ring: cannot duplicate its eventfd: {}", std::io::Error::last_os_error());
            return;
        }
        // SAFETY: `dup` is a fresh descriptor.
        let bell = unsafe { BufferedFile::from_raw_fd(dup) };
        let mut rate = ArrivalRate::new(std::time::Instant::now());
        loop {
            let reaped = self.reap();
            rate.note(reaped, std::time::Instant::now());
            if reaped == 0 || !rate.worth_polling(self.batch_window) {
                // Interrupt mode: sleep until the kernel has work for this ring.
                let mut stats = self.stats.get();
                stats.eventfd_waits += 1;
                self.stats.set(stats);
                if let Err(e) = bell.read_at(0, 8).await {
                    log::warn!("network ring: eventfd read failed: {e}");
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                continue;
            }
            // Polling mode: one executor wake-up per window serves every event in it.
            loop {
                if self.batch_window.is_zero() {
                    glommio::executor().yield_now().await;
                } else {
                    glommio::timer::sleep(self.batch_window).await;
                }
                let reaped = self.reap();
                rate.note(reaped, std::time::Instant::now());
                if reaped == 0 || !rate.worth_polling(self.batch_window) {
                    break;
                }
            }
        }
    }
}

/// The reaper polls only when a window is expected to hold more than this many events:
/// below it a polling tick would often find nothing and cost a wake-up of its own.
const POLL_MIN_EVENTS_PER_WINDOW: f64 = 1.5;
/// Span over which the arrival rate is measured.
const RATE_SPAN: Duration = Duration::from_millis(10);

/// Completions per second over the last [`RATE_SPAN`].
#[derive(Debug)]
struct ArrivalRate {
    span_start: std::time::Instant,
    count: u64,
    per_s: f64,
}

impl ArrivalRate {
    fn new(now: std::time::Instant) -> Self {
        Self { span_start: now, count: 0, per_s: 0.0 }
    }

    fn note(&mut self, completions: usize, now: std::time::Instant) {
        self.count += completions as u64;
        let elapsed = now.saturating_duration_since(self.span_start);
        if elapsed >= RATE_SPAN {
            self.per_s = self.count as f64 / elapsed.as_secs_f64();
            self.span_start = now;
            self.count = 0;
        }
    }

    /// Whether reaping every `window` pays: a zero window always polls (busy mode).
    fn worth_polling(&self, window: Duration) -> bool {
        window.is_zero() || self.per_s * window.as_secs_f64() >= POLL_MIN_EVENTS_PER_WINDOW
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (client, server)
    }

    fn config(buffers: u16, buffer_bytes: u32) -> NetRingConfig {
        NetRingConfig { entries: 64, buffers, buffer_bytes, batch_window: Duration::from_micros(100) }
    }

    /// A ring with its reaper running on the current executor.
    fn running(config: NetRingConfig) -> Rc<NetRing> {
        let ring = Rc::new(NetRing::new(config).unwrap());
        glommio::spawn_local(ring.clone().run()).detach();
        ring
    }

    /// Receives until `want` bytes or the end arrived.
    async fn receive(ring: &NetRing, token: NetToken, want: usize) -> (Vec<u8>, Option<RecvEvent>) {
        let mut got = Vec::new();
        while got.len() < want {
            match futures_lite::future::poll_fn(|cx| ring.poll_recv(token, cx)).await {
                RecvEvent::Data(d) => got.extend_from_slice(&d),
                end => return (got, Some(end)),
            }
        }
        (got, None)
    }

    fn on_executor(f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send + 'static) {
        glommio::LocalExecutorBuilder::default().spawn(f).unwrap().join().unwrap();
    }

    #[test]
    fn bytes_arrive_in_order_across_buffer_shortages_and_the_end_is_reported() {
        on_executor(|| {
            Box::pin(async {
                // Two small buffers: a 64 KiB burst must run the ring dry and be re-armed many times.
                let ring = running(config(2, 512));
                let (mut client, server) = pair();
                let token = ring.register(server.as_raw_fd());
                let sent: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
                let writer = std::thread::spawn({
                    let sent = sent.clone();
                    move || {
                        client.write_all(&sent).unwrap();
                        client.shutdown(std::net::Shutdown::Write).unwrap();
                        client
                    }
                });
                let (got, end) = receive(&ring, token, usize::MAX).await;
                let _client = writer.join().unwrap();
                assert_eq!(got, sent);
                assert!(matches!(end, Some(RecvEvent::Eof)), "{end:?}");
                assert!(ring.stats().buffer_shortages > 0, "the burst should have outrun two buffers");
                ring.release(token);
            })
        });
    }

    #[test]
    fn stop_returns_what_arrived_and_frees_the_slot_so_the_socket_can_move() {
        on_executor(|| {
            Box::pin(async {
                let ring = running(config(8, 4096));
                let (mut client, server) = pair();
                let token = ring.register(server.as_raw_fd());
                client.write_all(b"hello").unwrap();
                // Let the reaper pick the bytes up without the connection taking them.
                while ring.stats().completions == 0 {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                let rest = ring.stop(token).await;
                assert_eq!(rest, b"hello");
                // The slot is gone: polls on the old token fail, nothing more is received here.
                let after = futures_lite::future::poll_fn(|cx| ring.poll_recv(token, cx)).await;
                assert!(matches!(after, RecvEvent::Failed(libc::EBADF)), "{after:?}");
                // The socket now belongs to another reader (here: a new registration).
                client.write_all(b"world").unwrap();
                let again = ring.register(server.as_raw_fd());
                let (got, _) = receive(&ring, again, 5).await;
                assert_eq!(got, b"world");
                ring.release(again);
            })
        });
    }

    #[test]
    fn a_released_connection_is_cancelled_and_its_late_bytes_go_nowhere() {
        on_executor(|| {
            Box::pin(async {
                let ring = running(config(8, 4096));
                let (mut client, server) = pair();
                let token = ring.register(server.as_raw_fd());
                ring.release(token);
                let _ = client.write_all(b"late");
                // The cancel completes: the slot is freed and the token stays dead.
                for _ in 0..200 {
                    if ring.slots.borrow().is_empty() {
                        break;
                    }
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                assert!(ring.slots.borrow().is_empty(), "the released slot was not freed");
                let polled = futures_lite::future::poll_fn(|cx| ring.poll_recv(token, cx)).await;
                assert!(matches!(polled, RecvEvent::Failed(libc::EBADF)));
            })
        });
    }

    #[test]
    fn the_reaper_polls_only_when_a_window_is_expected_to_hold_several_events() {
        let t0 = std::time::Instant::now();
        let window = Duration::from_micros(250);
        let mut rate = ArrivalRate::new(t0);
        // 2,000 events/s: half an event per 250 µs window; waking per event is cheaper.
        rate.note(20, t0 + Duration::from_millis(10));
        assert!(!rate.worth_polling(window));
        // 8,000 events/s: two per window.
        rate.note(80, t0 + Duration::from_millis(20));
        assert!(rate.worth_polling(window));
        // Within a span the last full span's rate holds.
        rate.note(0, t0 + Duration::from_millis(25));
        assert!(rate.worth_polling(window));
        // A zero window is busy polling.
        assert!(ArrivalRate::new(t0).worth_polling(Duration::ZERO));
    }

    #[test]
    fn bad_buffer_geometry_is_refused() {
        assert!(BufRing::new(3, 4096).is_err());
        assert!(BufRing::new(0, 4096).is_err());
        assert!(BufRing::new(4, 0).is_err());
    }
}
