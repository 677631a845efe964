//! One core's consumer: a glommio task of its own that reads the core's *durable* open
//! records in LSN order, in batches of at most `handoff_batch_records_max`, and hands each
//! batch to the core's sink until the sink acknowledges it; only then does it move on.
//!
//! It never blocks the core: it reads the log with the core's io_uring, sleeps on timers
//! while the sink is down, and the file sink's writes and fsyncs run on the core's blocking
//! thread pool. The request path never waits for it: opens are answered when their record
//! is durable in the log, whatever the sink does.
//!
//! The same loop drains a core's timeline log for lucky packet shares
//! ([`HandoffSource::Lucky`], [`run_lucky`]) into a sink of their own.

use super::lucky::{ShareSkip, SharesSeen};
use super::metrics::HandoffMetrics;
use super::{ConsumerBounds, CoreSink, HandoffError, HandoffRecord, HandoffSource};
use crate::rain::records::{OpenRecord, KIND_OPENED};
use crate::shard::Core;
use redrain_storage::Log;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// Most bytes read from the log per batch (the log returns at least one whole batch).
const READ_BYTES_MAX: usize = 1 << 20;
/// How long the idle consumer waits for new durable records before refreshing its figures.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// Lucky shares (packet, user) a lucky consumer remembers to hand a share recorded twice
/// over once (~40 bytes each).
pub const LUCKY_SHARES_REMEMBERED_MAX: usize = 1 << 18;

/// One batch read from the log.
struct Batch {
    records: Vec<HandoffRecord>,
    /// LSN of the last record the batch covers (records of other kinds are skipped).
    last_lsn: u64,
}

/// What a consumer keeps between batches of its source.
enum Reader {
    Opens,
    Lucky { node: u16, core: u16, seen: SharesSeen },
}

impl Reader {
    /// The hand-off record of one log record, if it is one of this source's.
    fn admit(&mut self, kind: u8, payload: &[u8]) -> Result<Option<HandoffRecord>, HandoffError> {
        match self {
            Reader::Opens if kind == KIND_OPENED => OpenRecord::decode(kind, payload)
                .map(|open| Some(HandoffRecord::Event(open)))
                .map_err(|e| HandoffError::Queue(e.to_string())),
            Reader::Opens => Ok(None),
            Reader::Lucky { node, core, seen } => match seen.admit(kind, payload, *node, *core) {
                Ok(share) => Ok(Some(HandoffRecord::Lucky(share))),
                Err(ShareSkip::NotAShare) => Ok(None),
                Err(ShareSkip::Repeat { packet, user }) => {
                    log::info!("hand-off core {core}: share of user {user} in lucky packet {packet} recorded again; handed over once");
                    Ok(None)
                }
                // A damaged lucky record is also skipped by the timeline's recovery.
                Err(e @ ShareSkip::Damaged(_)) => {
                    log::warn!("hand-off core {core}: {e}; skipped");
                    Ok(None)
                }
            },
        }
    }
}

/// Reads the next batch after `after_lsn`: at most `records_max` records.
async fn read_batch(
    log: &Log,
    reader: &mut Reader,
    after_lsn: u64,
    records_max: usize,
) -> Result<Option<Batch>, HandoffError> {
    let bytes =
        log.read_batches(after_lsn + 1, READ_BYTES_MAX).await.map_err(|e| HandoffError::Queue(e.to_string()))?;
    if bytes.is_empty() {
        return Ok(None);
    }
    let (batches, damage) = redrain_storage::record::split_batches(&bytes);
    if let Some((offset, kind)) = damage {
        return Err(HandoffError::Queue(format!("damaged batch at byte {offset} of a read: {kind:?}")));
    }
    let mut out = Batch { records: Vec::with_capacity(records_max.min(4_096)), last_lsn: after_lsn };
    'batches: for batch in &batches {
        for record in batch.records().filter(|r| r.lsn > after_lsn) {
            if out.records.len() == records_max {
                break 'batches;
            }
            if let Some(r) = reader.admit(record.kind, record.payload)? {
                out.records.push(r);
            }
            out.last_lsn = record.lsn;
        }
    }
    Ok((out.last_lsn > after_lsn).then_some(out))
}

fn note_failure(m: &HandoffMetrics, core: usize, error: &str) {
    m.sink_errors_total.fetch_add(1, Relaxed);
    m.retries_total.fetch_add(1, Relaxed);
    if m.stalled.swap(1, Relaxed) == 0 {
        log::warn!("hand-off core {core}: delivery failed, retrying with backoff: {error}");
    }
    m.set_last_error(error);
}

/// Runs core `core`'s consumer until the node drains.
pub async fn run(core: Rc<Core>, sink: CoreSink, bounds: ConsumerBounds) {
    let Some(storage) = core.storage.get() else { return };
    let node = core.node.clone();
    let clock = || node.clock().unix_ms;
    let stop = || node.shutting_down();
    drain(storage.opens(), sink, bounds, &core.metrics().handoff, core.id, &clock, &stop).await;
}

/// Runs core `core`'s consumer of lucky packet shares (its timeline log) until the node drains.
pub async fn run_lucky(core: Rc<Core>, sink: CoreSink, bounds: ConsumerBounds) {
    let Some(storage) = core.timeline_storage.get() else { return };
    let node = core.node.clone();
    let clock = || node.clock().unix_ms;
    let stop = || node.shutting_down();
    let source = HandoffSource::Lucky { node: node.config.node_id };
    let m = &core.metrics().handoff_lucky;
    drain_source(storage.log(), source, sink, bounds, m, core.id, &clock, &stop).await;
}

