//! Retention of the timeline log: checkpoints, the retention watermark, and the answer
//! to a Sync from below what is retained.
//!
//! The log deletes whole sealed segments below a watermark its owner sets, when they
//! are older than `retention_age_s` or the log is larger than `retention_bytes_max`
//! (storage/src/log.rs). Before old records may go, the state still needed from them is
//! appended again, compactly, at the log's head (a *checkpoint*): the sequence ceilings,
//! lucky packets with the shares drawn, the idempotency keys of sends within
//! `dedup_window_s`, the latest read marker per conversation, and the member list of
//! every group homed on the core (the groups table holds them too, but only on this
//! node's disk; the log is what the peers hold). Inbox entries are not carried: losing
//! old entries is the point of retention.
//!
//! Every checkpoint record but the groups' is a merge (max of a ceiling, union of shares
//! and keys), so a checkpoint cut short by a crash is harmless, and replay order does
//! not matter. A group's list is a snapshot, replayed in LSN order: a checkpoint writes
//! the newest list queued (or the durable one), which holds every change whose record
//! has a lower LSN (records are queued in LSN order), and a later change's own record
//! comes after it. A change whose record then fails may so become durable through the
//! checkpoint: a failed change "may have happened", as a failed send.
//!
//! Which records a checkpoint covers: it starts at a tick (time t0). Storage reports
//! appends in LSN order, so the first append reported durable after t0 (LSN `L`) bounds
//! every record reported before t0 - all below `L`, all already applied to memory, so
//! their state is in what the checkpoint writes. Records at `L` or above stay. State
//! not yet durable at t0 (an entry in flight, a share reserved, a packet whose creation
//! is in flight) is not written: its record is at `L` or above. Once every record of
//! the checkpoint is durable the watermark moves to `L`; the log deletes below it. A
//! kill -9 before that leaves the watermark where it was: nothing is lost.
//!
//! The work is bounded per tick (`checkpoint_records_per_tick` records of at most
//! [`CHECKPOINT_ITEMS_PER_RECORD`] items), in the same group-commit path as entries.
//!
//! ```text
//! KIND_CP_CEILINGS     n u16 | (bucket u64 | ceiling u64) * n
//! KIND_CP_LUCKY        packet_id u64 | group u64 | total_fen u32 | count u16 | n u16 | (user u64 | amount_fen u32) * n
//! KIND_CP_DEDUP        n u16 | (recipient u64 | from u64 | client_msg_id u64 | seq u64 | message_id u64 | sent_at_ms u64) * n
//! KIND_CP_READ_MARKER  n u16 | (user u64 | wire_len u16 | read-marker entry in its SyncOk layout) * n
//! KIND_CP_GROUPS       n u16 | (group u64 | count u16 | member u64 * count) * n
//! KIND_CP_END          started_unix_ms u64 | records u32
//! ```

use super::{Pending, Sent, TimelineOutput, Timelines};
use crate::shard::state::Clock;
use redrain_net::timeline::{SyncEntries, CONTENT_READ_MARKER, SYNC_ENTRY_HEADER_BYTES};
use std::collections::HashMap;

pub const KIND_CP_CEILINGS: u8 = 0x34;
pub const KIND_CP_LUCKY: u8 = 0x35;
pub const KIND_CP_DEDUP: u8 = 0x36;
pub const KIND_CP_READ_MARKER: u8 = 0x37;
pub const KIND_CP_END: u8 = 0x38;
pub const KIND_CP_GROUPS: u8 = 0x3a;

/// Most items (ceilings, keys, markers) in one checkpoint record: 1024 keys are 48 KiB,
/// well inside one group-commit batch, so a record never waits for a batch of its own.
pub const CHECKPOINT_ITEMS_PER_RECORD: usize = 1024;
/// Idempotency keys looked at per record of budget (keys older than the window are
/// skipped, not written): bounds a tick's scan when most keys are old.
const DEDUP_SCAN_PER_RECORD: usize = 4 * CHECKPOINT_ITEMS_PER_RECORD;
/// Offsets in a `SyncEntry`'s wire layout.
const WIRE_CONTENT_TYPE_AT: usize = 41;
const WIRE_PAYLOAD_AT: usize = SYNC_ENTRY_HEADER_BYTES;

/// What a recipient core remembers of a delivered send, for retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveredAt {
    pub seq: u64,
    pub message_id: u64,
    pub sent_at_ms: u64,
}

