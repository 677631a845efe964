//! redrain-loadgen: the load generator performance engineers judge a node with.
//!
//! Layout, from the command line inwards:
//!
//! - [`cli`]: flags and subcommands; turns them into a validated [`config::RunConfig`].
//! - [`config`]: every bound of a run, with units in the names.
//! - [`scenario`]: the [`scenario::Scenario`] trait (request generator, response
//!   checker, scenario counters) and the scenarios: `connect` and `ping`.
//! - [`schedule`]: open-loop send times (intended times, the base of
//!   coordinated-omission-corrected latency).
//! - [`driver`]: threads pinned to cores, one tokio-uring runtime each, the
//!   per-connection reader and writer, source-address spreading and fd limits.
//! - [`stats`]: histograms and counters each thread keeps, merged at the end.
//! - [`node_metrics`]: reads the node's `/metrics` (resident memory, sessions).
//! - [`report`]: the summary (table, JSON), `.hgrm` percentile file, SVG plot,
//!   `compare` of two JSON summaries and `merge` of several processes' ones.
//! - [`floor`]: the generator's own floor against [`reference_server`], a
//!   trivial echo server in the same process on another core.
//! - [`processes`]: `--processes N`, one run from several generator processes.
//!
//! The wire codec is `redrain-net`'s client side; this crate never frames bytes itself.

pub mod cli;
pub mod config;
pub mod driver;
pub mod duration;
pub mod floor;
pub mod node_metrics;
pub mod node_process;
pub mod processes;
pub mod reference_server;
pub mod report;
pub mod scenario;
pub mod schedule;
pub mod stats;
pub mod system;
pub mod tls;

pub use config::{LoadMode, RunConfig};
pub use driver::{run, RunError};
pub use report::summary::RunSummary;