/// Drains `log` into `sink` until `stop()`: the consumer without its core (benchmarks
/// drive it directly). `unix_ms` is the clock the open records' times are on.
pub async fn drain(
    log: &Log,
    sink: CoreSink,
    bounds: ConsumerBounds,
    m: &HandoffMetrics,
    core: usize,
    unix_ms: &dyn Fn() -> u64,
    stop: &dyn Fn() -> bool,
) {
    drain_source(log, HandoffSource::Opens, sink, bounds, m, core, unix_ms, stop).await
}

/// Drains the records of `source` in `log` into `sink` until `stop()`.
#[allow(clippy::too_many_arguments)]
pub async fn drain_source(
    log: &Log,
    source: HandoffSource,
    mut sink: CoreSink,
    bounds: ConsumerBounds,
    m: &HandoffMetrics,
    core: usize,
    unix_ms: &dyn Fn() -> u64,
    stop: &dyn Fn() -> bool,
) {
    let mut acked = match &sink {
        CoreSink::File(f) => f.position().lsn,
        CoreSink::Nats(n) => n.position().lsn,
    };
    let mut reader = match source {
        HandoffSource::Opens => Reader::Opens,
        HandoffSource::Lucky { node } => {
            // The shares handed over before the position, so a share recorded again
            // after it is recognised (the log is read once, as the timeline's recovery does).
            let mut seen = SharesSeen::new(LUCKY_SHARES_REMEMBERED_MAX);
            let read = log
                .for_each_record(0, |r| {
                    if r.lsn <= acked {
                        seen.remember_checkpoint(r.kind, r.payload);
                        let _ = seen.admit(r.kind, r.payload, node, core as u16);
                    }
                })
                .await;
            if let Err(e) = read {
                log::warn!("hand-off core {core}: reading the lucky shares before the position: {e}");
            }
            Reader::Lucky { node, core: core as u16, seen }
        }
    };
    m.acknowledged_lsn.store(acked, Relaxed);
    m.running.store(1, Relaxed);
    let mut read_failures = 0u32;
    while !stop() {
        m.durable_lsn.store(log.durable_lsn(), Relaxed);
        if log.durable_lsn() <= acked {
            m.oldest_pending_opened_ms.store(0, Relaxed);
            let wait = log.wait_durable_beyond(acked);
            let _ = futures_lite::future::or(
                async {
                    wait.await;
                },
                glommio::timer::sleep(IDLE_WAIT),
            )
            .await;
            continue;
        }
        let batch = match read_batch(log, &mut reader, acked, bounds.batch_records_max).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                glommio::timer::sleep(IDLE_WAIT).await;
                continue;
            }
            Err(e) => {
                read_failures = read_failures.saturating_add(1);
                note_failure(m, core, &e.to_string());
                glommio::timer::sleep(bounds.backoff(read_failures)).await;
                continue;
            }
        };
        read_failures = 0;
        if batch.records.is_empty() {
            // Nothing of this source in the batch (a timeline log is mostly messages): move
            // on without a sink write or a position fsync; a restart reads it again.
            acked = batch.last_lsn;
            m.acknowledged_lsn.store(acked, Relaxed);
            continue;
        }
        if let Some(first) = batch.records.first() {
            m.oldest_pending_opened_ms.store(first.opened_at_ms().max(1), Relaxed);
        }
        let mut failures = 0u32;
        sink = loop {
            match deliver(sink, &batch, m, core).await {
                (s, Ok(())) => break s,
                (s, Err(e)) => {
                    sink = s;
                    failures = failures.saturating_add(1);
                    note_failure(m, core, &e.to_string());
                    glommio::timer::sleep(bounds.backoff(failures)).await;
                    if stop() {
                        return;
                    }
                }
            }
        };
        if m.stalled.swap(0, Relaxed) == 1 {
            log::info!("hand-off core {core}: the sink acknowledges again");
        }
        acked = batch.last_lsn;
        let done_ms = unix_ms();
        let instant = batch.records.iter().filter(|r| r.instant_credit()).count() as u64;
        for r in &batch.records {
            m.lag.record_us(done_ms.saturating_sub(r.opened_at_ms()).saturating_mul(1_000));
        }
        let count = batch.records.len() as u64;
        m.acknowledged_lsn.store(acked, Relaxed);
        m.batches_total.fetch_add(1, Relaxed);
        m.records_total.fetch_add(count, Relaxed);
        m.instant_credit_total.fetch_add(instant, Relaxed);
        m.reconcile_later_total.fetch_add(count - instant, Relaxed);
    }
}

/// One delivery attempt of `batch` (the NATS sink retries inside, reporting each failure).
async fn deliver(
    sink: CoreSink,
    batch: &Batch,
    m: &HandoffMetrics,
    core: usize,
) -> (CoreSink, Result<(), HandoffError>) {
    match sink {
        CoreSink::File(mut file) => {
            let records = batch.records.clone();
            let last_lsn = batch.last_lsn;
            glommio::executor()
                .spawn_blocking(move || {
                    let result = file.deliver(&records, last_lsn).map(|_| ());
                    (CoreSink::File(file), result)
                })
                .await
        }
        CoreSink::Nats(mut port) => {
            let result =
                port.deliver(batch.records.clone(), batch.last_lsn, |e| note_failure(m, core, e)).await.map(|_| ());
            (CoreSink::Nats(port), result)
        }
    }
}
