//! The manifest: the JSON description of a generated ticket directory (counts, sums, checksums,
//! key id ranges, batches, placement and the budget's hash). It holds no key material.
//!
//! `verify` and `reconcile` trust the manifest only as far as they re-check it: every count and
//! sum in it is recomputed from the decrypted tickets and, when the budget is given, from the
//! budget itself.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::budget::PacketKind;
use super::format::FileTag;
use super::placement::NodePlacement;

/// Format string of the manifest.
pub const MANIFEST_FORMAT: &str = "redrain-tickets-manifest/1";
/// File name of the manifest inside a ticket directory.
pub const MANIFEST_FILE_NAME: &str = "manifest.json";
/// Largest manifest accepted (a million files take well under this).
pub const MANIFEST_BYTES_MAX: u64 = 1 << 30;

/// Everything about one generation except the keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// Bytes per record (26).
    pub record_bytes: u32,
    /// Event name.
    pub event_name: String,
    /// SHA-256 of the budget file (hex).
    pub budget_sha256: String,
    /// Plan variant.
    pub variant: u32,
    /// Nodes in the fleet.
    pub nodes: u16,
    /// Cores per node.
    pub cores: u16,
    /// Coverage cap per key (fen).
    pub key_coverage_cap_fen: u64,
    /// Packets at or above this amount may be credited at once; a value above every amount
    /// means none.
    pub instant_credit_threshold_fen: u32,
    /// Packets at or above the threshold.
    pub instant_credit_packets: u64,
    /// All packets (packet ids are `0..packets_total`).
    pub packets_total: u64,
    /// All money.
    pub amount_fen_total: u64,
    /// Keys used.
    pub keys_total: u32,
    /// Slots.
    pub slots: Vec<SlotSummary>,
    /// Merchants.
    pub merchants: Vec<MerchantSummary>,
    /// Totals per packet kind.
    pub kinds: Vec<KindSummary>,
    /// Batches by id.
    pub batches: Vec<BatchSummary>,
    /// Ticket files.
    pub files: Vec<FileSummary>,
    /// Park and backup peers of each node.
    pub placement: Vec<NodePlacement>,
}

/// One slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotSummary {
    /// Slot index (in file names).
    pub index: u16,
    /// Slot id.
    pub id: String,
    /// Start, "HH:MM".
    pub start: String,
    /// End, "HH:MM".
    pub end: String,
    /// Packets in the slot.
    pub packets: u64,
    /// Money in the slot.
    pub amount_fen: u64,
}

/// One merchant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerchantSummary {
    /// Merchant id.
    pub id: String,
    /// Kind.
    pub kind: PacketKind,
    /// Budget (fen); generated amounts sum to it.
    pub budget_fen: u64,
    /// Packets.
    pub packets: u64,
    /// Smallest amount.
    pub min_amount_fen: u32,
    /// Largest amount.
    pub max_amount_fen: u32,
    /// First packet id of the merchant; its ids are `packet_id_first..packet_id_first + packets`.
    pub packet_id_first: u64,
}

/// Totals of one kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindSummary {
    /// Kind.
    pub kind: PacketKind,
    /// Packets.
    pub packets: u64,
    /// Money.
    pub amount_fen: u64,
}

/// One batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchSummary {
    /// Batch id as stored in tickets.
    pub batch_id: u16,
    /// Merchant id.
    pub merchant: String,
    /// Merchant index in [`Manifest::merchants`].
    pub merchant_index: u32,
    /// Slot index.
    pub slot: u16,
    /// Kind.
    pub kind: PacketKind,
    /// Packets.
    pub packets: u64,
    /// Money.
    pub amount_fen: u64,
}

/// Packets and money of one batch in one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileBatch {
    /// Batch id.
    pub batch_id: u16,
    /// Packets.
    pub packets: u64,
    /// Money.
    pub amount_fen: u64,
}

