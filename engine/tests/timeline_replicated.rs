//! Timelines replicated to two peer parks (`redrain replica serve` processes on loopback):
//! 2 of 3 copies make an inbox entry committed. A Send is acknowledged only once a peer
//! holds its entry; with one peer dead sends still commit; with both dead a Send is
//! refused (typed error after the commit timeout) and nothing unreplicated is
//! acknowledged; when a peer returns the retried send commits, once; a node restart
//! (kill -9) recovers every acknowledged entry from its own log, exactly once.

mod common;

use common::{call, create_group, Node, Replica};
use redrain_engine::shard::handoff::home_core;
use redrain_engine::timeline::records::{decode_entry, KIND_ENTRY};
use redrain_net::client::{BlockingClient, ClientError};
use redrain_net::message::{Request, Response};
use redrain_net::timeline::{TimelineRequest, TimelineResponse, CONTENT_TEXT, TARGET_USER};
use redrain_net::ErrorCode;
use std::time::{Duration, Instant};

const CORES: usize = 2;
/// Longest a replicated append waits for a peer's copy (the node's flag).
const COMMIT_TIMEOUT_MS: &str = "1000";

/// Rates and bursts that never limit these tests.
const RATES: &str = "messages_per_user_per_s = 100000\nmessages_per_user_burst = 100000\n\
    syncs_per_user_per_s = 100000\nsyncs_per_user_burst = 100000\n";

fn start(dir: tempfile::TempDir, a: &Replica, b: &Replica) -> Node {
    let config = dir.path().join("timeline.toml");
    std::fs::write(&config, RATES).unwrap();
    let peers = format!("{},{}", a.addr, b.addr);
    Node::start_in(
        dir,
        &[
            "--cores",
            "2",
            "--config",
            config.to_str().unwrap(),
            "--opens-replica-peers",
            &peers,
            "--opens-replica-commit-timeout-ms",
            COMMIT_TIMEOUT_MS,
        ],
    )
}

/// Sends `payload` from the client's user to `to` with client message id `id`.
fn send(c: &mut BlockingClient, to: u64, id: u64) -> Result<(u64, u64), ClientError> {
    let payload = id.to_be_bytes();
    let request = Request::Timeline(TimelineRequest::Send {
        target_kind: TARGET_USER,
        target: to,
        client_msg_id: id,
        content_type: CONTENT_TEXT,
        payload: &payload,
    });
    let frame = call(c, &request)?;
    match frame.parse().unwrap() {
        Response::Timeline(TimelineResponse::SendOk { message_id, seq }) => Ok((message_id, seq)),
        other => panic!("send answered {other:?}"),
    }
}

