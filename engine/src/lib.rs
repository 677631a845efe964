//! redrain-engine: the per-core shard of the redrain access node.
//!
//! - [`auth`]: login tokens (mint and local verification).
//! - [`config`]: node configuration (defaults, file, env, flags).
//! - [`handoff`]: the payment hand-off: the open queue drained to NDJSON files or JetStream.
//! - [`metrics`]: per-core counters and the Prometheus rendering.
//! - [`node`]: start-up, executors, signals, admin, profiling.
//! - [`rain`]: the red-packet rain on the node: event, dispenser, seal, open, streams.
//! - [`shard`]: one pinned core: connections, hand-off, accept loops.
//! - [`session`]: the per-connection protocol state machine (sans-IO).
//! - [`timeline`]: inboxes with per-user seqs, groups, notify and sync, lucky packets.
//! - [`tickets`]: the red-packet ticket toolchain (budget, generation, verification,
//!   reconciliation) and the ticket shard reader the node uses.

pub mod auth;
pub mod config;
pub mod handoff;
pub mod metrics;
pub mod node;
pub mod overload;
pub mod rain;
pub mod session;
pub mod shard;
pub mod tickets;
pub mod timeline;
