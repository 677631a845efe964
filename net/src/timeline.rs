//! Timeline message bodies (protocol v1, types 0x20-0x23, 0x30-0x33, their answers
//! 0xA0-0xA3 and 0xB0-0xB3, and the `Notify` push 0xE0).
//!
//! Layouts (big-endian, see docs/protocol.md section 11.2):
//!
//! ```text
//! Send          target_kind u8 | target u64 | client_msg_id u64 | content_type u8 | payload_len u16 | payload
//! SendOk        message_id u64 | seq u64                      (seq: the message in the sender's own inbox)
//! Sync          since_seq u64 | limit u16
//! SyncOk        latest_seq u64 | flags u8 | count u16 | entry*   (flags: 0x01 more, 0x02 expired)
//!   entry       seq u64 | message_id u64 | from u64 | conv_kind u8 | conv_id u64 | sent_at_ms u64
//!               | content_type u8 | payload_len u16 | payload
//! SyncAck       conv_kind u8 | conv_id u64 | read_seq u64     (a read marker)
//! SyncAckOk     seq u64                                      (the marker's own inbox entry)
//! LuckyOpen     group_id u64 | packet_id u64
//! LuckyOpenOk   packet_id u64 | amount_fen u32 | flags u8 | opened u16 | count u16
//! GroupCreate   count u16 | member u64 * count
//! GroupCreateOk group_id u64 | members u16
//! GroupJoin     group_id u64 | user u64          GroupJoinOk  members u16
//! GroupLeave    group_id u64 | user u64          GroupLeaveOk members u16
//! GroupMembers  group_id u64                     GroupMembersOk count u16 | member u64 * count
//! Notify        latest_seq u64                   (push, request id 0)
//! ```
//!
//! Every length is checked against the body before it is trusted; decoding never
//! allocates (lists stay borrowed bytes with an iterator).

use crate::message::{be_u16, be_u32, be_u64, expect_len as len, BodyError, MessageType};

/// `Send` target: one user.
pub const TARGET_USER: u8 = 0;
/// `Send` target: a group.
pub const TARGET_GROUP: u8 = 1;
/// Content: opaque bytes of the client (text, media reference).
pub const CONTENT_TEXT: u8 = 0;
/// Content: a group lucky packet; payload `total_fen u32 | count u16`.
pub const CONTENT_LUCKY: u8 = 1;
/// Content: a read marker the server writes for `SyncAck`; payload
/// `conv_kind u8 | conv_id u64 | read_seq u64`. Clients cannot send it.
pub const CONTENT_READ_MARKER: u8 = 2;
/// Bytes of a lucky packet's payload.
pub const LUCKY_PAYLOAD_BYTES: usize = 6;
/// Bytes of a read marker's payload.
pub const READ_MARKER_PAYLOAD_BYTES: usize = 17;
/// `LuckyOpenOk` flag: this user had opened the packet before; same amount.
pub const LUCKY_FLAG_REPEAT: u8 = 0x01;
/// Fixed bytes of one sync entry before its payload.
pub const SYNC_ENTRY_HEADER_BYTES: usize = 8 + 8 + 8 + 1 + 8 + 8 + 1 + 2;
/// Members one `GroupCreate` may name (the node's group cap is usually lower).
pub const GROUP_CREATE_MEMBERS_MAX: usize = 4096;
/// `SyncOk` flags bit: call Sync again from the last seq received.
pub const SYNC_FLAG_MORE: u8 = 0x01;
/// `SyncOk` flags bit: entries after `since_seq` and before the first one carried were
/// dropped by the node's retention (they can no longer be synced).
pub const SYNC_FLAG_EXPIRED: u8 = 0x02;

/// A borrowed list of big-endian u64s (group members).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct U64List<'a>(&'a [u8]);

impl<'a> U64List<'a> {
    /// `bytes.len()` must be a multiple of 8.
    pub fn from_bytes(bytes: &'a [u8]) -> Self {
        debug_assert!(bytes.len().is_multiple_of(8));
        Self(bytes)
    }

    pub fn len(&self) -> usize {
        self.0.len() / 8
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = u64> + 'a {
        self.0.chunks_exact(8).map(be_u64)
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }

