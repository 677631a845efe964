//! One core's consumer: a glommio task of its own that reads the core's *durable* open
//! records in LSN order, in batches of at most `handoff_batch_records_max`, and hands each
//! batch to the core's sink until the sink acknowledges it; only then does it move on.
//!
//! It never blocks the core: it reads the log with the core's io_uring, sleeps on timers
//! while the sink is down, and the file sink's writes and fsyncs run on the core's blocking
//! thread pool. The request path never waits for it: opens are answered when their record
//! is durable in the log, whatever the sink does.

use super::metrics::HandoffMetrics;
use super::{ConsumerBounds, CoreSink, HandoffError};
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

/// One batch read from the log.
struct Batch {
    records: Vec<OpenRecord>,
    /// LSN of the last record the batch covers (records of other kinds are skipped).
    last_lsn: u64,
}

/// Reads the next batch after `after_lsn`: at most `records_max` records.
async fn read_batch(log: &Log, after_lsn: u64, records_max: usize) -> Result<Option<Batch>, HandoffError> {
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
            if record.kind == KIND_OPENED {
                let open =
                    OpenRecord::decode(record.kind, record.payload).map_err(|e| HandoffError::Queue(e.to_string()))?;
                out.records.push(open);
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

/// Drains `log` into `sink` until `stop()`: the consumer without its core (benchmarks
/// drive it directly). `unix_ms` is the clock the open records' times are on.
pub async fn drain(
    log: &Log,
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
        let batch = match read_batch(log, acked, bounds.batch_records_max).await {
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
        if let Some(first) = batch.records.first() {
            m.oldest_pending_opened_ms.store(first.opened_at_ms.max(1), Relaxed);
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
            m.lag.record_us(done_ms.saturating_sub(r.opened_at_ms).saturating_mul(1_000));
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
