//! Operator switches, the admin API's authentication, server-driven backoff, SIGHUP
//! reload and slow-reader disconnects, against the real `redrain serve` binary.

mod common;

use common::{redrain, Node, TIMEOUT};
use redrain_net::client::{BlockingClient, ClientError};
use redrain_net::message::{Request, Response, SEALED_TICKET_BYTES};
use redrain_net::ErrorCode;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const RAIN_ENV: &[(&str, &str)] = &[("REDRAIN_DEMO_EVENT", "true")];

fn start_rain(dir: tempfile::TempDir, extra: &[&str]) -> Node {
    let mut args = vec!["--cores", "2"];
    if !extra.contains(&"--shake-interval-ms") {
        args.extend_from_slice(&["--shake-interval-ms", "0"]);
    }
    args.extend_from_slice(extra);
    Node::start_env(dir, &args, RAIN_ENV)
}

fn admin_token(node: &Node) -> String {
    std::fs::read_to_string(node.data_dir().join("admin.token")).unwrap().trim().to_owned()
}

/// One admin request: (status, headers, body).
fn http(node: &Node, method: &str, path: &str, token: Option<&str>) -> (u16, String, String) {
    let mut s = TcpStream::connect(node.admin).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}X-Operator: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    (status, head.to_owned(), body.to_owned())
}

