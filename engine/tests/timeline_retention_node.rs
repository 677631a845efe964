//! Retention of the timeline log in the real `redrain` process: with tiny segments and a
//! tiny byte bound, old segments are deleted after checkpoints (files gone, bytes bounded),
//! and after `kill -9` and a restart seqs keep increasing, a retried recent send is
//! recognised, and a Sync from 0 is answered with the `expired` flag. Replicated, the
//! two peers delete what the node released, within their own bound.

mod common;

use common::{Node, Replica, TIMEOUT};
use redrain_net::client::{BlockingClient, ResponseFrame};
use redrain_net::message::{Request, Response};
use redrain_net::timeline::{TimelineRequest, TimelineResponse, CONTENT_TEXT, TARGET_USER};
use std::time::Instant;

const USERS: u64 = 4;
const SEGMENT_BYTES: u64 = 16 << 10;
const RETENTION_BYTES_MAX: u64 = 64 << 10;
/// Sends per user; each entry record is ~300 bytes, two per send: ~2.4 MB per core in all.
const SENDS_PER_USER: u64 = 2_000;
const PIPELINE: u64 = 100;

fn start(dir: tempfile::TempDir) -> Node {
    start_with(dir, &[])
}

fn start_with(dir: tempfile::TempDir, extra: &[&str]) -> Node {
    let path = dir.path().join("timeline.toml");
    std::fs::write(
        &path,
        format!(
            "messages_per_user_per_s = 1000000\nmessages_per_user_burst = 1000000\n\
             syncs_per_user_per_s = 1000000\nsyncs_per_user_burst = 1000000\n\
             [timeline]\nsegment_bytes = {SEGMENT_BYTES}\n\
             retention_bytes_max = {RETENTION_BYTES_MAX}\ncheckpoint_interval_s = 1\n"
        ),
    )
    .unwrap();
    let args = ["--cores", "2", "--config", path.to_str().unwrap()];
    Node::start_in(dir, &[&args[..], extra].concat())
}

/// The next answer (pushes such as Notify are skipped).
fn answer(c: &mut BlockingClient) -> ResponseFrame {
    loop {
        let f = c.recv().expect("an answer");
        if f.request_id != 0 {
            return f;
        }
    }
}

/// One request and its answer (pushes skipped).
fn call(c: &mut BlockingClient, req: &Request<'_>) -> ResponseFrame {
    let id = c.send(req).unwrap();
    let f = answer(c);
    assert_eq!(f.request_id, id);
    f
}

fn send_req(to: u64, client_msg_id: u64, payload: &[u8]) -> Request<'_> {
    Request::Timeline(TimelineRequest::Send {
        target_kind: TARGET_USER,
        target: to,
        client_msg_id,
        content_type: CONTENT_TEXT,
        payload,
    })
}

/// (message id, seq) of a SendOk.
fn send_ok(f: &ResponseFrame) -> (u64, u64) {
    match f.parse().unwrap() {
        Response::Timeline(TimelineResponse::SendOk { message_id, seq }) => (message_id, seq),
        other => panic!("{other:?}"),
    }
}

/// (expired, more, seqs) of one Sync page.
fn sync_page(c: &mut BlockingClient, since_seq: u64) -> (bool, bool, Vec<u64>) {
    let f = call(c, &Request::Timeline(TimelineRequest::Sync { since_seq, limit: 500 }));
    let Response::Timeline(TimelineResponse::SyncOk { more, expired, entries, .. }) = f.parse().unwrap() else {
        panic!("{:?}", f.parse())
    };
    (expired, more, entries.iter().map(|e| e.seq).collect())
}

/// (segment files, bytes, bytes of the newest segment) of every core's timeline log.
fn timeline_files(data: &std::path::Path) -> Vec<(usize, u64, u64)> {
    (0..2)
        .map(|core| {
            let segs = common::log_segments(&data.join(format!("core-{core}")).join("timeline"));
            let newest = segs.last().map_or(0, |s| s.1);
            (segs.len(), segs.iter().map(|s| s.1).sum(), newest)
        })
        .collect()
}

