//! redrain-engine: the per-core shard of the redrain access node.
//!
//! - [`auth`]: login tokens (mint and local verification).
pub mod auth;
