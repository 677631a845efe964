//! The newest committed inbox entries of one core, in their `SyncOk` layout, in LSN order,
//! bounded in bytes (`timeline.recent_bytes_max`).
//!
//! Every inbox on the core indexes its entries by (seq, LSN); the bytes of the newest
//! ones live here, shared by all inboxes, so a Sync of anything written in the last
//! `recent_bytes_max` of traffic is a copy from memory, whatever the inbox, and an idle
//! user costs its index only (16 bytes an entry), not a window of entries. Older entries
//! are read from the log through the same index.
//!
//! Entries are packed into chunks (one allocation per chunk, not per entry); the oldest
//! whole chunk goes when the bytes pass the bound. Entries arrive in LSN order (a core's
//! log commits in LSN order, and recovery replays it so), which makes a lookup two binary
//! searches.

use std::collections::VecDeque;

struct Chunk {
    /// LSN of every entry, ascending.
    lsns: Vec<u64>,
    /// End offset in `data` of every entry.
    ends: Vec<u32>,
    data: Vec<u8>,
}

impl Chunk {
    fn heap_bytes(&self) -> usize {
        self.data.capacity() + self.lsns.capacity() * 8 + self.ends.capacity() * 4
    }
}

/// The newest entries of one core (see the module docs).
pub struct RecentEntries {
    chunks: VecDeque<Chunk>,
    /// Heap bytes of `chunks` (what the bound is checked against).
    bytes: usize,
    bytes_max: usize,
    chunk_bytes: usize,
    last_lsn: u64,
    /// The last chunk dropped, emptied, for the next one: a steady stream of entries
    /// reuses its pages instead of faulting in fresh ones.
    spare: Option<Chunk>,
}

impl RecentEntries {
    /// Holds about `bytes_max` (at least one chunk: the newest chunk is never dropped).
    pub fn new(bytes_max: usize) -> Self {
        let chunk_bytes = (bytes_max / 16).clamp(256, 1 << 20);
        Self { chunks: VecDeque::new(), bytes: 0, bytes_max, chunk_bytes, last_lsn: 0, spare: None }
    }

    /// Adds the entry at `lsn` (ignored unless newer than every entry held).
    pub fn push(&mut self, lsn: u64, wire: &[u8]) {
        if lsn <= self.last_lsn {
            return;
        }
        self.last_lsn = lsn;
        let fits =
            self.chunks.back().is_some_and(|c| c.data.is_empty() || c.data.len() + wire.len() <= c.data.capacity());
        if !fits {
            let chunk = match self.spare.take() {
                Some(spare) if spare.data.capacity() >= wire.len() => spare,
                _ => {
                    let entries = (self.chunk_bytes / 64).max(4);
                    Chunk {
                        lsns: Vec::with_capacity(entries),
                        ends: Vec::with_capacity(entries),
                        data: Vec::with_capacity(self.chunk_bytes.max(wire.len())),
                    }
                }
            };
            self.bytes += chunk.heap_bytes();
            self.chunks.push_back(chunk);
        }
        let chunk = self.chunks.back_mut().expect("pushed above");
        let before = chunk.heap_bytes();
        chunk.data.extend_from_slice(wire);
        chunk.lsns.push(lsn);
        chunk.ends.push(chunk.data.len() as u32);
        self.bytes = self.bytes - before + chunk.heap_bytes();
        while self.bytes > self.bytes_max && self.chunks.len() > 1 {
            let mut old = self.chunks.pop_front().expect("more than one");
            self.bytes -= old.heap_bytes();
            if old.data.capacity() == self.chunk_bytes {
                old.lsns.clear();
                old.ends.clear();
                old.data.clear();
                self.spare = Some(old);
            }
        }
    }

    /// The oldest LSN held (None: nothing held).
    pub fn first_lsn(&self) -> Option<u64> {
        self.chunks.front().and_then(|c| c.lsns.first().copied())
    }

    /// Whether `lsn` is old enough to have left memory (it is read from the log).
    pub fn evicted(&self, lsn: u64) -> bool {
        self.first_lsn().is_none_or(|first| lsn < first)
    }

    /// The entry at `lsn`, if held.
    pub fn get(&self, lsn: u64) -> Option<&[u8]> {
        let at = self.chunks.partition_point(|c| c.lsns.first().is_some_and(|first| *first <= lsn));
        let chunk = self.chunks.get(at.checked_sub(1)?)?;
        let i = chunk.lsns.binary_search(&lsn).ok()?;
        let start = if i == 0 { 0 } else { chunk.ends[i - 1] as usize };
        Some(&chunk.data[start..chunk.ends[i] as usize])
    }

    /// Heap bytes held (the bound, plus one spare chunk).
    pub fn heap_bytes(&self) -> usize {
        self.bytes + self.spare.as_ref().map_or(0, Chunk::heap_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_by_lsn_until_the_byte_bound_drops_the_oldest_chunk() {
        let mut r = RecentEntries::new(4096);
        for lsn in 1..=200u64 {
            r.push(lsn * 2, &[lsn as u8; 40]);
        }
        assert!(r.heap_bytes() <= 4096 + 2 * (256 + 64 * 12), "bounded ({})", r.heap_bytes());
        let first = r.first_lsn().expect("something held");
        assert!(first > 2, "the oldest chunks went");
        assert!(r.evicted(first - 2) && !r.evicted(first));
        assert_eq!(r.get(first - 2), None);
        assert_eq!(r.get(400), Some(&[200u8; 40][..]), "the newest entry");
        assert_eq!(r.get(first), Some(&[(first / 2) as u8; 40][..]));
        assert_eq!(r.get(401), None, "an LSN never pushed");
        assert_eq!(r.get(3), None, "between two entries");
    }

    #[test]
    fn an_entry_larger_than_a_chunk_gets_a_chunk_of_its_own() {
        let mut r = RecentEntries::new(4096);
        r.push(1, &[1; 10]);
        r.push(2, &[2; 3000]);
        r.push(3, &[3; 10]);
        assert_eq!(r.get(2).map(<[u8]>::len), Some(3000));
        assert_eq!(r.get(1), Some(&[1u8; 10][..]));
        assert_eq!(r.get(3), Some(&[3u8; 10][..]));
    }

    #[test]
    fn an_older_lsn_than_held_is_not_added() {
        let mut r = RecentEntries::new(4096);
        r.push(5, b"five");
        r.push(4, b"four");
        assert_eq!(r.get(4), None);
        assert_eq!(r.get(5), Some(&b"five"[..]));
    }
}
