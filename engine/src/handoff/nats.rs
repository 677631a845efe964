//! The `nats` sink: opens published to a NATS JetStream stream, one message per open (the
//! `OpenedRecord` JSON line), with the packet id as `Nats-Msg-Id` so JetStream drops a
//! redelivered open within the stream's duplicate window.
//!
//! async-nats needs tokio, and the cores run glommio: the client runs on ONE dedicated std
//! thread with a current-thread tokio runtime. Each core talks to it through two bounded
//! lock-free queues: batches go out (at most [`BATCHES_IN_FLIGHT_PER_CORE`]), and events come
//! back (a failed attempt, then finally the batch's acknowledgement), which the core's
//! consumer polls. The thread publishes a batch's messages without waiting, then waits for
//! every JetStream publish ack; a failed attempt (server away, ack timeout) is reported as an
//! event and retried with bounded exponential backoff until it succeeds. Only a fully
//! acknowledged batch moves the core's position.
//!
//! At start-up the node connects (bounded by `handoff_nats_connect_timeout_ms`), and checks
//! the stream: it creates it when `handoff_nats_create_stream` is set, and otherwise refuses
//! to start with a clear message when it is missing. Unreachable servers, bad credentials
//! files and TLS errors are start-up errors too; once running, the client reconnects by
//! itself and the consumer counts retries.

use super::position::Position;
use super::HandoffRecord;
use super::{ConsumerBounds, HandoffError};
use crate::config::Config;
use async_nats::jetstream;
use crossbeam_queue::ArrayQueue;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Batches a core may have queued for the NATS thread (the consumer waits for each).
pub const BATCHES_IN_FLIGHT_PER_CORE: usize = 1;
/// Events a core's return queue holds; failure events beyond it are dropped (only
/// counted once) while the acknowledgement always fits, since it is the last event of
/// the core's only batch in flight.
pub const EVENTS_PER_CORE_MAX: usize = 64;
/// The client's window of publish acks awaited, in batches of every core.
const ACK_WINDOW_BATCHES: usize = 4;
/// How often a core's consumer looks for the NATS thread's events while it waits.
pub const EVENT_POLL_INTERVAL: Duration = Duration::from_millis(1);
/// How often an idle publishing task of the NATS thread looks for a core's batch.
const BATCH_POLL_INTERVAL: Duration = Duration::from_millis(1);

/// One batch of a core for the NATS thread.
pub struct NatsBatch {
    pub records: Vec<HandoffRecord>,
    pub last_lsn: u64,
}

/// What the NATS thread tells a core about its batch in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsEvent {
    /// An attempt failed; the thread retries after a backoff.
    AttemptFailed(String),
    /// Every message of the batch up to `last_lsn` is in the stream.
    Acknowledged { last_lsn: u64 },
}

struct Queues {
    batches: Vec<ArrayQueue<NatsBatch>>,
    events: Vec<ArrayQueue<NatsEvent>>,
}

/// The node's connection to JetStream and the thread that runs it. It has two lanes per
/// core: lane `c` for core `c`'s event opens, lane `cores + c` for its lucky shares.
pub struct NatsLink {
    cores: usize,
    queues: Arc<Queues>,
    _thread: std::thread::JoinHandle<()>,
}

/// One core's end of the link.
pub struct NatsPort {
    core: usize,
    queues: Arc<Queues>,
    position_path: PathBuf,
    position: Position,
}

struct Settings {
    urls: String,
    subject: String,
    stream: String,
    create: bool,
    duplicate_window: Duration,
    connect_timeout: Duration,
    ack_timeout: Duration,
    credentials: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    tls_required: bool,
    bounds: ConsumerBounds,
    in_flight_messages_max: usize,
}

fn nats_error(context: &str) -> impl FnOnce(String) -> HandoffError + '_ {
    move |e| HandoffError::Nats(format!("{context}: {e}"))
}