/// Retention state of one core's timelines.
#[derive(Debug, Default)]
pub struct Retention {
    checkpoint: Option<Checkpoint>,
    /// Monotonic ms at which the next checkpoint starts (set at the first tick).
    next_checkpoint_ms: Option<u64>,
    /// Records below this LSN are no longer needed (the log may delete them).
    watermark: u64,
    /// Latest read marker entry (wire layout) per (user, conversation), durable ones only.
    read_markers: HashMap<u64, Vec<Box<[u8]>>>,
    /// Keys popped from the front of `delivered_order` so far (a checkpoint's position
    /// in it is absolute, so pops do not shift it).
    pub(super) dedup_popped: u64,
    /// Recovery: shares whose packet's record comes later in the replay (or in a checkpoint).
    orphan_opens: Vec<(u64, u64, u32)>,
    /// Recovery: the first LSN replayed; above 1 means retention trimmed the log.
    first_recovered_lsn: Option<u64>,
    /// The log had been trimmed at start: bucket ceilings then (a user without recovered
    /// entries may have had entries up to its bucket's ceiling).
    trimmed_ceilings: Option<HashMap<u64, u64>>,
}

#[derive(Debug)]
struct Checkpoint {
    started_unix_ms: u64,
    phase: Phase,
    /// Checkpoint records not yet reported.
    outstanding: usize,
    failed: bool,
    /// LSN of the first append reported durable after the start.
    first_lsn: Option<u64>,
    records: u32,
}

#[derive(Debug)]
enum Phase {
    Ceilings(Vec<(u64, u64)>),
    Lucky(Vec<u64>),
    /// Absolute position in `delivered_order`.
    Dedup(u64),
    Markers(Vec<u64>),
    /// Group ids still to write, popped from the back.
    Groups(Vec<u64>),
    End,
    Waiting,
}

/// Whether a wire entry is a read marker.
pub fn is_read_marker(wire: &[u8]) -> bool {
    wire.len() == SYNC_ENTRY_HEADER_BYTES + redrain_net::timeline::READ_MARKER_PAYLOAD_BYTES
        && wire[WIRE_CONTENT_TYPE_AT] == CONTENT_READ_MARKER
}

/// (conv_kind, conv_id) of a read-marker wire entry.
fn marker_conversation(wire: &[u8]) -> (u8, u64) {
    let p = &wire[WIRE_PAYLOAD_AT..];
    (p[0], u64::from_be_bytes(p[1..9].try_into().expect("9 bytes")))
}

fn wire_seq(wire: &[u8]) -> u64 {
    u64::from_be_bytes(wire[..8].try_into().expect("8 bytes"))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Fixed-size items of a `n u16 | item * n` record, or `None` if the length is wrong.
fn items(payload: &[u8], item_bytes: usize) -> Option<std::slice::ChunksExact<'_, u8>> {
    let n = usize::from(u16_at(payload, 0)?);
    (payload.len() == 2 + n * item_bytes).then(|| payload[2..].chunks_exact(item_bytes))
}

pub fn encode_ceilings(pairs: &[(u64, u64)]) -> Vec<u8> {
    debug_assert!(pairs.len() <= CHECKPOINT_ITEMS_PER_RECORD);
    let mut out = Vec::with_capacity(2 + 16 * pairs.len());
    out.extend_from_slice(&(pairs.len() as u16).to_be_bytes());
    for (bucket, ceiling) in pairs {
        out.extend_from_slice(&bucket.to_be_bytes());
        out.extend_from_slice(&ceiling.to_be_bytes());
    }
    out
}

pub fn decode_ceilings(payload: &[u8]) -> Option<Vec<(u64, u64)>> {
    Some(items(payload, 16)?.map(|c| (u64_at(c, 0).expect("16"), u64_at(c, 8).expect("16"))).collect())
}

/// A lucky packet with its durable shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuckyCheckpoint {
    pub packet_id: u64,
    pub group: u64,
    pub total_fen: u32,
    pub count: u16,
    pub opened: Vec<(u64, u32)>,
}

impl LuckyCheckpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + 12 * self.opened.len());
        out.extend_from_slice(&self.packet_id.to_be_bytes());
        out.extend_from_slice(&self.group.to_be_bytes());
        out.extend_from_slice(&self.total_fen.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&(self.opened.len() as u16).to_be_bytes());
        for (user, amount) in &self.opened {
            out.extend_from_slice(&user.to_be_bytes());
            out.extend_from_slice(&amount.to_be_bytes());
        }
        out
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        let n = usize::from(u16_at(b, 22)?);
        if b.len() != 24 + 12 * n {
            return None;
        }
        let opened = b[24..].chunks_exact(12).map(|c| (u64_at(c, 0).expect("12"), u32_at(c, 8).expect("12")));
        Some(Self {
            packet_id: u64_at(b, 0)?,
            group: u64_at(b, 8)?,
            total_fen: u32_at(b, 16)?,
            count: u16_at(b, 20)?,
            opened: opened.collect(),
        })
    }
}

