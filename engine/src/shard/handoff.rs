//! Cross-core hand-off of logged-in sessions to their home core.
//!
//! One bounded lock-free queue (crossbeam `ArrayQueue`) per (source core,
//! destination core) pair carries the hand-offs; a glommio shared channel of
//! capacity 1 per pair is only the doorbell that wakes the sleeping destination.
//! Pushing never blocks: a full queue makes the login answer `Busy` with a
//! retry-after instead. The destination drains each queue in batches of at most
//! `handoff_batch_max` before yielding, so a burst of logins cannot starve its
//! own sessions.
//!
//! Ordering rule (no lost wake-ups): the sender pushes the item, then rings; the
//! receiver takes the doorbell token, then drains. An item pushed after the
//! drain started finds the doorbell empty and rings again.

use crate::auth::TokenClaims;
use crossbeam_queue::ArrayQueue;
use std::os::fd::OwnedFd;

/// Everything a session needs to continue on another core.
pub struct Handoff {
    /// The client socket (a duplicate; the source core closed its own fd).
    pub fd: OwnedFd,
    /// TLS state, when the session arrived on the TLS port.
    pub tls: Option<Box<rustls::ServerConnection>>,
    /// The verified login that the home core must register and answer.
    pub claims: TokenClaims,
    pub login_request_id: u32,
    /// Plaintext received after the Login frame (pipelined requests).
    pub inbound: Vec<u8>,
    /// When the Login frame's bytes arrived (for its latency).
    pub received_at: std::time::Instant,
}

/// The n x n queue matrix shared by all cores.
pub struct HandoffQueues {
    cores: usize,
    queues: Vec<ArrayQueue<Handoff>>,
}

impl HandoffQueues {
    pub fn new(cores: usize, capacity: usize) -> Self {
        assert!(cores > 0 && capacity > 0);
        Self { cores, queues: (0..cores * cores).map(|_| ArrayQueue::new(capacity)).collect() }
    }

    pub fn queue(&self, from: usize, to: usize) -> &ArrayQueue<Handoff> {
        assert!(from < self.cores && to < self.cores);
        &self.queues[from * self.cores + to]
    }
}

/// Maps a user to its home core. The user id is mixed first (splitmix64
/// finaliser) so that sequential or patterned ids spread evenly.
pub fn home_core(user_id: u64, cores: usize) -> usize {
    let mut z = user_id.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % cores.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_core_is_stable_and_spreads_sequential_ids() {
        let mut counts = [0usize; 4];
        for u in 0..40_000u64 {
            let c = home_core(u, 4);
            assert_eq!(c, home_core(u, 4));
            counts[c] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
        assert_eq!(home_core(123, 1), 0);
    }
}