    /// Writes `values` as the list layout (count u16 | values), for encoders.
    pub fn write(values: &[u64], out: &mut Vec<u8>) {
        out.extend_from_slice(&(values.len() as u16).to_be_bytes());
        for v in values {
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}

/// One inbox entry as `SyncOk` carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncEntry<'a> {
    pub seq: u64,
    pub message_id: u64,
    pub from: u64,
    /// [`TARGET_USER`] (conv_id = the user the message was sent to) or [`TARGET_GROUP`].
    pub conv_kind: u8,
    pub conv_id: u64,
    pub sent_at_ms: u64,
    pub content_type: u8,
    pub payload: &'a [u8],
}

impl SyncEntry<'_> {
    /// Appends the entry's wire layout.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(&self.from.to_be_bytes());
        out.push(self.conv_kind);
        out.extend_from_slice(&self.conv_id.to_be_bytes());
        out.extend_from_slice(&self.sent_at_ms.to_be_bytes());
        out.push(self.content_type);
        out.extend_from_slice(&(self.payload.len() as u16).to_be_bytes());
        out.extend_from_slice(self.payload);
    }

    /// Bytes this entry takes on the wire.
    pub fn wire_bytes(&self) -> usize {
        SYNC_ENTRY_HEADER_BYTES + self.payload.len()
    }
}

/// The entries of a `SyncOk`, validated at parse time, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncEntries<'a> {
    count: u16,
    bytes: &'a [u8],
}

impl<'a> SyncEntries<'a> {
    /// Wraps entries already encoded with [`SyncEntry::encode`] (server side).
    pub fn from_encoded(count: u16, bytes: &'a [u8]) -> Self {
        Self { count, bytes }
    }

    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    fn parse(count: u16, bytes: &'a [u8]) -> Result<Self, BodyError> {
        let bad = |field| BodyError::BadField { kind: MessageType::SyncOk, field };
        let mut rest = bytes;
        for _ in 0..count {
            if rest.len() < SYNC_ENTRY_HEADER_BYTES {
                return Err(bad("entry shorter than its header"));
            }
            let payload_len = usize::from(be_u16(&rest[SYNC_ENTRY_HEADER_BYTES - 2..]));
            if rest.len() < SYNC_ENTRY_HEADER_BYTES + payload_len {
                return Err(bad("entry payload runs past the body"));
            }
            rest = &rest[SYNC_ENTRY_HEADER_BYTES + payload_len..];
        }
        if !rest.is_empty() {
            return Err(bad("bytes after the last entry"));
        }
        Ok(Self { count, bytes })
    }

    pub fn iter(&self) -> impl Iterator<Item = SyncEntry<'a>> + 'a {
        let mut rest = self.bytes;
        (0..self.count).map(move |_| {
            let b = rest;
            let payload_len = usize::from(be_u16(&b[SYNC_ENTRY_HEADER_BYTES - 2..]));
            rest = &b[SYNC_ENTRY_HEADER_BYTES + payload_len..];
            SyncEntry {
                seq: be_u64(b),
                message_id: be_u64(&b[8..]),
                from: be_u64(&b[16..]),
                conv_kind: b[24],
                conv_id: be_u64(&b[25..]),
                sent_at_ms: be_u64(&b[33..]),
                content_type: b[41],
                payload: &b[SYNC_ENTRY_HEADER_BYTES..SYNC_ENTRY_HEADER_BYTES + payload_len],
            }
        })
    }
}

