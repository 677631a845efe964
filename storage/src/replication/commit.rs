//! The 2-of-3 commit rule (sans-IO).
//!
//! A record is committed when two of its three copies (the origin's local
//! log and the two peers' replicas) are durable. The origin ships only what
//! is durable locally, so in practice "committed" means "durable locally and
//! acknowledged by at least one peer". The tracker takes facts in (local
//! durability, peer acknowledgements, peer up/down) and answers what is
//! committed and what a waiting append should be told. It has no I/O and no
//! clock, so the randomized simulation drives it directly.

use crate::Lsn;

/// Connection state of one peer as seen by the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// A connection attempt is under way (counts as possibly up).
    Connecting,
    /// Connected and shipping.
    Up,
    /// The last attempt failed or the connection broke.
    Down,
}

impl PeerState {
    /// Gauge value used in metrics: 0 down, 1 connecting, 2 up.
    pub fn gauge(self) -> u8 {
        match self {
            PeerState::Down => 0,
            PeerState::Connecting => 1,
            PeerState::Up => 2,
        }
    }
}

/// What to do when both peers are down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoQuorumPolicy {
    /// Fail the append with `StorageError::NoQuorum` (default).
    #[default]
    FailFast,
    /// Resolve the append on local durability alone and count it in
    /// `local_only_commits_total` (a loud metric operators alert on).
    LocalOnly,
}

/// What a waiting append should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Two copies are durable.
    Committed,
    /// Both peers are down and the policy allows local-only.
    CommittedLocalOnly,
    /// Keep waiting.
    Wait,
    /// Both peers are down and the policy is fail-fast.
    NoQuorum,
}

/// Tracks durability of the three copies of one stream.
#[derive(Debug, Clone)]
pub struct CommitTracker {
    local_durable_lsn: Lsn,
    peer_acked_lsn: [Lsn; 2],
    peer_state: [PeerState; 2],
    policy: NoQuorumPolicy,
}

impl CommitTracker {
    /// A tracker for a stream whose local log is durable up to
    /// `local_durable_lsn`; peers start as `Connecting`.
    pub fn new(policy: NoQuorumPolicy, local_durable_lsn: Lsn) -> Self {
        Self { local_durable_lsn, peer_acked_lsn: [0; 2], peer_state: [PeerState::Connecting; 2], policy }
    }

    /// The local log is durable up to `lsn`.
    pub fn local_durable(&mut self, lsn: Lsn) {
        self.local_durable_lsn = self.local_durable_lsn.max(lsn);
    }

    /// Peer `peer` (0 or 1) holds everything up to `lsn` durably.
    pub fn peer_acked(&mut self, peer: usize, lsn: Lsn) {
        assert!(peer < 2, "two peers per node");
        self.peer_acked_lsn[peer] = self.peer_acked_lsn[peer].max(lsn);
    }

    /// Peer `peer` changed state.
    pub fn set_peer_state(&mut self, peer: usize, state: PeerState) {
        assert!(peer < 2, "two peers per node");
        self.peer_state[peer] = state;
    }

    /// Highest LSN durable on at least two of the three copies.
    pub fn commit_lsn(&self) -> Lsn {
        let best_peer = self.peer_acked_lsn[0].max(self.peer_acked_lsn[1]);
        // The origin ships only what is durable locally, so the local copy is
        // normally the furthest and the second-highest of the three copies is
        // the better peer. The min guards against a peer reporting more than
        // we hold (our data was lost): that never commits new records.
        best_peer.min(self.local_durable_lsn)
    }

    /// Highest LSN acknowledged by peer `peer`.
    pub fn peer_acked_lsn(&self, peer: usize) -> Lsn {
        self.peer_acked_lsn[peer]
    }

    /// State of peer `peer`.
    pub fn peer_state(&self, peer: usize) -> PeerState {
        self.peer_state[peer]
    }

    /// Local durable LSN.
    pub fn local_durable_lsn(&self) -> Lsn {
        self.local_durable_lsn
    }

    /// What an append of `lsn` (already durable locally) should do now.
    pub fn verdict(&self, lsn: Lsn) -> Verdict {
        if lsn <= self.commit_lsn() {
            return Verdict::Committed;
        }
        let both_down = self.peer_state.iter().all(|s| *s == PeerState::Down);
        match (both_down, self.policy) {
            (false, _) => Verdict::Wait,
            (true, NoQuorumPolicy::FailFast) => Verdict::NoQuorum,
            (true, NoQuorumPolicy::LocalOnly) if lsn <= self.local_durable_lsn => Verdict::CommittedLocalOnly,
            (true, NoQuorumPolicy::LocalOnly) => Verdict::Wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_peer_ack_plus_local_commits() {
        let mut t = CommitTracker::new(NoQuorumPolicy::FailFast, 0);
        t.local_durable(10);
        assert_eq!(t.verdict(5), Verdict::Wait);
        t.peer_acked(1, 7);
        assert_eq!(t.commit_lsn(), 7);
        assert_eq!(t.verdict(7), Verdict::Committed);
        assert_eq!(t.verdict(8), Verdict::Wait);
    }

    #[test]
    fn peer_acks_beyond_local_durability_do_not_commit() {
        let mut t = CommitTracker::new(NoQuorumPolicy::FailFast, 3);
        t.peer_acked(0, 50);
        t.peer_acked(1, 50);
        assert_eq!(t.commit_lsn(), 3);
    }

    #[test]
    fn both_peers_down_fails_fast_or_goes_local_only_by_policy() {
        let mut t = CommitTracker::new(NoQuorumPolicy::FailFast, 5);
        t.set_peer_state(0, PeerState::Down);
        assert_eq!(t.verdict(5), Verdict::Wait, "one peer down still waits");
        t.set_peer_state(1, PeerState::Down);
        assert_eq!(t.verdict(5), Verdict::NoQuorum);

        let mut t = CommitTracker::new(NoQuorumPolicy::LocalOnly, 5);
        t.set_peer_state(0, PeerState::Down);
        t.set_peer_state(1, PeerState::Down);
        assert_eq!(t.verdict(5), Verdict::CommittedLocalOnly);
        t.set_peer_state(1, PeerState::Up);
        assert_eq!(t.verdict(5), Verdict::Wait);
    }
}