/// One idempotency key: (recipient, from, client message id) and what it delivered.
pub type DedupItem = ((u64, u64, u64), DeliveredAt);

pub fn encode_dedup(keys: &[DedupItem]) -> Vec<u8> {
    debug_assert!(keys.len() <= CHECKPOINT_ITEMS_PER_RECORD);
    let mut out = Vec::with_capacity(2 + 48 * keys.len());
    out.extend_from_slice(&(keys.len() as u16).to_be_bytes());
    for ((recipient, from, cmid), d) in keys {
        for v in [*recipient, *from, *cmid, d.seq, d.message_id, d.sent_at_ms] {
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
    out
}

pub fn decode_dedup(payload: &[u8]) -> Option<Vec<DedupItem>> {
    let v = |c: &[u8], i: usize| u64_at(c, 8 * i).expect("48 bytes");
    Some(
        items(payload, 48)?
            .map(|c| {
                ((v(c, 0), v(c, 1), v(c, 2)), DeliveredAt { seq: v(c, 3), message_id: v(c, 4), sent_at_ms: v(c, 5) })
            })
            .collect(),
    )
}

pub fn encode_markers(markers: &[(u64, &[u8])]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + markers.iter().map(|(_, w)| 10 + w.len()).sum::<usize>());
    out.extend_from_slice(&(markers.len() as u16).to_be_bytes());
    for (user, wire) in markers {
        out.extend_from_slice(&user.to_be_bytes());
        out.extend_from_slice(&(wire.len() as u16).to_be_bytes());
        out.extend_from_slice(wire);
    }
    out
}

pub fn decode_markers(payload: &[u8]) -> Option<Vec<(u64, &[u8])>> {
    let n = usize::from(u16_at(payload, 0)?);
    let mut at = 2;
    let mut out = Vec::with_capacity(n.min(CHECKPOINT_ITEMS_PER_RECORD));
    for _ in 0..n {
        let user = u64_at(payload, at)?;
        let len = usize::from(u16_at(payload, at + 8)?);
        let wire = payload.get(at + 10..at + 10 + len)?;
        if !is_read_marker(wire) {
            return None;
        }
        out.push((user, wire));
        at += 10 + len;
    }
    (at == payload.len()).then_some(out)
}

pub fn encode_groups(groups: &[(u64, &[u64])]) -> Vec<u8> {
    let members: usize = groups.iter().map(|(_, m)| m.len()).sum();
    let mut out = Vec::with_capacity(2 + 10 * groups.len() + 8 * members);
    out.extend_from_slice(&(groups.len() as u16).to_be_bytes());
    for (group, list) in groups {
        out.extend_from_slice(&group.to_be_bytes());
        out.extend_from_slice(&(list.len() as u16).to_be_bytes());
        out.extend(list.iter().flat_map(|m| m.to_be_bytes()));
    }
    out
}

/// (group, members) of a `KIND_CP_GROUPS` record; `None` if any list is damaged (not
/// sorted and distinct) or the lengths disagree.
pub fn decode_groups(payload: &[u8]) -> Option<Vec<(u64, Vec<u64>)>> {
    let n = usize::from(u16_at(payload, 0)?);
    let mut at = 2;
    let mut out = Vec::with_capacity(n.min(CHECKPOINT_ITEMS_PER_RECORD));
    for _ in 0..n {
        let group = u64_at(payload, at)?;
        let count = usize::from(u16_at(payload, at + 8)?);
        let list = payload.get(at + 10..at + 10 + 8 * count)?;
        let members: Vec<u64> = list.chunks_exact(8).map(|c| u64_at(c, 0).expect("8 bytes")).collect();
        if !members.windows(2).all(|w| w[0] < w[1]) {
            return None;
        }
        out.push((group, members));
        at += 10 + 8 * count;
    }
    (at == payload.len()).then_some(out)
}

pub fn encode_end(started_unix_ms: u64, records: u32) -> Vec<u8> {
    [started_unix_ms.to_be_bytes().as_slice(), records.to_be_bytes().as_slice()].concat()
}

impl crate::timeline::TimelineConfig {
    /// Whether the timeline log deletes old segments (and so checkpoints run).
    pub fn retention_on(&self) -> bool {
        self.retention_bytes_max > 0 || self.retention_age_s > 0
    }

    /// The bounds of retention and compaction (part of `validate`).
    pub fn validate_retention(&self) -> Result<(), String> {
        const DAY_S: u64 = 24 * 3600;
        if !(4096..=(1 << 40)).contains(&self.segment_bytes) {
            return Err("timeline.segment_bytes must be within 4096..=2^40".into());
        }
        if self.retention_bytes_max > 0 && self.retention_bytes_max < 2 * self.segment_bytes {
            return Err(
                "timeline.retention_bytes_max must hold at least two segments (2 x segment_bytes), or be 0".into()
            );
        }
        if self.retention_age_s > 365 * DAY_S {
            return Err("timeline.retention_age_s must be at most a year (0: no age bound)".into());
        }
        if !(1..=DAY_S).contains(&self.checkpoint_interval_s) {
            return Err("timeline.checkpoint_interval_s must be within 1..=86400".into());
        }
        if !(1..=1024).contains(&self.checkpoint_records_per_tick) {
            return Err("timeline.checkpoint_records_per_tick must be within 1..=1024".into());
        }
        if !(1..=30 * DAY_S).contains(&self.dedup_window_s) {
            return Err("timeline.dedup_window_s must be within 1..=2592000 (30 days)".into());
        }
        if !(1..=CHECKPOINT_ITEMS_PER_RECORD).contains(&self.read_markers_per_user_max) {
            return Err("timeline.read_markers_per_user_max must be within 1..=1024".into());
        }
        Ok(())
    }
}

/// The figures of retention a core copies into its metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct RetentionStats {
    pub checkpoints_total: u64,
    pub checkpoint_records_total: u64,
    pub checkpoints_failed_total: u64,
    pub watermark_lsn: u64,
    pub syncs_expired_total: u64,
}

