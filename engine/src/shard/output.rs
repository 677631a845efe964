//! A connection's output in request order, with answers that come later.
//!
//! The protocol promises responses in request order per connection (docs/protocol.md §4).
//! Most answers are written at once; an answer that waits for storage (an open) takes a
//! *slot*, and every answer written after it is held behind that slot until it is filled.
//! Server pushes (request id 0) are not answers and go out at once.
//!
//! An idle connection's held output is one empty deque; held bytes exist only while a
//! deferred answer is outstanding.

use std::collections::VecDeque;

struct Held {
    slot: u64,
    answer: Option<Vec<u8>>,
    /// Answers written after this slot (and before the next one).
    after: Vec<u8>,
}

/// The held part of one connection's ordered output: deferred slots and the answers
/// queued behind them. The bytes that may leave now live in the driver's write buffer
/// (`ready` below), so the write path knows nothing of slots.
#[derive(Default)]
pub struct ConnOutput {
    held: VecDeque<Held>,
}

impl ConnOutput {
    /// Where the next answer goes: `ready` when nothing is held, else behind the last slot.
    pub fn tail<'a>(&'a mut self, ready: &'a mut Vec<u8>) -> &'a mut Vec<u8> {
        match self.held.back_mut() {
            Some(h) => &mut h.after,
            None => ready,
        }
    }

    /// Reserves the place of an answer that comes later.
    pub fn defer(&mut self, slot: u64) {
        self.held.push_back(Held { slot, answer: None, after: Vec::new() });
    }

    /// Slots still waiting.
    pub fn deferred(&self) -> usize {
        self.held.len()
    }

    /// Fills `slot` with its answer and moves everything now in order to `ready`.
    /// Returns false for an unknown slot (answered already, or never taken here).
    pub fn complete(&mut self, slot: u64, answer: Vec<u8>, ready: &mut Vec<u8>) -> bool {
        let Some(h) = self.held.iter_mut().find(|h| h.slot == slot && h.answer.is_none()) else {
            return false;
        };
        h.answer = Some(answer);
        while self.held.front().is_some_and(|h| h.answer.is_some()) {
            let h = self.held.pop_front().expect("checked");
            ready.extend_from_slice(&h.answer.expect("checked"));
            ready.extend_from_slice(&h.after);
        }
        true
    }

    /// Everything still held is dropped (the connection closes).
    pub fn abandon(&mut self) {
        self.held.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_behind_a_deferred_one_wait_for_it_and_leave_in_request_order() {
        let mut out = ConnOutput::default();
        let mut ready = Vec::new();
        out.tail(&mut ready).extend_from_slice(b"a");
        out.defer(1);
        out.tail(&mut ready).extend_from_slice(b"c");
        out.defer(2);
        out.tail(&mut ready).extend_from_slice(b"e");
        ready.extend_from_slice(b"!"); // a push goes straight out
        assert_eq!(ready, b"a!");
        assert!(out.complete(2, b"d".to_vec(), &mut ready));
        assert_eq!(ready, b"a!", "slot 2 waits for slot 1");
        assert!(out.complete(1, b"b".to_vec(), &mut ready));
        assert_eq!(ready, b"a!bcde");
        assert_eq!(out.deferred(), 0);
        assert!(!out.complete(1, b"x".to_vec(), &mut ready), "a slot is filled once");
    }
}
