//! The event a node serves: its manifest, keyring, slot schedule and which ticket files
//! each core issues from. Loaded once at start-up and shared read-only by every core.
//!
//! Slots follow the manifest's wall-clock times ("HH:MM") relative to the first slot's
//! start, anchored at `event_start_unix_s` (or, when unset, at the node's start so that a
//! demo or test event begins at once); `clock_offset_ms` shifts the rain's clock so tests
//! need not wait for a slot.
//!
//! Files: every (this node, core c, slot s) file goes to core `c % cores`, so an event
//! generated for another core count still issues every ticket. `--adopt-node M` adds node
//! M's files of every slot after the one current at start (file-level resume of a failed
//! peer: the tickets of its current slot are given up).

use crate::tickets::format::FileTag;
use crate::tickets::keyring::{Keyring, KeyringError, TicketDecryptor};
use crate::tickets::manifest::{Manifest, ManifestError};
use std::path::{Path, PathBuf};

/// Failure to load an event.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error("event: {0}")]
    Invalid(String),
}

/// One slot's window, in milliseconds after the event start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotWindow {
    pub index: u16,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// One ticket file a core issues from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFile {
    pub tag: FileTag,
    pub path: PathBuf,
    pub records: u64,
}

/// Everything about the event that every core reads.
pub struct Event {
    pub manifest: Manifest,
    pub decryptor: TicketDecryptor,
    pub slots: Vec<SlotWindow>,
    /// Files per core of this node, each list ordered by slot.
    pub files_by_core: Vec<Vec<EventFile>>,
    /// Unix ms at which the first slot starts (before the clock offset is applied).
    pub start_unix_ms: u64,
    /// Batch ids of the event (a ticket naming another batch is refused).
    batch_known: Vec<bool>,
    /// The merchant of each batch (page id shown on a loss is merchant + 1).
    batch_merchant: Vec<u32>,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("name", &self.manifest.event_name)
            .field("slots", &self.slots)
            .field("start_unix_ms", &self.start_unix_ms)
            .finish_non_exhaustive()
    }
}

/// Parses "HH:MM" (00:00 ..= 24:00) into minutes.
pub fn parse_hhmm(text: &str) -> Option<u64> {
    let (h, m) = text.split_once(':')?;
    let (h, m): (u64, u64) = (h.parse().ok()?, m.parse().ok()?);
    (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
}

/// How the node loads its event.
#[derive(Debug, Clone)]
pub struct EventSource {
    pub tickets_dir: PathBuf,
    pub keyring: PathBuf,
    pub node_id: u16,
    pub cores: usize,
    /// Unix ms of the first slot's start.
    pub start_unix_ms: u64,
    /// A failed peer whose files of later slots this node issues.
    pub adopt_node: Option<u16>,
    /// Unix ms now (rain clock), to decide which slots of an adopted node are "later".
    pub now_unix_ms: u64,
}

impl Event {
    pub fn load(source: &EventSource) -> Result<Event, EventError> {
        let manifest = Manifest::load(&source.tickets_dir)?;
        let keyring = Keyring::load(&source.keyring)?;
        if keyring.event_name != manifest.event_name || keyring.budget_sha256 != manifest.budget_sha256 {
            return Err(EventError::Invalid(format!(
                "keyring {} belongs to event {:?}, the tickets to {:?} (or another budget)",
                source.keyring.display(),
                keyring.event_name,
                manifest.event_name
            )));
        }
        if source.node_id >= manifest.nodes {
            return Err(EventError::Invalid(format!(
                "node id {} is outside the event's {} nodes",
                source.node_id, manifest.nodes
            )));
        }
        if source.adopt_node.is_some_and(|m| m >= manifest.nodes || m == source.node_id) {
            return Err(EventError::Invalid("adopt_node must be another node of the event".into()));
        }
        let first_start = manifest
            .slots
            .iter()
            .filter_map(|s| parse_hhmm(&s.start))
            .min()
            .ok_or_else(|| EventError::Invalid("the manifest has no slots".into()))?;
        let mut slots = Vec::with_capacity(manifest.slots.len());
        for s in &manifest.slots {
            let (Some(start), Some(end)) = (parse_hhmm(&s.start), parse_hhmm(&s.end)) else {
                return Err(EventError::Invalid(format!("slot {:?} has a bad time", s.id)));
            };
            if end <= start {
                return Err(EventError::Invalid(format!("slot {:?} ends before it starts", s.id)));
            }
            slots.push(SlotWindow {
                index: s.index,
                start_ms: (start - first_start) * 60_000,
                end_ms: (end - first_start) * 60_000,
            });
        }
        let elapsed_ms = source.now_unix_ms.saturating_sub(source.start_unix_ms);
        let current_slot = slots.iter().find(|w| w.start_ms <= elapsed_ms && elapsed_ms < w.end_ms).map(|w| w.index);
        let cores = source.cores.max(1);
        let mut files_by_core = vec![Vec::new(); cores];
        for file in &manifest.files {
            let adopted = Some(file.node) == source.adopt_node
                && slots.iter().any(|w| {
                    w.index == file.slot
                        && match current_slot {
                            Some(current) => file.slot > current,
                            None => w.start_ms > elapsed_ms,
                        }
                });
            if file.node != source.node_id && !adopted {
                continue;
            }
            files_by_core[usize::from(file.core) % cores].push(EventFile {
                tag: file.tag(),
                path: source.tickets_dir.join(&file.name),
                records: file.records,
            });
        }
        for files in &mut files_by_core {
            files.sort_by_key(|f| (f.tag.slot, f.tag.node, f.tag.core));
        }
        let mut batch_known = vec![false; 1 << 16];
        let mut batch_merchant = vec![0u32; 1 << 16];
        for b in &manifest.batches {
            batch_known[usize::from(b.batch_id)] = true;
            batch_merchant[usize::from(b.batch_id)] = b.merchant_index;
        }
        Ok(Event {
            decryptor: keyring.decryptor(),
            manifest,
            slots,
            files_by_core,
            start_unix_ms: source.start_unix_ms,
            batch_known,
            batch_merchant,
        })
    }

    /// The slot open at `now_unix_ms` and the ms left in it.
    pub fn slot_at(&self, now_unix_ms: u64) -> Option<(u16, u64)> {
        let elapsed = now_unix_ms.checked_sub(self.start_unix_ms)?;
        self.slots.iter().find(|w| w.start_ms <= elapsed && elapsed < w.end_ms).map(|w| (w.index, w.end_ms - elapsed))
    }

    pub fn batch_known(&self, batch_id: u16) -> bool {
        self.batch_known[usize::from(batch_id)]
    }

    /// The sponsor page shown for a batch: merchant index + 1.
    pub fn page_of_batch(&self, batch_id: u16) -> u32 {
        if self.batch_known(batch_id) {
            self.batch_merchant[usize::from(batch_id)] + 1
        } else {
            0
        }
    }

    /// Packets at or above this amount are credited at once.
    pub fn instant_credit(&self, amount_fen: u32) -> bool {
        amount_fen >= self.manifest.instant_credit_threshold_fen
    }
}

/// Where the demo event lives inside a data directory.
pub fn demo_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    (data_dir.join("demo-event"), data_dir.join("demo-event.keyring.json"))
}

