//! The glommio edge of the timelines: this core's timeline log (`core-<n>/timeline`,
//! replicated to the node's two peers when `opens_replica_peers` is set, as stream
//! `core = 0x100 + n`) and its groups table (`core-<n>/groups`). Carries out the
//! [`TimelineOutput`](super::TimelineOutput)s that touch storage and feeds completions
//! back into the state machine; replays both at start.
//!
//! Appends of one log resolve in LSN order, so one pump task awaits them front to back
//! and reports each with its LSN (the inbox index needs it).

use super::{TimelineMail, TimelineOutput};
use crate::rain::export::stream_dir;
use crate::shard::mailbox::Mail;
use crate::shard::Core;
use glommio::channels::local_channel::{self, LocalSender};
use redrain_storage::{
    GlommioFileSystem, Log, LogConfig, Lsn, ReplicatedLog, ReplicationConfig, StreamId, Table, TableConfig,
};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

type Append = Pin<Box<dyn Future<Output = redrain_storage::Result<Lsn>>>>;

enum TimelineLog {
    Local(Log),
    Replicated(Rc<ReplicatedLog>),
}

/// One core's timeline log and groups table.
pub struct TimelineStorage {
    log: TimelineLog,
    groups: Rc<Table>,
    pump: LocalSender<(u64, Append)>,
    /// The retention watermark last handed to the log.
    watermark_given: std::cell::Cell<u64>,
    /// Set when the payment hand-off reads lucky shares from this log: retention then
    /// keeps every record its sink has not acknowledged, however old.
    lucky_consumer: std::cell::Cell<bool>,
}

/// The timeline log's settings: group commit as the rain's logs; segment size and
/// retention from the config (0 turns a retention bound off). The log deletes only
/// segments below the watermark the timelines move after each checkpoint.
pub fn timeline_log_config(config: &super::TimelineConfig) -> LogConfig {
    LogConfig {
        segment_bytes_target: config.segment_bytes,
        retention_bytes_max: if config.retention_bytes_max == 0 { u64::MAX } else { config.retention_bytes_max },
        retention_age_max: if config.retention_age_s == 0 {
            Duration::MAX
        } else {
            Duration::from_secs(config.retention_age_s)
        },
        ..LogConfig::default()
    }
}

/// Where the two peers are, for a replicated timeline log.
pub struct TimelinePeers {
    pub node_id: u16,
    pub peers: [std::net::SocketAddr; 2],
    pub commit_timeout: Duration,
}

impl TimelineStorage {
    /// Opens the log and the table and replays both into the core's state machine.
    pub async fn open(core: &Rc<Core>, data_dir: &Path, peers: Option<TimelinePeers>) -> anyhow::Result<Self> {
        let fs = Rc::new(GlommioFileSystem);
        let config = timeline_log_config(&core.node.config.timeline);
        let dir = stream_dir(data_dir, core.id, "timeline");
        let log = match peers {
            None => TimelineLog::Local(Log::open(&dir, config, fs.clone()).await.map_err(|e| {
                anyhow::anyhow!("core {}: opening the timeline log in {}: {e}", core.id, dir.display())
            })?),
            Some(p) => {
                let stream = StreamId { origin_node: u32::from(p.node_id), core: 0x100 + core.id as u16 };
                let mut replication = ReplicationConfig::new(stream, p.peers);
                replication.commit_timeout = p.commit_timeout;
                let (log, _) = ReplicatedLog::open(&dir, config, replication, fs.clone()).await.map_err(|e| {
                    anyhow::anyhow!("core {}: opening the replicated timeline log in {}: {e}", core.id, dir.display())
                })?;
                TimelineLog::Replicated(Rc::new(log))
            }
        };
        let groups_dir = stream_dir(data_dir, core.id, "groups");
        let groups = Table::open(&groups_dir, TableConfig::default(), fs).await.map_err(|e| {
            anyhow::anyhow!("core {}: opening the groups table in {}: {e}", core.id, groups_dir.display())
        })?;
        let storage = Self {
            log,
            groups: Rc::new(groups),
            pump: spawn_pump(core.clone()),
            watermark_given: std::cell::Cell::new(0),
            lucky_consumer: std::cell::Cell::new(false),
        };
        storage.recover(core).await?;
        Ok(storage)
    }

