//! One user's inbox on its home core, and the persisted sequence ceilings.
//!
//! An inbox keeps its most recent entries in memory, in their wire layout (a Sync copies
//! them out as they are), and an index (seq -> LSN) of the older ones, which a Sync reads
//! from the log. Entries become visible (Sync, Notify) only once durable; they commit in
//! LSN order, which on one core is seq order.
//!
//! Sequence numbers: each user's next seq is its last + 1, kept in memory. Users whose
//! ids share `id >> seq_bucket_shift` share one persisted ceiling; an allocation above
//! the ceiling first appends a new ceiling (seq + step) to the same log, ahead of the
//! entry, so a recovered log never holds an entry above its recovered ceiling. After a
//! restart every user continues above its bucket's ceiling: numbers may be skipped,
//! never repeated.

use super::TimelineConfig;
use std::collections::{HashMap, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Committed,
}

#[derive(Debug)]
struct MemEntry {
    seq: u64,
    from: u64,
    client_msg_id: u64,
    lsn: u64,
    state: State,
    /// The entry in its `SyncOk` layout.
    wire: Box<[u8]>,
}

/// One user's inbox.
#[derive(Debug, Default)]
pub struct Inbox {
    allocated: u64,
    committed: u64,
    recent: VecDeque<MemEntry>,
    older: VecDeque<(u64, u64)>,
    /// A Notify for this user is queued for the next drain.
    pub notify_pending: bool,
}

impl Inbox {
    /// An inbox whose numbers continue above `ceiling` (a user first seen after a restart).
    pub fn starting_at(ceiling: u64) -> Self {
        Self { allocated: ceiling, committed: ceiling, ..Self::default() }
    }

    /// The latest durable seq.
    pub fn latest_seq(&self) -> u64 {
        self.committed
    }

    /// The next seq.
    pub fn allocate(&mut self) -> u64 {
        self.allocated += 1;
        self.allocated
    }

    /// Adds an entry waiting for its write.
    pub fn push(&mut self, seq: u64, from: u64, client_msg_id: u64, wire: Box<[u8]>) {
        debug_assert!(self.recent.back().is_none_or(|e| e.seq < seq), "seqs strictly increase");
        self.recent.push_back(MemEntry { seq, from, client_msg_id, lsn: 0, state: State::Pending, wire });
    }

    /// The entry `seq` is durable at `lsn`.
    pub fn commit(&mut self, seq: u64, lsn: u64, config: &TimelineConfig) {
        if let Some(e) = self.recent.iter_mut().find(|e| e.seq == seq) {
            e.state = State::Committed;
            e.lsn = lsn;
            self.committed = self.committed.max(seq);
        }
        self.evict(config);
    }

    /// The entry `seq` could not be written: it never existed (its seq is skipped).
    /// Returns its (sender, client message id).
    pub fn fail(&mut self, seq: u64) -> Option<(u64, u64)> {
        let at = self.recent.iter().position(|e| e.seq == seq)?;
        self.recent.remove(at).map(|e| (e.from, e.client_msg_id))
    }

    /// Removes entry `seq` wherever it is (memory or index): at start, an entry stored
    /// again later (its first record failed, yet was durable) gives way to the later one.
    pub fn forget(&mut self, seq: u64) -> bool {
        if let Some(at) = self.recent.iter().position(|e| e.seq == seq) {
            return self.recent.remove(at).is_some();
        }
        match self.older.binary_search_by_key(&seq, |(s, _)| *s) {
            Ok(at) => self.older.remove(at).is_some(),
            Err(_) => false,
        }
    }

    /// An entry found in the log at start.
    pub fn recover(&mut self, seq: u64, from: u64, client_msg_id: u64, wire: &[u8], lsn: u64, config: &TimelineConfig) {
        if seq <= self.committed {
            return;
        }
        self.recent.push_back(MemEntry { seq, from, client_msg_id, lsn, state: State::Committed, wire: wire.into() });
        self.committed = seq;
        self.allocated = self.allocated.max(seq);
        self.evict(config);
    }

    /// After recovery: continue above the bucket's ceiling.
    pub fn continue_from(&mut self, ceiling: u64) {
        self.allocated = self.allocated.max(ceiling);
    }

    fn evict(&mut self, config: &TimelineConfig) {
        while self.recent.len() > config.inbox_memory_entries
            && self.recent.front().is_some_and(|e| e.state == State::Committed)
        {
            let e = self.recent.pop_front().expect("checked");
            self.older.push_back((e.seq, e.lsn));
            if self.older.len() > config.inbox_index_entries_max {
                self.older.pop_front();
            }
        }
    }

    /// LSNs of up to `limit` indexed (older) entries after `since_seq`.
    pub fn older_after(&self, since_seq: u64, limit: usize) -> Vec<u64> {
        let start = self.older.partition_point(|(seq, _)| *seq <= since_seq);
        self.older.iter().skip(start).take(limit).map(|(_, lsn)| *lsn).collect()
    }

