//! The red-packet rain on the node: event tickets issued by shake, redeemed by open.
//!
//! - [`event`]: the loaded event (manifest, keyring, slot schedule, files per core) and the
//!   demo event a node generates on first start.
//! - [`dispenser`]: one core's ticket issuance: cursors, prefetch, pacing, imbalance moves.
//! - [`seal`]: sealed, user-bound tickets (AES-256-GCM under the node's seal key).
//! - [`open`]: verification of a sealed ticket and the exactly-once open set.
//! - [`records`]: the byte layouts of the cursor and open-queue streams.
//! - [`export`]: reading the open queue back (NDJSON for reconciliation).
//!
//! The per-core decisions live in `shard::state`, which drives these pieces as a state
//! machine; nothing here touches a socket, a file or the clock.

pub mod dispenser;
pub mod event;
pub mod export;
pub mod metrics;
pub mod open;
pub mod records;
pub mod seal;

use event::Event;
use seal::SealKey;

/// Rain settings every core reads.
#[derive(Debug, Clone, Copy)]
pub struct RainConfig {
    /// Node id (in sealed tickets and open records).
    pub node_id: u16,
    /// Minimum interval between two shakes of one user.
    pub shake_interval_ms: u32,
    /// A sealed ticket can be opened for this long after it was issued.
    pub sealed_ticket_ttl_s: u64,
    /// Opens waiting for durability per core; more are answered Busy.
    pub opens_pending_max: usize,
    /// Users whose last shake time a core remembers; the oldest are forgotten first.
    pub shake_users_max: usize,
    pub dispenser: dispenser::DispenserConfig,
}

/// The node-wide, read-only part of the rain.
pub struct RainShared {
    pub event: Event,
    pub seal: SealKey,
    pub config: RainConfig,
}

/// What a core recovers from the streams at start.
#[derive(Debug, Default)]
pub struct CoreRecovery {
    /// Packets opened by users homed on this core.
    pub opened: Vec<u64>,
}

/// The rain as the node starts it: the shared part, each core's recovery, and each
/// core's dispenser.
pub struct RainStart {
    pub shared: std::sync::Arc<RainShared>,
    pub cores: Vec<(CoreRecovery, dispenser::Dispenser)>,
}

/// Loads the event (or generates the demo event), the seal key, and what the streams in
/// the data directory say: opened packets (to their users' home cores) and cursors.
/// Runs before the executors start, so its blocking reads stall no core.
pub fn start(config: &crate::config::Config, cores: usize) -> anyhow::Result<Option<RainStart>> {
    use anyhow::Context;
    let (tickets, keyring) = match (&config.tickets, &config.keyring) {
        (Some(t), Some(k)) => (t.clone(), k.clone()),
        _ if config.demo_event => event::ensure_demo_event(&config.data_dir, cores)?,
        _ => return Ok(None),
    };
    let node_start_ms = redrain_net::time::now_unix_ms();
    let start_unix_ms = match config.event_start_unix_s {
        Some(s) => s.saturating_mul(1000),
        None => node_start_ms,
    };
    let now = (node_start_ms as i64 + config.clock_offset_ms).max(0) as u64;
    let source = event::EventSource {
        tickets_dir: tickets.clone(),
        keyring,
        node_id: config.node_id,
        cores,
        start_unix_ms,
        adopt_node: config.adopt_node,
        now_unix_ms: now,
    };
    let event = event::Event::load(&source).with_context(|| format!("loading the event in {}", tickets.display()))?;
    let seal = SealKey::new(&load_seal_key(config)?, config.node_id);
    let per_core = config.issuance_quota_per_s as f64 / cores as f64;
    let rain_config = RainConfig {
        node_id: config.node_id,
        shake_interval_ms: config.shake_interval_ms,
        sealed_ticket_ttl_s: config.sealed_ticket_ttl_s,
        opens_pending_max: config.opens_pending_max,
        shake_users_max: config.shake_users_max,
        dispenser: dispenser::DispenserConfig {
            cursor_step: config.cursor_step,
            prefetch_records: config.ticket_prefetch_records,
            quota_per_sec: per_core,
            ..dispenser::DispenserConfig::default()
        },
    };
    let cursors = export::read_cursors(&config.data_dir).context("reading the issuance cursors")?;
    let mut recoveries: Vec<CoreRecovery> = (0..cores).map(|_| CoreRecovery::default()).collect();
    let opened = export::read_opens(&config.data_dir, |r| {
        recoveries[crate::shard::handoff::home_core(r.user_id, cores)].opened.push(r.packet_id);
    })
    .context("reading the open queue")?;
    let files: usize = event.files_by_core.iter().map(Vec::len).sum();
    log::info!(
        "rain: event {:?}, {} slots, {files} ticket files on {cores} cores, node {}, first slot at unix {} s \
         (clock offset {} ms); recovered {opened} opened packets and {} file cursors",
        event.manifest.event_name,
        event.slots.len(),
        config.node_id,
        start_unix_ms / 1000,
        config.clock_offset_ms,
        cursors.len()
    );
    let dispensers: Vec<_> = event
        .files_by_core
        .iter()
        .map(|files| {
            dispenser::Dispenser::new(rain_config.dispenser, files, |tag| {
                cursors.get(&tag).map(|c| (c.reserved, c.exact)).unwrap_or((0, 0))
            })
        })
        .collect();
    let shared = std::sync::Arc::new(RainShared { event, seal, config: rain_config });
    Ok(Some(RainStart { shared, cores: recoveries.into_iter().zip(dispensers).collect() }))
}

/// The seal key: from the config, or created in the data directory on first start.
fn load_seal_key(config: &crate::config::Config) -> anyhow::Result<[u8; seal::SEAL_KEY_BYTES]> {
    use anyhow::Context;
    let parse = |text: &str, what: &str| -> anyhow::Result<[u8; seal::SEAL_KEY_BYTES]> {
        let mut key = [0u8; seal::SEAL_KEY_BYTES];
        hex::decode_to_slice(text.trim(), &mut key).with_context(|| format!("{what}: expected 64 hex characters"))?;
        Ok(key)
    };
    if let Some(hex_key) = &config.seal_key_hex {
        return parse(hex_key, "seal_key_hex");
    }
    let path = config.data_dir.join("seal.key");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return parse(&text, &path.display().to_string());
    }
    let bytes = crate::node::create_secret_file(&path, seal::SEAL_KEY_BYTES)?;
    log::warn!("created a seal key in {} (set seal_key_hex to share one)", path.display());
    let mut key = [0u8; seal::SEAL_KEY_BYTES];
    key.copy_from_slice(&bytes);
    Ok(key)
}
