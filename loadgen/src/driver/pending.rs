//! Requests a connection has sent and not yet seen answered, by request id.
//!
//! The client codec numbers requests 1, 2, 3, ... on each connection, so the
//! outstanding ids form a window `[first, first + len)`; lookup is an index, and
//! a response id below the window was answered already (a duplicate) while one
//! at or above it was never sent (unexpected). Neither can corrupt the window.

use std::collections::VecDeque;

/// What the driver keeps per outstanding request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// Sequence number handed to the scenario's checker.
    pub sequence: u64,
    /// Intended send time (open loop) or actual send time (closed loop), ns since the run base.
    pub intended_ns: u64,
    /// When the request was handed to the socket, ns since the run base.
    pub sent_ns: u64,
    /// Whether the intended time lies in the measured window.
    pub measured: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// The id was already answered.
    Duplicate,
    /// The id was never sent on this connection.
    Unexpected,
}

#[derive(Debug, Default)]
pub struct PendingWindow {
    first_id: u32,
    slots: VecDeque<Option<Pending>>,
    outstanding: usize,
    /// Whether any id was pushed (the window starts at the first one).
    started: bool,
}

impl PendingWindow {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Records request `id`, which must be the id after the previous one.
    pub fn push(&mut self, id: u32, pending: Pending) {
        if !self.started {
            self.first_id = id;
            self.started = true;
        }
        debug_assert_eq!(u64::from(id), u64::from(self.first_id) + self.slots.len() as u64, "ids are consecutive");
        self.slots.push_back(Some(pending));
        self.outstanding += 1;
    }

    /// Takes the request answered by `id`.
    pub fn take(&mut self, id: u32) -> Result<Pending, Miss> {
        if !self.started || id < self.first_id && self.first_id - id > (1 << 31) {
            return Err(Miss::Unexpected);
        }
        if id < self.first_id {
            return Err(Miss::Duplicate);
        }
        let offset = (id - self.first_id) as usize;
        let Some(slot) = self.slots.get_mut(offset) else {
            return Err(Miss::Unexpected);
        };
        let Some(pending) = slot.take() else {
            return Err(Miss::Duplicate);
        };
        self.outstanding -= 1;
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.first_id = self.first_id.wrapping_add(1);
        }
        Ok(pending)
    }

    /// Removes and returns every outstanding request (the connection ended).
    pub fn drain_outstanding(&mut self) -> impl Iterator<Item = Pending> + '_ {
        self.outstanding = 0;
        self.slots.drain(..).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(sequence: u64) -> Pending {
        Pending { sequence, intended_ns: sequence * 10, sent_ns: sequence * 10 + 1, measured: true }
    }

    #[test]
    fn in_order_and_out_of_order_answers_match_their_requests() {
        let mut w = PendingWindow::new();
        for (i, id) in (3..8).enumerate() {
            w.push(id, p(i as u64));
        }
        assert_eq!(w.take(5).unwrap().sequence, 2);
        assert_eq!(w.take(3).unwrap().sequence, 0);
        assert_eq!(w.outstanding(), 3);
        assert_eq!(w.take(4).unwrap().sequence, 1);
        assert_eq!(w.take(7).unwrap().sequence, 4);
        assert_eq!(w.take(6).unwrap().sequence, 3);
        assert_eq!(w.outstanding(), 0);
    }

    #[test]
    fn duplicates_and_unsent_ids_are_classified_and_change_nothing() {
        let mut w = PendingWindow::new();
        assert_eq!(w.take(1), Err(Miss::Unexpected));
        w.push(3, p(0));
        w.push(4, p(1));
        w.push(5, p(2));
        w.take(4).unwrap();
        assert_eq!(w.take(4), Err(Miss::Duplicate), "answered, still inside the window");
        w.take(3).unwrap();
        assert_eq!(w.take(3), Err(Miss::Duplicate), "answered, below the window");
        assert_eq!(w.take(6), Err(Miss::Unexpected));
        assert_eq!(w.take(u32::MAX), Err(Miss::Unexpected));
        assert_eq!(w.take(0), Err(Miss::Duplicate));
        assert_eq!(w.outstanding(), 1);
        assert_eq!(w.drain_outstanding().map(|p| p.sequence).collect::<Vec<_>>(), vec![2]);
        assert_eq!(w.outstanding(), 0);
    }
}