    /// Copies durable in-memory entries after `since_seq` (at most `limit`, `bytes_max`)
    /// into `out`; returns (count, more left).
    pub fn copy_after(&self, since_seq: u64, limit: usize, bytes_max: usize, out: &mut Vec<u8>) -> (usize, bool) {
        let start = self.recent.partition_point(|e| e.seq <= since_seq);
        let mut count = 0;
        for e in self.recent.iter().skip(start) {
            if e.seq > self.committed || e.state != State::Committed {
                // Not durable yet (and nothing after it is).
                return (count, false);
            }
            // The first entry always goes, so a Sync always makes progress.
            if count == limit || (count > 0 && out.len() + e.wire.len() > bytes_max) {
                return (count, true);
            }
            out.extend_from_slice(&e.wire);
            count += 1;
        }
        (count, false)
    }

    /// Drops index entries whose records retention removed from the log.
    pub fn forget_before(&mut self, first_lsn: u64) {
        while self.older.front().is_some_and(|(_, lsn)| *lsn < first_lsn) {
            self.older.pop_front();
        }
    }

    /// Entries in memory and in the index.
    pub fn lens(&self) -> (usize, usize) {
        (self.recent.len(), self.older.len())
    }

    /// Heap bytes held by this inbox (entries, index).
    pub fn heap_bytes(&self) -> usize {
        self.recent.capacity() * std::mem::size_of::<MemEntry>()
            + self.recent.iter().map(|e| e.wire.len()).sum::<usize>()
            + self.older.capacity() * 16
    }
}

/// The persisted sequence ceilings of one core's users, by bucket.
#[derive(Debug)]
pub struct Ceilings {
    step: u64,
    shift: u32,
    buckets: HashMap<u64, u64>,
}

impl Ceilings {
    pub fn new(step: u64, shift: u32) -> Self {
        Self { step, shift, buckets: HashMap::new() }
    }

    fn bucket(&self, user: u64) -> u64 {
        user >> self.shift
    }

    /// The persisted ceiling of `user`'s bucket (0: none yet).
    pub fn ceiling_of(&self, user: u64) -> u64 {
        self.buckets.get(&self.bucket(user)).copied().unwrap_or(0)
    }

    /// `seq` is about to be used: returns the (bucket, ceiling) to append first when it
    /// is above the bucket's ceiling.
    pub fn raise(&mut self, user: u64, seq: u64) -> Option<(u64, u64)> {
        let bucket = self.bucket(user);
        let ceiling = self.buckets.entry(bucket).or_insert(0);
        if seq <= *ceiling {
            return None;
        }
        *ceiling = seq + self.step;
        Some((bucket, *ceiling))
    }

    pub fn recover_bucket(&mut self, bucket: u64, ceiling: u64) {
        let c = self.buckets.entry(bucket).or_insert(0);
        *c = (*c).max(ceiling);
    }

    /// A recovered entry: its seq is at or below a ceiling written before it; kept in
    /// case retention dropped that ceiling record.
    pub fn recover(&mut self, user: u64, seq: u64) {
        let bucket = self.bucket(user);
        let c = self.buckets.entry(bucket).or_insert(0);
        *c = (*c).max(seq);
    }

    pub fn after_recovery(&mut self) {}

    /// Every (bucket, ceiling), for re-appending before retention drops old records.
    pub fn all(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.buckets.iter().map(|(b, c)| (*b, *c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(seq: u64) -> Box<[u8]> {
        let mut w = Vec::new();
        redrain_net::timeline::SyncEntry {
            seq,
            message_id: seq,
            from: 1,
            conv_kind: 0,
            conv_id: 2,
            sent_at_ms: 0,
            content_type: 0,
            payload: b"x",
        }
        .encode(&mut w);
        w.into_boxed_slice()
    }

    #[test]
    fn only_durable_entries_are_visible_and_old_ones_move_to_the_index() {
        let config = TimelineConfig { inbox_memory_entries: 2, ..TimelineConfig::default() };
        let mut inbox = Inbox::default();
        for _ in 0..4 {
            let seq = inbox.allocate();
            inbox.push(seq, 1, seq, wire(seq));
        }
        let mut out = Vec::new();
        assert_eq!(inbox.copy_after(0, 10, 1 << 20, &mut out), (0, false), "nothing durable yet");
        inbox.commit(1, 100, &config);
        inbox.commit(2, 101, &config);
        assert_eq!(inbox.latest_seq(), 2);
        inbox.fail(3);
        inbox.commit(4, 103, &config);
        assert_eq!(inbox.latest_seq(), 4);
        assert_eq!(inbox.older_after(0, 10), vec![100, 101], "durable entries beyond 2 in memory moved to the index");
        assert_eq!(inbox.older_after(1, 10), vec![101]);
        let (count, more) = inbox.copy_after(2, 10, 1 << 20, &mut out);
        assert_eq!((count, more), (1, false), "seq 4 only; 3 failed and was skipped");
    }

    #[test]
    fn a_ceiling_is_appended_before_the_first_seq_above_it_and_shared_by_neighbours() {
        let mut c = Ceilings::new(10, 8);
        assert_eq!(c.raise(5, 1), Some((0, 11)));
        assert_eq!(c.raise(6, 5), None, "user 6 shares user 5's bucket");
        assert_eq!(c.raise(5, 11), None);
        assert_eq!(c.raise(5, 12), Some((0, 22)));
        assert_eq!(c.raise(256, 1), Some((1, 11)), "another bucket");
        let mut inbox = Inbox::default();
        inbox.continue_from(c.ceiling_of(6));
        assert_eq!(inbox.allocate(), 23, "after a restart user 6 continues above the ceiling");
    }
}