fn switch(node: &Node, path: &str) -> serde_json::Value {
    let token = admin_token(node);
    let (status, _, body) = http(node, "POST", path, Some(&token));
    assert_eq!(status, 200, "{path}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["applied_on_every_core"], true, "{path}: {v}");
    assert_eq!(v["persisted"], true, "{path}: {v}");
    v
}

fn status(node: &Node) -> serde_json::Value {
    let (code, _, body) = http(node, "GET", "/admin/status", Some(&admin_token(node)));
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Logged-in clients with at least one homed on each of the node's two cores.
fn clients_on_every_core(node: &Node) -> Vec<BlockingClient> {
    let mut cores_seen = [false; 2];
    let mut clients = Vec::new();
    for user in 1..200u64 {
        let mut c = node.connect();
        let (_, _, home, _) = c.login(&node.token(user, 1)).unwrap();
        if !cores_seen[home as usize] {
            cores_seen[home as usize] = true;
            clients.push(c);
        }
        if cores_seen.iter().all(|s| *s) {
            return clients;
        }
    }
    panic!("no users on both cores");
}

fn error_code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> u16 {
    match r {
        Err(ClientError::Server { code, .. }) => code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

fn shake(c: &mut BlockingClient) -> Result<(u32, Option<[u8; SEALED_TICKET_BYTES]>), ClientError> {
    let f = c.call(&Request::Shake)?;
    match f.parse().unwrap() {
        Response::ShakeOk { shake_interval_ms, sealed, .. } => Ok((shake_interval_ms, sealed.copied())),
        other => panic!("unexpected {other:?}"),
    }
}

fn win(c: &mut BlockingClient) -> [u8; SEALED_TICKET_BYTES] {
    let until = Instant::now() + TIMEOUT;
    loop {
        if let (_, Some(s)) = shake(c).expect("shake") {
            return s;
        }
        assert!(Instant::now() < until, "no win");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn switches_need_the_token_and_a_wrong_token_is_refused_and_counted() {
    let node = start_rain(tempfile::tempdir().unwrap(), &[]);
    let (code, head, _) = http(&node, "POST", "/admin/pause", None);
    assert_eq!(code, 401);
    assert!(head.to_ascii_lowercase().contains("www-authenticate: bearer"), "{head}");
    assert_eq!(http(&node, "POST", "/admin/pause", Some("00112233445566778899aabbccddeeff")).0, 403);
    assert_eq!(http(&node, "GET", "/admin/status", Some("not-hex")).0, 401);
    assert_eq!(node.metric_sum("redrain_admin_auth_failures_total", &["missing"]), 2.0);
    assert_eq!(node.metric_sum("redrain_admin_auth_failures_total", &["wrong"]), 1.0);
    assert!(!status(&node)["paused"].as_bool().unwrap(), "refused requests changed nothing");
    // /metrics and /healthz stay open; HEAD has no body; unknown methods get 405 with Allow.
    assert_eq!(http(&node, "GET", "/healthz", None).0, 200);
    let (code, head, body) = http(&node, "HEAD", "/metrics", None);
    assert_eq!((code, body.as_str()), (200, ""));
    assert!(head.to_ascii_lowercase().contains("content-length:"), "{head}");
    let (code, head, _) = http(&node, "DELETE", "/metrics", None);
    assert_eq!(code, 405);
    assert!(head.to_ascii_lowercase().contains("allow: get, head"), "{head}");
    assert_eq!(http(&node, "POST", "/metrics", None).0, 405);
    assert_eq!(http(&node, "POST", "/admin/quota/lots", Some(&admin_token(&node))).0, 400);
    assert_eq!(http(&node, "POST", "/admin/degrade/9", Some(&admin_token(&node))).0, 400);
}

#[test]
fn every_switch_acts_on_every_core_and_survives_a_restart() {
    let mut node = start_rain(tempfile::tempdir().unwrap(), &[]);
    let mut clients = clients_on_every_core(&node);
    let tickets: Vec<_> = clients.iter_mut().map(win).collect();

    // pause: shakes answered Paused on both cores; opens go on.
    switch(&node, "/admin/pause");
    for (c, t) in clients.iter_mut().zip(&tickets) {
        assert_eq!(error_code(shake(c)), ErrorCode::Paused.as_u16());
        c.call(&Request::Open { sealed: t }).expect("opens are served while paused");
    }
    switch(&node, "/admin/resume");
    for c in clients.iter_mut() {
        shake(c).expect("shakes again after resume");
    }

    // degrade 2: every core runs at level 2 and tells its clients a 4x interval (base 0
    // here, so the interval stays 0: checked in backoff_reaches_clients).
    switch(&node, "/admin/degrade/2");
    node.wait_metric("redrain_degrade_level", &["core=\"0\""], 2.0);
    node.wait_metric("redrain_degrade_level", &["core=\"1\""], 2.0);

    // quota 0: a core issues at most the one token left in its bucket, then nothing.
    switch(&node, "/admin/quota/0");
    for c in clients.iter_mut() {
        let wins = (0..20).filter(|_| shake(c).unwrap().1.is_some()).count();
        assert!(wins <= 1, "quota 0 issued {wins} tickets on one core");
    }
    switch(&node, &format!("/admin/quota/{}", 200_000));

    // blacklist every key of the demo event: a won ticket no longer opens, none is issued.
    let keyring: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(node.data_dir().join("demo-event.keyring.json")).unwrap())
            .unwrap();
    let key_ids: Vec<u64> = keyring["keys"].as_array().unwrap().iter().map(|k| k["key_id"].as_u64().unwrap()).collect();
    assert!(!key_ids.is_empty() && key_ids.len() <= 64, "{} keys", key_ids.len());
    let fresh: Vec<_> = clients.iter_mut().map(win).collect();
    for k in &key_ids {
        switch(&node, &format!("/admin/blacklist/{k}"));
    }
    for (c, t) in clients.iter_mut().zip(&fresh) {
        let code = error_code(c.call(&Request::Open { sealed: t }));
        assert_eq!(code, ErrorCode::TicketKeyRefused.as_u16());
        for _ in 0..20 {
            assert_eq!(shake(c).unwrap().1, None, "no ticket of a refused key is issued");
        }
    }
    assert!(node.metric_sum("redrain_key_refused_draws_total", &[]) > 0.0);
    for k in &key_ids {
        switch(&node, &format!("/admin/whitelist/{k}"));
    }
    for (c, t) in clients.iter_mut().zip(&fresh) {
        c.call(&Request::Open { sealed: t }).expect("opens again once whitelisted");
    }

    // adopt: recorded (applies at the next start); drain: 503 and no new logins.
    let v = switch(&node, "/admin/adopt/2");
    assert!(v["note"].as_str().unwrap().contains("next start"));
    switch(&node, "/admin/pause");
    switch(&node, "/admin/blacklist/7");
    switch(&node, "/admin/drain");
    assert_eq!(node.http_get("/healthz").0, 503);
    let mut late = node.connect();
    assert_eq!(error_code(late.login(&node.token(999, 1))), ErrorCode::Draining.as_u16());
    assert!(late.call(&Request::Ping { payload: b"" }).is_err(), "draining closes the refused connection");
    let before = status(&node);
    assert_eq!(before["applied_version_per_core"].as_array().unwrap().len(), 2);
    let v = before["version"].as_u64().unwrap();
    assert!(before["applied_version_per_core"].as_array().unwrap().iter().all(|a| a.as_u64().unwrap() >= v));
    assert!(before["recent_changes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["who"].as_str().unwrap().contains("operator=test")));

    // Restart: the switches come back from their table.
    drop(clients);
    node.stop();
    let dir = node.take_dir();
    let node = start_rain(dir, &[]);
    let after = status(&node);
    for key in ["paused", "draining", "degrade_floor", "quota_per_s", "blacklist", "adopt_node"] {
        assert_eq!(after[key], before[key], "{key} after restart");
    }
    assert_eq!(after["degrade_floor"], 2);
    assert_eq!(node.http_get("/healthz").0, 503);
    // The CLI reads the dev token from the data dir.
    let out = redrain(&[
        "admin",
        "--admin",
        &node.admin.to_string(),
        "--data-dir",
        node.data_dir().to_str().unwrap(),
        "status",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli["paused"], true);
    let out = redrain(&[
        "admin",
        "--admin",
        &node.admin.to_string(),
        "--token",
        "00112233445566778899aabbccddeeff",
        "resume",
    ]);
    assert!(!out.status.success(), "a wrong token fails the CLI");
}

#[test]
fn backoff_reaches_clients_in_a_push_and_on_every_shake_answer() {
    let node = start_rain(tempfile::tempdir().unwrap(), &["--shake-interval-ms", "100"]);
    let mut c = node.login(5, 1);
    let (interval, _) = shake(&mut c).unwrap();
    assert_eq!(interval, 100);
    switch(&node, "/admin/degrade/2");
    // The push comes unasked (the connection is idle).
    let f = c.recv().unwrap();
    assert_eq!(f.request_id, 0);
    match f.parse().unwrap() {
        Response::Backoff { level, shake_interval_ms, retry_after_ms } => {
            assert_eq!((level, shake_interval_ms), (2, 400));
            assert!(retry_after_ms >= 400, "retry-after {retry_after_ms} grows with the level");
        }
        other => panic!("expected a Backoff push, got {other:?}"),
    }
    std::thread::sleep(Duration::from_millis(450));
    assert_eq!(shake(&mut c).unwrap().0, 400, "ShakeOk carries the degraded interval");
    // A client that ignores it is held to it.
    assert_eq!(error_code(shake(&mut c)), ErrorCode::TooFast.as_u16());
    // Level 3 and up sheds new logins (Busy with the current retry-after).
    switch(&node, "/admin/degrade/3");
    let mut late = node.connect();
    match late.login(&node.token(6, 1)) {
        Err(ClientError::Server { code, retry_after_ms, .. }) => {
            assert_eq!(code, ErrorCode::Busy.as_u16());
            assert!(retry_after_ms >= 800);
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    assert!(node.metric_sum("redrain_admission_rejected_total", &["class=\"admit\"", "reason=\"degraded\""]) >= 1.0);
    assert!(node.metric_sum("redrain_backoff_pushes_total", &[]) >= 1.0);
}

#[test]
fn sighup_reloads_the_admin_tokens_and_the_keyring_blacklist() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    let (a, b) = ("aa".repeat(16), "bb".repeat(16));
    std::fs::write(&config, format!("admin_token_hex = \"{a}\"\n")).unwrap();
    let node = start_rain(dir, &["--config", config.to_str().unwrap()]);
    assert_eq!(http(&node, "GET", "/admin/status", Some(&a)).0, 200);
    assert_eq!(http(&node, "GET", "/admin/status", Some(&b)).0, 403);
    // Rotate: b becomes current, a stays accepted as previous.
    std::fs::write(&config, format!("admin_token_hex = \"{b}\"\nadmin_token_previous_hex = \"{a}\"\n")).unwrap();
    let keyring_path = node.data_dir().join("demo-event.keyring.json");
    let mut keyring: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&keyring_path).unwrap()).unwrap();
    keyring["blacklist"] = serde_json::json!([3]);
    std::fs::write(&keyring_path, serde_json::to_string_pretty(&keyring).unwrap()).unwrap();
    // SAFETY: a signal to our own child, by pid.
    unsafe { libc::kill(node.pid(), libc::SIGHUP) };
    node.wait_metric("redrain_reloads_total", &["result=\"ok\""], 1.0);
    assert_eq!(http(&node, "GET", "/admin/status", Some(&b)).0, 200);
    let (code, _, body) = http(&node, "GET", "/admin/status", Some(&a));
    assert_eq!(code, 200, "the previous token is still accepted");
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["keyring_blacklist"], serde_json::json!([3]));
    // A broken file changes nothing and is counted.
    std::fs::write(&config, "admin_token_hex = 5\n").unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(node.pid(), libc::SIGHUP) };
    node.wait_metric("redrain_reloads_total", &["result=\"failed\""], 1.0);
    assert_eq!(http(&node, "GET", "/admin/status", Some(&b)).0, 200);
}

#[test]
fn a_client_that_never_reads_is_closed_once_at_the_write_timeout() {
    let node = Node::start(&["--write-timeout-ms", "500"]);
    let mut c = node.login(9, 1);
    let stream = c.stream();
    stream.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut batch = Vec::new();
    for i in 0..512u32 {
        Request::Ping { payload: &[7u8; 256] }.encode(i + 10, &mut batch);
    }
    // Pipeline pings and never read: the node's writes back up, it stops reading, and
    // the write timeout closes the connection.
    let started = Instant::now();
    while started.elapsed() < TIMEOUT {
        if stream.write_all(&batch).is_err() {
            break;
        }
    }
    node.wait_metric("redrain_connections_closed_total", &["write_timeout"], 1.0);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(node.metric_sum("redrain_connections_closed_total", &["write_timeout"]), 1.0, "closed once");
    assert_eq!(node.metric_sum("redrain_connections_closed_total", &["io_error"]), 0.0);
    assert_eq!(node.metric_sum("redrain_connections_open", &[]), 0.0);
}

#[test]
fn pipelined_requests_beyond_the_bound_are_answered_pipeline_full() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "pipelined_requests_max = 1\n").unwrap();
    let node = start_rain(dir, &["--config", config.to_str().unwrap()]);
    let mut c = node.login(11, 1);
    let (t1, t2) = (win(&mut c), win(&mut c));
    // Two new opens in one write: the first waits for its durable record, the second
    // finds the connection's one slot taken.
    let a = c.queue(&Request::Open { sealed: &t1 });
    let b = c.queue(&Request::Open { sealed: &t2 });
    c.flush().unwrap();
    let mut codes = std::collections::HashMap::new();
    for _ in 0..2 {
        let f = c.recv().unwrap();
        let code = match f.parse().unwrap() {
            Response::Error { code, .. } => Some(code),
            Response::OpenOk { .. } => None,
            other => panic!("unexpected {other:?}"),
        };
        codes.insert(f.request_id, code);
    }
    assert_eq!(codes[&a], None);
    assert_eq!(codes[&b], Some(ErrorCode::PipelineFull.as_u16()));
    c.call(&Request::Open { sealed: &t2 }).expect("the refused open goes through on retry");
    assert_eq!(node.metric_sum("redrain_pipeline_full_total", &[]), 1.0);
}

/// What a send was answered.
#[derive(Debug, PartialEq, Eq)]
enum SendAnswer {
    Sent,
    Refused { code: u16, retry_after_ms: u32 },
}

/// A Send of a note to self from `c` (logged in as `user`); its answer (pushes skipped).
fn send_to_self(c: &mut BlockingClient, user: u64, client_msg_id: u64) -> SendAnswer {
    use redrain_net::timeline::{TimelineRequest, TimelineResponse, CONTENT_TEXT, TARGET_USER};
    let id = c
        .send(&Request::Timeline(TimelineRequest::Send {
            target_kind: TARGET_USER,
            target: user,
            client_msg_id,
            content_type: CONTENT_TEXT,
            payload: b"note",
        }))
        .unwrap();
    loop {
        let f = c.recv().unwrap();
        if f.request_id == id {
            return match f.parse().unwrap() {
                Response::Error { code, retry_after_ms, .. } => SendAnswer::Refused { code, retry_after_ms },
                Response::Timeline(TimelineResponse::SendOk { .. }) => SendAnswer::Sent,
                other => panic!("unexpected answer {other:?}"),
            };
        }
    }
}

#[test]
fn the_message_rate_switch_reaches_every_core_persists_and_a_send_beyond_it_is_rate_limited_with_its_retry_after() {
    let args = ["--cores", "2", "--messages-per-user-per-s", "1000"];
    let mut node = Node::start_env(tempfile::tempdir().unwrap(), &args, RAIN_ENV);
    let mut c = node.login(7, 1);
    for id in 1..=3 {
        assert_eq!(send_to_self(&mut c, 7, id), SendAnswer::Sent, "within 1000/s");
    }
    assert_eq!(http(&node, "POST", "/admin/messages_per_user_per_s/0", Some(&admin_token(&node))).0, 400);
    switch(&node, "/admin/messages_per_user_per_s/1");
    let s = status(&node);
    let rates = (s["messages_per_user_per_s"].as_u64(), s["configured_messages_per_user_per_s"].as_u64());
    assert_eq!(rates, (Some(1), Some(1000)));
    assert!(node.metrics().contains("redrain_limit{name=\"messages_per_user_per_s\"} 1\n"));
    // 1/s with the burst scaled to one second's worth: one send, then RateLimited.
    assert_eq!(send_to_self(&mut c, 7, 4), SendAnswer::Sent);
    match send_to_self(&mut c, 7, 5) {
        SendAnswer::Refused { code, retry_after_ms } => {
            assert_eq!(code, ErrorCode::RateLimited.as_u16());
            assert!((1..=1_000).contains(&retry_after_ms), "retry-after {retry_after_ms}");
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    // Copied into /metrics on the cores' next housekeeping tick.
    node.wait_metric("redrain_timeline_rate_limited_messages_total", &[], 1.0);
    // The switch is persisted: a restart keeps it.
    drop(c);
    node.stop();
    let dir = node.take_dir();
    let node = Node::start_env(dir, &args, RAIN_ENV);
    assert_eq!(status(&node)["messages_per_user_per_s"].as_u64(), Some(1));
}

#[test]
fn on_a_node_without_an_event_the_rate_switches_persist_too() {
    let args = ["--cores", "2"];
    let mut node = Node::start_in(tempfile::tempdir().unwrap(), &args);
    switch(&node, "/admin/syncs_per_user_per_s/3");
    node.stop();
    let node = Node::start_in(node.take_dir(), &args);
    let s = status(&node);
    assert_eq!(
        (s["syncs_per_user_per_s"].as_u64(), s["configured_syncs_per_user_per_s"].as_u64()),
        (Some(3), Some(20))
    );
}