fn server_code(r: Result<(u64, u64), ClientError>) -> u16 {
    match r {
        Err(ClientError::Server { code, .. }) => code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// Every entry of `user`'s inbox: (seq, client message id as in the payload).
fn sync_all(node: &Node, user: u64) -> Vec<(u64, u64)> {
    let mut c = node.login(user, 9);
    let (mut since, mut out) = (0, Vec::new());
    loop {
        let f = call(&mut c, &Request::Timeline(TimelineRequest::Sync { since_seq: since, limit: 500 })).unwrap();
        let Response::Timeline(TimelineResponse::SyncOk { more, entries, .. }) = f.parse().unwrap() else {
            panic!("sync of {user}: {:?}", f.parse())
        };
        for e in entries.iter() {
            out.push((e.seq, u64::from_be_bytes(e.payload[..8].try_into().unwrap())));
            since = e.seq;
        }
        if !more {
            return out;
        }
    }
}

/// Whether `replica` holds the entry of `user`'s inbox with client message id `id`
/// (the stream of `user`'s home core: `0x100 + core`, origin node 0).
fn holds_entry(replica: &Replica, user: u64, id: u64) -> bool {
    let core = 0x100 + home_core(user, CORES) as u16;
    replica.records(0, core).iter().any(|(_, kind, payload)| {
        *kind == KIND_ENTRY && decode_entry(payload).is_some_and(|(u, cmid, _)| u == user && cmid == id)
    })
}

#[test]
fn a_replicated_send_is_acknowledged_on_two_copies_refused_without_a_peer_and_recovered_once() {
    let root = tempfile::tempdir().unwrap();
    let mut a = Replica::start(&root.path().join("park-a"), "127.0.0.1:0");
    let b = Replica::start(&root.path().join("park-b"), "127.0.0.1:0");
    // A sender and a recipient homed on different cores: both cores' streams replicate.
    let sender = 1u64;
    let recipient = (2..100).find(|u| home_core(*u, CORES) != home_core(sender, CORES)).unwrap();
    let mut node = start(tempfile::tempdir().unwrap(), &a, &b);
    let mut c = node.login(sender, 1);
    let mut acked = Vec::new();

    // 1. Both peers up: the ack leaves only once a peer holds the entry.
    for id in 1..=20u64 {
        send(&mut c, recipient, id).unwrap();
        assert!(
            holds_entry(&a, sender, id) || holds_entry(&b, sender, id),
            "send {id} acknowledged before either peer held the sender's entry"
        );
        assert!(
            holds_entry(&a, recipient, id) || holds_entry(&b, recipient, id),
            "send {id} acknowledged before either peer held the recipient's entry"
        );
        acked.push(id);
    }

    // 2. One peer dead: local + the other = 2 of 3; sends still commit.
    a.kill();
    for id in 21..=30u64 {
        send(&mut c, recipient, id).unwrap();
        assert!(holds_entry(&b, sender, id) && holds_entry(&b, recipient, id), "send {id} not on the live peer");
        acked.push(id);
    }

    // 3. Both dead: no second copy, so no ack: a typed error once the commit times out
    // (Internal with a retry-after, docs/protocol.md), and the entry is not synced.
    drop(b);
    let code = server_code(send(&mut c, recipient, 31));
    assert_eq!(code, ErrorCode::Internal.as_u16(), "a send without a second copy is refused");
    assert!(!sync_all(&node, recipient).iter().any(|(_, id)| *id == 31), "an unacknowledged send is not synced");

    // 4. A peer returns (same address and data): the retried send commits, once.
    a = Replica::start(&root.path().join("park-a"), &a.addr.to_string());
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match send(&mut c, recipient, 31) {
            Ok(_) => break,
            Err(ClientError::Server { code, .. })
                if code == ErrorCode::Internal.as_u16() || code == ErrorCode::Busy.as_u16() =>
            {
                assert!(Instant::now() < until, "sends did not commit again after a peer returned");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    acked.push(31);
    for id in 32..=40u64 {
        send(&mut c, recipient, id).unwrap();
        acked.push(id);
    }
    let before = [sync_all(&node, sender), sync_all(&node, recipient)];
    for inbox in &before {
        let ids: Vec<u64> = inbox.iter().map(|(_, id)| *id).collect();
        assert_eq!(ids, acked, "every acknowledged send once, in order");
    }

    // 5. kill -9 and restart on the same data (peers up): the node recovers its timelines
    // from its own log; the failed-then-retried send is still there once.
    drop(c);
    // SAFETY: a signal to our own child, by pid.
    unsafe { libc::kill(node.pid(), libc::SIGKILL) };
    let _ = node.child.wait();
    let b2 = Replica::start(&root.path().join("park-b"), "127.0.0.1:0");
    let node = start(node.take_dir(), &a, &b2);
    for (user, before) in [sender, recipient].into_iter().zip(&before) {
        let after = sync_all(&node, user);
        assert_eq!(&after, before, "user {user}: every acknowledged send once, with its seq, after the restart");
    }
    // Sends commit after the restart, and seqs keep increasing.
    let mut c = node.login(sender, 1);
    let (_, seq) = send(&mut c, recipient, 41).unwrap();
    assert!(seq > before[0].last().unwrap().0, "the sender's seq keeps increasing");
    let last = sync_all(&node, recipient);
    assert_eq!(last.last().map(|(_, id)| *id), Some(41));
    assert!(last[last.len() - 1].0 > before[1].last().unwrap().0, "the recipient's seq keeps increasing");
    drop(a);
    drop(b2);
}

#[test]
fn a_node_that_lost_its_timeline_log_and_groups_table_catches_up_from_its_peers_at_start() {
    let root = tempfile::tempdir().unwrap();
    let a = Replica::start(&root.path().join("park-a"), "127.0.0.1:0");
    let b = Replica::start(&root.path().join("park-b"), "127.0.0.1:0");
    let (sender, recipient) = (1u64, 2u64);
    let mut node = start(tempfile::tempdir().unwrap(), &a, &b);
    let mut c = node.login(sender, 1);
    let acked: Vec<u64> = (1..=10).collect();
    for &id in &acked {
        send(&mut c, recipient, id).unwrap();
    }
    // Groups homed on both cores (a group lives on its creator's core), one of them changed.
    let creators: Vec<u64> = (0..CORES).map(|core| (10..).find(|u| home_core(*u, CORES) == core).unwrap()).collect();
    let mut groups = Vec::new();
    for &creator in &creators {
        let mut g = node.login(creator, 1);
        let group = create_group(&mut g, &[recipient, 30, 31]);
        groups.push((creator, group));
    }
    let (creator, changed) = groups[0];
    let mut g = node.login(creator, 1);
    call(&mut g, &Request::Timeline(TimelineRequest::GroupLeave { group_id: changed, user: 30 })).unwrap();
    call(&mut g, &Request::Timeline(TimelineRequest::GroupJoin { group_id: changed, user: 32 })).unwrap();
    drop(g);
    let members_before: Vec<Vec<u64>> =
        groups.iter().map(|(creator, group)| members(&node, *creator, *group)).collect();
    assert!(members_before[0].contains(&32) && !members_before[0].contains(&30), "{members_before:?}");
    let before = sync_all(&node, recipient);
    drop(c);
    node.stop();
    // The disk lost every core's timeline log and groups table.
    let data = node.data_dir();
    let mut removed = 0;
    for core in 0..CORES {
        for what in ["timeline", "groups"] {
            let dir = data.join(format!("core-{core}")).join(what);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).unwrap();
                removed += 1;
            }
        }
    }
    assert_eq!(removed, 2 * CORES, "each core had a timeline log and a groups table");
    let node = start(node.take_dir(), &a, &b);
    let after = sync_all(&node, recipient);
    assert_eq!(after, before, "the entries came back from the peers, with their seqs");
    assert_eq!(after.iter().map(|(_, id)| *id).collect::<Vec<_>>(), acked);
    let members_after: Vec<Vec<u64>> = groups.iter().map(|(creator, group)| members(&node, *creator, *group)).collect();
    assert_eq!(members_after, members_before, "the groups came back from the peers, with their changes");
    // A new group on the recovered node gets a new id (the counter came back too).
    let mut g = node.login(creators[0], 2);
    let fresh = create_group(&mut g, &[recipient]);
    assert!(groups.iter().all(|(_, group)| *group != fresh), "group id {fresh} reused");
}

/// The member list of `group`, asked by its member `user`.
fn members(node: &Node, user: u64, group: u64) -> Vec<u64> {
    let mut c = node.login(user, 9);
    let f = call(&mut c, &Request::Timeline(TimelineRequest::GroupMembers { group_id: group })).unwrap();
    let Response::Timeline(TimelineResponse::GroupMembersOk { members }) = f.parse().unwrap() else {
        panic!("{:?}", f.parse())
    };
    members.iter().collect()
}
