//! Byte layouts of the timeline stream (`core-<n>/timeline`) and of group values in the
//! groups table (`core-<n>/groups`). Big-endian; every decoder checks lengths and
//! answers `None` for a record it cannot read (a damaged record is skipped, counted).
//!
//! ```text
//! KIND_ENTRY          user u64 | client_msg_id u64 | sync entry (net::timeline::SyncEntry layout)
//! KIND_SEQ_CEILING    bucket u64 | ceiling u64
//! KIND_LUCKY_CREATED  packet_id u64 | group u64 | sender u64 | total_fen u32 | count u16
//! KIND_LUCKY_OPENED   packet_id u64 | user u64 | amount_fen u32
//! group value         member u64 * n        (key: group id u64)
//! ```

use redrain_net::timeline::SYNC_ENTRY_HEADER_BYTES;

pub const KIND_ENTRY: u8 = 0x30;
pub const KIND_SEQ_CEILING: u8 = 0x31;
pub const KIND_LUCKY_CREATED: u8 = 0x32;
pub const KIND_LUCKY_OPENED: u8 = 0x33;

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// An inbox entry record: (user, client message id, wire entry).
pub fn encode_entry(user: u64, client_msg_id: u64, wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + wire.len());
    out.extend_from_slice(&user.to_be_bytes());
    out.extend_from_slice(&client_msg_id.to_be_bytes());
    out.extend_from_slice(wire);
    out
}

/// (user, client message id, wire entry) of an entry record.
pub fn decode_entry(payload: &[u8]) -> Option<(u64, u64, &[u8])> {
    if payload.len() < 16 + SYNC_ENTRY_HEADER_BYTES {
        return None;
    }
    let wire = &payload[16..];
    let payload_len = usize::from(u16::from_be_bytes([wire[42], wire[43]]));
    if wire.len() != SYNC_ENTRY_HEADER_BYTES + payload_len {
        return None;
    }
    Some((u64_at(payload, 0), u64_at(payload, 8), wire))
}

pub fn encode_ceiling(bucket: u64, ceiling: u64) -> Vec<u8> {
    [bucket.to_be_bytes(), ceiling.to_be_bytes()].concat()
}

pub fn decode_ceiling(payload: &[u8]) -> Option<(u64, u64)> {
    (payload.len() == 16).then(|| (u64_at(payload, 0), u64_at(payload, 8)))
}

/// A lucky packet as created in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LuckyCreated {
    pub packet_id: u64,
    pub group: u64,
    pub sender: u64,
    pub total_fen: u32,
    pub count: u16,
}

impl LuckyCreated {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(30);
        out.extend_from_slice(&self.packet_id.to_be_bytes());
        out.extend_from_slice(&self.group.to_be_bytes());
        out.extend_from_slice(&self.sender.to_be_bytes());
        out.extend_from_slice(&self.total_fen.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        (b.len() == 30).then(|| Self {
            packet_id: u64_at(b, 0),
            group: u64_at(b, 8),
            sender: u64_at(b, 16),
            total_fen: u32::from_be_bytes([b[24], b[25], b[26], b[27]]),
            count: u16::from_be_bytes([b[28], b[29]]),
        })
    }
}

pub fn encode_lucky_opened(packet_id: u64, user: u64, amount_fen: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(20);
    out.extend_from_slice(&packet_id.to_be_bytes());
    out.extend_from_slice(&user.to_be_bytes());
    out.extend_from_slice(&amount_fen.to_be_bytes());
    out
}

pub fn decode_lucky_opened(b: &[u8]) -> Option<(u64, u64, u32)> {
    (b.len() == 20).then(|| (u64_at(b, 0), u64_at(b, 8), u32::from_be_bytes([b[16], b[17], b[18], b[19]])))
}

pub fn encode_members(members: &[u64]) -> Vec<u8> {
    members.iter().flat_map(|m| m.to_be_bytes()).collect()
}

pub fn decode_members(b: &[u8]) -> Option<Vec<u64>> {
    b.len().is_multiple_of(8).then(|| b.chunks_exact(8).map(|c| u64_at(c, 0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_short_ones_are_refused() {
        let wire = {
            let mut w = Vec::new();
            redrain_net::timeline::SyncEntry {
                seq: 1,
                message_id: 2,
                from: 3,
                conv_kind: 0,
                conv_id: 4,
                sent_at_ms: 5,
                content_type: 0,
                payload: b"hey",
            }
            .encode(&mut w);
            w
        };
        let e = encode_entry(9, 8, &wire);
        assert_eq!(decode_entry(&e), Some((9, 8, &wire[..])));
        assert_eq!(decode_entry(&e[..e.len() - 1]), None);
        assert_eq!(decode_ceiling(&encode_ceiling(1, 2)), Some((1, 2)));
        let l = LuckyCreated { packet_id: 1, group: 2, sender: 3, total_fen: 4, count: 5 };
        assert_eq!(LuckyCreated::decode(&l.encode()), Some(l));
        assert_eq!(decode_lucky_opened(&encode_lucky_opened(1, 2, 3)), Some((1, 2, 3)));
        assert_eq!(decode_members(&encode_members(&[1, 2])), Some(vec![1, 2]));
        assert_eq!(decode_members(&[0; 7]), None);
    }
}
