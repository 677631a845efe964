//! Byte layouts of the rain's two durable streams (payloads of `redrain-storage` records).
//!
//! - Issuance cursors ([`CursorRecord`], stream `cursors`): "records of file `tag` below
//!   `cursor` may have been handed out". A reservation is written *before* tickets below it
//!   are issued, so a restart resumes at the highest reservation and never issues a ticket
//!   twice; an exact record (written on a clean stop and once a second) bounds what a crash
//!   skips.
//! - The open queue ([`OpenRecord`], stream `opens`): one record per opened packet, durable
//!   before the client hears the amount. The payment hand-off drains it; `redrain rain
//!   export-opened` prints it as the NDJSON `redrain tickets reconcile --opened` reads.
//!
//! All integers little-endian; layouts are versioned by the record kind byte.

use crate::tickets::format::FileTag;
use crate::tickets::reconcile::OpenedRecord;

/// Record kind: a cursor reservation (an upper bound of what may have been issued).
pub const KIND_CURSOR_RESERVED: u8 = 1;
/// Record kind: an exact cursor (everything below was issued or handed to another core).
pub const KIND_CURSOR_EXACT: u8 = 2;
/// Record kind: an opened packet.
pub const KIND_OPENED: u8 = 3;

/// Bytes of a cursor record payload.
pub const CURSOR_RECORD_BYTES: usize = 14;
/// Bytes of an open record payload.
pub const OPEN_RECORD_BYTES: usize = 37;

/// Flag of [`OpenRecord::flags`]: the packet may be credited at once.
pub const OPEN_RECORD_INSTANT_CREDIT: u8 = 0x01;

/// Why a stored record could not be read (a damaged or foreign stream).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record kind {kind} with {bytes} bytes is not a {expected}")]
    Layout { kind: u8, bytes: usize, expected: &'static str },
}

/// One issuance cursor record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorRecord {
    pub tag: FileTag,
    pub cursor: u64,
}

impl CursorRecord {
    pub fn encode(&self) -> [u8; CURSOR_RECORD_BYTES] {
        let mut b = [0u8; CURSOR_RECORD_BYTES];
        b[0..2].copy_from_slice(&self.tag.node.to_le_bytes());
        b[2..4].copy_from_slice(&self.tag.core.to_le_bytes());
        b[4..6].copy_from_slice(&self.tag.slot.to_le_bytes());
        b[6..14].copy_from_slice(&self.cursor.to_le_bytes());
        b
    }

    pub fn decode(kind: u8, b: &[u8]) -> Result<Self, RecordError> {
        if !matches!(kind, KIND_CURSOR_RESERVED | KIND_CURSOR_EXACT) || b.len() != CURSOR_RECORD_BYTES {
            return Err(RecordError::Layout { kind, bytes: b.len(), expected: "cursor record" });
        }
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Ok(Self {
            tag: FileTag { node: u16_at(0), core: u16_at(2), slot: u16_at(4) },
            cursor: u64::from_le_bytes(b[6..14].try_into().expect("8 bytes")),
        })
    }
}

/// One opened packet, as the open queue stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenRecord {
    pub packet_id: u64,
    pub user_id: u64,
    pub amount_fen: u32,
    pub key_id: u16,
    pub batch_id: u16,
    pub node: u16,
    pub core: u16,
    pub opened_at_ms: u64,
    pub flags: u8,
}

impl OpenRecord {
    pub fn encode(&self) -> [u8; OPEN_RECORD_BYTES] {
        let mut b = [0u8; OPEN_RECORD_BYTES];
        b[0..8].copy_from_slice(&self.packet_id.to_le_bytes());
        b[8..16].copy_from_slice(&self.user_id.to_le_bytes());
        b[16..20].copy_from_slice(&self.amount_fen.to_le_bytes());
        b[20..22].copy_from_slice(&self.key_id.to_le_bytes());
        b[22..24].copy_from_slice(&self.batch_id.to_le_bytes());
        b[24..26].copy_from_slice(&self.node.to_le_bytes());
        b[26..28].copy_from_slice(&self.core.to_le_bytes());
        b[28..36].copy_from_slice(&self.opened_at_ms.to_le_bytes());
        b[36] = self.flags;
        b
    }

    pub fn decode(kind: u8, b: &[u8]) -> Result<Self, RecordError> {
        if kind != KIND_OPENED || b.len() != OPEN_RECORD_BYTES {
            return Err(RecordError::Layout { kind, bytes: b.len(), expected: "open record" });
        }
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Ok(Self {
            packet_id: u64_at(0),
            user_id: u64_at(8),
            amount_fen: u32::from_le_bytes(b[16..20].try_into().expect("4 bytes")),
            key_id: u16_at(20),
            batch_id: u16_at(22),
            node: u16_at(24),
            core: u16_at(26),
            opened_at_ms: u64_at(28),
            flags: b[36],
        })
    }

    pub fn instant_credit(&self) -> bool {
        self.flags & OPEN_RECORD_INSTANT_CREDIT != 0
    }

    /// The line `redrain tickets reconcile --opened` reads.
    pub fn to_opened(&self) -> OpenedRecord {
        OpenedRecord {
            packet_id: self.packet_id,
            amount_fen: self.amount_fen,
            key_id: self.key_id,
            user_id: self.user_id,
            node: self.node,
            core: self.core,
            opened_at_ms: self.opened_at_ms,
            kind: crate::tickets::reconcile::OpenedKind::Event,
            group_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_wrong_layouts_are_refused() {
        let c = CursorRecord { tag: FileTag { node: 1, core: 2, slot: 3 }, cursor: 4_096 };
        assert_eq!(CursorRecord::decode(KIND_CURSOR_RESERVED, &c.encode()), Ok(c));
        assert!(CursorRecord::decode(KIND_OPENED, &c.encode()).is_err());
        assert!(CursorRecord::decode(KIND_CURSOR_EXACT, &c.encode()[..13]).is_err());
        let o = OpenRecord {
            packet_id: 9,
            user_id: 8,
            amount_fen: 7,
            key_id: 6,
            batch_id: 5,
            node: 4,
            core: 3,
            opened_at_ms: 2,
            flags: OPEN_RECORD_INSTANT_CREDIT,
        };
        assert_eq!(OpenRecord::decode(KIND_OPENED, &o.encode()), Ok(o));
        assert!(OpenRecord::decode(KIND_CURSOR_EXACT, &o.encode()).is_err());
        assert!(o.instant_credit());
    }
}
