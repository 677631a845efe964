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

use super::recent::RecentEntries;
use super::TimelineConfig;
use std::collections::VecDeque;
type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

#[derive(Debug)]
struct PendingEntry {
    seq: u64,
    from: u64,
    client_msg_id: u64,
    /// The entry in its `SyncOk` layout (moves to the core's [`RecentEntries`] when durable).
    wire: Box<[u8]>,
}

/// One user's inbox.
#[derive(Debug, Default)]
pub struct Inbox {
    allocated: u64,
    committed: u64,
    /// Entries waiting for their write, in seq order.
    pending: VecDeque<PendingEntry>,
    /// Durable entries: (seq, LSN), ascending in both.
    index: VecDeque<(u64, u64)>,
    /// A Notify for this user is queued for the next drain.
    pub notify_pending: bool,
    /// Highest seq this inbox can no longer serve (retention or the index bound dropped
    /// it and everything before it); a Sync from below it answers `expired`.
    dropped_through: u64,
    /// Some entry of this inbox came from the log at start.
    recovered: bool,
}

/// Where a Sync's next entries are.
#[derive(Debug, PartialEq, Eq)]
pub enum SyncSource {
    /// Older than the core's recent entries: these LSNs are read from the log.
    Log(Vec<u64>),
    /// In memory: copy them with [`Inbox::copy_after`].
    Memory,
}

impl Inbox {
    /// An inbox whose numbers continue above `ceiling` (a user first seen after a restart).
    pub fn starting_at(ceiling: u64) -> Self {
        Self { allocated: ceiling, committed: ceiling, ..Self::default() }
    }

    /// The latest durable seq that a Sync may return: entries commit in seq order on
    /// their core, so nothing below it is still pending.
    pub fn latest_seq(&self) -> u64 {
        match self.pending.front() {
            Some(p) if p.seq <= self.committed => p.seq - 1,
            _ => self.committed,
        }
    }

    /// The next seq.
    pub fn allocate(&mut self) -> u64 {
        self.allocated += 1;
        self.allocated
    }

    /// Adds an entry waiting for its write.
    pub fn push(&mut self, seq: u64, from: u64, client_msg_id: u64, wire: Box<[u8]>) {
        debug_assert!(self.pending.back().is_none_or(|e| e.seq < seq), "seqs strictly increase");
        self.pending.push_back(PendingEntry { seq, from, client_msg_id, wire });
    }

    /// The entry `seq` is durable at `lsn`: its bytes go to the core's recent entries.
    pub fn commit(&mut self, seq: u64, lsn: u64, recent: &mut RecentEntries, config: &TimelineConfig) {
        let Some(at) = self.pending.iter().position(|e| e.seq == seq) else { return };
        let e = self.pending.remove(at).expect("found");
        recent.push(lsn, &e.wire);
        self.index_entry(seq, lsn, config);
    }

    fn index_entry(&mut self, seq: u64, lsn: u64, config: &TimelineConfig) {
        if self.index.back().is_none_or(|(s, _)| *s < seq) {
            self.index.push_back((seq, lsn));
        } else {
            let at = self.index.partition_point(|(s, _)| *s < seq);
            self.index.insert(at, (seq, lsn));
        }
        self.committed = self.committed.max(seq);
        while self.index.len() > config.inbox_index_entries_max {
            if let Some((seq, _)) = self.index.pop_front() {
                self.dropped_through = self.dropped_through.max(seq);
            }
        }
    }

    /// The entry `seq` could not be written: it never existed (its seq is skipped).
    /// Returns its (sender, client message id).
    pub fn fail(&mut self, seq: u64) -> Option<(u64, u64)> {
        let at = self.pending.iter().position(|e| e.seq == seq)?;
        self.pending.remove(at).map(|e| (e.from, e.client_msg_id))
    }

    /// Removes entry `seq` from the index: at start, an entry stored
    /// again later (its first record failed, yet was durable) gives way to the later one.
    pub fn forget(&mut self, seq: u64) -> bool {
        // Its bytes may stay in the recent-entry arena: nothing indexes them any more.
        match self.index.binary_search_by_key(&seq, |(s, _)| *s) {
            Ok(at) => self.index.remove(at).is_some(),
            Err(_) => false,
        }
    }

    /// An entry found in the log at start.
    pub fn recover(&mut self, seq: u64, wire: &[u8], lsn: u64, recent: &mut RecentEntries, config: &TimelineConfig) {
        if seq <= self.committed {
            return;
        }
        recent.push(lsn, wire);
        self.index_entry(seq, lsn, config);
        self.recovered = true;
        self.allocated = self.allocated.max(seq);
    }

    /// After recovery: continue above the bucket's ceiling.
    pub fn continue_from(&mut self, ceiling: u64) {
        self.allocated = self.allocated.max(ceiling);
    }

    /// The durable entries after `since_seq` (at most `limit`) in the index.
    fn after(&self, since_seq: u64, limit: usize) -> impl Iterator<Item = &(u64, u64)> {
        let latest = self.latest_seq();
        let start = self.index.partition_point(|(seq, _)| *seq <= since_seq);
        self.index.range(start..).take_while(move |(seq, _)| *seq <= latest).take(limit)
    }

    /// Where the entries after `since_seq` are: the LSNs of up to `limit` of them to read
    /// from the log when the first is no longer in `recent`, else memory.
    pub fn source_after(&self, since_seq: u64, limit: usize, recent: &RecentEntries) -> SyncSource {
        let mut lsns = Vec::new();
        for (_, lsn) in self.after(since_seq, limit) {
            if !recent.evicted(*lsn) {
                break;
            }
            lsns.push(*lsn);
        }
        if lsns.is_empty() {
            SyncSource::Memory
        } else {
            SyncSource::Log(lsns)
        }
    }

