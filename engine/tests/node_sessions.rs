//! End-to-end behaviour of `redrain serve` over real sockets: handshake, login,
//! pipelining, home-core hand-off, replacement, limits, timeouts, bad input,
//! admin endpoint and graceful shutdown.

mod common;

use common::{Node, TIMEOUT};
use redrain_engine::shard::handoff::home_core;
use redrain_net::client::{BlockingClient, ClientError};
use redrain_net::frame::encode_frame;
use redrain_net::message::{Request, Response};
use redrain_net::{ErrorCode, MessageType};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn error_code(f: &redrain_net::client::ResponseFrame) -> Option<ErrorCode> {
    match f.parse().unwrap() {
        Response::Error { code, .. } | Response::Closing { code, .. } => ErrorCode::from_u16(code),
        _ => None,
    }
}

fn expect_server_error(r: Result<impl std::fmt::Debug, ClientError>, want: ErrorCode) {
    match r {
        Err(ClientError::Server { code, .. }) => assert_eq!(ErrorCode::from_u16(code), Some(want)),
        other => panic!("expected {want}, got {other:?}"),
    }
}

/// Reads until the server closes; returns every frame it sent before.
fn read_until_closed(c: &mut BlockingClient) -> Vec<redrain_net::client::ResponseFrame> {
    let mut frames = Vec::new();
    loop {
        match c.recv() {
            Ok(f) => frames.push(f),
            Err(ClientError::Closed) => return frames,
            Err(ClientError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return frames,
            Err(e) => panic!("while waiting for close: {e}"),
        }
    }
}

#[test]
fn login_ping_and_pipelined_requests_match_by_request_id() {
    let node = pipelined_pings_on_both_cores(&["--cores", "2"]);
    // The default driver reads through the cores' own rings.
    assert!(node.metric_sum("redrain_net_ring_completions_total", &[]) > 0.0);
}

#[test]
fn the_glommio_network_driver_still_serves_pipelined_requests_and_hand_offs() {
    let node = pipelined_pings_on_both_cores(&["--cores", "2", "--net-driver", "glommio"]);
    assert_eq!(node.metric_sum("redrain_net_ring_completions_total", &[]), 0.0, "no ring with --net-driver glommio");
    pipelined_requests_after_login_survive_the_hand_off(&node);
}

fn pipelined_pings_on_both_cores(args: &[&str]) -> Node {
    let node = Node::start(args);
    let mut held = Vec::new();
    for user in 1..=8u64 {
        let mut c = node.connect();
        let (u, d, home, _) = c.login(&node.token(user, 3)).unwrap();
        assert_eq!((u, d, home as usize), (user, 3, home_core(user, 2)), "session lives on its home core");
        let mut ids = Vec::new();
        for i in 0..50u32 {
            ids.push((c.queue(&Request::Ping { payload: &i.to_be_bytes() }), i));
        }
        c.flush().unwrap();
        for (id, i) in ids {
            let f = c.recv().unwrap();
            assert_eq!(f.request_id, id, "{:?}", f.parse());
            assert_eq!(f.parse().unwrap(), Response::Pong { payload: &i.to_be_bytes() });
        }
        held.push(c);
    }
    node.wait_metric("redrain_sessions_active", &[], 8.0);
    assert!(node.metric_sum("redrain_handoffs_sent_total", &[]) >= 1.0, "some of 8 users live on the other core");
    assert_eq!(node.metric_sum("redrain_frames_total", &["type=\"ping\"", "outcome=\"ok\""]), 400.0);
    // 50 pipelined pings leave in far fewer writes than frames.
    assert!(node.metric_sum("redrain_socket_writes_total", &[]) < 200.0);
    // Housekeeping copies the ring figures into /metrics every tick.
    std::thread::sleep(Duration::from_millis(250));
    node
}

#[test]
fn hello_login_and_requests_in_one_write_survive_the_hand_off() {
    let node = Node::start(&["--cores", "2"]);
    pipelined_requests_after_login_survive_the_hand_off(&node);
}

fn pipelined_requests_after_login_survive_the_hand_off(node: &Node) {
    // Pick a user whose home core differs from wherever the kernel put us by
    // trying both: every user's pipelined ping must be answered after LoginOk.
    for user in [11u64, 12, 13, 14, 15, 16] {
        let mut s = TcpStream::connect(node.client).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut out = Vec::new();
        Request::Hello { version_min: 1, version_max: 1 }.encode(1, &mut out);
        let t = node.token(user, 0);
        Request::Login { token: &t }.encode(2, &mut out);
        Request::Ping { payload: b"after" }.encode(3, &mut out);
        s.write_all(&out).unwrap();
        let mut c = BlockingClient::from_stream(s);
        let kinds: Vec<(u32, u8)> = (0..3).map(|_| c.recv().unwrap()).map(|f| (f.request_id, f.kind)).collect();
        assert_eq!(kinds, vec![(1, 0x81), (2, 0x82), (3, 0x83)], "user {user}");
    }
}

#[test]
fn a_new_login_of_the_same_device_replaces_the_old_session() {
    let node = Node::start(&["--cores", "2"]);
    let mut old = node.login(77, 1);
    let mut other_device = node.login(77, 2);
    let mut new = node.login(77, 1);
    let frames = read_until_closed(&mut old);
    assert_eq!(frames.last().and_then(error_code), Some(ErrorCode::Replaced));
    assert_eq!(frames.last().unwrap().kind, MessageType::Closing as u8);
    new.call(&Request::Ping { payload: b"" }).unwrap();
    other_device.call(&Request::Ping { payload: b"" }).unwrap();
    node.wait_metric("redrain_sessions_replaced_total", &[], 1.0);
    assert_eq!(node.metric_sum("redrain_sessions_active", &[]), 2.0);
}

#[test]
fn requests_before_login_get_login_required_and_bad_tokens_are_typed() {
    let node = Node::start(&["--cores", "1"]);
    let mut c = node.connect();
    expect_server_error(c.call(&Request::Logout), ErrorCode::LoginRequired);
    expect_server_error(c.call(&Request::Reserved { kind: MessageType::Shake, body: b"" }), ErrorCode::LoginRequired);
    // Ping is allowed before login.
    c.call(&Request::Ping { payload: b"p" }).unwrap();
    // Expired.
    let expired = node.keys.mint(redrain_engine::auth::TokenClaims { user_id: 1, device_id: 0, expires_at_unix_s: 10 });
    expect_server_error(c.login(&expired), ErrorCode::TokenExpired);
    // Forged: signed with another secret.
    let other = redrain_engine::auth::TokenKeys::new(b"not-the-node-secret-123456", None).unwrap();
    let forged =
        other.mint(redrain_engine::auth::TokenClaims { user_id: 1, device_id: 0, expires_at_unix_s: u64::MAX });
    expect_server_error(c.login(&forged), ErrorCode::TokenSignature);
    // Tampered: a valid token with the user id changed.
    let mut tampered = node.token(5, 0);
    tampered[8] ^= 1;
    expect_server_error(c.login(&tampered), ErrorCode::TokenSignature);
    // Wrong length.
    let mut raw = Vec::new();
    encode_frame(&mut raw, MessageType::Login as u8, 99, |b| b.extend_from_slice(&[1; 20]));
    c.send_raw(&raw).unwrap();
    assert_eq!(error_code(&c.recv().unwrap()), Some(ErrorCode::BadToken));
    // The connection is still usable and can log in properly.
    c.login(&node.token(5, 0)).unwrap();
    c.call(&Request::Ping { payload: b"" }).unwrap();
    let m = node.metrics();
    for reason in ["login_required", "token_expired", "token_signature", "bad_token"] {
        assert!(
            common::metric_sum(&m, "redrain_rejected_frames_total", &[&format!("reason=\"{reason}\"")]) >= 1.0,
            "{reason}"
        );
    }
}

#[test]
fn unknown_types_and_out_of_order_frames_get_typed_errors() {
    let node = Node::start(&["--cores", "1"]);
    let mut c = node.login(9, 0);
    let mut raw = Vec::new();
    encode_frame(&mut raw, 0x7e, 5, |_| {});
    c.send_raw(&raw).unwrap();
    let f = c.recv().unwrap();
    assert_eq!((f.request_id, error_code(&f)), (5, Some(ErrorCode::UnknownType)));
    expect_server_error(c.call(&Request::Hello { version_min: 1, version_max: 1 }), ErrorCode::OutOfOrder);
    expect_server_error(c.login(&node.token(9, 0)), ErrorCode::OutOfOrder);
    // A server-to-client type sent by a client.
    raw.clear();
    encode_frame(&mut raw, MessageType::Pong as u8, 6, |_| {});
    c.send_raw(&raw).unwrap();
    assert_eq!(error_code(&c.recv().unwrap()), Some(ErrorCode::OutOfOrder));
    expect_server_error(
        c.call(&Request::Reserved { kind: MessageType::AdminSwitch, body: b"x" }),
        ErrorCode::NotServed,
    );
    // Send is served now: a body that does not match its layout is malformed.
    expect_server_error(c.call(&Request::Reserved { kind: MessageType::Send, body: b"x" }), ErrorCode::MalformedBody);
    // Malformed body of a known type.
    raw.clear();
    encode_frame(&mut raw, MessageType::Logout as u8, 7, |b| b.push(1));
    c.send_raw(&raw).unwrap();
    assert_eq!(error_code(&c.recv().unwrap()), Some(ErrorCode::MalformedBody));
    c.call(&Request::Ping { payload: b"still alive" }).unwrap();
    let m = node.metrics();
    assert!(common::metric_sum(&m, "redrain_rejected_frames_total", &["reason=\"unknown_type\""]) >= 1.0);
    assert!(common::metric_sum(&m, "redrain_rejected_frames_total", &["reason=\"out_of_order\""]) >= 3.0);
    assert!(common::metric_sum(&m, "redrain_rejected_frames_total", &["reason=\"malformed_body\""]) >= 1.0);
}

#[test]
fn first_frame_must_be_hello_with_a_common_version() {
    let node = Node::start(&["--cores", "1"]);
    let mut c = BlockingClient::from_stream(TcpStream::connect(node.client).unwrap());
    c.stream().set_read_timeout(Some(TIMEOUT)).unwrap();
    c.send(&Request::Ping { payload: b"" }).unwrap();
    let frames = read_until_closed(&mut c);
    assert_eq!(frames.iter().map(error_code).collect::<Vec<_>>(), vec![Some(ErrorCode::HandshakeRequired)]);

    let mut c = BlockingClient::from_stream(TcpStream::connect(node.client).unwrap());
    c.stream().set_read_timeout(Some(TIMEOUT)).unwrap();
    c.send(&Request::Hello { version_min: 2, version_max: 9 }).unwrap();
    let frames = read_until_closed(&mut c);
    assert_eq!(frames.iter().map(error_code).collect::<Vec<_>>(), vec![Some(ErrorCode::UnsupportedVersion)]);
}

#[test]
fn oversized_frames_are_refused_before_their_body_and_close_the_connection() {
    let node = Node::start(&["--cores", "1", "--frame-bytes-max", "1024"]);
    let mut c = node.login(3, 0);
    // Announce a 1 GiB frame; only the header is sent.
    c.send_raw(&[0x40, 0, 0, 0, MessageType::Ping as u8, 0, 0, 0, 0, 1]).unwrap();
    let frames = read_until_closed(&mut c);
    assert_eq!(frames.last().and_then(error_code), Some(ErrorCode::FrameTooLarge));
    // Also a frame just over the limit, sent whole.
    let mut c = node.login(4, 0);
    let mut raw = Vec::new();
    encode_frame(&mut raw, MessageType::Ping as u8, 1, |b| b.extend_from_slice(&[0; 1100]));
    c.send_raw(&raw).unwrap();
    assert_eq!(read_until_closed(&mut c).last().and_then(error_code), Some(ErrorCode::FrameTooLarge));
    // Reserved flag bits and impossible lengths are malformed.
    let mut c = node.login(5, 0);
    c.send_raw(&[0, 0, 0, 2, 1, 1]).unwrap();
    assert_eq!(read_until_closed(&mut c).last().and_then(error_code), Some(ErrorCode::MalformedFrame));
    node.wait_metric("redrain_rejected_frames_total", &["reason=\"frame_too_large\""], 2.0);
    node.wait_metric("redrain_rejected_frames_total", &["reason=\"malformed_frame\""], 1.0);
}

#[test]
fn truncated_frames_are_held_until_complete_and_dropped_on_close() {
    let node = Node::start(&["--cores", "1"]);
    let mut c = node.login(6, 0);
    let mut raw = Vec::new();
    Request::Ping { payload: b"split" }.encode(42, &mut raw);
    // Byte by byte: the server must wait for the whole frame.
    for b in &raw {
        c.send_raw(std::slice::from_ref(b)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let f = c.recv().unwrap();
    assert_eq!((f.request_id, f.parse().unwrap()), (42, Response::Pong { payload: b"split" }));
    // A truncated frame followed by EOF: nothing is answered, the node stays up.
    c.send_raw(&raw[..7]).unwrap();
    c.stream().shutdown(std::net::Shutdown::Write).unwrap();
    assert!(read_until_closed(&mut c).is_empty());
    node.wait_metric("redrain_connections_closed_total", &["reason=\"peer_closed\""], 1.0);
    node.login(7, 0).call(&Request::Ping { payload: b"" }).unwrap();
}

#[test]
fn after_a_client_half_close_the_node_answers_every_frame_received_before_it_then_closes() {
    let node = Node::start(&["--cores", "2"]);
    let mut c = BlockingClient::from_stream(TcpStream::connect(node.client).unwrap());
    c.stream().set_read_timeout(Some(TIMEOUT)).unwrap();
    // User 3's home core may be the other one: the answers must survive the hand-off too.
    let token = node.token(3, 0);
    let mut raw = Vec::new();
    Request::Hello { version_min: 1, version_max: 1 }.encode(1, &mut raw);
    Request::Ping { payload: b"a" }.encode(2, &mut raw);
    Request::Login { token: &token }.encode(3, &mut raw);
    Request::Ping { payload: b"b" }.encode(4, &mut raw);
    // A partial frame right before the EOF is discarded.
    let mut partial = Vec::new();
    Request::Ping { payload: b"c" }.encode(5, &mut partial);
    raw.extend_from_slice(&partial[..7]);
    c.send_raw(&raw).unwrap();
    c.stream().shutdown(std::net::Shutdown::Write).unwrap();
    let got: Vec<_> = read_until_closed(&mut c).iter().map(|f| (f.request_id, f.kind)).collect();
    assert_eq!(got, vec![(1, 0x81), (2, 0x83), (3, 0x82), (4, 0x83)]);
    node.wait_metric("redrain_connections_closed_total", &["reason=\"peer_closed\""], 1.0);
}

#[test]
fn the_development_auth_secret_file_is_64_hex_characters_and_a_newline() {
    let node = Node::start(&["--cores", "1"]);
    let text = std::fs::read_to_string(node.dir.path().join("data/auth.secret")).unwrap();
    assert_eq!(text.len(), 65, "{text:?}");
    assert!(text.ends_with('\n'));
    assert!(text[..64].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{text:?}");
    // The MAC key is the decoded bytes: a token minted with them logs in.
    let keys = redrain_engine::auth::TokenKeys::new(&hex::decode(&text[..64]).unwrap(), None).unwrap();
    let claims = redrain_engine::auth::TokenClaims {
        user_id: 77,
        device_id: 1,
        expires_at_unix_s: redrain_engine::auth::now_unix_s() + 60,
    };
    node.connect().login(&keys.mint(claims)).unwrap();
    // An operator's own secret in the same format is used after a restart.
    drop(node);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let secret = [0x5au8; 32];
    std::fs::write(dir.path().join("data/auth.secret"), format!("{}\n", hex::encode(secret))).unwrap();
    let node = Node::start_in(dir, &["--cores", "1"]);
    let keys = redrain_engine::auth::TokenKeys::new(&secret, None).unwrap();
    node.connect().login(&keys.mint(claims)).unwrap();
}

#[test]
fn silent_clients_are_closed_by_login_and_idle_timeouts() {
    let node = Node::start(&[
        "--cores",
        "1",
        "--login-timeout-ms",
        "300",
        "--heartbeat-interval-ms",
        "200",
        "--idle-timeout-ms",
        "600",
    ]);
    // Connected but never says anything.
    let mut silent = TcpStream::connect(node.client).unwrap();
    silent.set_read_timeout(Some(TIMEOUT)).unwrap();
    // Logged in, then silent.
    let mut idle = node.login(8, 0);
    // Pings before login do not extend the login timeout.
    let mut pinger = node.connect();
    // Logged in and heartbeating: stays.
    let mut alive = node.login(9, 0);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(150));
        alive.call(&Request::Ping { payload: b"" }).unwrap();
        let _ = pinger.send(&Request::Ping { payload: b"" });
    }
    let closing = read_until_closed(&mut pinger).into_iter().filter_map(|f| error_code(&f)).collect::<Vec<_>>();
    assert_eq!(closing, vec![ErrorCode::IdleTimeout], "pinging without login is closed too");
    let mut rest = Vec::new();
    silent.read_to_end(&mut rest).unwrap();
    let mut codec = redrain_net::client::ClientCodec::new(1 << 20);
    codec.feed(&rest);
    let f = codec.next_frame().unwrap().expect("closing frame");
    assert_eq!(error_code(&f), Some(ErrorCode::IdleTimeout));
    assert_eq!(read_until_closed(&mut idle).last().and_then(error_code), Some(ErrorCode::IdleTimeout));
    alive.call(&Request::Ping { payload: b"" }).unwrap();
}

#[test]
fn per_core_session_limit_refuses_with_a_clear_error() {
    let node = Node::start(&["--cores", "1", "--sessions-per-core-max", "3"]);
    let _a = node.login(1, 0);
    let _b = node.login(2, 0);
    let _c = node.login(3, 0);
    let s = TcpStream::connect(node.client).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut c = BlockingClient::from_stream(s);
    let frames = read_until_closed(&mut c);
    assert_eq!(frames.iter().map(error_code).collect::<Vec<_>>(), vec![Some(ErrorCode::SessionLimit)]);
    node.wait_metric("redrain_connections_refused_full_total", &[], 1.0);
}

#[test]
fn logout_answers_and_closes() {
    let node = Node::start(&["--cores", "1"]);
    let mut c = node.login(10, 0);
    c.call(&Request::Logout).unwrap();
    assert!(read_until_closed(&mut c).is_empty());
    node.wait_metric("redrain_frames_total", &["type=\"logout\"", "outcome=\"ok\""], 1.0);
    let until = std::time::Instant::now() + TIMEOUT;
    while node.metric_sum("redrain_sessions_active", &[]) > 0.0 {
        assert!(std::time::Instant::now() < until, "session not removed after logout");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn admin_serves_metrics_and_health() {
    let node = Node::start(&["--cores", "2"]);
    let _c = node.login(1, 0);
    let (status, body) = node.http_get("/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(node.http_get("/nope").0, 404);
    let m = node.metrics();
    for family in [
        "redrain_sessions_active",
        "redrain_frames_total",
        "redrain_request_latency_seconds_bucket",
        "redrain_rejected_frames_total",
        "redrain_process_resident_bytes",
    ] {
        assert!(m.contains(&format!("# TYPE {family}")) || m.contains(family), "missing {family}");
    }
    assert_eq!(common::metric_sum(&m, "redrain_cores", &[]), 2.0);
    // promtool, when installed (CI installs it), must accept the exposition.
    common::promtool_check(&m);
}

#[test]
fn sigterm_tells_sessions_drains_and_exits_zero() {
    let mut node = Node::start(&["--cores", "2"]);
    let mut clients: Vec<_> = (1..=6u64).map(|u| node.login(u, 0)).collect();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(node.pid()), nix::sys::signal::Signal::SIGTERM).unwrap();
    for c in &mut clients {
        assert_eq!(read_until_closed(c).last().and_then(error_code), Some(ErrorCode::ShuttingDown));
    }
    let status = node.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {}", node.stderr.lock().unwrap());
    assert!(TcpStream::connect(node.client).is_err(), "listener closed after drain");
}

#[test]
fn a_client_that_stops_reading_is_closed_once_at_the_write_timeout_not_at_a_later_expiry() {
    const WRITE_TIMEOUT_MS: u64 = 2_000;
    let node = Node::start(&["--cores", "1", "--write-timeout-ms", &WRITE_TIMEOUT_MS.to_string()]);
    let mut c = node.login(12, 0);
    let mut writer = c.stream().try_clone().unwrap();
    writer.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    // Pipeline pings with the largest payload and never read the pongs: the
    // node's socket send buffer fills, its write stalls, and it must give up.
    let started = std::time::Instant::now();
    let pusher = std::thread::spawn(move || {
        let mut batch = Vec::new();
        for i in 0..2_000u32 {
            Request::Ping { payload: &[7u8; 256] }.encode(i + 1, &mut batch);
        }
        for _ in 0..200 {
            if writer.write_all(&batch).is_err() {
                return;
            }
        }
    });
    let until = started + TIMEOUT;
    while node.metric_sum("redrain_connections_closed_total", &["reason=\"write_timeout\""]) < 1.0 {
        assert!(std::time::Instant::now() < until, "no write-timeout close");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The output stalls within a fraction of a second of the first pings, so
    // one deadline closes the connection at about WRITE_TIMEOUT_MS. A
    // per-write-call timeout let the node take more output (and read more
    // input) at the first expiry and close only at the second, at twice the
    // timeout: the bound below separates the two with a wide margin. This is
    // the protocol's close rule, not a performance figure.
    let closed_after = started.elapsed();
    assert!(
        closed_after < Duration::from_millis(WRITE_TIMEOUT_MS * 7 / 4),
        "closed after {closed_after:?}, the write timeout is {WRITE_TIMEOUT_MS} ms"
    );
    assert_eq!(node.metric_sum("redrain_connections_closed_total", &["reason=\"io_error\""]), 0.0);
    assert_eq!(node.metric_sum("redrain_sessions_active", &[]), 0.0);
    drop(c);
    pusher.join().unwrap();
    // Other clients are unaffected.
    node.login(13, 0).call(&Request::Ping { payload: b"" }).unwrap();
}

#[test]
fn redrain_token_mints_tokens_the_node_accepts() {
    let node = Node::start(&["--cores", "2"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_redrain"))
        .args(["token", "--user", "4242", "--device", "7", "--ttl", "60", "--data-dir"])
        .arg(node.dir.path().join("data"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hex_token = String::from_utf8(out.stdout).unwrap();
    let token: [u8; redrain_net::message::TOKEN_BYTES] = hex::decode(hex_token.trim()).unwrap().try_into().unwrap();
    let mut c = node.connect();
    let (user, device, _, _) = c.login(&token).unwrap();
    assert_eq!((user, device), (4242, 7));
}

#[test]
fn config_file_then_environment_then_flags_take_precedence_in_that_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("redrain.toml");
    std::fs::write(&config, "sessions_per_core_max = 1\nframe_bytes_max = 4096\nlogin_timeout_ms = 60000\n").unwrap();
    // File says 1 session per core; the flag raises it to 2. File says 4 KiB
    // frames; the environment lowers that to 1 KiB.
    let node = Node::start_env(
        dir,
        &["--cores", "1", "--config", config.to_str().unwrap(), "--sessions-per-core-max", "2"],
        &[("REDRAIN_FRAME_BYTES_MAX", "1024")],
    );
    let mut first = BlockingClient::from_stream(TcpStream::connect(node.client).unwrap());
    first.stream().set_read_timeout(Some(TIMEOUT)).unwrap();
    let f = first.call(&Request::Hello { version_min: 1, version_max: 1 }).unwrap();
    match f.parse().unwrap() {
        Response::HelloOk { frame_bytes_max, .. } => assert_eq!(frame_bytes_max, 1024),
        other => panic!("{other:?}"),
    }
    let _second = node.connect();
    // Two connections are open now (the limit from the flag); a third is refused.
    let mut third = BlockingClient::from_stream(TcpStream::connect(node.client).unwrap());
    third.stream().set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(
        read_until_closed(&mut third).iter().map(error_code).collect::<Vec<_>>(),
        vec![Some(ErrorCode::SessionLimit)]
    );

    // A config file with an unknown key is refused with a clear message.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listn = \"127.0.0.1:1\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_redrain"))
        .args(["serve", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown field `listn`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