impl Timelines {
    /// Records below this LSN are no longer needed: the driver hands it to the log.
    pub fn retention_watermark(&self) -> u64 {
        self.retention.watermark
    }

    /// Whether a checkpoint is being written.
    pub fn checkpoint_in_progress(&self) -> bool {
        self.retention.checkpoint.is_some()
    }

    /// An append was reported durable at `lsn` (called first in `on_appended`).
    pub(super) fn note_durable(&mut self, lsn: Option<u64>) {
        if let (Some(lsn), Some(cp)) = (lsn, self.retention.checkpoint.as_mut()) {
            cp.first_lsn.get_or_insert(lsn);
        }
    }

    /// A read-marker entry became durable (`user`'s entry `seq`): keep it as the latest
    /// of its conversation.
    pub(super) fn note_committed(&mut self, user: u64, seq: u64) {
        if !self.config.retention_on() {
            return;
        }
        let Some(wire) = self.inboxes.get(&user).and_then(|i| i.read_marker_wire(seq, &self.recent)) else { return };
        let wire: Box<[u8]> = wire.into();
        remember_marker(&mut self.retention.read_markers, user, wire, self.config.read_markers_per_user_max);
    }

    /// Housekeeping: starts a checkpoint when one is due, and writes at most
    /// `checkpoint_records_per_tick` records of the one in progress.
    pub(super) fn retention_tick(&mut self, clock: Clock) {
        if !self.config.retention_on() {
            return;
        }
        let interval_ms = self.config.checkpoint_interval_s * 1000;
        let due = *self.retention.next_checkpoint_ms.get_or_insert(clock.mono_ms + interval_ms);
        if self.retention.checkpoint.is_none() {
            if clock.mono_ms < due {
                return;
            }
            self.retention.next_checkpoint_ms = Some(clock.mono_ms + interval_ms);
            self.forget_finished_lucky(clock.unix_ms);
            self.retention.checkpoint = Some(Checkpoint {
                started_unix_ms: clock.unix_ms,
                phase: Phase::Ceilings(self.ceilings.all().collect()),
                outstanding: 0,
                failed: false,
                first_lsn: None,
                records: 0,
            });
        }
        let window_start_ms = clock.unix_ms.saturating_sub(self.config.dedup_window_s * 1000);
        let mut budget = self.config.checkpoint_records_per_tick;
        while budget > 0 {
            let Some(cp) = self.retention.checkpoint.as_mut() else { return };
            let phase = std::mem::replace(&mut cp.phase, Phase::Waiting);
            let (record, next) = self.checkpoint_step(phase, window_start_ms);
            let waiting = matches!(next, Phase::Waiting);
            if let Some(cp) = self.retention.checkpoint.as_mut() {
                cp.phase = next;
            }
            if let Some((kind, payload)) = record {
                self.append_checkpoint_record(kind, payload);
                budget -= 1;
            }
            if waiting {
                return;
            }
        }
    }