    /// Copies durable entries after `since_seq` held in `recent` (at most `limit`,
    /// `bytes_max`) into `out`; returns (count, more left).
    pub fn copy_after(
        &self,
        since_seq: u64,
        limit: usize,
        bytes_max: usize,
        recent: &RecentEntries,
        out: &mut Vec<u8>,
    ) -> (usize, bool) {
        let mut count = 0;
        for (_, lsn) in self.after(since_seq, usize::MAX) {
            // The first entry always goes, so a Sync always makes progress.
            let Some(wire) = recent.get(*lsn) else { return (count, true) };
            if count == limit || (count > 0 && out.len() + wire.len() > bytes_max) {
                return (count, true);
            }
            out.extend_from_slice(wire);
            count += 1;
        }
        (count, false)
    }

    /// Drops index entries whose records retention removed from the log.
    pub fn forget_before(&mut self, first_lsn: u64) {
        while self.index.front().is_some_and(|(_, lsn)| *lsn < first_lsn) {
            if let Some((seq, _)) = self.index.pop_front() {
                self.dropped_through = self.dropped_through.max(seq);
            }
        }
    }

    /// Highest seq this inbox no longer serves (0: it serves everything it held).
    pub fn dropped_through(&self) -> u64 {
        self.dropped_through
    }

    /// Whether entries of this inbox were recovered from the log at start.
    pub fn recovered(&self) -> bool {
        self.recovered
    }

    /// After a start from a log that retention had trimmed: seqs below the first
    /// recovered one may have existed and are gone.
    pub fn mark_trimmed_below_first(&mut self) {
        if let Some((first, _)) = self.index.front() {
            self.dropped_through = self.dropped_through.max(first - 1);
        }
    }

    /// The wire bytes of the durable entry `seq` if it is a read marker still in memory.
    pub fn read_marker_wire<'r>(&self, seq: u64, recent: &'r RecentEntries) -> Option<&'r [u8]> {
        let at = self.index.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
        let wire = recent.get(self.index[at].1)?;
        super::checkpoint::is_read_marker(wire).then_some(wire)
    }

    /// Entries waiting for their write and entries indexed.
    pub fn lens(&self) -> (usize, usize) {
        (self.pending.len(), self.index.len())
    }

    /// Heap bytes held by this inbox (pending entries, index); the bytes of durable
    /// entries are the core's [`RecentEntries`].
    pub fn heap_bytes(&self) -> usize {
        self.pending.capacity() * std::mem::size_of::<PendingEntry>()
            + self.pending.iter().map(|e| e.wire.len()).sum::<usize>()
            + self.index.capacity() * 16
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
        Self { step, shift, buckets: HashMap::default() }
    }

    /// The bucket (shared persisted ceiling) of `user`.
    pub fn bucket(&self, user: u64) -> u64 {
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
    fn only_durable_entries_are_visible_and_evicted_ones_are_read_from_the_log() {
        let config = TimelineConfig::default();
        let mut recent = RecentEntries::new(1 << 20);
        let mut inbox = Inbox::default();
        for _ in 0..4 {
            let seq = inbox.allocate();
            inbox.push(seq, 1, seq, wire(seq));
        }
        let mut out = Vec::new();
        assert_eq!(inbox.copy_after(0, 10, 1 << 20, &recent, &mut out), (0, false), "nothing durable yet");
        inbox.commit(1, 100, &mut recent, &config);
        inbox.commit(2, 101, &mut recent, &config);
        assert_eq!(inbox.latest_seq(), 2);
        inbox.fail(3);
        inbox.commit(4, 103, &mut recent, &config);
        assert_eq!(inbox.latest_seq(), 4);
        assert_eq!(inbox.source_after(0, 10, &recent), SyncSource::Memory);
        let (count, more) = inbox.copy_after(2, 10, 1 << 20, &recent, &mut out);
        assert_eq!((count, more), (1, false), "seq 4 only; 3 failed and was skipped");
        // A core whose recent entries start after LSN 101: seqs 1 and 2 come from the log.
        let mut newer = RecentEntries::new(1 << 20);
        newer.push(103, &wire(4));
        assert_eq!(inbox.source_after(0, 10, &newer), SyncSource::Log(vec![100, 101]));
        assert_eq!(inbox.source_after(1, 1, &newer), SyncSource::Log(vec![101]));
        assert_eq!(inbox.source_after(2, 10, &newer), SyncSource::Memory);
    }

    #[test]
    fn a_pending_entry_hides_the_durable_ones_after_it() {
        let config = TimelineConfig::default();
        let mut recent = RecentEntries::new(1 << 20);
        let mut inbox = Inbox::default();
        for seq in 1..=2 {
            assert_eq!(inbox.allocate(), seq);
            inbox.push(seq, 1, seq, wire(seq));
        }
        inbox.commit(2, 7, &mut recent, &config);
        assert_eq!(inbox.latest_seq(), 0, "seq 1 is still being written");
        let mut out = Vec::new();
        assert_eq!(inbox.copy_after(0, 10, 1 << 20, &recent, &mut out), (0, false));
        inbox.commit(1, 6, &mut recent, &config);
        assert_eq!(inbox.latest_seq(), 2);
        assert_eq!(inbox.source_after(0, 10, &recent), SyncSource::Log(vec![6]), "LSN 6 came after 7 in memory");
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