#[test]
fn with_tiny_retention_old_segments_go_and_after_kill_9_seqs_retries_and_expired_syncs_hold() {
    let node = start(tempfile::tempdir().unwrap());
    let mut clients: Vec<BlockingClient> = (1..=USERS).map(|u| node.login(u, 1)).collect();
    let payload = [7u8; 200];
    // user -> (last client msg id, its message id, its seq)
    let mut last = vec![(0u64, 0u64, 0u64); USERS as usize + 1];
    let started = Instant::now();
    for round in 0..SENDS_PER_USER / PIPELINE {
        let mut queued = Vec::new();
        for (i, c) in clients.iter_mut().enumerate() {
            let user = i as u64 + 1;
            for k in 0..PIPELINE {
                let cmid = round * PIPELINE + k + 1;
                queued.push((i, cmid, c.queue(&send_req(user % USERS + 1, cmid, &payload))));
            }
            c.flush().unwrap();
        }
        for (i, cmid, id) in queued {
            let f = answer(&mut clients[i]);
            assert_eq!(f.request_id, id);
            let (message_id, seq) = send_ok(&f);
            last[i + 1] = (cmid, message_id, seq);
        }
        assert!(started.elapsed() < TIMEOUT * 6, "traffic took too long");
    }
    // Checkpoints run every second; wait until retention deleted segments and each log is
    // back within the bound, beyond which only the active segment may reach (a segment
    // rolls after the group commit that filled it, so it can outgrow `segment_bytes`).
    let until = Instant::now() + TIMEOUT * 2;
    loop {
        let files = timeline_files(&node.data_dir());
        if files.iter().all(|(_, bytes, newest)| *bytes <= RETENTION_BYTES_MAX + newest) {
            eprintln!("timeline logs (segments, bytes) per core after retention: {files:?}");
            break;
        }
        assert!(Instant::now() < until, "logs never shrank to the bound: {files:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let deleted = node.metric_sum("redrain_timeline_segments_deleted_total", &[]);
    let appended_bytes = node.metric_sum("redrain_timeline_log_bytes", &[]);
    eprintln!("segments deleted: {deleted}; bytes on disk now {appended_bytes}");
    assert!(deleted >= 4.0, "{deleted} segments deleted");
    assert!(node.metric_sum("redrain_timeline_checkpoints_total", &[]) >= 2.0);
    assert!(node.metric_sum("redrain_timeline_log_first_lsn", &["core=\"0\""]) > 1.0);

    // kill -9 and restart on the same directory.
    let mut node = node;
    drop(clients);
    // SAFETY: SIGKILL to our own child, by pid.
    unsafe { libc::kill(node.pid(), libc::SIGKILL) };
    let _ = node.child.wait();
    let dir = node.take_dir();
    drop(node);
    let node = start(dir);

    let mut c1 = node.login(1, 2);
    // A retried recent send: the same ack, nothing stored again.
    let (cmid, message_id, seq) = last[1];
    let f = call(&mut c1, &send_req(2, cmid, &payload));
    assert_eq!(send_ok(&f), (message_id, seq), "a retried send after retention and restart gets its first ack");
    let mut c2 = node.login(2, 2);
    // A Sync from 0: the oldest entries are gone, and the answer says so.
    // (Here every entry went: what is left of each log is checkpoints, mostly the
    // idempotency keys of the sends, all within the window.)
    let (expired, _, seqs) = sync_page(&mut c2, 0);
    assert!(expired, "a sync from 0 after retention is flagged expired");
    assert!(seqs.first().is_none_or(|s| *s > 1), "{:?}", seqs.first());
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let head = {
        let mut since = seqs.last().copied().unwrap_or(0);
        loop {
            let (_, more, page) = sync_page(&mut c2, since);
            if let Some(l) = page.last() {
                since = *l;
            }
            if !more {
                break since;
            }
        }
    };
    // The retry stored nothing: user 2's newest entry is still the one acked before.
    let (_, _, after_retry) = sync_page(&mut c2, head);
    assert!(after_retry.is_empty(), "the retry added {after_retry:?}");
    // New sends get seqs above everything before the kill.
    let f = call(&mut c1, &send_req(2, 1 << 40, b"after"));
    let (_, new_seq) = send_ok(&f);
    assert!(new_seq > seq, "user 1's seq {new_seq} after the restart must exceed {seq}");
    // (`head` is 0 when all of user 2's entries went: that Sync is flagged expired too.)
    let (_, _, page) = sync_page(&mut c2, head);
    assert_eq!(page.len(), 1, "{page:?}");
    assert!(page[0] > last[2].2.max(head), "user 2's new entry is above every seq it had");
}

/// Every replica of a timeline stream (`replicas/<node>-<0x100 + core>`) a peer holds:
/// (name, bytes, bytes of its newest segment, name of its oldest segment).
fn replica_timeline_bytes(dir: &std::path::Path) -> Vec<(String, u64, u64, String)> {
    let Ok(streams) = std::fs::read_dir(dir.join("replicas")) else { return Vec::new() };
    let mut out = Vec::new();
    for stream in streams.filter_map(Result::ok) {
        let name = stream.file_name().to_string_lossy().into_owned();
        let core: u32 = name.rsplit('-').next().and_then(|c| c.parse().ok()).unwrap_or(0);
        if core < 0x100 {
            continue; // an open queue stream
        }
        let segs = common::log_segments(&stream.path());
        let oldest = segs.first().map_or(String::new(), |s| s.0.clone());
        out.push((name, segs.iter().map(|s| s.1).sum(), segs.last().map_or(0, |s| s.1), oldest));
    }
    out
}

#[test]
fn the_peers_delete_what_the_node_released_within_their_own_bound() {
    let root = tempfile::tempdir().unwrap();
    let bound = RETENTION_BYTES_MAX.to_string();
    let segment = SEGMENT_BYTES.to_string();
    let flags = ["--segment-bytes", segment.as_str(), "--retention-bytes-max", bound.as_str()];
    let a = Replica::start_with(&root.path().join("park-a"), "127.0.0.1:0", &flags);
    let b = Replica::start_with(&root.path().join("park-b"), "127.0.0.1:0", &flags);
    let peers = format!("{},{}", a.addr, b.addr);
    let node = start_with(tempfile::tempdir().unwrap(), &["--opens-replica-peers", &peers]);
    let mut clients: Vec<BlockingClient> = (1..=USERS).map(|u| node.login(u, 1)).collect();
    let payload = [7u8; 200];
    for round in 0..SENDS_PER_USER / PIPELINE {
        let mut queued = Vec::new();
        for (i, c) in clients.iter_mut().enumerate() {
            let user = i as u64 + 1;
            for k in 0..PIPELINE {
                queued.push((i, c.queue(&send_req(user % USERS + 1, round * PIPELINE + k + 1, &payload))));
            }
            c.flush().unwrap();
        }
        for (i, id) in queued {
            let f = answer(&mut clients[i]);
            assert_eq!(f.request_id, id);
            send_ok(&f);
        }
    }
    // The node checkpoints, releases below its watermark and tells the peers; each peer
    // then deletes released segments beyond its own bound (its first segment is gone).
    let first_segment = replica_timeline_bytes(&a.dir).first().map(|r| r.3.clone()).expect("a timeline replica");
    let until = Instant::now() + TIMEOUT * 2;
    loop {
        let held: Vec<_> = [&a, &b].iter().flat_map(|r| replica_timeline_bytes(&r.dir)).collect();
        let trimmed = held
            .iter()
            .all(|(_, bytes, newest, oldest)| *bytes <= RETENTION_BYTES_MAX + newest && *oldest != first_segment);
        if held.len() == 4 && trimmed {
            eprintln!("replicas of the timeline streams (name, bytes, newest segment, oldest segment): {held:?}");
            break;
        }
        assert!(Instant::now() < until, "the peers never deleted down to their bound: {held:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The node goes on: a new send commits on 2 of 3 copies and is the one entry after
    // user 2's head.
    let mut c2 = node.login(2, 2);
    let mut head = 0;
    loop {
        let (_, more, page) = sync_page(&mut c2, head);
        head = page.last().copied().unwrap_or(head);
        if !more {
            break;
        }
    }
    let mut c1 = node.login(1, 2);
    send_ok(&call(&mut c1, &send_req(2, 1 << 40, b"after")));
    let (_, _, seqs) = sync_page(&mut c2, head);
    assert_eq!(seqs.len(), 1, "{seqs:?} after {head}");
    assert!(seqs[0] > head);
}