    fn append_checkpoint_record(&mut self, kind: u8, payload: Vec<u8>) {
        let token = self.token();
        self.pending.insert(token, Pending::Checkpoint);
        self.outputs.push(TimelineOutput::Append { kind, payload, token });
        let cp = self.retention.checkpoint.as_mut().expect("a checkpoint is in progress");
        cp.outstanding += 1;
        cp.records += 1;
        self.retention_stats.checkpoint_records_total += 1;
    }

    /// The next record of a checkpoint (if this step makes one) and the phase after it.
    fn checkpoint_step(&mut self, phase: Phase, window_start_ms: u64) -> (Option<(u8, Vec<u8>)>, Phase) {
        match phase {
            Phase::Ceilings(mut pairs) => {
                if pairs.is_empty() {
                    let mut packets: Vec<u64> = self.lucky.keys().copied().collect();
                    packets.sort_unstable();
                    return (None, Phase::Lucky(packets));
                }
                let chunk = pairs.split_off(pairs.len().saturating_sub(CHECKPOINT_ITEMS_PER_RECORD));
                (Some((KIND_CP_CEILINGS, encode_ceilings(&chunk))), Phase::Ceilings(pairs))
            }
            Phase::Lucky(mut packets) => {
                let Some(id) = packets.pop() else {
                    return (None, Phase::Dedup(self.retention.dedup_popped));
                };
                let record = self.lucky.get(&id).filter(|p| p.durable).map(|p| {
                    let mut opened: Vec<(u64, u32)> = p.opened.iter().map(|(u, a)| (*u, *a)).collect();
                    opened.sort_unstable();
                    let cp = LuckyCheckpoint {
                        packet_id: id,
                        group: p.group,
                        total_fen: p.total_fen,
                        count: p.count,
                        opened,
                    };
                    (KIND_CP_LUCKY, cp.encode())
                });
                (record, Phase::Lucky(packets))
            }
            Phase::Dedup(position) => {
                let start = position.saturating_sub(self.retention.dedup_popped) as usize;
                let mut keys = Vec::new();
                let mut at = start;
                while at < self.delivered_order.len()
                    && at - start < DEDUP_SCAN_PER_RECORD
                    && keys.len() < CHECKPOINT_ITEMS_PER_RECORD
                {
                    let key = self.delivered_order[at];
                    at += 1;
                    let Some(d) = self.delivered.get(&key) else { continue };
                    // Only durable entries: one in flight is at or above the watermark.
                    // (An entry in flight has an inbox; a key recovered for a user whose
                    // entries all went has none, and is durable.)
                    let durable = self.inboxes.get(&key.0).is_none_or(|i| d.seq <= i.latest_seq());
                    if d.sent_at_ms >= window_start_ms && durable {
                        keys.push((key, *d));
                    }
                }
                let next = if at >= self.delivered_order.len() {
                    let mut users: Vec<u64> = self.retention.read_markers.keys().copied().collect();
                    users.sort_unstable();
                    Phase::Markers(users)
                } else {
                    Phase::Dedup(self.retention.dedup_popped + at as u64)
                };
                ((!keys.is_empty()).then(|| (KIND_CP_DEDUP, encode_dedup(&keys))), next)
            }
            Phase::Markers(mut users) => {
                let mut markers: Vec<(u64, &[u8])> = Vec::new();
                while let Some(&user) = users.last() {
                    let wires = self.retention.read_markers.get(&user).map_or(&[][..], Vec::as_slice);
                    if !markers.is_empty() && markers.len() + wires.len() > CHECKPOINT_ITEMS_PER_RECORD {
                        break;
                    }
                    users.pop();
                    markers.extend(wires.iter().map(|w| (user, &w[..])));
                }
                if markers.is_empty() {
                    let mut groups: Vec<u64> = self.groups.keys().chain(self.groups_queued.keys()).copied().collect();
                    groups.sort_unstable();
                    groups.dedup();
                    return (None, Phase::Groups(groups));
                }
                (Some((KIND_CP_READ_MARKER, encode_markers(&markers))), Phase::Markers(users))
            }
            Phase::Groups(mut ids) => {
                // Whole groups, up to CHECKPOINT_ITEMS_PER_RECORD members a record (a
                // larger group goes alone).
                let mut groups: Vec<(u64, &[u64])> = Vec::new();
                let mut members = 0;
                while let Some(&id) = ids.last() {
                    // The newest list queued, else the durable one: the state of every
                    // record below this one (see the module docs).
                    let current = self.groups_queued.get(&id).map(|q| &q.members).or_else(|| self.groups.get(&id));
                    let list = current.map_or(&[][..], Vec::as_slice);
                    if !groups.is_empty() && members + list.len() > CHECKPOINT_ITEMS_PER_RECORD {
                        break;
                    }
                    ids.pop();
                    if current.is_some() {
                        members += list.len();
                        groups.push((id, list));
                    }
                }
                if groups.is_empty() {
                    return (None, Phase::End);
                }
                (Some((KIND_CP_GROUPS, encode_groups(&groups))), Phase::Groups(ids))
            }
            Phase::End => {
                let cp = self.retention.checkpoint.as_ref().expect("in progress");
                (Some((KIND_CP_END, encode_end(cp.started_unix_ms, cp.records + 1))), Phase::Waiting)
            }
            Phase::Waiting => (None, Phase::Waiting),
        }
    }