    /// Hands the timelines' retention watermark to the log; when it moved, applies
    /// retention at once (an idle log would otherwise wait for its next write).
    /// A replicated log releases only what both peers hold (and tells them), so it is
    /// told on every tick until they caught up.
    pub fn retain_from(&self, core: &Rc<Core>, watermark: u64) {
        let watermark = if self.lucky_consumer.get() {
            // The consumer's position only grows (0 until it starts), as does the
            // timelines' watermark: their minimum never moves back.
            let acked = core.metrics().handoff_lucky.acknowledged_lsn.load(std::sync::atomic::Ordering::Relaxed);
            watermark.min(acked.saturating_add(1))
        } else {
            watermark
        };
        match &self.log {
            TimelineLog::Local(l) => l.set_retention_watermark(watermark),
            TimelineLog::Replicated(r) => r.set_retention_watermark(watermark),
        }
        if watermark <= self.watermark_given.get() {
            return;
        }
        self.watermark_given.set(watermark);
        let core = core.clone();
        glommio::spawn_local(async move {
            let Some(storage) = core.timeline_storage.get() else { return };
            if let Err(e) = storage.log().enforce_retention().await {
                log::warn!("core {}: timeline log retention failed: {e}", core.id);
            }
        })
        .detach();
    }

    /// The hand-off reads lucky shares from this log (called before its consumer starts):
    /// from now on retention deletes only what the lucky sink acknowledged.
    pub fn hold_for_lucky_consumer(&self) {
        self.lucky_consumer.set(true);
    }

    pub fn log(&self) -> &Log {
        match &self.log {
            TimelineLog::Local(l) => l,
            TimelineLog::Replicated(r) => r.log(),
        }
    }

    async fn recover(&self, core: &Rc<Core>) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let (mut entries, mut skipped) = (0u64, 0u64);
        {
            let mut state = core.state.borrow_mut();
            let timelines = state.timelines_mut();
            self.groups.for_each(|key, value| {
                if let (Ok(key), Some(members)) = (<[u8; 8]>::try_from(key), super::records::decode_members(value)) {
                    timelines.recover_group(u64::from_be_bytes(key), members);
                }
            });
        }
        let log = self.log();
        log.for_each_record(0, |record| {
            let mut state = core.state.borrow_mut();
            if state.timelines_mut().recover_record(record.kind, record.lsn, record.payload) {
                entries += 1;
            } else {
                skipped += 1;
            }
        })
        .await
        .map_err(|e| anyhow::anyhow!("core {}: replaying the timeline log: {e}", core.id))?;
        core.state.borrow_mut().timelines_mut().finish_recovery();
        let replaced = core.state.borrow_mut().timelines_mut().stats.entries_replaced_at_recovery;
        log::info!(
            "core {}: timelines recovered: {entries} records ({skipped} skipped, {replaced} entries stored again by a retry), {} groups, in {:?}",
            core.id,
            self.groups.len(),
            started.elapsed()
        );
        Ok(())
    }

    /// Queues an append; its completion reaches the state machine in LSN order.
    pub fn append(&self, kind: u8, payload: &[u8], token: u64) {
        let append: Append = match &self.log {
            TimelineLog::Local(l) => Box::pin(l.append(kind, payload)),
            TimelineLog::Replicated(r) => Box::pin(r.append_rc(kind, payload)),
        };
        if self.pump.try_send((token, append)).is_err() {
            log::error!("timeline pump closed; append {token} dropped");
        }
    }

    /// Stores a group's member list; reports to the state machine.
    pub fn put_group(&self, core: &Rc<Core>, group: u64, members: Vec<u8>, token: u64) {
        let (table, core) = (self.groups.clone(), core.clone());
        glommio::spawn_local(async move {
            let ok = table.put(&group.to_be_bytes(), &members).await.is_ok();
            core.state.borrow_mut().timelines_mut().on_group_stored(token, ok);
            core.dispatch();
        })
        .detach();
    }

    /// Reads records by LSN (older inbox entries for a Sync); reports to the state machine.
    pub fn read(&self, core: &Rc<Core>, lsns: Vec<u64>, token: u64) {
        let core = core.clone();
        glommio::spawn_local(async move {
            let result = match core.timeline_storage.get() {
                Some(storage) => storage.read_lsns(&lsns).await,
                None => Err("no timeline storage".into()),
            };
            core.state.borrow_mut().timelines_mut().on_read(token, result);
            core.dispatch();
        })
        .detach();
    }

    async fn read_lsns(&self, lsns: &[u64]) -> Result<Vec<Vec<u8>>, String> {
        debug_assert!(lsns.windows(2).all(|w| w[0] < w[1]), "an inbox's index is in LSN order");
        let mut out = Vec::with_capacity(lsns.len());
        // The records of the last read, parsed once (in log order, so by LSN): a page of
        // older entries is mostly neighbours in one read.
        // Only the wanted records are copied out of a read: one read is at least a whole
        // group-commit batch (up to `batch_bytes_max`), mostly other users' entries.
        let mut records: Vec<(u64, Vec<u8>)> = Vec::new();
        for &lsn in lsns {
            // Retention deleted it (the index forgets it at the next tick): skipped; the
            // state machine sees fewer records than asked and flags the answer expired.
            if lsn < self.log().first_lsn() {
                continue;
            }
            let mut found = find_record(&records, lsn);
            if found.is_none() {
                let buffered = match self.log().read_batches(lsn, 256 << 10).await {
                    Ok(b) => b,
                    Err(redrain_storage::StorageError::NotRetained { .. }) => continue,
                    Err(e) => return Err(e.to_string()),
                };
                records = parse_records(&buffered, lsns);
                found = find_record(&records, lsn);
            }
            match found {
                Some(payload) => out.push(payload.to_vec()),
                None if lsn < self.log().first_lsn() => continue,
                None => return Err(format!("record {lsn} not in the log")),
            }
        }
        Ok(out)
    }
}

