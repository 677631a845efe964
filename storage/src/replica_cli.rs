//! `redrain replica serve|export|fetch|check`: operator tools for the
//! replicas a node holds for its peers, so another node can take over a
//! dead node's users. The engine binary wires `redrain replica` to [`run`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context;
use glommio::{LocalExecutorBuilder, Placement};

use crate::replication::fetch::{fetch_from_peer, FetchLimits};
use crate::replication::server::replica_dir;
use crate::{check_log_dir, GlommioFileSystem, Log, LogConfig, ReplicaServer, ReplicaServerConfig, StreamId, Table};

/// io_memory of the CLI's executor: small, it registers nothing large.
const CLI_IO_MEMORY_BYTES: usize = 512 << 10;

/// Arguments of `redrain replica`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReplicaArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ReplicaCommand,
}

/// Sub-commands of `redrain replica`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum ReplicaCommand {
    /// Serve the replicas under DATA_DIR: receive streams from origins and
    /// answer fetches (for repair and takeover) until killed.
    Serve {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Data directory (replicas live in `DATA_DIR/replicas/<node>-<core>`).
        #[arg(long)]
        data_dir: PathBuf,
        /// Stop after this many seconds (default: run until killed).
        #[arg(long)]
        exit_after_secs: Option<u64>,
        /// Bytes of each replica beyond which segments its origin released are deleted
        /// (what the origin has not released is always kept).
        #[arg(long, default_value_t = 1 << 30, value_parser = clap::value_parser!(u64).range(1..))]
        retention_bytes_max: u64,
        /// Size at which a replica's segment is sealed (retention deletes whole segments).
        #[arg(long, default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(4096..))]
        segment_bytes: u64,
        /// Age beyond which segments the origin released are deleted.
        #[arg(long, default_value_t = 24 * 3600, value_parser = clap::value_parser!(u64).range(1..))]
        retention_age_s: u64,
    },
    /// Export the replica of one origin stream held in DATA_DIR, as a log
    /// directory another node can open (`--out-dir`) and/or NDJSON lines
    /// `{"lsn":..,"kind":..,"payload_hex":".."}` (`--ndjson`).
    Export {
        /// Data directory holding the replica.
        #[arg(long)]
        data_dir: PathBuf,
        /// Origin node id.
        #[arg(long)]
        origin: u32,
        /// Origin core.
        #[arg(long)]
        core: u16,
        /// Write a log directory here.
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Write NDJSON records to this file.
        #[arg(long)]
        ndjson: Option<PathBuf>,
    },
    /// Fetch one origin stream's replica from a serving peer into a local
    /// log directory (a takeover node's starting point).
    Fetch {
        /// The serving peer.
        #[arg(long)]
        peer: SocketAddr,
        /// Origin node id.
        #[arg(long)]
        origin: u32,
        /// Origin core.
        #[arg(long)]
        core: u16,
        /// Log directory to fill (created if missing; resumes if present).
        #[arg(long)]
        into: PathBuf,
    },
    /// Full-scan check of a log directory (or a table directory with
    /// `--table`); exit code 0 if clean, 1 if damage was found.
    Check {
        /// Directory to check.
        #[arg(long)]
        dir: PathBuf,
        /// The directory is a keyed table (snapshots + log/).
        #[arg(long)]
        table: bool,
    },
}

/// Runs `redrain replica ...`; returns the process exit code.
pub fn run(args: ReplicaArgs) -> anyhow::Result<i32> {
    if let ReplicaCommand::Check { dir, table } = &args.command {
        let report = if *table { Table::check_dir(dir) } else { check_log_dir(dir) }
            .with_context(|| format!("checking {}", dir.display()))?;
        print!("{report}");
        return Ok(if report.is_clean() { 0 } else { 1 });
    }
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(CLI_IO_MEMORY_BYTES)
        .name("redrain-replica")
        .spawn(move || async move { run_on_executor(args.command).await })
        .map_err(|e| anyhow::anyhow!("starting the executor: {e}"))?;
    handle.join().map_err(|e| anyhow::anyhow!("executor failed: {e}"))?
}

async fn run_on_executor(command: ReplicaCommand) -> anyhow::Result<i32> {
    let fs = Rc::new(GlommioFileSystem);
    match command {
        ReplicaCommand::Serve {
            listen,
            data_dir,
            exit_after_secs,
            retention_bytes_max,
            segment_bytes,
            retention_age_s,
        } => {
            let mut config = ReplicaServerConfig::new(listen, data_dir);
            config.log.segment_bytes_target = segment_bytes;
            config.log.retention_bytes_max = retention_bytes_max;
            config.log.retention_age_max = Duration::from_secs(retention_age_s);
            let server = ReplicaServer::start(config, fs).context("starting the replica server")?;
            println!("serving replicas on {}", server.local_addr());
            match exit_after_secs {
                Some(secs) => glommio::timer::sleep(Duration::from_secs(secs)).await,
                None => futures_lite::future::pending::<()>().await,
            }
            Ok(0)
        }
        ReplicaCommand::Export { data_dir, origin, core, out_dir, ndjson } => {
            let stream = StreamId { origin_node: origin, core };
            let dir = replica_dir(&data_dir, stream);
            anyhow::ensure!(dir.exists(), "no replica of {stream} in {}", data_dir.display());
            let replica = Log::open(&dir, LogConfig::default(), fs.clone())
                .await
                .with_context(|| format!("opening replica {}", dir.display()))?;
            if let Some(out_dir) = out_dir {
                let out = Log::open(&out_dir, LogConfig::default(), fs.clone()).await?;
                let mut next = replica.first_lsn().max(out.durable_lsn() + 1);
                while next <= replica.durable_lsn() {
                    let batches = replica.read_batches(next, 4 << 20).await?;
                    if batches.is_empty() {
                        break;
                    }
                    next = out.import(batches).await? + 1;
                }
                println!("exported {stream} LSN {}..={} to {}", out.first_lsn(), out.durable_lsn(), out_dir.display());
            }
            if let Some(path) = ndjson {
                use std::io::Write;
                let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
                let mut writer = std::io::BufWriter::new(file);
                let mut io_error = None;
                let mut count = 0u64;
                replica
                    .for_each_record(1, |r| {
                        let mut hex = String::with_capacity(r.payload.len() * 2);
                        for b in r.payload {
                            hex.push_str(&format!("{b:02x}"));
                        }
                        if let Err(e) =
                            writeln!(writer, "{{\"lsn\":{},\"kind\":{},\"payload_hex\":\"{}\"}}", r.lsn, r.kind, hex)
                        {
                            io_error.get_or_insert(e);
                        }
                        count += 1;
                    })
                    .await?;
                if let Some(e) = io_error {
                    return Err(e).context("writing NDJSON");
                }
                writer.flush()?;
                println!("exported {count} records of {stream} to {}", path.display());
            }
            Ok(0)
        }
        ReplicaCommand::Fetch { peer, origin, core, into } => {
            let stream = StreamId { origin_node: origin, core };
            let log = Log::open(&into, LogConfig::default(), fs).await?;
            let peer_durable = fetch_from_peer(peer, stream, &log, FetchLimits::default())
                .await
                .with_context(|| format!("fetching {stream} from {peer}"))?;
            println!(
                "fetched {stream} from {peer}: local LSN {}..={}, peer holds up to {peer_durable}",
                log.first_lsn(),
                log.durable_lsn()
            );
            Ok(if log.durable_lsn() == peer_durable { 0 } else { 1 })
        }
        ReplicaCommand::Check { .. } => unreachable!("handled before the executor starts"),
    }
}