/// A timeline request (client to server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineRequest<'a> {
    Send { target_kind: u8, target: u64, client_msg_id: u64, content_type: u8, payload: &'a [u8] },
    Sync { since_seq: u64, limit: u16 },
    SyncAck { conv_kind: u8, conv_id: u64, read_seq: u64 },
    LuckyOpen { group_id: u64, packet_id: u64 },
    GroupCreate { members: U64List<'a> },
    GroupJoin { group_id: u64, user: u64 },
    GroupLeave { group_id: u64, user: u64 },
    GroupMembers { group_id: u64 },
}

impl<'a> TimelineRequest<'a> {
    /// Whether `kind` is a timeline request type.
    pub fn is_timeline(kind: MessageType) -> bool {
        matches!(
            kind,
            MessageType::Send
                | MessageType::Sync
                | MessageType::SyncAck
                | MessageType::LuckyOpen
                | MessageType::GroupCreate
                | MessageType::GroupJoin
                | MessageType::GroupLeave
                | MessageType::GroupMembers
        )
    }

    pub fn parse(kind: MessageType, body: &'a [u8]) -> Result<Self, BodyError> {
        Ok(match kind {
            MessageType::Send => {
                if body.len() < 20 {
                    return Err(BodyError::BadLength { kind, actual: body.len(), expected: ">= 20" });
                }
                let target_kind = body[0];
                if target_kind > TARGET_GROUP {
                    return Err(BodyError::BadField { kind, field: "target_kind is not 0 (user) or 1 (group)" });
                }
                let payload_len = usize::from(be_u16(&body[18..]));
                if body.len() != 20 + payload_len {
                    return Err(BodyError::BadLength { kind, actual: body.len(), expected: "20 + payload length" });
                }
                let content_type = body[17];
                if content_type != CONTENT_TEXT && content_type != CONTENT_LUCKY {
                    return Err(BodyError::BadField { kind, field: "content_type is not 0 (text) or 1 (lucky)" });
                }
                TimelineRequest::Send {
                    target_kind,
                    target: be_u64(&body[1..]),
                    client_msg_id: be_u64(&body[9..]),
                    content_type,
                    payload: &body[20..],
                }
            }
            MessageType::Sync => {
                len(kind, body, 10, "10")?;
                TimelineRequest::Sync { since_seq: be_u64(body), limit: be_u16(&body[8..]) }
            }
            MessageType::SyncAck => {
                len(kind, body, 17, "17")?;
                if body[0] > TARGET_GROUP {
                    return Err(BodyError::BadField { kind, field: "conv_kind is not 0 (user) or 1 (group)" });
                }
                TimelineRequest::SyncAck {
                    conv_kind: body[0],
                    conv_id: be_u64(&body[1..]),
                    read_seq: be_u64(&body[9..]),
                }
            }
            MessageType::LuckyOpen => {
                len(kind, body, 16, "16")?;
                TimelineRequest::LuckyOpen { group_id: be_u64(body), packet_id: be_u64(&body[8..]) }
            }
            MessageType::GroupCreate => {
                if body.len() < 2 {
                    return Err(BodyError::BadLength { kind, actual: body.len(), expected: ">= 2" });
                }
                let count = usize::from(be_u16(body));
                if count > GROUP_CREATE_MEMBERS_MAX {
                    return Err(BodyError::BadField { kind, field: "more than 4096 members" });
                }
                if body.len() != 2 + 8 * count {
                    return Err(BodyError::BadLength { kind, actual: body.len(), expected: "2 + 8 x count" });
                }
                TimelineRequest::GroupCreate { members: U64List(&body[2..]) }
            }
            MessageType::GroupJoin | MessageType::GroupLeave => {
                len(kind, body, 16, "16")?;
                let (group_id, user) = (be_u64(body), be_u64(&body[8..]));
                if kind == MessageType::GroupJoin {
                    TimelineRequest::GroupJoin { group_id, user }
                } else {
                    TimelineRequest::GroupLeave { group_id, user }
                }
            }
            MessageType::GroupMembers => {
                len(kind, body, 8, "8")?;
                TimelineRequest::GroupMembers { group_id: be_u64(body) }
            }
            _ => return Err(BodyError::WrongDirection { kind: kind as u8 }),
        })
    }

    pub fn kind(&self) -> MessageType {
        match self {
            TimelineRequest::Send { .. } => MessageType::Send,
            TimelineRequest::Sync { .. } => MessageType::Sync,
            TimelineRequest::SyncAck { .. } => MessageType::SyncAck,
            TimelineRequest::LuckyOpen { .. } => MessageType::LuckyOpen,
            TimelineRequest::GroupCreate { .. } => MessageType::GroupCreate,
            TimelineRequest::GroupJoin { .. } => MessageType::GroupJoin,
            TimelineRequest::GroupLeave { .. } => MessageType::GroupLeave,
            TimelineRequest::GroupMembers { .. } => MessageType::GroupMembers,
        }
    }

    /// Writes the body (the frame header is the caller's).
    pub fn encode_body(&self, b: &mut Vec<u8>) {
        match *self {
            TimelineRequest::Send { target_kind, target, client_msg_id, content_type, payload } => {
                b.push(target_kind);
                b.extend_from_slice(&target.to_be_bytes());
                b.extend_from_slice(&client_msg_id.to_be_bytes());
                b.push(content_type);
                b.extend_from_slice(&(payload.len() as u16).to_be_bytes());
                b.extend_from_slice(payload);
            }
            TimelineRequest::Sync { since_seq, limit } => {
                b.extend_from_slice(&since_seq.to_be_bytes());
                b.extend_from_slice(&limit.to_be_bytes());
            }
            TimelineRequest::SyncAck { conv_kind, conv_id, read_seq } => {
                b.push(conv_kind);
                b.extend_from_slice(&conv_id.to_be_bytes());
                b.extend_from_slice(&read_seq.to_be_bytes());
            }
            TimelineRequest::LuckyOpen { group_id, packet_id } => {
                b.extend_from_slice(&group_id.to_be_bytes());
                b.extend_from_slice(&packet_id.to_be_bytes());
            }
            TimelineRequest::GroupCreate { members } => {
                b.extend_from_slice(&(members.len() as u16).to_be_bytes());
                b.extend_from_slice(members.bytes());
            }
            TimelineRequest::GroupJoin { group_id, user } | TimelineRequest::GroupLeave { group_id, user } => {
                b.extend_from_slice(&group_id.to_be_bytes());
                b.extend_from_slice(&user.to_be_bytes());
            }
            TimelineRequest::GroupMembers { group_id } => b.extend_from_slice(&group_id.to_be_bytes()),
        }
    }
}

/// A timeline answer or push (server to client). `SyncOk::expired`: retention dropped
/// entries after the Sync's `since_seq` (see [`SYNC_FLAG_EXPIRED`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineResponse<'a> {
    SendOk { message_id: u64, seq: u64 },
    SyncOk { latest_seq: u64, more: bool, expired: bool, entries: SyncEntries<'a> },
    SyncAckOk { seq: u64 },
    LuckyOpenOk { packet_id: u64, amount_fen: u32, flags: u8, opened: u16, count: u16 },
    GroupCreateOk { group_id: u64, members: u16 },
    GroupJoinOk { members: u16 },
    GroupLeaveOk { members: u16 },
    GroupMembersOk { members: U64List<'a> },
    Notify { latest_seq: u64 },
}

impl<'a> TimelineResponse<'a> {
    pub fn is_timeline(kind: MessageType) -> bool {
        matches!(
            kind,
            MessageType::SendOk
                | MessageType::SyncOk
                | MessageType::SyncAckOk
                | MessageType::LuckyOpenOk
                | MessageType::GroupCreateOk
                | MessageType::GroupJoinOk
                | MessageType::GroupLeaveOk
                | MessageType::GroupMembersOk
                | MessageType::Notify
        )
    }

    pub fn parse(kind: MessageType, body: &'a [u8]) -> Result<Self, BodyError> {
        Ok(match kind {
            MessageType::SendOk => {
                len(kind, body, 16, "16")?;
                TimelineResponse::SendOk { message_id: be_u64(body), seq: be_u64(&body[8..]) }
            }
            MessageType::SyncOk => {
                if body.len() < 11 {
                    return Err(BodyError::BadLength { kind, actual: body.len(), expected: ">= 11" });
                }
                let flags = body[8];
                if flags & !(SYNC_FLAG_MORE | SYNC_FLAG_EXPIRED) != 0 {
                    return Err(BodyError::BadField { kind, field: "flags has bits other than more and expired" });
                }
                let (more, expired) = (flags & SYNC_FLAG_MORE != 0, flags & SYNC_FLAG_EXPIRED != 0);
                let entries = SyncEntries::parse(be_u16(&body[9..]), &body[11..])?;
                TimelineResponse::SyncOk { latest_seq: be_u64(body), more, expired, entries }
            }
            MessageType::SyncAckOk => {
                len(kind, body, 8, "8")?;
                TimelineResponse::SyncAckOk { seq: be_u64(body) }
            }
            MessageType::LuckyOpenOk => {
                len(kind, body, 17, "17")?;
                TimelineResponse::LuckyOpenOk {
                    packet_id: be_u64(body),
                    amount_fen: be_u32(&body[8..]),
                    flags: body[12],
                    opened: be_u16(&body[13..]),
                    count: be_u16(&body[15..]),
                }
            }
            MessageType::GroupCreateOk => {
                len(kind, body, 10, "10")?;
                TimelineResponse::GroupCreateOk { group_id: be_u64(body), members: be_u16(&body[8..]) }
            }
            MessageType::GroupJoinOk => {
                len(kind, body, 2, "2")?;
                TimelineResponse::GroupJoinOk { members: be_u16(body) }
            }
            MessageType::GroupLeaveOk => {
                len(kind, body, 2, "2")?;
                TimelineResponse::GroupLeaveOk { members: be_u16(body) }
            }
            MessageType::GroupMembersOk => {
                if body.len() < 2 || body.len() != 2 + 8 * usize::from(be_u16(body)) {
                    return Err(BodyError::BadLength { kind, actual: body.len(), expected: "2 + 8 x count" });
                }
                TimelineResponse::GroupMembersOk { members: U64List(&body[2..]) }
            }
            MessageType::Notify => {
                len(kind, body, 8, "8")?;
                TimelineResponse::Notify { latest_seq: be_u64(body) }
            }
            _ => return Err(BodyError::WrongDirection { kind: kind as u8 }),
        })
    }

    pub fn kind(&self) -> MessageType {
        match self {
            TimelineResponse::SendOk { .. } => MessageType::SendOk,
            TimelineResponse::SyncOk { .. } => MessageType::SyncOk,
            TimelineResponse::SyncAckOk { .. } => MessageType::SyncAckOk,
            TimelineResponse::LuckyOpenOk { .. } => MessageType::LuckyOpenOk,
            TimelineResponse::GroupCreateOk { .. } => MessageType::GroupCreateOk,
            TimelineResponse::GroupJoinOk { .. } => MessageType::GroupJoinOk,
            TimelineResponse::GroupLeaveOk { .. } => MessageType::GroupLeaveOk,
            TimelineResponse::GroupMembersOk { .. } => MessageType::GroupMembersOk,
            TimelineResponse::Notify { .. } => MessageType::Notify,
        }
    }

    pub fn encode_body(&self, b: &mut Vec<u8>) {
        match *self {
            TimelineResponse::SendOk { message_id, seq } => {
                b.extend_from_slice(&message_id.to_be_bytes());
                b.extend_from_slice(&seq.to_be_bytes());
            }
            TimelineResponse::SyncOk { latest_seq, more, expired, entries } => {
                b.extend_from_slice(&latest_seq.to_be_bytes());
                b.push(if more { SYNC_FLAG_MORE } else { 0 } | if expired { SYNC_FLAG_EXPIRED } else { 0 });
                b.extend_from_slice(&entries.count.to_be_bytes());
                b.extend_from_slice(entries.bytes);
            }
            TimelineResponse::SyncAckOk { seq } => b.extend_from_slice(&seq.to_be_bytes()),
            TimelineResponse::LuckyOpenOk { packet_id, amount_fen, flags, opened, count } => {
                b.extend_from_slice(&packet_id.to_be_bytes());
                b.extend_from_slice(&amount_fen.to_be_bytes());
                b.push(flags);
                b.extend_from_slice(&opened.to_be_bytes());
                b.extend_from_slice(&count.to_be_bytes());
            }
            TimelineResponse::GroupCreateOk { group_id, members } => {
                b.extend_from_slice(&group_id.to_be_bytes());
                b.extend_from_slice(&members.to_be_bytes());
            }
            TimelineResponse::GroupJoinOk { members } | TimelineResponse::GroupLeaveOk { members } => {
                b.extend_from_slice(&members.to_be_bytes())
            }
            TimelineResponse::GroupMembersOk { members } => {
                b.extend_from_slice(&(members.len() as u16).to_be_bytes());
                b.extend_from_slice(members.bytes());
            }
            TimelineResponse::Notify { latest_seq } => b.extend_from_slice(&latest_seq.to_be_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameDecoder;
    use crate::message::{Request, Response};

    fn round_trip_request(req: TimelineRequest<'_>) {
        let mut out = Vec::new();
        Request::Timeline(req).encode(9, &mut out);
        let (frame, used) = FrameDecoder::new(1 << 20).decode(&out).unwrap().unwrap();
        assert_eq!(used, out.len());
        assert_eq!(Request::parse(&frame).unwrap(), Request::Timeline(req));
    }

    fn round_trip_response(resp: TimelineResponse<'_>) {
        let mut out = Vec::new();
        Response::Timeline(resp).encode(9, &mut out);
        let (frame, _) = FrameDecoder::new(1 << 20).decode(&out).unwrap().unwrap();
        assert_eq!(Response::parse(&frame).unwrap(), Response::Timeline(resp));
    }

    #[test]
    fn every_timeline_frame_round_trips_through_the_codec() {
        let members = [1u64.to_be_bytes(), 2u64.to_be_bytes()].concat();
        round_trip_request(TimelineRequest::Send {
            target_kind: TARGET_GROUP,
            target: 7,
            client_msg_id: 3,
            content_type: CONTENT_TEXT,
            payload: b"hi",
        });
        round_trip_request(TimelineRequest::Sync { since_seq: 5, limit: 100 });
        round_trip_request(TimelineRequest::SyncAck { conv_kind: 1, conv_id: 7, read_seq: 9 });
        round_trip_request(TimelineRequest::LuckyOpen { group_id: 7, packet_id: 8 });
        round_trip_request(TimelineRequest::GroupCreate { members: U64List::from_bytes(&members) });
        round_trip_request(TimelineRequest::GroupJoin { group_id: 7, user: 3 });
        round_trip_request(TimelineRequest::GroupLeave { group_id: 7, user: 3 });
        round_trip_request(TimelineRequest::GroupMembers { group_id: 7 });
        let mut entries = Vec::new();
        let e = SyncEntry {
            seq: 4,
            message_id: 99,
            from: 1,
            conv_kind: 0,
            conv_id: 2,
            sent_at_ms: 1000,
            content_type: CONTENT_TEXT,
            payload: b"abc",
        };
        e.encode(&mut entries);
        e.encode(&mut entries);
        let parsed = SyncEntries::from_encoded(2, &entries);
        round_trip_response(TimelineResponse::SyncOk { latest_seq: 4, more: true, expired: false, entries: parsed });
        round_trip_response(TimelineResponse::SyncOk { latest_seq: 4, more: false, expired: true, entries: parsed });
        assert_eq!(parsed.iter().collect::<Vec<_>>(), vec![e, e]);
        round_trip_response(TimelineResponse::SendOk { message_id: 1, seq: 2 });
        round_trip_response(TimelineResponse::SyncAckOk { seq: 2 });
        round_trip_response(TimelineResponse::LuckyOpenOk {
            packet_id: 1,
            amount_fen: 2,
            flags: LUCKY_FLAG_REPEAT,
            opened: 3,
            count: 4,
        });
        round_trip_response(TimelineResponse::GroupCreateOk { group_id: 1, members: 2 });
        round_trip_response(TimelineResponse::GroupJoinOk { members: 2 });
        round_trip_response(TimelineResponse::GroupLeaveOk { members: 2 });
        round_trip_response(TimelineResponse::GroupMembersOk { members: U64List::from_bytes(&members) });
        round_trip_response(TimelineResponse::Notify { latest_seq: 77 });
    }

    #[test]
    fn truncated_or_padded_timeline_bodies_are_typed_errors() {
        let code = |kind: MessageType, body: &[u8]| TimelineRequest::parse(kind, body).unwrap_err().code();
        assert_eq!(code(MessageType::Send, &[0; 19]), crate::ErrorCode::MalformedBody);
        let mut send = vec![0u8; 20];
        send[18..20].copy_from_slice(&5u16.to_be_bytes());
        assert_eq!(code(MessageType::Send, &send), crate::ErrorCode::MalformedBody, "payload shorter than its length");
        send[0] = 2;
        assert_eq!(code(MessageType::Send, &send), crate::ErrorCode::MalformedBody);
        assert_eq!(code(MessageType::Sync, &[0; 11]), crate::ErrorCode::MalformedBody);
        assert_eq!(code(MessageType::GroupCreate, &[0, 2, 0, 0]), crate::ErrorCode::MalformedBody);
        let bad_entries = [0u8; SYNC_ENTRY_HEADER_BYTES - 1];
        assert!(SyncEntries::parse(1, &bad_entries).is_err());
    }
}