    /// A checkpoint record was reported (`ok`: durable). When the last one is, the
    /// watermark moves to the first LSN reported after the checkpoint started.
    pub(super) fn on_checkpoint_appended(&mut self, ok: bool) {
        let Some(cp) = self.retention.checkpoint.as_mut() else { return };
        cp.outstanding -= 1;
        cp.failed |= !ok;
        if cp.outstanding > 0 || !matches!(cp.phase, Phase::Waiting) {
            return;
        }
        let cp = self.retention.checkpoint.take().expect("checked");
        match (cp.failed, cp.first_lsn) {
            (false, Some(lsn)) => {
                debug_assert!(lsn >= self.retention.watermark, "the watermark never moves back");
                self.retention.watermark = self.retention.watermark.max(lsn);
                self.retention_stats.checkpoints_total += 1;
            }
            _ => self.retention_stats.checkpoints_failed_total += 1,
        }
        self.retention_stats.watermark_lsn = self.retention.watermark;
    }

    /// Drops packets every share of which is durable and that were created before the
    /// idempotency window (a later open of one answers UnknownLuckyPacket).
    fn forget_finished_lucky(&mut self, unix_ms: u64) {
        let before_ms = unix_ms.saturating_sub(self.config.dedup_window_s * 1000);
        self.lucky.retain(|id, p| {
            let created_ms = id >> 22;
            !(p.durable && p.remaining_count == 0 && p.reserved.is_empty() && created_ms < before_ms)
        });
    }

    // ---- recovery ------------------------------------------------------------------

    /// A checkpoint record at start; `None` if `kind` is not one.
    pub(super) fn recover_checkpoint_record(&mut self, kind: u8, lsn: u64, payload: &[u8]) -> Option<bool> {
        self.retention.first_recovered_lsn.get_or_insert(lsn);
        Some(match kind {
            KIND_CP_CEILINGS => match decode_ceilings(payload) {
                Some(pairs) => {
                    for (bucket, ceiling) in pairs {
                        self.ceilings.recover_bucket(bucket, ceiling);
                    }
                    true
                }
                None => false,
            },
            KIND_CP_LUCKY => match LuckyCheckpoint::decode(payload) {
                Some(c) => {
                    let p = self
                        .lucky
                        .entry(c.packet_id)
                        .or_insert_with(|| super::LuckyPacket::new(c.group, c.total_fen, c.count));
                    p.durable = true;
                    for (user, amount) in c.opened {
                        p.recover_open(user, amount);
                    }
                    true
                }
                None => false,
            },
            KIND_CP_DEDUP => match decode_dedup(payload) {
                Some(keys) => {
                    for (key, d) in keys {
                        self.recover_dedup_key(key, d);
                    }
                    true
                }
                None => false,
            },
            KIND_CP_READ_MARKER => match decode_markers(payload) {
                Some(markers) => {
                    let max = self.config.read_markers_per_user_max;
                    for (user, wire) in markers {
                        remember_marker(&mut self.retention.read_markers, user, wire.into(), max);
                        self.ceilings.recover(user, wire_seq(wire));
                    }
                    true
                }
                None => false,
            },
            KIND_CP_GROUPS => match decode_groups(payload) {
                Some(groups) => {
                    for (group, members) in groups {
                        self.recover_group(group, members);
                    }
                    true
                }
                None => false,
            },
            KIND_CP_END => payload.len() == 12,
            _ => return None,
        })
    }

