//! The payment hand-off: the durable open queue drained, off the request path, to the
//! back office's sink (rotated NDJSON files or a NATS JetStream stream).
//!
//! One consumer per core ([`consumer`]): each core owns its open-queue log, so its consumer
//! reads it locally, in LSN order, with no cross-core reads or locks, and the hand-off
//! scales with the cores that produce the opens. The consumer is a glommio task of its own
//! that reads *durable* records in batches and hands them to the core's sink; an open is
//! answered to the user when its record is durable, never when the sink has it, so a slow
//! or dead back office delays crediting and never a user's request.
//!
//! Exactly once at the sink: the consumer remembers the last LSN the sink acknowledged in a
//! small per-core position file ([`position`]), written and fdatasync'd and renamed before
//! it moves on, and resumes after it on start. A crash may deliver a batch again, never lose
//! one; each sink makes that redelivery harmless:
//! - [`file`]: the position also names the active file and its acknowledged length; on
//!   start, bytes past it (written, never acknowledged) are cut off before writing again.
//! - [`nats`]: every message carries the packet id as `Nats-Msg-Id`; JetStream drops a
//!   repeat within the stream's duplicate window.
//!
//! The hand-off relies on: the open-queue log of its core ([`crate::shard::storage`]), the
//! record layout of [`crate::rain::records::OpenRecord`], and `OpenedRecord` as the line
//! format (`redrain tickets reconcile --opened`).
//!
//! Group lucky packets: each core runs a second consumer of the same kind over its
//! *timeline* log ([`crate::timeline::storage`]), which hands the durable
//! `KIND_LUCKY_OPENED` records ([`crate::timeline::records::LuckyOpened`]) to the same
//! sink as `"kind":"lucky"` lines, with a position of its own (`handoff-<sink>-lucky.pos`;
//! file sink: files `lucky-core<c>-<seq>.ndjson`; NATS: `Nats-Msg-Id` `lucky-<packet>-<user>`).
//! The lucky open is answered when its timeline record is durable, as an event open is.
//! A share may be recorded twice (a retry after a failed append that was durable anyway,
//! with the same amount: [`crate::timeline::lucky`]); the consumer hands over only the
//! first record of each (packet, user), remembering those it read since the log's start.
//! docs/design.md ("Lucky packets in the payment hand-off") says why this route.

pub mod consumer;
pub mod file;
pub mod lucky;
pub mod metrics;
pub mod nats;
pub mod position;

use crate::config::{Config, HandoffSinkKind};
use crate::rain::records::OpenRecord;
use crate::tickets::reconcile::OpenedRecord;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why the hand-off could not start or deliver.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("hand-off position {path} is damaged: {reason}")]
    DamagedPosition { path: PathBuf, reason: String },
    #[error("hand-off file {path} is shorter ({actual} bytes) than its acknowledged length {acknowledged}")]
    FileShorterThanPosition { path: PathBuf, actual: u64, acknowledged: u64 },
    #[error(
        "{dir} holds hand-off files of core {core} but the data dir has no hand-off position for them \
         (another node's or an earlier event's?): move them away or point handoff_dir elsewhere"
    )]
    FilesWithoutPosition { dir: PathBuf, core: usize },
    #[error("NATS: {0}")]
    Nats(String),
    #[error("reading the open queue: {0}")]
    Queue(String),
}

impl HandoffError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HandoffError + '_ {
        move |source| HandoffError::Io { path: path.to_path_buf(), source }
    }
}

/// Bounds of the consumer's retries and batches (copied from [`Config`]).
#[derive(Debug, Clone, Copy)]
pub struct ConsumerBounds {
    /// Most records handed to the sink in one batch.
    pub batch_records_max: usize,
    /// First wait after a failed delivery; doubles per failure...
    pub retry_backoff_min: Duration,
    /// ...up to this.
    pub retry_backoff_max: Duration,
}

impl ConsumerBounds {
    pub fn from_config(config: &Config) -> Self {
        Self {
            batch_records_max: config.handoff_batch_records_max,
            retry_backoff_min: Duration::from_millis(config.handoff_retry_backoff_min_ms),
            retry_backoff_max: Duration::from_millis(config.handoff_retry_backoff_max_ms),
        }
    }

    /// The wait after `failures` consecutive failed deliveries (>= 1): bounded exponential.
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.saturating_sub(1).min(20)).unwrap_or(u32::MAX);
        self.retry_backoff_min.saturating_mul(factor).min(self.retry_backoff_max)
    }
}

/// One record the hand-off delivers: an event packet's open (open-queue log) or a group
/// lucky packet's share (timeline log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffRecord {
    Event(OpenRecord),
    Lucky(lucky::LuckyShare),
}

impl HandoffRecord {
    /// The NDJSON line / NATS message body.
    pub fn to_opened(&self) -> OpenedRecord {
        match self {
            HandoffRecord::Event(r) => r.to_opened(),
            HandoffRecord::Lucky(s) => s.to_opened(),
        }
    }