/// The records of `batches` whose LSN is in `wanted` (sorted ascending, as an inbox's index).
fn parse_records(batches: &[u8], wanted: &[u64]) -> Vec<(u64, Vec<u8>)> {
    let (views, _) = redrain_storage::record::split_batches(batches);
    views
        .iter()
        .flat_map(|b| b.records())
        .filter(|r| wanted.binary_search(&r.lsn).is_ok())
        .map(|r| (r.lsn, r.payload.to_vec()))
        .collect()
}

fn find_record(records: &[(u64, Vec<u8>)], lsn: u64) -> Option<&[u8]> {
    records.binary_search_by_key(&lsn, |(l, _)| *l).ok().map(|i| records[i].1.as_slice())
}

fn spawn_pump(core: Rc<Core>) -> LocalSender<(u64, Append)> {
    let (tx, rx) = local_channel::new_unbounded::<(u64, Append)>();
    glommio::spawn_local(async move {
        let mut last_warned: Option<std::time::Instant> = None;
        while let Some((token, append)) = rx.recv().await {
            let lsn = match append.await {
                Ok(lsn) => Some(lsn),
                Err(e) => {
                    if last_warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                        log::warn!("core {}: timeline append failed: {e}", core.id);
                        last_warned = Some(std::time::Instant::now());
                    }
                    None
                }
            };
            core.state.borrow_mut().timelines_mut().on_appended(token, lsn);
            core.dispatch();
        }
    })
    .detach();
    tx
}

/// Carries out one output of the timelines on `core`.
pub fn carry_out(core: &Rc<Core>, output: TimelineOutput) {
    match output {
        TimelineOutput::Respond { conn, slot, frame } => core.deliver_answer(conn, slot, frame),
        TimelineOutput::Push { conn, frame } => core.push_to(conn, frame),
        TimelineOutput::Append { kind, payload, token } => match core.timeline_storage.get() {
            Some(storage) => storage.append(kind, &payload, token),
            None => core.state.borrow_mut().timelines_mut().on_appended(token, None),
        },
        TimelineOutput::PutGroup { group, members, token } => match core.timeline_storage.get() {
            Some(storage) => storage.put_group(core, group, members, token),
            None => core.state.borrow_mut().timelines_mut().on_group_stored(token, false),
        },
        TimelineOutput::Read { lsns, token } => match core.timeline_storage.get() {
            Some(storage) => storage.read(core, lsns, token),
            None => core.state.borrow_mut().timelines_mut().on_read(token, Err("no timeline storage".into())),
        },
        TimelineOutput::Mail { core: to, mail } => {
            match core.node.mailboxes.queue(core.id, to).push(Mail::Timeline(mail)) {
                Ok(()) => core.ring(to),
                Err(Mail::Timeline(mail)) => refused(core, to, mail),
                Err(_) => unreachable!("the queue hands back what was pushed"),
            }
        }
    }
}

fn refused(core: &Rc<Core>, to: usize, mail: TimelineMail) {
    core.state.borrow_mut().timelines_mut().on_mail_refused(to, mail);
}

/// Opens this core's timeline storage (replicated when the node has replica peers) and
/// replays it into the core's state machine; called once at start, before accepting.
pub async fn open_on_core(core: &Rc<Core>) -> anyhow::Result<()> {
    let config = &core.node.config;
    let peers = match config.opens_replica_peers.as_slice() {
        [a, b] => Some(TimelinePeers {
            node_id: config.node_id,
            peers: [*a, *b],
            commit_timeout: Duration::from_millis(config.opens_replica_commit_timeout_ms),
        }),
        _ => None,
    };
    let storage = TimelineStorage::open(core, &config.data_dir, peers).await?;
    let _ = core.timeline_storage.set(storage);
    Ok(())
}