/// One ticket file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSummary {
    /// File name inside the directory.
    pub name: String,
    /// Node.
    pub node: u16,
    /// Core.
    pub core: u16,
    /// Slot index.
    pub slot: u16,
    /// Records in the file.
    pub records: u64,
    /// Money in the file.
    pub amount_fen: u64,
    /// CRC32C of the whole file.
    pub crc32c: u32,
    /// First key id reserved for the file.
    pub key_id_first: u32,
    /// Key ids reserved for the file (`key_id_first..key_id_first + key_ids_reserved`).
    pub key_ids_reserved: u32,
    /// Key ids actually used (`key_id_first..key_id_first + key_ids_used`).
    pub key_ids_used: u32,
    /// Per batch.
    pub batches: Vec<FileBatch>,
}

impl FileSummary {
    /// Node, core and slot.
    pub fn tag(&self) -> FileTag {
        FileTag { node: self.node, core: self.core, slot: self.slot }
    }
}

/// Failure to read a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Reading failed.
    #[error("manifest {path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// Not a manifest.
    #[error("manifest {path} is not valid: {reason}")]
    Invalid {
        /// Path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl Manifest {
    /// Reads `dir/manifest.json` and checks the references inside it (batch merchant indexes,
    /// file names), so later code can index without panicking.
    pub fn load(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(MANIFEST_FILE_NAME);
        let io = |source| ManifestError::Io { path: path.clone(), source };
        let invalid = |reason: String| ManifestError::Invalid { path: path.clone(), reason };
        let length = std::fs::metadata(&path).map_err(io)?.len();
        if length > MANIFEST_BYTES_MAX {
            return Err(invalid(format!("{length} bytes, limit {MANIFEST_BYTES_MAX}")));
        }
        let bytes = std::fs::read(&path).map_err(io)?;
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|error| invalid(error.to_string()))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(invalid(format!("format {:?}, expected {MANIFEST_FORMAT:?}", manifest.format)));
        }
        if manifest.record_bytes as usize != super::format::RECORD_BYTES {
            return Err(invalid(format!("record_bytes {}", manifest.record_bytes)));
        }
        for (index, batch) in manifest.batches.iter().enumerate() {
            if usize::from(batch.batch_id) != index {
                return Err(invalid(format!("batch {index} has id {}", batch.batch_id)));
            }
            if batch.merchant_index as usize >= manifest.merchants.len() {
                return Err(invalid(format!("batch {index} names merchant index {}", batch.merchant_index)));
            }
            if usize::from(batch.slot) >= manifest.slots.len() {
                return Err(invalid(format!("batch {index} names slot {}", batch.slot)));
            }
        }
        for merchant in &manifest.merchants {
            let within = match merchant.packet_id_first.checked_add(merchant.packets) {
                Some(end) => end <= super::format::PACKET_ID_MAX + 1,
                None => false,
            };
            if !within {
                return Err(invalid(format!("merchant {:?} packet ids beyond the id space", merchant.id)));
            }
        }
        for file in &manifest.files {
            let key_end = u64::from(file.key_id_first) + u64::from(file.key_ids_reserved);
            if key_end > super::keyring::KEY_IDS_MAX as u64 || file.key_ids_used > file.key_ids_reserved {
                return Err(invalid(format!(
                    "file {:?} has key ids beyond 65,536 or above its reservation",
                    file.name
                )));
            }
            if file.name != file.tag().file_name() {
                return Err(invalid(format!("file {:?} does not match its tag", file.name)));
            }
            if file.batches.iter().any(|batch| usize::from(batch.batch_id) >= manifest.batches.len()) {
                return Err(invalid(format!("file {:?} names an unknown batch", file.name)));
            }
            if file.records > u64::from(u32::MAX) {
                return Err(invalid(format!("file {:?} has too many records", file.name)));
            }
        }
        if manifest.packets_total > super::format::PACKET_ID_MAX {
            return Err(invalid("packets_total beyond the packet id space".into()));
        }
        Ok(manifest)
    }

    /// Merchant index owning a packet id (ids are laid out merchant after merchant).
    pub fn merchant_of_packet(&self, packet_id: u64) -> Option<usize> {
        let index = self.merchants.partition_point(|merchant| merchant.packet_id_first <= packet_id).checked_sub(1)?;
        let merchant = &self.merchants[index];
        (packet_id < merchant.packet_id_first.saturating_add(merchant.packets)).then_some(index)
    }
}
