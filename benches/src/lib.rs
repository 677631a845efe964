//! redrain-benches: criterion benches of hot paths (`benches/`) and the
//! end-to-end histogram benchmark (`src/bin/e2e.rs`).
//!
//! - [`reference_server`]: a trivial in-process server speaking just enough of
//!   the protocol (Hello, Login, Ping) on one pinned core; the yardstick the
//!   node's per-core throughput is divided by, measured in the same run.
//! - [`baseline`]: the ratios a run produces and the regression check against
//!   the committed baseline (ratios only, never absolute numbers).

pub mod baseline;
pub mod reference_server;
