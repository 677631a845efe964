//! Group lucky packets reach the payment hand-off: every durable share of a lucky packet,
//! from groups homed on both cores, lands in the file sink exactly once as a
//! `"kind":"lucky"` line (packet, group, user, amount in fen), also across a `kill -9` after
//! some were delivered, and the shares of a packet sum to its total once all are opened.
//! No rain event is configured: the hand-off runs for lucky packets alone. While the
//! sink is down, the timeline log's retention keeps every share it has not acknowledged.

mod common;

use common::{call, create_group, Node, Replica};
use redrain_engine::shard::handoff::home_core;
use redrain_engine::tickets::reconcile::{OpenedKind, OpenedRecord};
use redrain_net::client::{BlockingClient, ClientError};
use redrain_net::message::{Request, Response};
use redrain_net::timeline::{TimelineRequest, TimelineResponse, CONTENT_LUCKY, TARGET_GROUP};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

const CORES: usize = 2;
/// Members of each group (creator included), homed on both cores.
const MEMBERS: u64 = 16;
const TOTAL_FEN: u32 = 88_888;

/// Rates and bursts that never limit these tests.
const RATES: &str = "messages_per_user_per_s = 100000\nmessages_per_user_burst = 100000\n\
    syncs_per_user_per_s = 100000\nsyncs_per_user_burst = 100000\n";

fn start(dir: tempfile::TempDir) -> Node {
    let config = dir.path().join("timeline.toml");
    std::fs::write(&config, RATES).unwrap();
    Node::start_in(dir, &["--cores", "2", "--config", config.to_str().unwrap()])
}

fn send_lucky(c: &mut BlockingClient, group: u64, count: u16) -> u64 {
    let mut payload = TOTAL_FEN.to_be_bytes().to_vec();
    payload.extend_from_slice(&count.to_be_bytes());
    let f = call(
        c,
        &Request::Timeline(TimelineRequest::Send {
            target_kind: TARGET_GROUP,
            target: group,
            client_msg_id: 1,
            content_type: CONTENT_LUCKY,
            payload: &payload,
        }),
    )
    .unwrap();
    let Response::Timeline(TimelineResponse::SendOk { message_id, .. }) = f.parse().unwrap() else {
        panic!("{:?}", f.parse())
    };
    message_id // the packet id
}

fn open(node: &Node, user: u64, group: u64, packet: u64) -> u32 {
    let mut c = node.login(user, 1);
    let f =
        call(&mut c, &Request::Timeline(TimelineRequest::LuckyOpen { group_id: group, packet_id: packet })).unwrap();
    let Response::Timeline(TimelineResponse::LuckyOpenOk { amount_fen, .. }) = f.parse().unwrap() else {
        panic!("open of {user}: {:?}", f.parse())
    };
    amount_fen
}

