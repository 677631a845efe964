//! Cross-core mailboxes: one bounded lock-free queue per (source core, destination core)
//! pair carries every kind of cross-core message ([`Mail`]); the login hand-off is one
//! kind, the rain's ticket moves another.
//!
//! A glommio shared channel of capacity 1 per pair is only the doorbell that wakes the
//! sleeping destination. Pushing never blocks: a full queue hands the message back to the
//! sender, which answers `Busy` (a login) or drops and counts it (a rain message; the
//! dispenser asks again). The destination drains each queue in batches of at most
//! `handoff_batch_max` before yielding, so a burst cannot starve its own sessions.
//!
//! Ordering rule (no lost wake-ups): the sender pushes the item, then rings; the receiver
//! takes the doorbell token, then drains. An item pushed after the drain started finds the
//! doorbell empty and rings again.

use super::handoff::Handoff;
use super::state::RainMail;
use crossbeam_queue::ArrayQueue;

/// Every message one core can send another.
pub enum Mail {
    /// A logged-in session moving to its home core.
    Handoff(Box<Handoff>),
    /// The rain's cross-core traffic (tickets for a core that ran dry).
    Rain(RainMail),
    /// Timelines: deliveries, group requests and their answers.
    Timeline(crate::timeline::TimelineMail),
}

/// The n x n queue matrix shared by all cores.
pub struct Mailboxes {
    cores: usize,
    queues: Vec<ArrayQueue<Mail>>,
}

impl Mailboxes {
    pub fn new(cores: usize, capacity: usize) -> Self {
        assert!(cores > 0 && capacity > 0);
        Self { cores, queues: (0..cores * cores).map(|_| ArrayQueue::new(capacity)).collect() }
    }

    pub fn queue(&self, from: usize, to: usize) -> &ArrayQueue<Mail> {
        assert!(from < self.cores && to < self.cores);
        &self.queues[from * self.cores + to]
    }
}