impl NatsLink {
    /// Connects, checks (or creates) the stream and starts the NATS thread.
    pub fn connect(config: &Config, cores: usize) -> Result<NatsLink, HandoffError> {
        let settings = Settings {
            urls: config.handoff_nats_urls.join(","),
            subject: config.handoff_nats_subject.clone(),
            stream: config.handoff_nats_stream.clone(),
            create: config.handoff_nats_create_stream,
            duplicate_window: Duration::from_secs(config.handoff_nats_duplicate_window_s),
            connect_timeout: Duration::from_millis(config.handoff_nats_connect_timeout_ms),
            ack_timeout: Duration::from_millis(config.handoff_nats_ack_timeout_ms),
            credentials: config.handoff_nats_credentials.clone(),
            tls_ca: config.handoff_nats_tls_ca.clone(),
            tls_required: config.handoff_nats_tls_required,
            bounds: ConsumerBounds::from_config(config),
            in_flight_messages_max: 2 * cores * config.handoff_batch_records_max,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| HandoffError::Nats(format!("starting the NATS runtime: {e}")))?;
        let js = runtime.block_on(async {
            tokio::time::timeout(settings.connect_timeout * 3, connect_and_check(&settings)).await.map_err(|_| {
                HandoffError::Nats(format!(
                    "no answer from {} within {:?} (connect and stream check)",
                    settings.urls,
                    settings.connect_timeout * 3
                ))
            })?
        })?;
        let lanes = 2 * cores;
        let queues = Arc::new(Queues {
            batches: (0..lanes).map(|_| ArrayQueue::new(BATCHES_IN_FLIGHT_PER_CORE)).collect(),
            events: (0..lanes).map(|_| ArrayQueue::new(EVENTS_PER_CORE_MAX)).collect(),
        });
        let thread_queues = queues.clone();
        let thread = std::thread::Builder::new()
            .name("redrain-nats".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let tasks: Vec<_> = (0..lanes)
                        .map(|core| {
                            tokio::spawn(publish_loop(
                                core,
                                js.clone(),
                                thread_queues.clone(),
                                settings_for_task(&settings),
                            ))
                        })
                        .collect();
                    for t in tasks {
                        let _ = t.await;
                    }
                })
            })
            .map_err(|e| HandoffError::Nats(format!("starting the NATS thread: {e}")))?;
        Ok(NatsLink { cores, queues, _thread: thread })
    }

    /// Core `core`'s port, with its position read from `position_path`.
    pub fn port(&self, core: usize, position_path: &Path) -> Result<NatsPort, HandoffError> {
        let position = Position::read(position_path)?.unwrap_or_default();
        Ok(NatsPort { core, queues: self.queues.clone(), position_path: position_path.to_path_buf(), position })
    }

    /// Core `core`'s port for its lucky shares (its own lane and position).
    pub fn lucky_port(&self, core: usize, position_path: &Path) -> Result<NatsPort, HandoffError> {
        self.port(self.cores + core, position_path)
    }
}

/// What a publishing task needs of the settings.
struct TaskSettings {
    subject: String,
    bounds: ConsumerBounds,
    /// Bound of one whole attempt: while the server is away the client's command queue
    /// can fill and a publish wait for space, so the attempt as a whole is timed too.
    attempt_timeout: Duration,
}

fn settings_for_task(s: &Settings) -> TaskSettings {
    TaskSettings { subject: s.subject.clone(), bounds: s.bounds, attempt_timeout: s.ack_timeout * 2 }
}

async fn connect_and_check(s: &Settings) -> Result<jetstream::Context, HandoffError> {
    let mut options = async_nats::ConnectOptions::new()
        .name("redrain-handoff")
        .connection_timeout(s.connect_timeout)
        // Reconnect forever once running: the consumer counts the failed attempts.
        .max_reconnects(None)
        .event_callback(|event| async move { log::warn!("NATS: {event}") });
    if let Some(path) = &s.credentials {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| HandoffError::Nats(format!("credentials file {}: {e}", path.display())))?;
    }
    if let Some(ca) = &s.tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    if s.tls_required {
        options = options.require_tls(true);
    }
    let client = options
        .connect(s.urls.as_str())
        .await
        .map_err(|e| nats_error(&format!("connecting to {}", s.urls))(e.to_string()))?;
    let js = jetstream::ContextBuilder::new()
        .timeout(s.ack_timeout)
        // Room for every core's batch in flight plus the acks a failed attempt leaves
        // waiting for their timeout: a retry never waits behind the stale ones (a full
        // window fails the attempt at once, and it is retried after the backoff).
        .max_ack_inflight((s.in_flight_messages_max * ACK_WINDOW_BATCHES).max(1))
        .backpressure_on_inflight(false)
        .build(client);
    match js.get_stream(&s.stream).await {
        Ok(mut stream) => {
            let info = stream.info().await.map_err(|e| nats_error("reading the stream's info")(e.to_string()))?;
            if !info.config.subjects.iter().any(|subject| subject_matches(subject, &s.subject)) {
                return Err(HandoffError::Nats(format!(
                    "stream {} does not take subject {} (its subjects: {:?})",
                    s.stream, s.subject, info.config.subjects
                )));
            }
            log::info!("hand-off: JetStream stream {} found on {}", s.stream, s.urls);
        }
        Err(e) if s.create => {
            log::info!("hand-off: creating JetStream stream {} ({e})", s.stream);
            js.create_stream(jetstream::stream::Config {
                name: s.stream.clone(),
                subjects: vec![s.subject.clone()],
                duplicate_window: s.duplicate_window,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_error(&format!("creating stream {}", s.stream))(e.to_string()))?;
        }
        Err(e) => {
            return Err(HandoffError::Nats(format!(
                "stream {} is missing on {} ({e}): create it with subject {} and a duplicate window, \
                 or set handoff_nats_create_stream (--handoff-nats-create-stream)",
                s.stream, s.urls, s.subject
            )))
        }
    }
    Ok(js)
}