    /// An idempotency key at start (from an entry or a checkpoint).
    pub(super) fn recover_dedup_key(&mut self, key: (u64, u64, u64), d: DeliveredAt) {
        let (recipient, from, client_msg_id) = key;
        if recipient == from && !matches!(self.sent.get(&(from, client_msg_id)), Some(Sent::Recovered { .. })) {
            self.remember_sent((from, client_msg_id), Sent::Recovered { message_id: d.message_id });
        }
        self.last_message_id = self.last_message_id.max(d.message_id);
        self.remember_delivered(key, d);
    }

    /// Notes the first LSN of the replay (for any record kind).
    pub(super) fn note_recovered_lsn(&mut self, lsn: u64) {
        self.retention.first_recovered_lsn.get_or_insert(lsn);
    }

    /// A share whose packet is not known yet at this point of the replay.
    pub(super) fn recover_orphan_open(&mut self, packet: u64, user: u64, amount: u32) {
        self.retention.orphan_opens.push((packet, user, amount));
    }

    /// A read marker entry replayed from the log.
    pub(super) fn recover_marker_entry(&mut self, user: u64, wire: &[u8]) {
        // Kept only while retention can drop the entries (memory per user otherwise).
        if self.config.retention_on() && is_read_marker(wire) {
            let max = self.config.read_markers_per_user_max;
            remember_marker(&mut self.retention.read_markers, user, wire.into(), max);
        }
    }

    /// End of the replay: shares of packets recovered later; what a trimmed log lost.
    pub(super) fn finish_retention_recovery(&mut self) {
        for (packet, user, amount) in std::mem::take(&mut self.retention.orphan_opens) {
            match self.lucky.get_mut(&packet) {
                Some(p) => p.recover_open(user, amount),
                None => log::warn!("core {}: lucky share of unknown packet {packet} skipped", self.core),
            }
        }
        if self.retention.first_recovered_lsn.is_some_and(|lsn| lsn > 1) {
            for inbox in self.inboxes.values_mut() {
                inbox.mark_trimmed_below_first();
            }
            self.retention.trimmed_ceilings = Some(self.ceilings.all().collect());
        }
    }

    /// Highest seq of `user` the node no longer serves.
    fn sync_floor(&self, user: u64) -> u64 {
        let inbox = self.inboxes.get(&user);
        let own = inbox.map_or(0, |i| i.dropped_through());
        let trimmed = match (&self.retention.trimmed_ceilings, inbox) {
            (Some(ceilings), i) if !i.is_some_and(|i| i.recovered()) => {
                ceilings.get(&self.ceilings.bucket(user)).copied().unwrap_or(0)
            }
            _ => 0,
        };
        own.max(trimmed)
    }

    /// A Sync from below what is retained: `Some(expired)` flags the answer. When the
    /// user has read markers among the dropped entries, they come first, as one page.
    pub(super) fn sync_expired(&mut self, user: u64, since_seq: u64, limit: usize, latest_seq: u64) -> SyncExpiry {
        let floor = self.sync_floor(user);
        if since_seq >= floor {
            return SyncExpiry::Current;
        }
        self.retention_stats.syncs_expired_total += 1;
        let mut wires: Vec<&[u8]> = self
            .retention
            .read_markers
            .get(&user)
            .into_iter()
            .flatten()
            .map(|w| &w[..])
            .filter(|w| (since_seq + 1..=floor).contains(&wire_seq(w)))
            .collect();
        if wires.is_empty() {
            return SyncExpiry::Expired;
        }
        wires.sort_unstable_by_key(|w| wire_seq(w));
        let mut bytes = Vec::new();
        let mut count = 0u16;
        for w in wires.into_iter().take(limit) {
            if count > 0 && bytes.len() + w.len() > self.config.sync_bytes_max {
                break;
            }
            bytes.extend_from_slice(w);
            count += 1;
        }
        let reply = super::Reply::ok(redrain_net::timeline::TimelineResponse::SyncOk {
            latest_seq,
            more: true,
            expired: true,
            entries: SyncEntries::from_encoded(count, &bytes),
        });
        SyncExpiry::Markers(reply)
    }

    pub fn retention_stats(&self) -> RetentionStats {
        self.retention_stats
    }
}

