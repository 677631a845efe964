//! The timeline examples of docs/protocol.md (sections 14.17-14.36), as the codec
//! encodes them; `every_doc_example_equals_the_codec_output` checks them byte for byte
//! and that each decodes back.

use redrain_net::code::ErrorCode;
use redrain_net::message::{Request, Response};
use redrain_net::timeline::{
    SyncEntries, SyncEntry, TimelineRequest as Q, TimelineResponse as A, U64List, CONTENT_LUCKY, CONTENT_TEXT,
    TARGET_GROUP, TARGET_USER,
};

const GROUP: u64 = (1 << 40) | 1;

fn req(r: Q<'_>, rid: u32) -> Vec<u8> {
    let mut out = Vec::new();
    Request::Timeline(r).encode(rid, &mut out);
    assert_round_trip_request(&out, r);
    out
}

fn resp(r: A<'_>, rid: u32) -> Vec<u8> {
    let mut out = Vec::new();
    Response::Timeline(r).encode(rid, &mut out);
    let (frame, _) = redrain_net::FrameDecoder::new(1 << 20).decode(&out).unwrap().unwrap();
    assert_eq!(Response::parse(&frame).unwrap(), Response::Timeline(r));
    out
}

fn assert_round_trip_request(bytes: &[u8], r: Q<'_>) {
    let (frame, _) = redrain_net::FrameDecoder::new(1 << 20).decode(bytes).unwrap().unwrap();
    assert_eq!(Request::parse(&frame).unwrap(), Request::Timeline(r));
}

/// (name, bytes) of every timeline example.
pub fn expected() -> Vec<(&'static str, Vec<u8>)> {
    let members = [43u64, 44].iter().flat_map(|m| m.to_be_bytes()).collect::<Vec<_>>();
    let listed = [42u64, 43, 44].iter().flat_map(|m| m.to_be_bytes()).collect::<Vec<_>>();
    let mut entry = Vec::new();
    SyncEntry {
        seq: 5,
        message_id: 1000,
        from: 42,
        conv_kind: TARGET_USER,
        conv_id: 43,
        sent_at_ms: 1_767_225_600_000,
        content_type: CONTENT_TEXT,
        payload: b"hi",
    }
    .encode(&mut entry);
    // Retention dropped seqs 1..=6 of the inbox: a Sync from 0 starts at seq 7.
    let mut expired = Vec::new();
    SyncEntry {
        seq: 7,
        message_id: 1003,
        from: 43,
        conv_kind: TARGET_USER,
        conv_id: 42,
        sent_at_ms: 1_767_225_600_000,
        content_type: CONTENT_TEXT,
        payload: b"ok",
    }
    .encode(&mut expired);
    let lucky = [1000u32.to_be_bytes().as_slice(), 3u16.to_be_bytes().as_slice()].concat();
    let mut error = Vec::new();
    Response::error(ErrorCode::SeqFromFuture, 0, "since_seq is beyond the inbox's latest seq").encode(18, &mut error);
    vec![
        (
            "send",
            req(
                Q::Send {
                    target_kind: TARGET_USER,
                    target: 43,
                    client_msg_id: 1,
                    content_type: CONTENT_TEXT,
                    payload: b"hi",
                },
                8,
            ),
        ),
        ("send_ok", resp(A::SendOk { message_id: 1000, seq: 5 }, 8)),
        ("notify", resp(A::Notify { latest_seq: 5 }, 0)),
        ("sync", req(Q::Sync { since_seq: 4, limit: 100 }, 9)),
        (
            "sync_ok",
            resp(
                A::SyncOk { latest_seq: 5, more: false, expired: false, entries: SyncEntries::from_encoded(1, &entry) },
                9,
            ),
        ),
        ("sync_ack", req(Q::SyncAck { conv_kind: TARGET_USER, conv_id: 43, read_seq: 5 }, 12)),
        ("sync_ack_ok", resp(A::SyncAckOk { seq: 6 }, 12)),
        ("group_create", req(Q::GroupCreate { members: U64List::from_bytes(&members) }, 11)),
        ("group_create_ok", resp(A::GroupCreateOk { group_id: GROUP, members: 3 }, 11)),
        ("group_join", req(Q::GroupJoin { group_id: GROUP, user: 45 }, 13)),
        ("group_join_ok", resp(A::GroupJoinOk { members: 4 }, 13)),
        ("group_leave", req(Q::GroupLeave { group_id: GROUP, user: 45 }, 14)),
        ("group_leave_ok", resp(A::GroupLeaveOk { members: 3 }, 14)),
        ("group_members", req(Q::GroupMembers { group_id: GROUP }, 15)),
        ("group_members_ok", resp(A::GroupMembersOk { members: U64List::from_bytes(&listed) }, 15)),
        (
            "send_lucky",
            req(
                Q::Send {
                    target_kind: TARGET_GROUP,
                    target: GROUP,
                    client_msg_id: 2,
                    content_type: CONTENT_LUCKY,
                    payload: &lucky,
                },
                16,
            ),
        ),
        ("lucky_open", req(Q::LuckyOpen { group_id: GROUP, packet_id: 1001 }, 17)),
        ("lucky_open_ok", resp(A::LuckyOpenOk { packet_id: 1001, amount_fen: 388, flags: 0, opened: 1, count: 3 }, 17)),
        ("error_seq_from_future", error),
        (
            "sync_ok_expired",
            resp(
                A::SyncOk { latest_seq: 9, more: true, expired: true, entries: SyncEntries::from_encoded(1, &expired) },
                19,
            ),
        ),
    ]
}