/// Whether a stream subject (possibly with `*` / `>` wildcards) covers `subject`.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

async fn publish_loop(core: usize, js: jetstream::Context, queues: Arc<Queues>, settings: TaskSettings) {
    loop {
        let Some(batch) = queues.batches[core].pop() else {
            tokio::time::sleep(BATCH_POLL_INTERVAL).await;
            continue;
        };
        let mut failures = 0u32;
        loop {
            let attempt =
                tokio::time::timeout(settings.attempt_timeout, publish_batch(&js, &settings.subject, &batch.records));
            let result = attempt.await.unwrap_or_else(|_| {
                Err(format!("publish: no JetStream ack for the batch within {:?}", settings.attempt_timeout))
            });
            match result {
                Ok(()) => break,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    // A full event queue drops this report, never the acknowledgement.
                    let _ = queues.events[core].push(NatsEvent::AttemptFailed(e));
                    tokio::time::sleep(settings.bounds.backoff(failures)).await;
                }
            }
        }
        // The core has one batch in flight and drains its events while it waits.
        let mut ack = NatsEvent::Acknowledged { last_lsn: batch.last_lsn };
        while let Err(back) = queues.events[core].push(ack) {
            ack = back;
            tokio::time::sleep(BATCH_POLL_INTERVAL).await;
        }
    }
}

async fn publish_batch(js: &jetstream::Context, subject: &str, records: &[HandoffRecord]) -> Result<(), String> {
    let mut acks = Vec::with_capacity(records.len());
    for r in records {
        let payload = serde_json::to_vec(&r.to_opened()).expect("plain struct serializes");
        let credit = if r.instant_credit() { "instant" } else { "after_reconciliation" };
        let message = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .message_id(r.message_id())
            .header("Redrain-Credit", credit);
        let ack = js.send_publish(subject.to_owned(), message).await.map_err(|e| format!("publish: {e}"))?;
        acks.push(ack);
    }
    for ack in acks {
        ack.await.map_err(|e| format!("publish ack: {e}"))?;
    }
    Ok(())
}

impl NatsPort {
    pub fn position(&self) -> Position {
        self.position
    }

    /// Hands a batch to the NATS thread and waits (polling, on the core) until JetStream
    /// acknowledged all of it; `on_failure` is told every failed attempt. Then makes the
    /// new position durable (on the blocking pool) and returns it.
    pub async fn deliver(
        &mut self,
        records: Vec<HandoffRecord>,
        last_lsn: u64,
        mut on_failure: impl FnMut(&str),
    ) -> Result<Position, HandoffError> {
        assert!(last_lsn > self.position.lsn, "positions only move forward");
        if self.queues.batches[self.core].push(NatsBatch { records, last_lsn }).is_err() {
            return Err(HandoffError::Nats("a batch is already in flight on this core".into()));
        }
        loop {
            match self.queues.events[self.core].pop() {
                Some(NatsEvent::AttemptFailed(e)) => on_failure(&e),
                Some(NatsEvent::Acknowledged { last_lsn: acked }) => {
                    debug_assert_eq!(acked, last_lsn);
                    break;
                }
                None => glommio::timer::sleep(EVENT_POLL_INTERVAL).await,
            }
        }
        let next = Position { lsn: last_lsn, ..self.position };
        let path = self.position_path.clone();
        loop {
            let path = path.clone();
            match glommio::executor().spawn_blocking(move || next.write(&path)).await {
                Ok(()) => break,
                // JetStream holds the batch: a redelivery is deduplicated, so keep trying
                // to record the position rather than resend.
                Err(e) => {
                    on_failure(&format!("recording the position: {e}"));
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        self.position = next;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_subjects_with_wildcards_cover_the_publish_subject() {
        assert!(subject_matches("redrain.opens", "redrain.opens"));
        assert!(subject_matches("redrain.*", "redrain.opens"));
        assert!(subject_matches("redrain.>", "redrain.opens.node0"));
        assert!(!subject_matches("redrain.*", "redrain.opens.node0"));
        assert!(!subject_matches("other.opens", "redrain.opens"));
        assert!(!subject_matches("redrain.opens.x", "redrain.opens"));
    }
}
