//! redrain-storage: everything redrain must not lose.
//!
//! - [`log`]: segmented append-only logs per core with group commit,
//!   recovery and retention; [`record`] is their byte format and
//!   [`recovery`] the start-up scan.
//! - [`file_io`]: the file layer (real glommio backend, fault injection).
//! - [`table`]: bitcask-style keyed tables over a log.
//! - [`replication`]: shipping each log to two peers, 2-of-3 commit,
//!   catch-up, repair and takeover.
//! - [`metrics`]: counters and histograms, rendered for Prometheus.
//!
//! All I/O futures run on a glommio `LocalExecutor` (one per core); the
//! state machines ([`record`], [`recovery`], [`replication::commit`],
//! [`replication::wire`]) are plain code with no I/O.

pub mod check;
pub mod config;
pub mod crc;
pub mod error;
pub mod file_io;
pub mod log;
pub mod metrics;
pub mod record;
pub mod recovery;
pub mod replica_cli;
pub mod replication;
pub mod table;

/// Log sequence number: 1 for the first record of a log, +1 per record.
pub type Lsn = u64;

pub use check::{check_log_dir, CheckReport};
pub use config::{DamagePolicy, LogConfig};
pub use error::{DamageKind, IoFailure, Result, StorageError};
pub use file_io::{
    direct_io_supported, throughput_file_system, FaultSwitches, FaultyFileSystem, FileSystem, GlommioDirectFileSystem,
    GlommioFileSystem,
};
pub use log::{AppendFuture, Log, LogStats};
pub use metrics::StorageMetrics;
pub use replication::{NoQuorumPolicy, ReplicaServer, ReplicaServerConfig, ReplicatedLog, ReplicationConfig, StreamId};
pub use table::{Table, TableConfig};
