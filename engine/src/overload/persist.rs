//! The switches' keyed table (`data_dir/switches`), kept by core 0.
//!
//! At start core 0 opens the table and restores the switches into the board before any
//! core accepts a connection; afterwards, on each tick, it writes the entries of a newer
//! version (one put per switch, plus an audit entry per change: who, what, when) and
//! publishes the version it made durable.

use super::switches::{from_entries, to_entries, AuditEntry};
use crate::shard::Core;
use redrain_storage::file_io::GlommioFileSystem;
use redrain_storage::{Table, TableConfig};
use std::cell::{Cell, OnceCell};
use std::path::Path;
use std::rc::Rc;

/// Directory of the switches table inside the data dir.
pub const SWITCHES_DIR: &str = "switches";
/// Audit entries kept in the table (keys `audit/<version % this>`).
pub const AUDIT_KEYS_MAX: u64 = 1_024;

thread_local! {
    static TABLE: OnceCell<Rc<Table>> = const { OnceCell::new() };
    static WRITING: Cell<bool> = const { Cell::new(false) };
}

fn table_config() -> TableConfig {
    TableConfig {
        entries_max: 16 + AUDIT_KEYS_MAX as usize,
        key_bytes_max: 64,
        value_bytes_max: 64 << 10,
        ..TableConfig::default()
    }
}

/// Opens the table on this (core 0's) executor and restores the switches into the board.
pub async fn restore(core: &Rc<Core>, data_dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let dir = data_dir.join(SWITCHES_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let table = Table::open(&dir, table_config(), Rc::new(GlommioFileSystem))
        .await
        .with_context(|| format!("opening the switches table {}", dir.display()))?;
    let get = |k: &str| table.get(k.as_bytes()).and_then(|v| String::from_utf8(v).ok());
    let (switches, bad) = from_entries(get);
    for entry in bad {
        log::warn!("switches table: ignoring unreadable entry {entry}");
    }
    if switches != Default::default() {
        log::info!("switches restored from {}: {switches:?}", dir.display());
    }
    core.node.switches.restore(switches);
    TABLE.with(|t| t.set(Rc::new(table)).ok());
    Ok(())
}

/// Writes the switches when the board is newer than what the table holds.
pub fn persist_if_changed(core: &Rc<Core>) {
    let board = core.node.switches.clone();
    if board.version() <= board.persisted() || WRITING.with(Cell::get) {
        return;
    }
    let Some(table) = TABLE.with(|t| t.get().cloned()) else { return };
    WRITING.with(|w| w.set(true));
    glommio::spawn_local(async move {
        let persisted = board.persisted();
        let (version, switches) = board.snapshot();
        let mut ok = true;
        for (key, value) in to_entries(&switches) {
            if let Err(e) = table.put(key.as_bytes(), value.as_bytes()).await {
                log::error!("switches table: writing {key}: {e}");
                ok = false;
            }
        }
        for AuditEntry { version: v, unix_ms, who, what } in board.audit_after(persisted) {
            let key = format!("audit/{}", v % AUDIT_KEYS_MAX);
            let value = format!("version={v} when_unix_ms={unix_ms} who={who} what={what}");
            if let Err(e) = table.put(key.as_bytes(), value.as_bytes()).await {
                log::error!("switches table: writing {key}: {e}");
                ok = false;
            }
        }
        if ok {
            board.mark_persisted(version);
        }
        WRITING.with(|w| w.set(false));
    })
    .detach();
}
