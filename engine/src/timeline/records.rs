//! Byte layouts of the timeline stream (`core-<n>/timeline`) and of group values in the
//! groups table (`core-<n>/groups`). Big-endian; every decoder checks lengths and
//! answers `None` for a record it cannot read (a damaged record is skipped, counted).
//!
//! ```text
//! KIND_ENTRY          user u64 | client_msg_id u64 | sync entry (net::timeline::SyncEntry layout)
//! KIND_SEQ_CEILING    bucket u64 | ceiling u64
//! KIND_LUCKY_CREATED  packet_id u64 | group u64 | sender u64 | total_fen u32 | count u16
//! KIND_LUCKY_OPENED   packet_id u64 | user u64 | amount_fen u32 [| group u64 | opened_at_ms u64]
//! KIND_GROUP          group u64 | member u64 * n      (the whole list after a change)
//! group value         member u64 * n        (key: group id u64)
//! ```
//!
//! A group change is a `KIND_GROUP` record in the (replicated) log first and the table
//! value second: the table is what a start reads first, the log (and its checkpoints,
//! `KIND_CP_GROUPS` in checkpoint.rs) overrides it in LSN order, so a node whose disk
//! was lost gets its groups back from its peers with its entries.

use redrain_net::timeline::SYNC_ENTRY_HEADER_BYTES;

pub const KIND_ENTRY: u8 = 0x30;
pub const KIND_SEQ_CEILING: u8 = 0x31;
pub const KIND_LUCKY_CREATED: u8 = 0x32;
pub const KIND_LUCKY_OPENED: u8 = 0x33;
pub const KIND_GROUP: u8 = 0x39;

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
    LuckyOpened::decode(b).map(|o| (o.packet_id, o.user, o.amount_fen))
}

/// Bytes of a lucky open record before it named its group and time (still read).
pub const LUCKY_OPENED_SHORT_BYTES: usize = 20;
/// Bytes of a lucky open record as written now.
pub const LUCKY_OPENED_BYTES: usize = 36;

/// One durable share of a lucky packet, as the payment hand-off reads it: the short
/// layout (20 bytes, written before the hand-off needed the group and time) decodes with
/// `group` and `opened_at_ms` 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LuckyOpened {
    pub packet_id: u64,
    pub user: u64,
    pub amount_fen: u32,
    pub group: u64,
    pub opened_at_ms: u64,
}

impl LuckyOpened {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = encode_lucky_opened(self.packet_id, self.user, self.amount_fen);
        out.extend_from_slice(&self.group.to_be_bytes());
        out.extend_from_slice(&self.opened_at_ms.to_be_bytes());
        debug_assert_eq!(out.len(), LUCKY_OPENED_BYTES);
        out
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != LUCKY_OPENED_SHORT_BYTES && b.len() != LUCKY_OPENED_BYTES {
            return None;
        }
        let long = b.len() == LUCKY_OPENED_BYTES;
        Some(Self {
            packet_id: u64_at(b, 0),
            user: u64_at(b, 8),
            amount_fen: u32::from_be_bytes([b[16], b[17], b[18], b[19]]),
            group: if long { u64_at(b, 20) } else { 0 },
            opened_at_ms: if long { u64_at(b, 28) } else { 0 },
        })
    }
}

pub fn encode_members(members: &[u64]) -> Vec<u8> {
    members.iter().flat_map(|m| m.to_be_bytes()).collect()
}

pub fn decode_members(b: &[u8]) -> Option<Vec<u64>> {
    b.len().is_multiple_of(8).then(|| b.chunks_exact(8).map(|c| u64_at(c, 0)).collect())
}

pub fn encode_group(group: u64, members: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 8 * members.len());
    out.extend_from_slice(&group.to_be_bytes());
    out.extend(members.iter().flat_map(|m| m.to_be_bytes()));
    out
}

/// (group, members) of a `KIND_GROUP` record; `None` unless the members are sorted and
/// distinct (as every list the timelines write).
pub fn decode_group(b: &[u8]) -> Option<(u64, Vec<u64>)> {
    let group = u64::from_be_bytes(b.get(..8)?.try_into().ok()?);
    let members = decode_members(&b[8..])?;
    members.windows(2).all(|w| w[0] < w[1]).then_some((group, members))
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
        let o = LuckyOpened { packet_id: 1, user: 2, amount_fen: 3, group: 4, opened_at_ms: 5 };
        assert_eq!(LuckyOpened::decode(&o.encode()), Some(o));
        assert_eq!(decode_lucky_opened(&o.encode()), Some((1, 2, 3)), "recovery reads both layouts");
        assert_eq!(LuckyOpened::decode(&o.encode()[..21]), None);
        assert_eq!(decode_members(&encode_members(&[1, 2])), Some(vec![1, 2]));
        assert_eq!(decode_members(&[0; 7]), None);
        assert_eq!(decode_group(&encode_group(7, &[1, 2])), Some((7, vec![1, 2])));
        assert_eq!(decode_group(&encode_group(7, &[])), Some((7, vec![])), "a group whose last member left");
        assert_eq!(decode_group(&encode_group(7, &[2, 1])), None, "members are sorted");
        assert_eq!(decode_group(&encode_group(7, &[1, 1])), None, "and distinct");
        assert_eq!(decode_group(&[0; 9]), None);
        assert_eq!(decode_group(&[0; 7]), None);
    }
}
