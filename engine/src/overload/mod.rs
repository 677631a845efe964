//! Overload protection and operator steering, as plain state machines the driver calls.
//!
//! - [`admission`]: per request, admit or reject at once (fast reject on queueing delay,
//!   priorities, operator pause and drain). Pure: the driver passes the times in.
//! - [`backoff`]: the core's degrade level from its load and the operator's floor, and
//!   the advice clients get from it (shake interval, retry-after).
//! - [`switches`]: the operator's switches, shared by every core through a versioned
//!   board, and their persisted form.
//! - [`rates`]: per-user token buckets for message and sync rates.
//!
//! Nothing here touches a socket, a file or the clock.

pub mod admin;
pub mod admission;
pub mod backoff;
pub mod core;
pub mod metrics;
pub mod persist;
pub mod rates;
pub mod reload;
pub mod switches;