/// The demo event's budget: three five-minute slots, about a million packets.
pub const DEMO_BUDGET: &str = r#"
[event]
name = "redrain demo rain"
key_coverage_cap_fen = 30_000_000
instant_credit_top_percent = 10

[[event.slots]]
id = "first"
start = "00:00"
end = "00:05"

[[event.slots]]
id = "second"
start = "00:05"
end = "00:10"

[[event.slots]]
id = "third"
start = "00:10"
end = "00:15"

[[merchants]]
id = "demo-tea"
kind = "image"
budget_fen = 100_000_000
packets = 500_000
min_amount_fen = 10
max_amount_fen = 8_888
slot_weights = { first = 40, second = 30, third = 30 }

[[merchants]]
id = "demo-phone"
kind = "video"
budget_fen = 150_000_000
packets = 300_000
min_amount_fen = 100
max_amount_fen = 20_000
slot_weights = { first = 30, second = 40, third = 30 }

[[merchants]]
id = "demo-bank"
kind = "logo"
budget_fen = 20_000_000
packets = 200_000
min_amount_fen = 1
max_amount_fen = 2_000
slot_weights = { first = 34, second = 33, third = 33 }
"#;

/// Generates the demo event into the data directory unless it is there already.
/// Returns (tickets dir, keyring path).
pub fn ensure_demo_event(data_dir: &Path, cores: usize) -> anyhow::Result<(PathBuf, PathBuf)> {
    use crate::tickets::budget::Budget;
    use crate::tickets::generate::{generate, GenerateOptions};
    use crate::tickets::plan::Topology;
    let (dir, keyring) = demo_paths(data_dir);
    if dir.join(crate::tickets::manifest::MANIFEST_FILE_NAME).exists() && keyring.exists() {
        return Ok((dir, keyring));
    }
    std::fs::create_dir_all(data_dir)?;
    let loaded = Budget::parse_with_hash(DEMO_BUDGET)?;
    let options = GenerateOptions {
        out_dir: dir.clone(),
        keyring_path: keyring.clone(),
        seed: None,
        variant: 0,
        threads: cores.clamp(1, 8),
        overwrite: true,
    };
    let report = generate(&loaded, Topology { nodes: 1, cores: cores.clamp(1, 256) as u16 }, &options)?;
    log::warn!(
        "generated the demo event in {} ({} packets; keyring {}); pass --tickets for a real event",
        dir.display(),
        report.manifest.packets_total,
        keyring.display()
    );
    Ok((dir, keyring))
}