/// How a Sync stands against retention.
pub(super) enum SyncExpiry {
    /// Nothing after `since_seq` was dropped.
    Current,
    /// Entries after `since_seq` were dropped: flag the answer.
    Expired,
    /// Dropped read markers, answered first.
    Markers(super::Reply),
}

/// Keeps `wire` as the latest marker of its conversation (a newer one replaces it;
/// beyond `max` conversations the oldest marker goes).
fn remember_marker(markers: &mut HashMap<u64, Vec<Box<[u8]>>>, user: u64, wire: Box<[u8]>, max: usize) {
    let list = markers.entry(user).or_default();
    let conv = marker_conversation(&wire);
    match list.iter_mut().find(|w| marker_conversation(w) == conv) {
        Some(old) if wire_seq(old) >= wire_seq(&wire) => {}
        Some(old) => *old = wire,
        None => {
            list.push(wire);
            if list.len() > max {
                let oldest = (0..list.len()).min_by_key(|i| wire_seq(&list[*i])).expect("not empty");
                list.swap_remove(oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_records_round_trip_and_bad_lengths_are_refused() {
        let pairs = vec![(1, 10_000), (2, 20_000)];
        assert_eq!(decode_ceilings(&encode_ceilings(&pairs)), Some(pairs.clone()));
        assert_eq!(decode_ceilings(&encode_ceilings(&pairs)[..20]), None);
        let l = LuckyCheckpoint { packet_id: 9, group: 8, total_fen: 1000, count: 3, opened: vec![(5, 400), (6, 1)] };
        assert_eq!(LuckyCheckpoint::decode(&l.encode()), Some(l.clone()));
        assert_eq!(LuckyCheckpoint::decode(&l.encode()[..30]), None);
        let keys = vec![((1, 2, 3), DeliveredAt { seq: 4, message_id: 5, sent_at_ms: 6 })];
        assert_eq!(decode_dedup(&encode_dedup(&keys)), Some(keys));
        assert_eq!(decode_dedup(&[0, 1, 0]), None);
        let mut wire = Vec::new();
        redrain_net::timeline::SyncEntry {
            seq: 7,
            message_id: 1,
            from: 3,
            conv_kind: 0,
            conv_id: 3,
            sent_at_ms: 0,
            content_type: CONTENT_READ_MARKER,
            payload: &[0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 6],
        }
        .encode(&mut wire);
        assert!(is_read_marker(&wire));
        assert_eq!(marker_conversation(&wire), (0, 4));
        let m = encode_markers(&[(3, &wire)]);
        assert_eq!(decode_markers(&m), Some(vec![(3, &wire[..])]));
        assert_eq!(decode_markers(&m[..m.len() - 1]), None);
        let groups: Vec<(u64, &[u64])> = vec![(1 << 40, &[2, 3, 9]), (7, &[])];
        let g = encode_groups(&groups);
        assert_eq!(decode_groups(&g), Some(vec![(1 << 40, vec![2, 3, 9]), (7, vec![])]));
        assert_eq!(decode_groups(&g[..g.len() - 1]), None);
        assert_eq!(decode_groups(&encode_groups(&[(1, &[3, 2])])), None, "a list out of order is damage");
    }

    #[test]
    fn the_latest_marker_of_a_conversation_wins_and_the_count_is_bounded() {
        let marker = |seq: u64, conv: u64| -> Box<[u8]> {
            let mut payload = vec![0u8];
            payload.extend_from_slice(&conv.to_be_bytes());
            payload.extend_from_slice(&seq.to_be_bytes());
            let mut w = Vec::new();
            redrain_net::timeline::SyncEntry {
                seq,
                message_id: seq,
                from: 1,
                conv_kind: 0,
                conv_id: 1,
                sent_at_ms: 0,
                content_type: CONTENT_READ_MARKER,
                payload: &payload,
            }
            .encode(&mut w);
            w.into_boxed_slice()
        };
        let mut markers = HashMap::new();
        remember_marker(&mut markers, 1, marker(5, 100), 2);
        remember_marker(&mut markers, 1, marker(3, 100), 2);
        assert_eq!(wire_seq(&markers[&1][0]), 5, "an older marker never replaces a newer one");
        remember_marker(&mut markers, 1, marker(8, 100), 2);
        remember_marker(&mut markers, 1, marker(9, 200), 2);
        remember_marker(&mut markers, 1, marker(10, 300), 2);
        let mut seqs: Vec<u64> = markers[&1].iter().map(|w| wire_seq(w)).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, vec![9, 10], "beyond the bound the oldest conversation's marker goes");
    }
}
