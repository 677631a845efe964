//! Replication of each local log stream to two peer parks.
//!
//! - [`wire`]: the frame protocol (sans-IO).
//! - [`commit`]: the 2-of-3 commit rule (sans-IO).
//! - [`origin`]: [`ReplicatedLog`], the origin side: local log + one shipper
//!   task per peer + commit waiters + recovery from peers on open.
//! - [`server`]: [`ReplicaServer`], the peer side: receives streams into
//!   replica logs (one per origin node and core) and serves fetches.
//! - [`fetch`]: pulling a stream from a peer (repair, takeover, CLI).
//! - [`io`]: framed, time-bounded I/O on glommio TCP streams.
//!
//! Peers never talk to each other; they only receive and store.

pub mod commit;
pub mod fetch;
pub mod io;
pub mod origin;
pub mod server;
pub mod wire;

use std::net::SocketAddr;
use std::time::Duration;

pub use commit::{CommitTracker, NoQuorumPolicy, PeerState, Verdict};
pub use origin::{RecoveryReport, ReplicatedLog};
pub use server::{ReplicaServer, ReplicaServerConfig};
pub use wire::{Message, StreamId};

/// Bytes a frame adds around the batches it carries (header and durable
/// LSN), rounded up: `frame_bytes_max` must exceed the batch and
/// ship/fetch bounds by this much.
pub const FRAME_SLACK_BYTES: usize = 64;

/// Configuration of the origin side of one stream.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// This stream (our node id and core).
    pub stream: StreamId,
    /// The two peers (one per other park).
    pub peers: [SocketAddr; 2],
    /// What appends do when both peers are down.
    pub no_quorum: NoQuorumPolicy,
    /// Longest an append waits for a peer before `CommitTimeout`.
    pub commit_timeout: Duration,
    /// Most bytes of batches per shipped frame. 1 MiB carries ~9,000
    /// 100-byte records: one peer round trip per frame keeps up with
    /// several hundred thousand records per second.
    pub ship_bytes_max: usize,
    /// Largest frame accepted from a peer. Must exceed the log's
    /// `batch_bytes_max` (a fetch reply carries at least one whole batch).
    pub frame_bytes_max: usize,
    /// Bound on connecting to, writing to and hearing back from a peer;
    /// a peer that stops reading is declared down after it.
    pub peer_io_timeout: Duration,
    /// An idle stream sends an empty append this often, so a dead peer is
    /// marked down before the next write needs it.
    pub peer_heartbeat_interval: Duration,
    /// First reconnect delay; doubles up to `reconnect_backoff_max`.
    pub reconnect_backoff_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_backoff_max: Duration,
    /// Cut the local log at damage found on open and refetch from peers
    /// (otherwise open refuses with `Corruption`).
    pub repair_damage_from_peers: bool,
    /// When the local log lost data (empty or cut at damage), refuse to open
    /// (with `NoQuorum`) unless both peers answered the catch-up: a committed
    /// record may be on only one of them. A brand-new node counts as having
    /// lost data, so the first start needs both peers up (or this off).
    pub require_peer_after_data_loss: bool,
}

impl ReplicationConfig {
    /// Defaults for `stream` with the given peers.
    pub fn new(stream: StreamId, peers: [SocketAddr; 2]) -> Self {
        Self {
            stream,
            peers,
            no_quorum: NoQuorumPolicy::FailFast,
            commit_timeout: Duration::from_secs(5),
            ship_bytes_max: 1 << 20,
            frame_bytes_max: 8 << 20,
            peer_io_timeout: Duration::from_secs(2),
            peer_heartbeat_interval: Duration::from_millis(500),
            reconnect_backoff_min: Duration::from_millis(20),
            reconnect_backoff_max: Duration::from_secs(1),
            repair_damage_from_peers: false,
            require_peer_after_data_loss: true,
        }
    }
}