    /// The de-duplication id (NATS `Nats-Msg-Id`): one per open.
    pub fn message_id(&self) -> String {
        match self {
            HandoffRecord::Event(r) => r.packet_id.to_string(),
            HandoffRecord::Lucky(s) => format!("lucky-{}-{}", s.packet_id, s.user),
        }
    }

    /// Whether the back office may credit it at once (a lucky share moves the sender's
    /// money to a member: no ticket to reconcile).
    pub fn instant_credit(&self) -> bool {
        match self {
            HandoffRecord::Event(r) => r.instant_credit(),
            HandoffRecord::Lucky(_) => true,
        }
    }

    pub fn opened_at_ms(&self) -> u64 {
        match self {
            HandoffRecord::Event(r) => r.opened_at_ms,
            HandoffRecord::Lucky(s) => s.opened_at_ms,
        }
    }
}

/// Which log a consumer drains, and which records of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffSource {
    /// The open queue (`core-<n>/opens`): event packets' opens.
    Opens,
    /// The timeline log (`core-<n>/timeline`): lucky packets' shares of `node`.
    Lucky { node: u16 },
}

/// The sink one core hands its opens to.
pub enum CoreSink {
    File(file::FileSink),
    Nats(nats::NatsPort),
}

impl CoreSink {
    pub fn kind(&self) -> HandoffSinkKind {
        match self {
            CoreSink::File(_) => HandoffSinkKind::File,
            CoreSink::Nats(_) => HandoffSinkKind::Nats,
        }
    }
}

/// The hand-off of a node, set up before the executors start (so a bad sink refuses the
/// start with a clear message): one sink per core, one for each core's lucky shares, and
/// the NATS link when configured.
pub struct Handoff {
    pub sinks: Vec<CoreSink>,
    pub lucky_sinks: Vec<CoreSink>,
    pub nats: Option<nats::NatsLink>,
}

/// Where the per-core position of the lucky shares' consumer lives.
pub fn lucky_position_path(data_dir: &Path, core: usize, sink: HandoffSinkKind) -> PathBuf {
    data_dir.join(format!("core-{core}")).join(format!("handoff-{}-lucky.pos", sink.name()))
}

/// Where the per-core position of `sink` lives: in the core's directory of the data dir.
pub fn position_path(data_dir: &Path, core: usize, sink: HandoffSinkKind) -> PathBuf {
    data_dir.join(format!("core-{core}")).join(format!("handoff-{}.pos", sink.name()))
}

/// The directory of the `file` sink.
pub fn file_dir(config: &Config) -> PathBuf {
    config.handoff_dir.clone().unwrap_or_else(|| config.data_dir.join("handoff"))
}

/// Opens every core's sinks: reads the positions, repairs the file sink's tail, connects to
/// NATS and checks (or creates) the stream. The event opens' sinks only `with_events` (a
/// rain is configured); the lucky shares' sinks always.
pub fn start(config: &Config, cores: usize, with_events: bool) -> Result<Handoff, HandoffError> {
    let event_cores = if with_events { cores } else { 0 };
    match config.handoff_sink {
        HandoffSinkKind::File => {
            let dir = file_dir(config);
            let bounds = file::FileBounds::from_config(config);
            let sinks = (0..event_cores)
                .map(|core| {
                    let position = position_path(&config.data_dir, core, HandoffSinkKind::File);
                    file::FileSink::open(&dir, core, &position, bounds).map(CoreSink::File)
                })
                .collect::<Result<_, _>>()?;
            let lucky_sinks = (0..cores)
                .map(|core| {
                    let position = lucky_position_path(&config.data_dir, core, HandoffSinkKind::File);
                    file::FileSink::open_stream(&dir, file::LUCKY_FILE_PREFIX, core, &position, bounds)
                        .map(CoreSink::File)
                })
                .collect::<Result<_, _>>()?;
            Ok(Handoff { sinks, lucky_sinks, nats: None })
        }
        HandoffSinkKind::Nats => {
            let link = nats::NatsLink::connect(config, cores)?;
            let sinks = (0..event_cores)
                .map(|core| {
                    let position = position_path(&config.data_dir, core, HandoffSinkKind::Nats);
                    link.port(core, &position).map(CoreSink::Nats)
                })
                .collect::<Result<_, _>>()?;
            let lucky_sinks = (0..cores)
                .map(|core| {
                    let position = lucky_position_path(&config.data_dir, core, HandoffSinkKind::Nats);
                    link.lucky_port(core, &position).map(CoreSink::Nats)
                })
                .collect::<Result<_, _>>()?;
            Ok(Handoff { sinks, lucky_sinks, nats: Some(link) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_backoff_doubles_from_its_minimum_and_stops_at_its_maximum() {
        let b = ConsumerBounds {
            batch_records_max: 1,
            retry_backoff_min: Duration::from_millis(10),
            retry_backoff_max: Duration::from_millis(1_000),
        };
        let waits: Vec<u64> = (1..=9).map(|n| b.backoff(n).as_millis() as u64).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1_000, 1_000]);
        assert_eq!(b.backoff(u32::MAX), Duration::from_millis(1_000));
    }
}