/// Every line of the lucky files in the node's hand-off directory.
fn lucky_lines(data: &std::path::Path) -> Vec<OpenedRecord> {
    let dir = data.join("handoff");
    let mut files: Vec<_> = std::fs::read_dir(&dir).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("lucky-core"))
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<OpenedRecord>(l).unwrap_or_else(|e| panic!("{l}: {e}")))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn wait_lines(data: &std::path::Path, want: usize) -> Vec<OpenedRecord> {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let lines = lucky_lines(data);
        if lines.len() >= want || Instant::now() > until {
            assert_eq!(lines.len(), want, "lucky lines in the sink");
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn lucky_shares_from_both_cores_reach_the_file_sink_once_across_a_kill_9_and_sum_to_the_total() {
    let mut node = start(tempfile::tempdir().unwrap());
    // One creator homed on each core: its group is homed there, so both cores record shares.
    let creators: Vec<u64> = (0..CORES).map(|core| (1..).find(|u| home_core(*u, CORES) == core).unwrap()).collect();
    let others: Vec<u64> = (100..100 + MEMBERS - 1).collect();
    assert!(others.iter().any(|u| home_core(*u, CORES) == 0) && others.iter().any(|u| home_core(*u, CORES) == 1));
    let mut packets = Vec::new(); // (group, packet, members)
    for &creator in &creators {
        let mut c = node.login(creator, 1);
        let group = create_group(&mut c, &others);
        let packet = send_lucky(&mut c, group, MEMBERS as u16);
        let mut members = vec![creator];
        members.extend(&others);
        packets.push((group, packet, members));
    }
    let mut got: HashMap<(u64, u64), u32> = HashMap::new();
    // Half the members open, then the node dies once their lines are in the sink.
    for (group, packet, members) in &packets {
        for &user in &members[..members.len() / 2] {
            got.insert((*packet, user), open(&node, user, *group, *packet));
        }
    }
    let first = wait_lines(&node.data_dir(), got.len());
    // SAFETY: a signal to our own child, by pid.
    unsafe { libc::kill(node.pid(), libc::SIGKILL) };
    let _ = node.child.wait();
    let node = start(node.take_dir());
    // The rest open; earlier openers open again (a repeat: same amount, no new share).
    for (group, packet, members) in &packets {
        for &user in members {
            let amount = open(&node, user, *group, *packet);
            if let Some(before) = got.insert((*packet, user), amount) {
                assert_eq!(before, amount, "a repeated open answers the same share");
            }
        }
    }
    let lines = wait_lines(&node.data_dir(), packets.len() * MEMBERS as usize);
    for line in &first {
        assert!(lines.contains(line), "a line delivered before the kill is kept: {line:?}");
    }
    let mut sums: BTreeMap<u64, u64> = BTreeMap::new();
    let mut cores_seen = std::collections::HashSet::new();
    let mut seen = std::collections::HashSet::new();
    for line in &lines {
        assert_eq!(line.kind, OpenedKind::Lucky);
        assert_eq!(line.key_id, 0, "a lucky share has no ticket");
        assert!(seen.insert((line.packet_id, line.user_id)), "share {:?} handed over twice", line);
        let (group, _, members) = packets.iter().find(|(_, p, _)| *p == line.packet_id).expect("a known packet");
        assert_eq!(line.group_id, Some(*group));
        assert!(members.contains(&line.user_id));
        assert_eq!(Some(&line.amount_fen), got.get(&(line.packet_id, line.user_id)), "the amount the user was told");
        assert!(line.opened_at_ms > 0);
        *sums.entry(line.packet_id).or_default() += u64::from(line.amount_fen);
        cores_seen.insert(line.core);
    }
    assert_eq!(cores_seen.len(), CORES, "shares recorded on both cores");
    for (_, packet, _) in &packets {
        assert_eq!(sums[packet], u64::from(TOTAL_FEN), "packet {packet}: the shares sum to the total");
    }
}

#[test]
fn with_both_peers_away_a_lucky_open_is_refused_and_its_retry_gets_the_same_share_handed_over_once() {
    let root = tempfile::tempdir().unwrap();
    let a = Replica::start(&root.path().join("park-a"), "127.0.0.1:0");
    let b = Replica::start(&root.path().join("park-b"), "127.0.0.1:0");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("timeline.toml");
    std::fs::write(&config, RATES).unwrap();
    let peers = format!("{},{}", a.addr, b.addr);
    let node_args = [
        "--cores",
        "2",
        "--config",
        config.to_str().unwrap(),
        "--opens-replica-peers",
        &peers,
        "--opens-replica-commit-timeout-ms",
        "1000",
    ];
    let node = Node::start_in(dir, &node_args);
    let members: Vec<u64> = (200..208).collect();
    let mut c = node.login(1, 1);
    let group = create_group(&mut c, &members);
    let count = members.len() as u16 + 1;
    let packet = send_lucky(&mut c, group, count);
    let mut got: HashMap<u64, u32> = HashMap::new();
    got.insert(1, open(&node, 1, group, packet));
    // Both peers away: the share cannot reach a second copy, so it is not acknowledged.
    let a_addr = a.addr.to_string();
    drop(a);
    drop(b);
    let user = members[0];
    let mut m = node.login(user, 1);
    let request = Request::Timeline(TimelineRequest::LuckyOpen { group_id: group, packet_id: packet });
    match call(&mut m, &request) {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, redrain_net::ErrorCode::Internal.as_u16()),
        other => panic!("an open without a second copy was answered {other:?}"),
    }
    // A peer returns (same address and data): the retry answers a share. Its first record
    // is durable locally (and ships now), so the retry writes the same share again.
    let _a = Replica::start(&root.path().join("park-a"), &a_addr);
    let until = Instant::now() + Duration::from_secs(30);
    let amount = loop {
        match call(&mut m, &request) {
            Ok(f) => {
                let Response::Timeline(TimelineResponse::LuckyOpenOk { amount_fen, .. }) = f.parse().unwrap() else {
                    panic!("{:?}", f.parse())
                };
                break amount_fen;
            }
            Err(ClientError::Server { .. }) => {
                assert!(Instant::now() < until, "the open was not answered after a peer returned");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    got.insert(user, amount);
    for &u in &members[1..] {
        got.insert(u, open(&node, u, group, packet));
    }
    let lines = wait_lines(&node.data_dir(), usize::from(count));
    let mut seen = std::collections::HashSet::new();
    for line in &lines {
        assert!(seen.insert(line.user_id), "share of {} handed over twice", line.user_id);
        assert_eq!(Some(&line.amount_fen), got.get(&line.user_id), "the amount the user was told");
    }
    assert_eq!(lines.iter().map(|l| u64::from(l.amount_fen)).sum::<u64>(), u64::from(TOTAL_FEN));
}

/// Every message of a JetStream stream: (Nats-Msg-Id, line).
/// A JetStream server on `port` keeping its streams in `store`, once it listens.
fn nats_server(port: u16, store: &std::path::Path) -> std::process::Child {
    let server = std::process::Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nats-server (the Debian package; .ci/run installs it)");
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "nats-server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

fn nats_lines(url: &str, stream: &str) -> Vec<(String, OpenedRecord)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        let Ok(mut stream) = js.get_stream(stream).await else { return Vec::new() };
        let state = stream.info().await.unwrap().state.clone();
        let mut out = Vec::new();
        for seq in state.first_sequence..=state.last_sequence {
            let Ok(message) = stream.get_raw_message(seq).await else { continue };
            let id = message.headers.get(async_nats::header::NATS_MESSAGE_ID).unwrap().as_str().to_owned();
            out.push((id, serde_json::from_slice(&message.payload).unwrap()));
        }
        out
    })
}

#[test]
fn with_the_nats_sink_each_lucky_share_is_one_message_named_by_packet_and_user() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let store = tempfile::tempdir().unwrap();
    let mut server = nats_server(port, store.path());
    let url = format!("nats://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("timeline.toml");
    std::fs::write(&config, RATES).unwrap();
    let args = ["--cores", "2", "--config", config.to_str().unwrap(), "--handoff-sink", "nats"];
    let nats = ["--handoff-nats-urls", &url, "--handoff-nats-create-stream", "true"];
    let node = Node::start_in(dir, &[&args[..], &nats[..]].concat());
    let members: Vec<u64> = (300..306).collect();
    let mut c = node.login(2, 1);
    let group = create_group(&mut c, &members);
    let count = members.len() as u16 + 1;
    let packet = send_lucky(&mut c, group, count);
    let mut got = HashMap::new();
    for &user in members.iter().chain([2u64].iter()) {
        got.insert(user, open(&node, user, group, packet));
    }
    let until = Instant::now() + Duration::from_secs(20);
    let lines = loop {
        let lines = nats_lines(&url, "REDRAIN_OPENS");
        if lines.len() >= got.len() || Instant::now() > until {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(lines.len(), got.len(), "one message per share");
    for (id, line) in &lines {
        assert_eq!(id, &format!("lucky-{packet}-{}", line.user_id), "the de-duplication id names the share");
        assert_eq!((line.kind, line.group_id), (OpenedKind::Lucky, Some(group)));
        assert_eq!(Some(&line.amount_fen), got.get(&line.user_id));
    }
    assert_eq!(lines.iter().map(|(_, l)| u64::from(l.amount_fen)).sum::<u64>(), u64::from(TOTAL_FEN));
    drop(node);
    let _ = server.kill();
    let _ = server.wait();
}

/// Bytes of each core's timeline log segments: (bytes, bytes of the newest segment).
fn timeline_bytes(data: &std::path::Path) -> Vec<(u64, u64)> {
    (0..CORES)
        .map(|core| {
            let segs = common::log_segments(&data.join(format!("core-{core}")).join("timeline"));
            (segs.iter().map(|s| s.1).sum(), segs.last().map_or(0, |s| s.1))
        })
        .collect()
}

#[test]
fn while_the_sink_is_down_retention_keeps_every_share_it_has_not_acknowledged() {
    const RETENTION_BYTES_MAX: u64 = 64 << 10;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let store = tempfile::tempdir().unwrap();
    let mut server = nats_server(port, store.path());
    let url = format!("nats://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("timeline.toml");
    let retention = format!(
        "[timeline]\nsegment_bytes = {}\nretention_bytes_max = {RETENTION_BYTES_MAX}\ncheckpoint_interval_s = 1\n",
        16 << 10
    );
    std::fs::write(&config, format!("{RATES}{retention}")).unwrap();
    let args = ["--cores", "2", "--config", config.to_str().unwrap(), "--handoff-sink", "nats"];
    let nats = ["--handoff-nats-urls", &url, "--handoff-nats-create-stream", "true"];
    let node = Node::start_in(dir, &[&args[..], &nats[..]].concat());
    // The sink goes away before any share is drawn.
    let _ = server.kill();
    let _ = server.wait();

    let creators: Vec<u64> = (0..CORES).map(|core| (1..).find(|u| home_core(*u, CORES) == core).unwrap()).collect();
    let others: Vec<u64> = (100..100 + MEMBERS - 1).collect();
    let mut got: HashMap<(u64, u64), u32> = HashMap::new();
    for &creator in &creators {
        let mut c = node.login(creator, 1);
        let group = create_group(&mut c, &others);
        let packet = send_lucky(&mut c, group, MEMBERS as u16);
        for &user in others.iter().chain([creator].iter()) {
            got.insert((packet, user), open(&node, user, group, packet));
        }
    }
    // Messages between the creators (one on each core) fill both logs far past the bound.
    let payload = [7u8; 200];
    let mut clients: Vec<BlockingClient> = creators.iter().map(|u| node.login(*u, 2)).collect();
    for round in 0..40u64 {
        let mut queued = Vec::new();
        for (i, c) in clients.iter_mut().enumerate() {
            for k in 0..50u64 {
                let send = TimelineRequest::Send {
                    target_kind: redrain_net::timeline::TARGET_USER,
                    target: creators[(i + 1) % CORES],
                    client_msg_id: 1 + round * 50 + k,
                    content_type: redrain_net::timeline::CONTENT_TEXT,
                    payload: &payload,
                };
                queued.push((i, c.queue(&Request::Timeline(send))));
            }
            c.flush().unwrap();
        }
        for (i, id) in queued {
            let f = loop {
                let f = clients[i].recv().unwrap();
                if f.request_id != 0 {
                    break f;
                }
            };
            assert_eq!(f.request_id, id);
            assert!(
                matches!(f.parse().unwrap(), Response::Timeline(TimelineResponse::SendOk { .. })),
                "{:?}",
                f.parse()
            );
        }
    }
    // Checkpoints run every second and move the timelines' watermark past the shares;
    // the oldest segment still holds shares the sink never took, so nothing goes.
    let until = Instant::now() + Duration::from_secs(20);
    while node.metric_sum("redrain_timeline_checkpoints_total", &[]) < 6.0 {
        assert!(Instant::now() < until, "no checkpoints");
        std::thread::sleep(Duration::from_millis(100));
    }
    let held = timeline_bytes(&node.data_dir());
    assert!(held.iter().all(|(bytes, _)| *bytes > 4 * RETENTION_BYTES_MAX), "{held:?}");
    assert_eq!(node.metric_sum("redrain_timeline_segments_deleted_total", &[]), 0.0, "logs {held:?}");
    // The operator sees it on /handoff (a node without an event: no open queue consumers).
    // A publish fails once its ack timeout (5 s by default) passed: wait for `stalled`.
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let (code, body) = node.http_get("/handoff");
        let status: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{code} {body}: {e}"));
        if status["lucky"]["stalled"] == true || Instant::now() > until {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status["cores"], serde_json::json!([]), "{status}");
    assert_eq!(status["lucky"]["stalled"], true, "{status}");
    assert!(status["lucky"]["cores"][0]["sink_errors_total"].as_u64().unwrap() > 0, "{status}");
    // Behind by every message written since (the log's records, not shares).
    assert!(status["lucky"]["behind_records"].as_u64().unwrap() > 4_000, "{status}");

    // The sink comes back: every share arrives once, then retention catches up.
    let mut server = nats_server(port, store.path());
    let until = Instant::now() + Duration::from_secs(60);
    let lines = loop {
        let lines = nats_lines(&url, "REDRAIN_OPENS");
        if lines.len() >= got.len() || Instant::now() > until {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(lines.len(), got.len(), "one message per share, none lost to retention");
    for (_, line) in &lines {
        assert_eq!(Some(&line.amount_fen), got.get(&(line.packet_id, line.user_id)));
    }
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let files = timeline_bytes(&node.data_dir());
        if files.iter().all(|(bytes, newest)| *bytes <= RETENTION_BYTES_MAX + newest) {
            break;
        }
        assert!(Instant::now() < until, "retention never resumed: {files:?} (held {held:?})");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(node.metric_sum("redrain_timeline_segments_deleted_total", &[]) >= 2.0);
    let status: serde_json::Value = serde_json::from_str(&node.http_get("/handoff").1).unwrap();
    assert_eq!(status["lucky"]["stalled"], false, "{status}");
    drop(node);
    let _ = server.kill();
    let _ = server.wait();
}
