//! Red-packet tickets: the back office's preparation toolchain and the node's ticket file reader.
//!
//! The payment back office prepares every packet of an event in advance; nodes only hand them
//! out. This module owns that preparation, independent of networking:
//!
//! - [`budget`]: the TOML budget model and its validation;
//! - [`plan`]: the exact cut of a budget into batches, files and key ids for `nodes x cores`;
//! - [`split`]: O(n) streaming random amounts that sum exactly to a budget;
//! - [`format`](mod@format): the 16-byte encrypted ticket and the 26-byte record;
//! - [`keyring`]: ticket keys, whitelist/blacklist, and the [`keyring::TicketDecryptor`];
//! - [`generate`]: multi-threaded generation of ticket files, manifest and keyring;
//! - [`manifest`]: the JSON description of a generated directory;
//! - [`placement`]: parks and backup peers of each node's files;
//! - [`file_reader`]: the reader a node uses to hand out the tickets of one (node, core, slot) file;
//! - [`verify`]: full check of a generated directory;
//! - [`reconcile`]: opened-packet records against the pre-generated data;
//! - [`cli`]: the `redrain tickets ...` subcommands (plan, gen, verify, reconcile, keyring, dump).
//!
//! The formats and the reasoning behind them are documented in `docs/tickets.md`.

pub mod budget;
pub mod cli;
pub mod file_reader;
pub mod format;
pub mod generate;
pub mod keyring;
pub mod manifest;
pub mod placement;
pub mod plan;
pub mod reconcile;
pub mod split;
pub mod verify;
